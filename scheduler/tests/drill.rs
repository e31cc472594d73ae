//! Drill cadence on the real broker and database: the scheduler publishes one DrillCommand
//! per slot of each enabled policy's drill schedule (id derived from policy and slot), with
//! the policy's tier and id; a disabled policy or one without a drill schedule gets none.

mod support;

use chrono::{DateTime, Utc};
use lapin::options::BasicGetOptions;
use prost::Message;

use drfleet_protocol::OrganizationId;
use drfleet_protocol::policy::{SlotKind, scheduled_command_id};
use drfleet_protocol::v1;

use support::*;

#[tokio::test]
async fn one_drill_command_per_slot_of_the_drill_schedule() {
    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    // Backups far away: only drills fire during the test.
    let drilled = insert_policy(&env, &org, "drilled", "0 0 1 1 *", PolicyOpts::default()).await;
    let off = insert_policy(&env, &org, "off", "0 0 1 1 *", PolicyOpts::default()).await;
    let none = insert_policy(&env, &org, "none", "0 0 1 1 *", PolicyOpts::default()).await;
    sqlx::query(
        "UPDATE pf_backup_policies SET drill_schedule = '*/2 * * * * *' WHERE id = ANY($1)",
    )
    .bind(vec![drilled, off])
    .execute(&env.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE pf_backup_policies SET enabled = false WHERE id = $1")
        .bind(off)
        .execute(&env.pool)
        .await
        .unwrap();

    let (stop, sched) = start_scheduler(&env, &[]);
    eventually(30, "two drill slots", || async {
        (slots(&env, drilled, "drill").await.len() >= 2).then_some(())
    })
    .await;
    stop.cancel();
    sched.await.unwrap();

    let fired = slots(&env, drilled, "drill").await;
    for (slot, command_id, _) in &fired {
        assert_eq!(slot.timestamp() % 2, 0, "a slot of the schedule");
        assert_eq!(
            *command_id,
            scheduled_command_id(drilled, SlotKind::Drill, *slot, None).0
        );
    }
    let times: Vec<DateTime<Utc>> = fired.iter().map(|s| s.0).collect();
    assert!(
        times.windows(2).all(|w| w[1] > w[0]),
        "each slot once: {times:?}"
    );
    assert!(slots(&env, off, "drill").await.is_empty(), "disabled");
    assert!(
        slots(&env, none, "drill").await.is_empty(),
        "no drill schedule"
    );

    // The commands reached dr.drill: LATEST of the policy's tier, for the policy and slot.
    let conn = drfleet_infra::amqp::connect(&env.amqp_url, "test")
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.len() < fired.len() && std::time::Instant::now() < deadline {
        match ch
            .basic_get("dr.drill".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => got.push(v1::CommandEnvelope::decode(m.delivery.data.as_slice()).unwrap()),
            None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    assert_eq!(got.len(), fired.len());
    for env_ in &got {
        let Some(v1::command_envelope::Command::Drill(d)) = &env_.command else {
            panic!("{env_:?}");
        };
        assert_eq!(d.selection, v1::DrillSelection::Latest as i32);
        assert_eq!(
            (d.tier.as_str(), d.policy_id.clone()),
            ("full", drilled.to_string())
        );
        let slot =
            drfleet_protocol::events::from_timestamp(d.scheduled_for.as_ref().unwrap()).unwrap();
        assert_eq!(
            env_.command_id,
            scheduled_command_id(drilled, SlotKind::Drill, slot, None).to_string()
        );
        assert!(drfleet_protocol::validate::validate_envelope(env_.clone(), None).is_ok());
    }
    let _ = conn.close(200, "done".into()).await;
    env.cleanup().await;
}
