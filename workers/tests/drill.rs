//! DR drills end to end on real PostgreSQL and RabbitMQ: a drill restores a backup into a
//! scratch schema of another, empty database (every table recreated from the manifest),
//! validates it, measures RTO/RPO, reports once and leaves no scratch; the source database is
//! never written. (The alerts drills raise: `drill_alerts.rs`.)

mod common;

use common::drill::*;
use common::restore::{backup, rows_digest};
use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};

/// Tables beyond `seed_tenant`'s: a self-referencing and a composite foreign key.
async fn seed_more(env: &TestEnv, org: &OrganizationId, other: &OrganizationId) {
    sqlx::raw_sql(
        "CREATE TABLE categories (
            organization_id uuid NOT NULL,
            id integer NOT NULL,
            parent_id integer,
            label text NOT NULL CHECK (label <> ''),
            PRIMARY KEY (organization_id, id),
            FOREIGN KEY (organization_id, parent_id) REFERENCES categories (organization_id, id)
        );
        CREATE INDEX categories_label ON categories (lower(label));",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    for o in [org, other] {
        sqlx::query(
            "INSERT INTO categories VALUES ($1, 1, NULL, 'root'), ($1, 2, 1, 'child'), ($1, 3, 2, 'leaf')",
        )
        .bind(o.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_drill_into_an_empty_database_recreates_every_table_passes_and_leaves_no_scratch() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    seed_more(&env, &org, &other).await;
    let target = Target::new(&env).await;
    let tap = EventTap::new(&env).await;
    let (stop, handle) = drill_worker(&env, &target);
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;
    let before = source_fingerprint(&env).await;

    // Kept for an hour, so its rows can be compared with the source's.
    let events = run_drill(
        &tap,
        &p,
        &drill_cmd(
            &org,
            v1::DrillCommand {
                backup_record_id: record.clone(),
                selection: v1::DrillSelection::Record as i32,
                keep_hours: 1,
                ..Default::default()
            },
        ),
    )
    .await;
    let d = completed(&events);
    assert!(d.passed, "{:?}", d.checks);
    assert_eq!(
        (d.backup_record_id.as_str(), d.target.as_str()),
        (record.as_str(), "scratch")
    );
    for name in [
        "sealed",
        "schema_recreated",
        "row_counts",
        "content_hashes",
        "tenant_scoped",
        "foreign_keys_closed",
    ] {
        assert!(check(&d, name).passed, "{name}: {:?}", d.checks);
    }
    let phases: Vec<&str> = d.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        phases,
        ["fetch_sealed", "schema", "load", "checks", "assertions"]
    );
    assert!(
        d.measured_rto_ms > 0
            && d.measured_rto_ms >= d.phases.iter().map(|p| p.ms).sum::<u64>() / 2
    );
    assert!(!d.scratch_dropped);
    let scratch = d.scratch_schema.clone();
    assert_eq!(
        target.scratch_schemas().await,
        std::slice::from_ref(&scratch)
    );

    // Every table with exactly the tenant's rows; the types and keys recreated.
    for table in ["customers", "orders", "order_notes", "categories"] {
        let filter = format!("t.organization_id = '{org}'");
        assert_eq!(
            rows_digest(&target.pool, &scratch, table, "").await,
            rows_digest(&env.pool, "public", table, &filter).await,
            "{table}"
        );
    }
    let has = |sql: &'static str| {
        let pool = target.pool.clone();
        let scratch = scratch.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(scratch)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(has("SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1 AND t.typname = 'mood' AND t.typtype = 'e'").await, 1, "enum");
    assert_eq!(has("SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'customers' AND a.attname = 'id' AND a.attidentity = 'a'").await, 1, "identity");
    assert_eq!(has("SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'customers' AND a.attname = 'name_len' AND a.attgenerated = 's'").await, 1, "generated");
    assert_eq!(has("SELECT count(*) FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = $1 AND k.contype = 'f' AND k.conrelid = k.confrelid AND array_length(k.conkey, 1) = 2").await, 1, "self-referencing composite foreign key");
    // No other tenant's rows reached the target.
    let others: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{scratch}\".customers WHERE organization_id <> '{org}'"
    )))
    .fetch_one(&target.pool)
    .await
    .unwrap();
    assert_eq!(others, 0);

    // The report: RTO/RPO, the phases, the kept scratch; the sweep drops it once due.
    let (rto, rpo, target_name, kept): (Option<i64>, Option<i64>, String, bool) = sqlx::query_as(
        "SELECT measured_rto_ms, measured_rpo_ms, target, keep_until > now() FROM pf_dr_drill_reports WHERE id = $1::uuid",
    )
    .bind(&d.drill_report_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(rto, Some(d.measured_rto_ms as i64));
    assert!(rpo.unwrap() >= 0);
    assert_eq!((target_name.as_str(), kept), ("scratch", true));
    sqlx::query("UPDATE pf_dr_drill_reports SET keep_until = now() - interval '1 second' WHERE id = $1::uuid")
        .bind(&d.drill_report_id)
        .execute(&env.pool)
        .await
        .unwrap();
    eventually(30, "the sweep drops the kept scratch schema", || async {
        target.scratch_schemas().await.is_empty().then_some(())
    })
    .await;

    // LATEST, dropped at once.
    let events = run_drill(&tap, &p, &drill_cmd(&org, v1::DrillCommand::default())).await;
    let d2 = completed(&events);
    assert!(d2.passed, "{:?}", d2.checks);
    assert!(d2.scratch_dropped);
    assert_eq!(d2.backup_record_id, record);
    assert!(target.scratch_schemas().await.is_empty());

    // Nothing in the source changed, and no event or report carries tenant content.
    assert_eq!(source_fingerprint(&env).await, before);
    for e in tap.events.lock().unwrap().iter() {
        let text = format!("{:?}", e.env);
        assert!(
            !text.contains(MARKER) && !text.contains(OTHER_MARKER),
            "{text}"
        );
    }
    stop.cancel();
    handle.await.unwrap();
    target.drop(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn drills_are_refused_for_another_orgs_record_or_a_missing_or_unsafe_target() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    let target = Target::new(&env).await;
    let tap = EventTap::new(&env).await;
    // "source" points at the source database itself: a drill must refuse it.
    let (stop, handle) = start(env.config_with(
        "backup,drill",
        &[(
            "DR_RESTORE_TARGETS",
            format!("scratch={},source={}", target.url, env.db_url),
        )],
    ));
    let (_c, p) = env.publisher().await;
    let others = backup(&env, &tap, &p, &other).await;
    let rejected = |events: Vec<Received>| {
        events
            .iter()
            .find_map(|e| match &e.env.event {
                Some(Event::CommandRejected(r)) => Some((r.reason_code.clone(), r.message.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{:?}", events.iter().map(|e| e.kind()).collect::<Vec<_>>()))
    };
    let cases = [
        (
            v1::DrillCommand {
                backup_record_id: others.clone(),
                target: "scratch".into(),
                ..Default::default()
            },
            "NOT_FOUND",
        ),
        (v1::DrillCommand::default(), "CONFLICT"),
        (
            v1::DrillCommand {
                target: "nowhere".into(),
                ..Default::default()
            },
            "INVALID_ARGUMENT",
        ),
        (
            v1::DrillCommand {
                target: "source".into(),
                ..Default::default()
            },
            "INVALID_ARGUMENT",
        ),
    ];
    for (d, code) in cases {
        let (got, message) = rejected(run_drill(&tap, &p, &drill_cmd(&org, d.clone())).await);
        assert_eq!(got, code, "{d:?}: {message}");
        assert!(!message.contains("postgres://"), "{message}");
    }
    // No backup of its own yet: the drill runs and fails, once, with a report.
    let events = run_drill(
        &tap,
        &p,
        &drill_cmd(
            &org,
            v1::DrillCommand {
                target: "scratch".into(),
                ..Default::default()
            },
        ),
    )
    .await;
    let failed = events
        .iter()
        .find_map(|e| match &e.env.event {
            Some(Event::DrDrillFailed(f)) => Some(f.clone()),
            _ => None,
        })
        .expect("dr_drill_failed");
    assert_eq!(failed.error_code, "NO_BACKUP_TO_DRILL");
    let (passed, code): (Option<bool>, Option<String>) =
        sqlx::query_as("SELECT passed, error_code FROM pf_dr_drill_reports WHERE id = $1::uuid")
            .bind(&failed.drill_report_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (passed, code.as_deref()),
        (Some(false), Some("NO_BACKUP_TO_DRILL"))
    );
    let schemas: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'dr\\_drill\\_%'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(schemas, 0, "nothing was created in the source");
    stop.cancel();
    handle.await.unwrap();
    target.drop(&env).await;
    env.cleanup().await;
}

#[tokio::test]
async fn random_selection_stays_within_its_window_and_latest_takes_the_newest() {
    use chrono::Utc;
    use drfleet_protocol::validate::{DrillSelection, DrillSpec};
    use drfleet_workers::roles::drill::select::choose;

    let env = TestEnv::new().await;
    let org = OrganizationId::new();
    let now = Utc::now();
    // 30 completed records, one a day back from now; and a newer failed one.
    for day in 0..30i64 {
        sqlx::query(
            "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, status, snapshot_at, completed_at) \
             VALUES ($1, $2, $1, 'full', 'completed', $3, $3)",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(org.as_uuid())
        .bind(now - chrono::Duration::days(day) - chrono::Duration::minutes(1))
        .execute(&env.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO pf_backup_records (id, organization_id, command_id, tier, status, snapshot_at) \
         VALUES ($1, $2, $1, 'full', 'failed', $3)",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(org.as_uuid())
    .bind(now)
    .execute(&env.pool)
    .await
    .unwrap();
    let spec = |selection, window_days| DrillSpec {
        backup_record_id: None,
        tier: String::new(),
        selection,
        window_days,
        target: None,
        keep_hours: 0,
        policy_id: None,
        scheduled_for: None,
    };
    let mut conn = env.pool.acquire().await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let c = choose(
            &mut conn,
            org.as_uuid(),
            &spec(DrillSelection::RandomWithinWindow, 7),
            "",
            now,
        )
        .await
        .unwrap();
        let age = now - c.snapshot_at.unwrap();
        assert!(
            age <= chrono::Duration::days(7),
            "{age:?} outside the window"
        );
        seen.insert(c.backup_record_id);
    }
    // Seven candidates (days 0..=6); 60 uniform draws miss one with probability < 1e-3.
    assert!(seen.len() >= 6, "{} distinct of 7", seen.len());
    let latest = choose(
        &mut conn,
        org.as_uuid(),
        &spec(DrillSelection::Latest, 0),
        "",
        now,
    )
    .await
    .unwrap();
    assert!(now - latest.snapshot_at.unwrap() < chrono::Duration::minutes(2));
    // Another tier, or a window before every backup: nothing to drill.
    let e = choose(
        &mut conn,
        org.as_uuid(),
        &spec(DrillSelection::Latest, 0),
        "gold",
        now,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NO_BACKUP_TO_DRILL");
    let e = choose(
        &mut conn,
        org.as_uuid(),
        &spec(DrillSelection::RandomWithinWindow, 1),
        "",
        now - chrono::Duration::days(40),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, "NO_BACKUP_TO_DRILL");
    drop(conn);
    env.cleanup().await;
}

/// `(inheriting children, parts schemas, distinct loading transactions, every foreign key
/// validated)` of `table` in the scratch schema.
async fn scratch_shape(target: &Target, scratch: &str, table: &str) -> (i64, i64, i64, bool) {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM pg_inherits WHERE inhparent = '\"{scratch}\".{table}'::regclass),
                (SELECT count(*) FROM pg_namespace WHERE nspname = '{scratch}_parts'),
                (SELECT count(DISTINCT xmin::text) FROM \"{scratch}\".{table}),
                (SELECT bool_and(convalidated) FROM pg_constraint
                  WHERE conrelid = '\"{scratch}\".{table}'::regclass AND contype = 'f')"
    )))
    .fetch_one(&target.pool)
    .await
    .unwrap()
}

/// ~15 MB of COPY text drilled in 1 MiB segments: each backed-up table is recreated as one
/// table (no parts), its segments appended in their own transactions and read back by block
/// range while the next one loads, its keys recreated and validated. Rows rewritten as they
/// are stored are caught by the read-back, and a key the backup's rows leave open by the
/// recreated key's validation, counted.
#[tokio::test]
async fn a_table_drilled_in_segments_is_one_table_read_back_by_block_ranges_with_its_keys_checked()
{
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed_tenant(&env, &org, &other).await;
    // Rows of nearly one length: no row finds room in a page an earlier segment filled, so
    // the block ranges alone must add up (no table read back whole).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE seg (organization_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
           payload text NOT NULL CHECK (payload <> ''), n int GENERATED ALWAYS AS (length(payload)) STORED,
           parent_id bigint REFERENCES seg (id) ON DELETE SET NULL);
         CREATE INDEX ON seg (parent_id);
         INSERT INTO seg (organization_id, payload) SELECT '{org}', repeat(md5(g::text), 3) || E'\\t\\n' || g
           FROM generate_series(1, 100000) g;
         UPDATE seg SET parent_id = 100001 - id WHERE id % 5 = 0;
         INSERT INTO seg (organization_id, payload) SELECT '{other}', 'other ' || g FROM generate_series(1, 1000) g;"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let target = Target::new(&env).await;
    let tap = EventTap::new(&env).await;
    let (stop, handle) = start(env.config_with(
        "backup,drill",
        &[
            ("DR_RESTORE_TARGETS", format!("scratch={}", target.url)),
            ("DR_DRILL_TARGET", "scratch".into()),
            ("DR_RESTORE_SEGMENT_MIB", "1".into()),
        ],
    ));
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;
    let drill = |keep_hours| {
        drill_cmd(
            &org,
            v1::DrillCommand {
                backup_record_id: record.clone(),
                selection: v1::DrillSelection::Record as i32,
                keep_hours,
                ..Default::default()
            },
        )
    };

    let d = completed(&run_drill(&tap, &p, &drill(1)).await);
    assert!(d.passed, "{:?}", d.checks);
    assert_eq!(check(&d, "content_hashes").detail, "");
    let fk = check(&d, "foreign_keys_closed");
    assert!(fk.detail.contains("validated"), "{fk:?}");
    assert!(check(&d, "constraints_recreated").passed);
    let scratch = d.scratch_schema.clone();
    let filter = format!("t.organization_id = '{org}'");
    assert_eq!(
        rows_digest(&target.pool, &scratch, "seg", "").await,
        rows_digest(&env.pool, "public", "seg", &filter).await
    );
    let (children, parts, transactions, validated) = scratch_shape(&target, &scratch, "seg").await;
    assert_eq!((children, parts, validated), (0, 0, true));
    assert!(transactions >= 8, "{transactions} loading transactions");
    sqlx::query(
        "UPDATE pf_dr_drill_reports SET keep_until = now() - interval '1 second' WHERE id = $1::uuid",
    )
    .bind(&d.drill_report_id)
    .execute(&env.pool)
    .await
    .unwrap();
    eventually(30, "the sweep drops the kept scratch schema", || async {
        target.scratch_schemas().await.is_empty().then_some(())
    })
    .await;

    // The drill target rewrites one row in a thousand as the scratch `seg` stores it.
    sqlx::raw_sql(
        r#"CREATE FUNCTION tamper_row() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.id % 1000 = 0 THEN NEW.payload := NEW.payload || ' (rewritten)'; END IF; RETURN NEW; END $$;
           CREATE FUNCTION tamper_scratch() RETURNS event_trigger LANGUAGE plpgsql AS $$
             DECLARE r record;
             BEGIN
               FOR r IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE TABLE' LOOP
                 IF r.object_identity LIKE 'dr_drill_%.seg' THEN
                   EXECUTE format('CREATE TRIGGER tamper BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION public.tamper_row()', r.object_identity);
                 END IF;
               END LOOP;
             END $$;
           CREATE EVENT TRIGGER tamper_scratch ON ddl_command_end EXECUTE FUNCTION tamper_scratch();"#,
    )
    .execute(&target.pool)
    .await
    .unwrap();
    let d = completed(&run_drill(&tap, &p, &drill(0)).await);
    assert!(!d.passed);
    let failed: Vec<(&str, &str)> = d
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| (c.name.as_str(), c.detail.as_str()))
        .collect();
    // The block ranges did not add up, nor did the whole table.
    assert_eq!(
        failed,
        [("content_hashes", "mismatch in seg; seg read back whole")]
    );
    // Keys not recreated over rows that failed: they were counted instead.
    assert!(check(&d, "foreign_keys_closed").passed);
    assert!(d.checks.iter().all(|c| c.name != "constraints_recreated"));
    sqlx::raw_sql("DROP EVENT TRIGGER tamper_scratch")
        .execute(&target.pool)
        .await
        .unwrap();

    // A key added NOT VALID over rows it leaves open: the backup holds them as they are; the
    // drill's recreated key refuses them, and the open rows are counted.
    sqlx::raw_sql(
        "ALTER TABLE seg DROP CONSTRAINT seg_parent_id_fkey;
         UPDATE seg SET parent_id = 999999 WHERE id IN (1, 2, 3);
         ALTER TABLE seg ADD CONSTRAINT seg_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES seg (id) NOT VALID;",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let open = backup(&env, &tap, &p, &org).await;
    let d = completed(
        &run_drill(
            &tap,
            &p,
            &drill_cmd(
                &org,
                v1::DrillCommand {
                    backup_record_id: open,
                    selection: v1::DrillSelection::Record as i32,
                    ..Default::default()
                },
            ),
        )
        .await,
    );
    assert!(!d.passed);
    let failed: Vec<(&str, &str)> = d
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| (c.name.as_str(), c.detail.as_str()))
        .collect();
    assert_eq!(failed, [("foreign_keys_closed", "seg → seg: 3 rows")]);
    assert!(target.scratch_schemas().await.is_empty());

    stop.cancel();
    handle.await.unwrap();
    target.drop(&env).await;
    env.cleanup().await;
}
