//! Faults, injected at seeded random moments while the workload runs. Each is recorded with
//! when it started and when the system was given back its dependency (a killed process
//! restarted, the broker up, the proxy passing again), so the audit can measure the
//! recovery time: from that moment until the next command completed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::env::{HARNESS_APP, Services, rabbitmqctl};
use crate::procs::{Fleet, Kind, WORKER_ROLES};
use crate::proxy::Mode;
use crate::rng::Rng;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL a worker of a random role; restarted after a random delay.
    KillWorker,
    /// SIGKILL a scheduler; restarted after a random delay.
    KillScheduler,
    /// SIGKILL the restore worker holding a running PROMOTE's lease.
    KillMidPromote,
    /// SIGKILL the drill worker holding a running drill's lease (its scratch schema half
    /// built, or its report not yet recorded).
    KillMidDrill,
    /// `rabbitmqctl close_all_connections` for the run's vhost.
    CloseConnections,
    /// `rabbitmqctl stop_app` … `start_app` (only with --broker-restart).
    BrokerRestart,
    /// `pg_terminate_backend` of every worker and scheduler connection while a job runs.
    PgTerminate,
    /// The S3 server unreachable (connections refused, open ones reset) for a few seconds.
    S3Down,
    /// The S3 server process frozen (SIGSTOP … SIGCONT): requests hang.
    S3Freeze,
    /// Every open connection through a proxy (PostgreSQL or S3) reset.
    ProxyReset,
    /// A proxy forwards nothing for a few seconds.
    ProxyStall,
    /// A proxy delays every chunk for a few seconds.
    ProxySlow,
}

impl FaultKind {
    pub const ALL: &'static [FaultKind] = &[
        FaultKind::KillWorker,
        FaultKind::KillScheduler,
        FaultKind::KillMidPromote,
        FaultKind::KillMidDrill,
        FaultKind::CloseConnections,
        FaultKind::BrokerRestart,
        FaultKind::PgTerminate,
        FaultKind::S3Down,
        FaultKind::S3Freeze,
        FaultKind::ProxyReset,
        FaultKind::ProxyStall,
        FaultKind::ProxySlow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "kill-worker",
            FaultKind::KillScheduler => "kill-scheduler",
            FaultKind::KillMidPromote => "kill-mid-promote",
            FaultKind::KillMidDrill => "kill-mid-drill",
            FaultKind::CloseConnections => "close-connections",
            FaultKind::BrokerRestart => "broker-restart",
            FaultKind::PgTerminate => "pg-terminate",
            FaultKind::S3Down => "s3-down",
            FaultKind::S3Freeze => "s3-freeze",
            FaultKind::ProxyReset => "proxy-reset",
            FaultKind::ProxyStall => "proxy-stall",
            FaultKind::ProxySlow => "proxy-slow",
        }
    }
}

/// One injected fault.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Injected {
    pub kind: FaultKind,
    /// What it hit: a process, `postgres`, `s3`, the vhost.
    pub target: String,
    pub at: DateTime<Utc>,
    /// When the dependency was given back.
    pub restored_at: DateTime<Utc>,
    /// Until the next command completed after `restored_at` (filled in by the audit).
    pub recovery_ms: Option<i64>,
}

