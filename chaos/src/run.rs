//! One run: set up, start the fleet, workload + faults, settle, audit, report, clean up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use drfleet_infra::auth::TokenMinter;

use crate::bus::{self, Bus};
use crate::cli::{Cli, Plan};
use crate::env::{Services, rabbitmqctl};
use crate::faults::Injector;
use crate::procs::{Fleet, Kind, LIGHT_ROLES};
use crate::proxy::Mode;
use crate::report::{Figures, Report, summarize};
use crate::rng::Rng;
use crate::tenants::{self, Ids, Tenant};
use crate::workload::{self, Ctx, Ledger, TERMINAL};

/// Run the suite. `Ok(true)`: every must-be-0 figure is 0.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let plan = Plan::from_cli(&cli).map_err(anyhow::Error::msg)?;
    println!(
        "drfleet-chaos: seed {} (replay with --seed {}), workload {} s, faults: {}",
        plan.seed,
        plan.seed,
        plan.duration.as_secs(),
        plan.faults
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    let run_dir = cli.run_dir.clone().unwrap_or_else(|| {
        PathBuf::from("target/chaos").join(chrono::Utc::now().format("%Y%m%dT%H%M%S").to_string())
    });
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let services = Arc::new(Services::start(&cli, &run_dir).await?);
    println!(
        "drfleet-chaos: run {} in {} (vhost {}, databases {} {})",
        services.run_id,
        run_dir.display(),
        services.vhost,
        services.meta_db,
        services.src_db
    );
    // Ctrl-C drops the run: its processes are killed (kill_on_drop), its services kept.
    let res = tokio::select! {
        r = drive(&cli, &plan, services.clone(), &run_dir) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    services.cleanup(cli.keep || res.is_err()).await;
    let report = res?;
    let path = cli
        .report
        .clone()
        .unwrap_or_else(|| run_dir.join("report.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    report.print();
    println!("report: {}", path.display());
    Ok(report.ok)
}

async fn drive(
    cli: &Cli,
    plan: &Plan,
    s: Arc<Services>,
    run_dir: &std::path::Path,
) -> anyhow::Result<Report> {
    let mut rng = Rng::new(plan.seed);
    let started = Instant::now();

    // Tenants, and the guard that notes any write of a drill in the source.
    tenants::create_schema(&s.src, &s.drill).await?;
    tenants::check_guard(&s.src, &s.drill_src_url).await?;
    // The harness waits on events by command id; an index of its own keeps that cheap.
    sqlx::query(
        "CREATE INDEX IF NOT EXISTS chaos_audit_causation ON pf_audit_events (causation_id)",
    )
    .execute(&s.meta)
    .await?;
    let ids = Arc::new(Ids::new());
    let mut trng = rng.fork(1);
    let n = cli.tenants;
    let mut tenants_v = Vec::new();
    for size in tenants::sizes(&mut trng, n, plan.soak) {
        let org = Uuid::new_v4();
        tenants::seed(&s.src, &ids, org, size).await?;
        tenants_v.push(Tenant {
            org,
            customers: size,
            version: 0,
            expected: tenants::digest(&s.src, org).await?,
            alternative: None,
            backups: Vec::new(),
            kept_stagings: Vec::new(),
            policy: None,
        });
    }
    let orgs: Vec<Uuid> = tenants_v.iter().map(|t| t.org).collect();

    // Broker side: the tap first, so it sees every event.
    bus::declare_tap(&s.amqp_url).await?;
    let tap_stop = CancellationToken::new();
    let tapped = Arc::new(std::sync::Mutex::new(bus::Tapped::default()));
    let tap = tokio::spawn(bus::tap(
        s.amqp_url.clone(),
        tapped.clone(),
        tap_stop.clone(),
    ));

    // The fleet.
    let mut wenv = s.worker_env();
    if let Some(n) = cli.broken_ack_one_in {
        wenv.push((
            drfleet_workers::faults::ACK_BEFORE_DURABLE_ENV.into(),
            n.to_string(),
        ));
    }
    let fleet = Arc::new(Fleet::new(
        &cli.bin_dir,
        &run_dir.join("logs"),
        wenv,
        s.scheduler_env(),
    )?);
    let per = cli.workers_per_role;
    for (name, role, count) in [
        ("backup", "backup", per),
        ("restore", "restore", per),
        ("drill", "drill", per),
        ("light", LIGHT_ROLES, per.saturating_sub(1).max(1)),
    ] {
        let env = match name {
            "drill" => s.drill_env(),
            // Four roles' intakes, the verify runner and the audit sink share its pool.
            "light" => vec![("DR_DATABASE_POOL_SIZE".to_string(), "6".to_string())],
            _ => Vec::new(),
        };
        for i in 1..=count {
            fleet
                .add(&format!("{name}-{i}"), Kind::Worker(role), env.clone())
                .await?;
        }
    }
    for i in 1..=cli.schedulers {
        fleet
            .add(&format!("scheduler-{i}"), Kind::Scheduler, Vec::new())
            .await?;
    }
    let reaper_stop = CancellationToken::new();
    let reaper = {
        let (fleet, stop) = (fleet.clone(), reaper_stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Err(e) = fleet.reap().await {
                    eprintln!("drfleet-chaos: {e:#}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // Workload.
    let workload_stop = CancellationToken::new();
    let ledger = Arc::new(Ledger::default());
    let bus = Arc::new(Bus::new(&s.amqp_url));
    let ctx = Arc::new(Ctx {
        bus: bus.clone(),
        meta: s.meta.clone(),
        src: s.src.clone(),
        minter: TokenMinter::from_secret(&s.jwt_secret).map_err(|e| anyhow::anyhow!("{e}"))?,
        ledger: ledger.clone(),
        ids: ids.clone(),
        stop: workload_stop.clone(),
        abandon: CancellationToken::new(),
        wait_timeout: plan.wait_timeout,
    });
    let mut prng = rng.fork(2);
    let policies = workload::policies(&ctx, &orgs, &mut prng).await?;
    for t in &mut tenants_v {
        t.policy = policies.iter().find(|(o, _)| *o == t.org).map(|(_, p)| *p);
    }
    println!(
        "drfleet-chaos: {} tenants seeded, {} policies set, fleet up; workload and faults start",
        orgs.len(),
        policies.len()
    );

    let workload_started = Instant::now();
    let mut lanes = Vec::new();
    for (i, t) in tenants_v.into_iter().enumerate() {
        lanes.push(tokio::spawn(workload::lane(
            ctx.clone(),
            t,
            rng.fork(100 + i as u64),
        )));
    }
    let poison = tokio::spawn(crate::poison::poison_lane(
        ctx.clone(),
        orgs.clone(),
        rng.fork(3),
    ));
    let injector = Arc::new(Injector {
        services: s.clone(),
        fleet: fleet.clone(),
        kinds: plan.faults.clone(),
        gap: plan.fault_gap,
        log: Default::default(),
        skipped: Default::default(),
        pending: Default::default(),
    });
    let fault_stop = CancellationToken::new();
    let faults = tokio::spawn(injector.clone().run(rng.fork(4), fault_stop.clone()));
    let progress = {
        let (ledger, stop) = (ledger.clone(), workload_stop.clone());
        let injector = injector.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(15)) => {}
                }
                println!(
                    "drfleet-chaos: {:>4} s: {} commands published, {} faults injected",
                    workload_started.elapsed().as_secs(),
                    ledger.sent.lock().await.len(),
                    injector.log.lock().await.len()
                );
            }
        })
    };

    tokio::time::sleep(plan.duration).await;

    // Settle: no new work, no new faults, every dependency back.
    println!("drfleet-chaos: workload over; settling");
    let settle_started = Instant::now();
    let settle_deadline = tokio::time::Instant::now() + plan.settle_timeout;
    workload_stop.cancel();
    fault_stop.cancel();
    let _ = faults.await;
    injector.finish().await;
    s.pg_proxy.set(Mode::Pass);
    s.s3_proxy.set(Mode::Pass);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(s.moto_pid),
        nix::sys::signal::Signal::SIGCONT,
    );
    fleet.ensure_all_running().await?;
    let _ = progress.await;
    let abandon = {
        let token = ctx.abandon.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(settle_deadline).await;
            token.cancel();
        })
    };
    let mut tenants_v = Vec::new();
    for l in lanes {
        tenants_v.push(l.await.context("tenant lane")??);
    }
    poison.await.context("poison lane")??;
    // Schedulers stop (SIGTERM: they drain their outbox) so nothing new is published.
    let sched_exits = fleet
        .stop(Some(&Kind::Scheduler), Duration::from_secs(20))
        .await;
    // Kept STAGING schemas are discarded, as an operator would; what remains is a leftover.
    let kept: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT id, organization_id FROM pf_restore_jobs WHERE status = 'completed' AND mode = 'staging' \
         AND staging_schema IS NOT NULL AND staging_dropped_at IS NULL",
    )
    .fetch_all(&s.meta)
    .await?;
    let mut drng = rng.fork(5);
    for (job, org) in kept {
        let env = ctx.envelope(org, "discard", workload::discard_body(job));
        let id = ctx.send("discard", &env, &mut drng).await?;
        let _ = ctx.wait(id).await;
    }
    let quiet = wait_quiet(&s, &ledger, settle_deadline).await?;
    abandon.abort();
    let settle_secs = settle_started.elapsed().as_secs();
    if !quiet {
        println!(
            "drfleet-chaos: did not settle within {} s; auditing as it stands",
            plan.settle_timeout.as_secs()
        );
    }

    // Audit.
    tap_stop.cancel();
    let _ = tap.await;
    let (dead_reasons, delivery_limit) = bus::drain_dead_letters(&s.amqp_url).await?;
    println!("drfleet-chaos: dead letters by reason: {dead_reasons:?}");
    let tapped = std::mem::take(&mut *tapped.lock().unwrap_or_else(|p| p.into_inner()));
    let mut f = Figures::default();
    crate::audit::audit(
        crate::audit::Inputs {
            meta: &s.meta,
            src: &s.src,
            drill: &s.drill,
            store: s.store.as_ref(),
            ledger: &ledger,
            tenants: &tenants_v,
            tapped: &tapped.ids,
            delivery_limit: &delivery_limit,
        },
        &mut f,
    )
    .await?;
    let mut log = injector.log.lock().await.clone();
    crate::audit::recovery(&s.meta, &mut log).await?;
    f.unrecovered_faults = log.iter().filter(|x| x.recovery_ms.is_none()).count() as u64;
    f.commands_published = ledger.sent.lock().await.len() as u64;
    f.duplicates_published = ledger
        .duplicates_published
        .load(std::sync::atomic::Ordering::Relaxed);
    f.poison_published = ledger
        .poison_published
        .load(std::sync::atomic::Ordering::Relaxed);
    f.promotes = ledger.promotes.load(std::sync::atomic::Ordering::Relaxed);
    f.promotes_completed = ledger
        .promotes_completed
        .load(std::sync::atomic::Ordering::Relaxed);
    f.republished_after_cut = bus.republished.load(std::sync::atomic::Ordering::Relaxed);
    f.events_redelivered_to_tap = tapped.redelivered;
    reaper_stop.cancel();
    let _ = reaper.await;
    let mut exits: Vec<String> = fleet
        .unexpected_exits
        .lock()
        .await
        .iter()
        .map(|(n, st)| format!("{n}: {st}"))
        .collect();
    let final_exits = fleet.stop(None, Duration::from_secs(20)).await;
    exits.extend(
        sched_exits
            .into_iter()
            .chain(final_exits)
            .map(|(n, st)| format!("{n} at stop: {st}")),
    );
    f.unexpected_exits = exits;
    f.process_starts = fleet.starts().await;

    let skipped = injector.skipped.lock().await.clone();
    let (by_kind, skipped) = summarize(&log, &skipped);
    let failed: Vec<String> = f
        .must_be_zero()
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut replay = format!(
        "drfleet-chaos --seed {} --duration {}s --tenants {} --bin-dir {}",
        plan.seed,
        plan.duration.as_secs(),
        n,
        cli.bin_dir.display()
    );
    if cli.broker_restart {
        replay.push_str(" --broker-restart");
    }
    let _ = started;
    Ok(Report {
        ok: failed.is_empty(),
        seed: plan.seed,
        replay,
        run_id: s.run_id.clone(),
        bin_dir: cli.bin_dir.display().to_string(),
        broken_ack_one_in: cli.broken_ack_one_in,
        duration_secs: plan.duration.as_secs(),
        settle_secs,
        tenants: n,
        failed_figures: failed,
        figures: f,
        faults_injected: log.len() as u64,
        faults: by_kind,
        faults_skipped: skipped,
        fault_log: log,
    })
}

