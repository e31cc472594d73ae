//! `drctl status`: one screen — the command queues (messages waiting and consumers, from
//! AMQP passive declares: the management API is not needed), the workers running jobs, the
//! jobs queued and running by kind, the open alerts, and each policy's newest backup against
//! its RPO. `--output json` prints one object:
//! `{"queues": [{"queue", "messages", "consumers"}] | null, "workers": [{"worker",
//! "running_jobs"}], "jobs": [{"kind", "queued", "running"}], "alerts": [{"kind",
//! "organization_id", "policy_name", "raised_at"}], "rpo": [{"organization_id",
//! "policy_name", "rpo_seconds", "newest_snapshot_at", "age_seconds", "ok"}]}`
//! (`queues` is null when the broker could not be reached; the rest still prints).

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};

use drfleet_infra::config::{BrokerArgs, amqp_url};
use drfleet_protocol::topology::{AUDIT_QUEUE, CommandKind, DEAD_LETTER_QUEUE};

use crate::cli::{DbArgs, OutputFormat};
use crate::error::{Error, Outcome};
use crate::listings::connect;
use crate::output::{cell, instant, print_line, table};

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// `text` (sections of aligned tables) or `json` (one object).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Messages ready and consumers of every drfleet queue.
async fn queues(url: &str) -> Result<Vec<Value>, Error> {
    let conn = drfleet_infra::amqp::connect(url, "drctl-status").await?;
    let names = CommandKind::ALL
        .iter()
        .map(|k| k.queue())
        .chain([AUDIT_QUEUE, DEAD_LETTER_QUEUE]);
    let mut out = Vec::new();
    for name in names {
        // A channel per declare: a passive declare of a missing queue closes its channel.
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match q {
            Ok(q) => {
                out.push(json!({"queue": name, "messages": q.message_count(), "consumers": q.consumer_count()}));
                let _ = ch.close(200, "done".into()).await;
            }
            // Not declared yet (no worker or drctl has run against this vhost).
            Err(_) => out.push(json!({"queue": name, "messages": null, "consumers": null})),
        }
    }
    let _ = conn.close(200, "drctl done".into()).await;
    Ok(out)
}

/// Organization, policy name, RPO, newest completed snapshot, its age (or the policy's).
type RpoRow = (String, String, Option<i64>, Option<DateTime<Utc>>, f64);

async fn database_parts(pool: &sqlx::PgPool) -> Result<Value, Error> {
    let workers: Vec<(String, i64)> = sqlx::query_as(
        "SELECT lease_owner, count(*) FROM pf_jobs WHERE state = 'running' AND lease_owner IS NOT NULL \
         GROUP BY lease_owner ORDER BY lease_owner",
    )
    .fetch_all(pool)
    .await?;
    let jobs: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running') \
         FROM pf_jobs WHERE state IN ('queued', 'running') GROUP BY kind ORDER BY kind",
    )
    .fetch_all(pool)
    .await?;
    let alerts: Vec<(String, String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT a.kind, a.tenant_key, p.name, a.raised_at FROM pf_alerts a \
         LEFT JOIN pf_backup_policies p ON p.id = a.policy_id \
         WHERE a.resolved_at IS NULL ORDER BY a.raised_at, a.id",
    )
    .fetch_all(pool)
    .await?;
    // Each enabled policy's newest completed backup against its RPO (as the scheduler's
    // RPO_BREACHED watch reads it).
    let rpo: Vec<RpoRow> = sqlx::query_as(
        "SELECT p.tenant_key, p.name, p.rpo_seconds, n.newest, \
           extract(epoch FROM now() - coalesce(n.newest, p.created_at))::float8 \
         FROM pf_backup_policies p \
         LEFT JOIN LATERAL (SELECT max(r.snapshot_at) AS newest FROM pf_backup_records r \
                            WHERE r.policy_id = p.id::text AND r.status = 'completed') n ON true \
         WHERE p.enabled ORDER BY p.tenant_key, p.name",
    )
    .fetch_all(pool)
    .await?;
    Ok(json!({
        "workers": workers.into_iter().map(|(w, n)| json!({"worker": w, "running_jobs": n})).collect::<Vec<_>>(),
        "jobs": jobs.into_iter().map(|(k, q, r)| json!({"kind": k, "queued": q, "running": r})).collect::<Vec<_>>(),
        "alerts": alerts.into_iter().map(|(k, org, p, at)| json!({
            "kind": k, "organization_id": org, "policy_name": p, "raised_at": instant(at),
        })).collect::<Vec<_>>(),
        "rpo": rpo.into_iter().map(|(org, name, rpo, newest, age)| {
            let age = age.max(0.0).round() as i64;
            json!({
                "organization_id": org,
                "policy_name": name,
                "rpo_seconds": rpo,
                "newest_snapshot_at": newest.map(instant),
                "age_seconds": newest.map(|_| age),
                // No RPO: nothing to breach.
                "ok": rpo.is_none_or(|r| age <= r),
            })
        }).collect::<Vec<_>>(),
    }))
}

