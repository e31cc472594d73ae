//! What a PROMOTE guarantees (issue: restore correctness): it changes exactly the backup's
//! rows — no user trigger effects, no cascades into tables outside the backup, foreign-key
//! cycles and self-references promote — and a promotion that would orphan rows outside the
//! backup is refused with nothing changed. Each test compares everything outside the
//! tenant's backed-up rows before and after.

mod common;

use sqlx::Connection;

use common::restore::*;
use common::*;
use drfleet_protocol::OrganizationId;
use drfleet_protocol::v1::{self, event_envelope::Event};

/// The backed-up tables of this schema (the `full` tier: tables of `public` with the tenant
/// column).
const TENANT_TABLES: [&str; 3] = ["accounts", "contacts", "activity"];

/// accounts ⇄ contacts form a cycle (nullable keys, one deferrable), accounts references itself, contacts
/// has a user trigger that writes into a tenant table and into a table of another schema, and
/// `crm.notes` (outside the backup) references contacts with ON DELETE CASCADE.
async fn seed(env: &TestEnv, orgs: &[(&OrganizationId, i64)]) {
    sqlx::raw_sql(
        r#"
        CREATE SCHEMA crm;
        CREATE TABLE crm.audit_trail (id bigserial PRIMARY KEY, what text NOT NULL);
        CREATE TABLE accounts (
            id bigint PRIMARY KEY,
            organization_id uuid NOT NULL,
            name text NOT NULL,
            parent_id bigint REFERENCES accounts(id),
            best_contact_id bigint
        );
        CREATE TABLE contacts (
            id bigint PRIMARY KEY,
            organization_id uuid NOT NULL,
            account_id bigint REFERENCES accounts(id) DEFERRABLE INITIALLY DEFERRED,
            name text NOT NULL
        );
        ALTER TABLE accounts ADD FOREIGN KEY (best_contact_id) REFERENCES contacts(id);
        CREATE TABLE activity (
            id bigserial PRIMARY KEY,
            organization_id uuid NOT NULL,
            what text NOT NULL
        );
        CREATE TABLE crm.notes (
            id bigserial PRIMARY KEY,
            contact_id bigint NOT NULL REFERENCES public.contacts(id) ON DELETE CASCADE,
            body text NOT NULL
        );
        CREATE FUNCTION log_contact() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO activity (organization_id, what) VALUES (NEW.organization_id, 'contact ' || NEW.id);
            INSERT INTO crm.audit_trail (what) VALUES ('contact ' || NEW.id);
            RETURN NEW;
        END $$;
        CREATE TRIGGER contacts_log AFTER INSERT ON contacts FOR EACH ROW EXECUTE FUNCTION log_contact();
        "#,
    )
    .execute(&env.pool)
    .await
    .unwrap();
    for (org, base) in orgs {
        sqlx::query(
            "INSERT INTO accounts (id, organization_id, name, parent_id) \
               SELECT $2 + g, $1, 'account ' || g, CASE WHEN g > 1 THEN $2 + 1 END FROM generate_series(1, 20) g; \
             ",
        )
        .bind(org.as_uuid())
        .bind(base)
        .execute(&env.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO contacts (id, organization_id, account_id, name) \
               SELECT $2 + g, $1, $2 + 1 + g % 20, 'contact ' || g FROM generate_series(1, 200) g",
        )
        .bind(org.as_uuid())
        .bind(base)
        .execute(&env.pool)
        .await
        .unwrap();
        // Close the cycle: every account names a best contact.
        sqlx::query("UPDATE accounts SET best_contact_id = id + 100 WHERE organization_id = $1")
            .bind(org.as_uuid())
            .execute(&env.pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO crm.notes (contact_id, body) SELECT id, 'note on ' || id FROM contacts \
             WHERE organization_id = $1 AND id % 10 = 0",
        )
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    }
}

/// Order-independent content of `org`'s rows of every backed-up table.
async fn tenant_rows(env: &TestEnv, org: &OrganizationId) -> Vec<String> {
    let mut v = Vec::new();
    for t in TENANT_TABLES {
        v.push(
            rows_digest(
                &env.pool,
                "public",
                t,
                &format!("t.organization_id = '{org}'"),
            )
            .await,
        );
    }
    v
}