pub struct Injector {
    pub services: Arc<Services>,
    pub fleet: Arc<Fleet>,
    pub kinds: Vec<FaultKind>,
    pub gap: (u64, u64),
    pub log: Mutex<Vec<Injected>>,
    /// Faults chosen but not injected (e.g. no PROMOTE ran in the window).
    pub skipped: Mutex<Vec<FaultKind>>,
    /// Restarts of killed processes still pending.
    pub pending: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Injector {
    /// Inject faults until `stop`; every kind comes round in a shuffled cycle, so a short run
    /// still sees each of them.
    pub async fn run(self: Arc<Self>, mut rng: Rng, stop: CancellationToken) {
        let mut cycle: Vec<FaultKind> = Vec::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(rng.millis(self.gap.0, self.gap.1)) => {}
            }
            if cycle.is_empty() {
                cycle = self.kinds.clone();
                // Fisher–Yates with the run's generator.
                for i in (1..cycle.len()).rev() {
                    let j = rng.range(0, i as u64) as usize;
                    cycle.swap(i, j);
                }
            }
            let kind = cycle.pop().expect("non-empty cycle");
            match self.clone().inject(kind, &mut rng).await {
                Ok(Some(f)) => self.log.lock().await.push(f),
                Ok(None) => self.skipped.lock().await.push(kind),
                Err(e) => eprintln!("drfleet-chaos: fault {} failed: {e:#}", kind.name()),
            }
        }
    }

    /// Wait for pending restarts.
    pub async fn finish(&self) {
        let pending: Vec<_> = self.pending.lock().await.drain(..).collect();
        for p in pending {
            let _ = p.await;
        }
    }

    async fn inject(
        self: Arc<Self>,
        kind: FaultKind,
        rng: &mut Rng,
    ) -> anyhow::Result<Option<Injected>> {
        let at = Utc::now();
        let s = &self.services;
        let target = match kind {
            FaultKind::KillWorker => {
                let role = *rng.pick(WORKER_ROLES).expect("roles");
                let names = self.fleet.names(&Kind::Worker(role)).await;
                let Some(name) = rng.pick(&names).cloned() else {
                    return Ok(None);
                };
                return Ok(self.kill_and_restart(kind, name, rng, at).await);
            }
            FaultKind::KillScheduler => {
                let names = self.fleet.names(&Kind::Scheduler).await;
                let Some(name) = rng.pick(&names).cloned() else {
                    return Ok(None);
                };
                return Ok(self.kill_and_restart(kind, name, rng, at).await);
            }
            FaultKind::KillMidPromote | FaultKind::KillMidDrill => {
                let owner = if kind == FaultKind::KillMidPromote {
                    self.running_owner("restore", "AND spec->>'mode' = 'promote'")
                        .await?
                } else {
                    self.running_owner("drill", "").await?
                };
                let Some(owner) = owner else {
                    return Ok(None);
                };
                let name = Fleet::owner_name(&owner).to_string();
                return Ok(self.kill_and_restart(kind, name, rng, Utc::now()).await);
            }
            FaultKind::CloseConnections => {
                rabbitmqctl(
                    &s.rabbitmqctl,
                    &[
                        "close_all_connections",
                        "-p",
                        &s.vhost,
                        "drfleet-chaos fault",
                    ],
                )
                .await?;
                s.vhost.clone()
            }
            FaultKind::BrokerRestart => {
                rabbitmqctl(&s.rabbitmqctl, &["stop_app"]).await?;
                tokio::time::sleep(rng.millis(1000, 4000)).await;
                rabbitmqctl(&s.rabbitmqctl, &["start_app"]).await?;
                rabbitmqctl(&s.rabbitmqctl, &["await_startup"]).await?;
                "rabbitmq".into()
            }
            FaultKind::PgTerminate => {
                // Mid-job: wait (a little) for one to run.
                let mut n = 0;
                while n < 20 && !self.job_running().await? {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    n += 1;
                }
                let killed: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = ANY($1) AND application_name <> $2 AND pid <> pg_backend_pid()) t",
                )
                .bind(vec![s.meta_db.clone(), s.src_db.clone(), s.drill_db.clone()])
                .bind(HARNESS_APP)
                .fetch_one(&s.meta)
                .await?;
                format!("postgres ({killed} connections)")
            }
            FaultKind::S3Down => {
                s.s3_proxy.set(Mode::Down);
                tokio::time::sleep(rng.millis(1500, 6000)).await;
                s.s3_proxy.set(Mode::Pass);
                "s3".into()
            }
            FaultKind::S3Freeze => {
                let pid = Pid::from_raw(s.moto_pid);
                kill(pid, Signal::SIGSTOP)?;
                tokio::time::sleep(rng.millis(1500, 5000)).await;
                kill(pid, Signal::SIGCONT)?;
                "s3".into()
            }
            FaultKind::ProxyReset | FaultKind::ProxyStall | FaultKind::ProxySlow => {
                let (proxy, name) = if rng.chance(50) {
                    (&s.pg_proxy, "postgres")
                } else {
                    (&s.s3_proxy, "s3")
                };
                match kind {
                    FaultKind::ProxyReset => proxy.reset(),
                    FaultKind::ProxyStall => {
                        proxy.set(Mode::Stall);
                        tokio::time::sleep(rng.millis(1000, 4000)).await;
                        proxy.set(Mode::Pass);
                    }
                    _ => {
                        proxy.set(Mode::Slow(rng.millis(20, 120)));
                        tokio::time::sleep(rng.millis(2000, 6000)).await;
                        proxy.set(Mode::Pass);
                    }
                }
                name.into()
            }
        };
        Ok(Some(Injected {
            kind,
            target,
            at,
            restored_at: Utc::now(),
            recovery_ms: None,
        }))
    }

    /// Kill now; restart after a random delay in the background (the fault counts as
    /// restored when the process is started again).
    async fn kill_and_restart(
        self: Arc<Self>,
        kind: FaultKind,
        name: String,
        rng: &mut Rng,
        at: DateTime<Utc>,
    ) -> Option<Injected> {
        if !self.fleet.kill(&name).await {
            return None;
        }
        let delay = rng.millis(200, 3000);
        let restored_at = at + chrono::Duration::from_std(delay).unwrap_or_default();
        let me = self.clone();
        let n = name.clone();
        let h = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Err(e) = me.fleet.restart(&n).await {
                eprintln!("drfleet-chaos: restarting {n}: {e:#}");
            }
        });
        self.pending.lock().await.push(h);
        Some(Injected {
            kind,
            target: name,
            at,
            restored_at,
            recovery_ms: None,
        })
    }

    async fn job_running(&self) -> anyhow::Result<bool> {
        Ok(sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pf_jobs WHERE state = 'running')",
        )
        .fetch_one(&self.services.meta)
        .await?)
    }

    /// The lease owner of a running job of `kind` (and `extra` condition: a constant),
    /// waiting up to ~8 s for one.
    async fn running_owner(
        &self,
        kind: &str,
        extra: &'static str,
    ) -> anyhow::Result<Option<String>> {
        let sql = format!(
            "SELECT lease_owner FROM pf_jobs WHERE state = 'running' AND kind = $1 {extra} \
             AND lease_owner IS NOT NULL AND lease_expires_at > now() \
             ORDER BY started_at DESC LIMIT 1"
        );
        for _ in 0..40 {
            let owner: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
                .bind(kind)
                .fetch_optional(&self.services.meta)
                .await?;
            if owner.is_some() {
                return Ok(owner);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(None)
    }
}