/// Wait until nothing is left to do: no queued or running job, the outbox drained, every
/// command the harness or a scheduler published (and every accepted one) finished, no
/// drill's scratch schema waiting for the sweeper (a drop that failed; kept ones are not
/// due), and the run's queues empty. False if the deadline passed first.
async fn wait_quiet(
    s: &Services,
    ledger: &Ledger,
    deadline: tokio::time::Instant,
) -> anyhow::Result<bool> {
    let terminal: Vec<String> = TERMINAL.iter().map(|x| x.to_string()).collect();
    loop {
        let valid: Vec<Uuid> = ledger
            .sent
            .lock()
            .await
            .iter()
            .filter(|(_, x)| x.valid)
            .map(|(c, _)| *c)
            .collect();
        let open: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM pf_jobs WHERE state IN ('queued', 'running')) \
                  + (SELECT count(*) FROM pf_outbox) \
                  + (SELECT count(*) FROM (SELECT command_id FROM pf_commands WHERE outcome = 'accepted' \
                       UNION SELECT command_id FROM pf_schedule_slots UNION SELECT unnest($1::uuid[])) c \
                     WHERE NOT EXISTS (SELECT 1 FROM pf_audit_events e WHERE e.causation_id = c.command_id::text \
                       AND e.event_type = ANY($2))) \
                  + (SELECT count(*) FROM pf_dr_drill_reports WHERE scratch_schema IS NOT NULL \
                       AND scratch_dropped_at IS NULL AND (keep_until IS NULL OR keep_until <= now()))",
        )
        .bind(&valid)
        .bind(&terminal)
        .fetch_one(&s.meta)
        .await?;
        let queued = queued_messages(s).await.unwrap_or(u64::MAX);
        if open == 0 && queued == 0 {
            return Ok(true);
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Messages (ready + unacked) in the run's command queues, `dr.audit` and the tap.
async fn queued_messages(s: &Services) -> anyhow::Result<u64> {
    let out = rabbitmqctl(
        &s.rabbitmqctl,
        &["list_queues", "-q", "-p", &s.vhost, "name", "messages"],
    )
    .await?;
    let mut total = 0;
    for line in out.lines() {
        let mut it = line.split_whitespace();
        let (Some(name), Some(n)) = (it.next(), it.next()) else {
            continue;
        };
        if name == drfleet_protocol::topology::DEAD_LETTER_QUEUE || name == "name" {
            continue;
        }
        total += n.parse::<u64>().unwrap_or(0);
    }
    Ok(total)
}