/// A PROMOTE that must be refused with `code` and change nothing at all (every row of the
/// database compared before and after) and leave no staging schema; returns its event.
async fn refused(
    env: &TestEnv,
    tap: &EventTap,
    p: &drfleet_infra::amqp::ConfirmPublisher,
    org: &OrganizationId,
    record: &str,
    code: &str,
) -> v1::RestoreFailed {
    let everything = fingerprint_outside(&env.pool, org, &[]).await;
    let events = promote(tap, p, org, record).await;
    let Some(Event::RestoreFailed(failed)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    assert_eq!(failed.error_code, code, "{failed:?}");
    assert_eq!(
        fingerprint_outside(&env.pool, org, &[]).await,
        everything,
        "a refused promotion changes nothing at all"
    );
    assert!(staging_schemas(&env.pool).await.is_empty());
    failed.clone()
}

#[tokio::test]
async fn promotion_changes_only_the_backups_rows_without_triggers_or_cascades_and_promotes_cycles()
{
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed(&env, &[(&org, 0), (&other, 100_000)]).await;
    let (shutdown, worker) = start(&env);
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;

    let record = backup(&env, &tap, &p, &org).await;
    let backed_up = tenant_rows(&env, &org).await;

    // Change the tenant after the backup: renamed rows, a broken cycle, deleted contacts
    // (their notes cascade away: the user's doing, before the promotion), a new contact
    // (the trigger logs it).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE accounts SET name = 'renamed', parent_id = NULL WHERE organization_id = '{org}';
         UPDATE accounts SET best_contact_id = NULL WHERE organization_id = '{org}' AND id % 2 = 0;
         DELETE FROM contacts WHERE organization_id = '{org}' AND id BETWEEN 180 AND 199 AND id NOT IN (SELECT best_contact_id FROM accounts WHERE best_contact_id IS NOT NULL);
         INSERT INTO contacts (id, organization_id, account_id, name) VALUES (5000, '{org}', 1, 'added after the backup');"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    assert_ne!(tenant_rows(&env, &org).await, backed_up);
    let outside = fingerprint_outside(&env.pool, &org, &TENANT_TABLES).await;
    let notes_before: i64 = sqlx::query_scalar("SELECT count(*) FROM crm.notes")
        .fetch_one(&env.pool)
        .await
        .unwrap();

    // Twice: a second promotion of the same backup changes nothing more.
    for round in 0..2 {
        let events = promote(&tap, &p, &org, &record).await;
        let Some(Event::RestoreCompleted(done)) = &events.last().unwrap().env.event else {
            panic!("round {round}: {events:?}")
        };
        assert!(done.lock_ms < 30_000, "{done:?}");
        assert_eq!(
            tenant_rows(&env, &org).await,
            backed_up,
            "round {round}: the tenant's rows equal the backup exactly (no trigger rows added)"
        );
        assert_eq!(
            fingerprint_outside(&env.pool, &org, &TENANT_TABLES).await,
            outside,
            "round {round}: nothing outside the tenant's backed-up rows changed (no cascade, no trigger effect)"
        );
    }
    let notes_after: i64 = sqlx::query_scalar("SELECT count(*) FROM crm.notes")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(notes_after, notes_before, "no note cascaded away");
    assert!(staging_schemas(&env.pool).await.is_empty());

    // The live tables' triggers and keys still work for ordinary writers afterwards.
    sqlx::query("INSERT INTO contacts (id, organization_id, account_id, name) VALUES (6000, $1, 1, 'later')")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM crm.audit_trail WHERE what = 'contact 6000'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(logged, 1, "the trigger fires for ordinary writers");
    let bad = sqlx::query("INSERT INTO contacts (id, organization_id, account_id, name) VALUES (6001, $1, 999999, 'x')")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await;
    assert!(
        bad.is_err(),
        "foreign keys are enforced for ordinary writers"
    );

    shutdown.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_promotion_that_would_orphan_rows_outside_the_backup_is_refused_with_nothing_changed() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed(&env, &[(&org, 0), (&other, 100_000)]).await;
    let (shutdown, worker) = start(&env);
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;

    let record = backup(&env, &tap, &p, &org).await;
    // A contact created after the backup, with notes outside the backup referencing it: the
    // backup's state would leave those notes dangling.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO contacts (id, organization_id, account_id, name) VALUES (7000, '{org}', 1, 'new');
         INSERT INTO crm.notes (contact_id, body) VALUES (7000, 'first'), (7000, 'second');
         UPDATE accounts SET name = 'renamed' WHERE organization_id = '{org}';"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let failed = refused(&env, &tap, &p, &org, &record, "PROMOTE_WOULD_ORPHAN").await;
    assert!(
        failed
            .message
            .contains("notes(contact_id) → contacts: 2 rows"),
        "the message names the referencing table and its count: {}",
        failed.message
    );
    assert_eq!(
        failed_checks(&env.pool, &failed.restore_job_id).await,
        ["promoted"],
        "the failed promotion's checks are stored"
    );

    // The tenant's restores keep working: STAGING of the same backup completes.
    let done = stage(&tap, &p, &org, &record).await;
    assert!(done.staging_schema.starts_with("dr_restore_"));

    shutdown.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_promotion_is_refused_when_triggers_would_fire_anyway_or_referenced_rows_are_gone() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed(&env, &[(&org, 0), (&other, 100_000)]).await;
    // A global table outside the backup that the tenant's accounts reference.
    sqlx::raw_sql(
        "CREATE TABLE plans (code text PRIMARY KEY); INSERT INTO plans VALUES ('basic'), ('gold');
         ALTER TABLE accounts ADD COLUMN plan text REFERENCES plans(code);
         UPDATE accounts SET plan = 'gold';",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let (shutdown, worker) = start(&env);
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;

    // A trigger enabled ALWAYS would fire even under the replica role: refused.
    sqlx::raw_sql("ALTER TABLE contacts ENABLE ALWAYS TRIGGER contacts_log")
        .execute(&env.pool)
        .await
        .unwrap();
    let failed = refused(&env, &tap, &p, &org, &record, "PROMOTE_TRIGGERS_WOULD_FIRE").await;
    assert!(
        failed.message.contains("contacts.contacts_log"),
        "{failed:?}"
    );
    sqlx::raw_sql("ALTER TABLE contacts ENABLE TRIGGER contacts_log")
        .execute(&env.pool)
        .await
        .unwrap();

    // The plan the backed-up accounts reference is gone: refused, nothing changed.
    sqlx::raw_sql("UPDATE accounts SET plan = 'basic'; DELETE FROM plans WHERE code = 'gold';")
        .execute(&env.pool)
        .await
        .unwrap();
    let failed = refused(
        &env,
        &tap,
        &p,
        &org,
        &record,
        "PROMOTE_MISSING_REFERENCED_ROWS",
    )
    .await;
    assert!(
        failed.message.contains("accounts(plan) → plans: 20 rows"),
        "{failed:?}"
    );

    // Put the plan back: the promotion goes through.
    sqlx::raw_sql("INSERT INTO plans VALUES ('gold')")
        .execute(&env.pool)
        .await
        .unwrap();
    let events = promote(&tap, &p, &org, &record).await;
    assert!(
        matches!(
            events.last().unwrap().env.event,
            Some(Event::RestoreCompleted(_))
        ),
        "{events:?}"
    );

    shutdown.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn another_tenants_writes_during_a_promotion_wait_no_longer_than_its_lock() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    // Composite keys with the tenant column, and no index on the referencing columns (the
    // shape that made a per-row-checked promotion take seconds).
    sqlx::raw_sql(
        "CREATE TABLE ads (id bigint NOT NULL, organization_id uuid NOT NULL, name text NOT NULL, PRIMARY KEY (organization_id, id));
         CREATE TABLE clicks (id bigint NOT NULL, organization_id uuid NOT NULL, ad_id bigint NOT NULL, site text NOT NULL,
           PRIMARY KEY (organization_id, id), FOREIGN KEY (organization_id, ad_id) REFERENCES ads (organization_id, id));",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    for o in [&org, &other] {
        sqlx::query("INSERT INTO ads SELECT g, $1, 'ad ' || g FROM generate_series(1, 3000) g;")
            .bind(o.as_uuid())
            .execute(&env.pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO clicks SELECT g, $1, 1 + g % 3000, 'site ' || g FROM generate_series(1, 40000) g",
        )
        .bind(o.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    }
    let (shutdown, worker) = start(&env);
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;
    sqlx::query("UPDATE ads SET name = 'renamed' WHERE organization_id = $1")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();

    // The other tenant inserts clicks one after another while the promotion runs.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (pool, stop, other) = (env.pool.clone(), stop.clone(), other);
        tokio::spawn(async move {
            let mut waits = Vec::new();
            let mut id = 1_000_000i64;
            while !stop.is_cancelled() {
                id += 1;
                let t = std::time::Instant::now();
                sqlx::query("INSERT INTO clicks VALUES ($1, $2, 7, 'during')")
                    .bind(id)
                    .bind(other.as_uuid())
                    .execute(&pool)
                    .await
                    .unwrap();
                waits.push(t.elapsed());
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            waits
        })
    };
    let events = promote(&tap, &p, &org, &record).await;
    stop.cancel();
    let waits = writer.await.unwrap();
    let Some(Event::RestoreCompleted(done)) = &events.last().unwrap().env.event else {
        panic!("{events:?}")
    };
    let longest = waits.iter().max().unwrap();
    assert!(waits.len() > 10, "the writer ran during the restore");
    assert!(
        longest.as_millis() as u64 <= done.lock_ms + 250,
        "another tenant waited {longest:?}, the promotion held its locks {} ms",
        done.lock_ms
    );
    let stored: Option<i64> =
        sqlx::query_scalar("SELECT lock_ms FROM pf_restore_jobs WHERE id = $1::uuid")
            .bind(&done.restore_job_id)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored, Some(done.lock_ms as i64));
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM clicks WHERE organization_id = $1 AND site = 'during'",
    )
    .bind(other.as_uuid())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        kept as usize,
        waits.len(),
        "every write of the other tenant is kept"
    );

    shutdown.cancel();
    worker.await.unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn without_the_replication_role_privilege_promote_fails_at_once_and_is_never_weaker() {
    let env = TestEnv::new().await;
    let (org, other) = (OrganizationId::new(), OrganizationId::new());
    seed(&env, &[(&org, 0), (&other, 100_000)]).await;
    // The tenant database as an ordinary role that owns nothing special: all it needs for
    // backups and STAGING, but not the right to set session_replication_role.
    let role = format!("drw_{}", &env.db_name[7..]);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN;
         GRANT CREATE, TEMP ON DATABASE {db} TO {role};
         GRANT USAGE, CREATE ON SCHEMA public, crm TO {role};
         GRANT ALL ON ALL TABLES IN SCHEMA public, crm TO {role};
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public, crm TO {role};",
        db = env.db_name
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    let host = env.db_url.rsplit_once('@').map_or("", |(_, h)| h);
    let source = format!("postgres://{role}@{host}");
    let (shutdown, worker) = start_with(&env, &[("DR_SOURCE_DATABASE_URL", source)]);
    let tap = EventTap::new(&env).await;
    let (_c, p) = env.publisher().await;
    let record = backup(&env, &tap, &p, &org).await;
    sqlx::query("UPDATE accounts SET name = 'renamed' WHERE organization_id = $1")
        .bind(org.as_uuid())
        .execute(&env.pool)
        .await
        .unwrap();
    let failed = refused(&env, &tap, &p, &org, &record, "PROMOTE_PRIVILEGE_MISSING").await;
    assert!(failed.message.contains("session_replication_role"));
    assert_eq!(
        failed_checks(&env.pool, &failed.restore_job_id).await,
        ["promote_privilege"]
    );
    // STAGING needs no such privilege.
    stage(&tap, &p, &org, &record).await;

    // Granted (PostgreSQL 15+), the same role promotes.
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    if version >= 150000 {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "GRANT SET ON PARAMETER session_replication_role TO {role}"
        )))
        .execute(&env.pool)
        .await
        .unwrap();
        let events = promote(&tap, &p, &org, &record).await;
        assert!(
            matches!(
                events.last().unwrap().env.event,
                Some(Event::RestoreCompleted(_))
            ),
            "{events:?}"
        );
    }

    shutdown.cancel();
    worker.await.unwrap();
    let admin_url = env.admin_url.clone();
    env.cleanup().await;
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    if version >= 150000 {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "REVOKE SET ON PARAMETER session_replication_role FROM {role}"
        )))
        .execute(&mut admin)
        .await;
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&mut admin)
        .await
        .unwrap();
}