/// Seconds for people: `45s`, `12m`, `3h`, `2d`.
fn human_age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn section(out: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    let _ = writeln!(out, "{title}");
    if rows.is_empty() {
        let _ = writeln!(out, "  (none)");
    } else {
        for line in table(headers, &rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push('\n');
}

/// The one screen of text.
pub fn render_text(v: &Value) -> String {
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    match v["queues"].as_array() {
        Some(q) => section(
            &mut out,
            "QUEUES",
            &["QUEUE", "MESSAGES", "CONSUMERS"],
            q.iter()
                .map(|q| vec![cell(q, "queue"), cell(q, "messages"), cell(q, "consumers")])
                .collect(),
        ),
        None => out.push_str("QUEUES\n  (broker unreachable)\n\n"),
    }
    section(
        &mut out,
        "WORKERS RUNNING JOBS",
        &["WORKER", "JOBS"],
        list("workers")
            .iter()
            .map(|w| vec![cell(w, "worker"), cell(w, "running_jobs")])
            .collect(),
    );
    section(
        &mut out,
        "JOBS",
        &["KIND", "QUEUED", "RUNNING"],
        list("jobs")
            .iter()
            .map(|j| vec![cell(j, "kind"), cell(j, "queued"), cell(j, "running")])
            .collect(),
    );
    section(
        &mut out,
        "OPEN ALERTS",
        &["KIND", "ORG", "POLICY", "SINCE"],
        list("alerts")
            .iter()
            .map(|a| {
                vec![
                    cell(a, "kind"),
                    cell(a, "organization_id"),
                    cell(a, "policy_name"),
                    cell(a, "raised_at"),
                ]
            })
            .collect(),
    );
    section(
        &mut out,
        "NEWEST BACKUP PER POLICY",
        &["ORG", "POLICY", "NEWEST SNAPSHOT", "AGE", "RPO", "STATE"],
        list("rpo")
            .iter()
            .map(|r| {
                let secs = |k: &str| r[k].as_i64().map(human_age).unwrap_or_else(|| "-".into());
                vec![
                    cell(r, "organization_id"),
                    cell(r, "policy_name"),
                    cell(r, "newest_snapshot_at"),
                    secs("age_seconds"),
                    secs("rpo_seconds"),
                    if r["ok"] == true {
                        "ok"
                    } else {
                        "RPO BREACHED"
                    }
                    .to_string(),
                ]
            })
            .collect(),
    );
    out
}

pub async fn status(a: &StatusArgs) -> Result<Outcome, Error> {
    let pool = connect(&a.db).await?;
    let db = database_parts(&pool).await;
    pool.close().await;
    let mut v = db?;
    let url = amqp_url("DR_AMQP_URL", &a.broker.amqp_url)?;
    v["queues"] = match queues(&url).await {
        Ok(q) => Value::Array(q),
        Err(e) => {
            eprintln!("drctl: queue depths unavailable: {e}");
            Value::Null
        }
    };
    match a.output {
        OutputFormat::Json => print_line(&v)?,
        OutputFormat::Text => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match out.write_all(render_text(&v).as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other?,
            }
        }
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_every_section() {
        let v = json!({
            "queues": null,
            "workers": [{"worker": "w1-abc", "running_jobs": 2}],
            "jobs": [],
            "alerts": [],
            "rpo": [{"organization_id": "42", "policy_name": "daily", "rpo_seconds": 3600,
                     "newest_snapshot_at": null, "age_seconds": null, "ok": false}],
        });
        let t = render_text(&v);
        assert!(t.contains("QUEUES\n  (broker unreachable)"), "{t}");
        assert!(t.contains("  w1-abc  2\n"), "{t}");
        assert!(t.contains("JOBS\n  (none)"), "{t}");
        assert!(
            t.contains("42   daily   -                -    60m  RPO BREACHED"),
            "{t}"
        );
        assert_eq!(human_age(7200), "2h");
    }
}
