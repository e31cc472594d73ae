//! The fleet: worker processes of every role and schedulers, each a real binary from
//! `--bin-dir`, its output in `<run dir>/logs/<name>.log`. The harness kills (SIGKILL) and
//! restarts them; a process that exits by itself is noted and restarted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A worker with this `DR_ROLE` (one role, or several comma-separated).
    Worker(&'static str),
    Scheduler,
}

/// The light roles share their processes: a worker process holds about four metadata
/// connections whatever it runs, and PostgreSQL's 100 are shared with others.
pub const LIGHT_ROLES: &str = "verify,policy,retention,audit";

/// The worker processes' `DR_ROLE`s (what `kill-worker` picks from).
pub const WORKER_ROLES: &[&str] = &["backup", "restore", "drill", LIGHT_ROLES];

struct Proc {
    name: String,
    kind: Kind,
    /// Set after the fleet's common env (a drill worker's targets).
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

pub struct Fleet {
    procs: Mutex<Vec<Proc>>,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    worker_env: Vec<(String, String)>,
    scheduler_env: Vec<(String, String)>,
    /// Exits nobody asked for: (process, status).
    pub unexpected_exits: Mutex<Vec<(String, String)>>,
}

impl Fleet {
    pub fn new(
        bin_dir: &Path,
        log_dir: &Path,
        worker_env: Vec<(String, String)>,
        scheduler_env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        for bin in ["drfleet-worker", "drfleet-scheduler"] {
            let p = bin_dir.join(bin);
            anyhow::ensure!(
                p.is_file(),
                "{} not found (build it: cargo build --release -p drfleet-workers -p drfleet-scheduler, or pass --bin-dir)",
                p.display()
            );
        }
        Ok(Self {
            procs: Mutex::new(Vec::new()),
            bin_dir: bin_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            worker_env,
            scheduler_env,
            unexpected_exits: Mutex::new(Vec::new()),
        })
    }

    /// Add a process and start it; `env` comes on top of the fleet's env for its kind.
    pub async fn add(
        &self,
        name: &str,
        kind: Kind,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let mut p = Proc {
            name: name.into(),
            kind,
            env,
            child: None,
            starts: 0,
        };
        self.spawn(&mut p)?;
        self.procs.lock().await.push(p);
        Ok(())
    }

    fn spawn(&self, p: &mut Proc) -> anyhow::Result<()> {
        p.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{}.log", p.name)))?;
        // The lease owner names the process and its incarnation, so a job held by a killed
        // process is recognisably not the restarted one's.
        let id = format!("{}.{}", p.name, p.starts);
        let mut cmd = match &p.kind {
            Kind::Worker(role) => {
                let mut c = Command::new(self.bin_dir.join("drfleet-worker"));
                c.envs(self.worker_env.iter().cloned())
                    .env("DR_ROLE", role)
                    .env("DR_WORKER_ID", &id);
                c
            }
            Kind::Scheduler => {
                let mut c = Command::new(self.bin_dir.join("drfleet-scheduler"));
                c.envs(self.scheduler_env.iter().cloned())
                    .env("DR_SCHEDULER_ID", &id);
                c
            }
        };
        cmd.envs(p.env.iter().cloned());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        p.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting {}", p.name))?,
        );
        Ok(())
    }

    pub async fn names(&self, kind: &Kind) -> Vec<String> {
        self.procs
            .lock()
            .await
            .iter()
            .filter(|p| &p.kind == kind && p.child.is_some())
            .map(|p| p.name.clone())
            .collect()
    }

    /// SIGKILL `name` and reap it. False if it was not running.
    pub async fn kill(&self, name: &str) -> bool {
        let mut procs = self.procs.lock().await;
        let Some(p) = procs.iter_mut().find(|p| p.name == name) else {
            return false;
        };
        let Some(mut child) = p.child.take() else {
            return false;
        };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        let _ = child.wait().await;
        true
    }

    /// Start `name` again if it is not running.
    pub async fn restart(&self, name: &str) -> anyhow::Result<()> {
        let mut procs = self.procs.lock().await;
        if let Some(p) = procs.iter_mut().find(|p| p.name == name)
            && p.child.is_none()
        {
            self.spawn(p)?;
        }
        Ok(())
    }

    /// Note and restart processes that exited by themselves.
    pub async fn reap(&self) -> anyhow::Result<()> {
        let mut procs = self.procs.lock().await;
        for p in procs.iter_mut() {
            let exited = match p.child.as_mut() {
                Some(c) => c.try_wait()?,
                None => None,
            };
            if let Some(status) = exited {
                self.unexpected_exits
                    .lock()
                    .await
                    .push((p.name.clone(), status.to_string()));
                p.child = None;
                self.spawn(p)?;
            }
        }
        Ok(())
    }

    /// Start every process that is not running.
    pub async fn ensure_all_running(&self) -> anyhow::Result<()> {
        let mut procs = self.procs.lock().await;
        for p in procs.iter_mut().filter(|p| p.child.is_none()) {
            self.spawn(p)?;
        }
        Ok(())
    }

    /// SIGTERM the processes of `kind` (all when `None`) and wait for them to exit (SIGKILL
    /// after `grace`). Returns those that did not exit 0.
    pub async fn stop(&self, kind: Option<&Kind>, grace: Duration) -> Vec<(String, String)> {
        let mut procs = self.procs.lock().await;
        let mut bad = Vec::new();
        let selected: Vec<&mut Proc> = procs
            .iter_mut()
            .filter(|p| kind.is_none_or(|k| &p.kind == k))
            .collect();
        for p in &selected {
            if let Some(pid) = p.child.as_ref().and_then(|c| c.id()) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        for p in selected {
            let Some(mut child) = p.child.take() else {
                continue;
            };
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(Ok(s)) if s.success() => {}
                Ok(Ok(s)) => bad.push((p.name.clone(), s.to_string())),
                _ => {
                    let _ = child.kill().await;
                    bad.push((
                        p.name.clone(),
                        "did not stop within the grace period".into(),
                    ));
                }
            }
        }
        bad
    }

    /// Which process runs under a lease owner id (`<name>.<incarnation>`).
    pub fn owner_name(lease_owner: &str) -> &str {
        lease_owner
            .rsplit_once('.')
            .map_or(lease_owner, |(name, _)| name)
    }

    pub async fn starts(&self) -> u32 {
        self.procs.lock().await.iter().map(|p| p.starts).sum()
    }
}
