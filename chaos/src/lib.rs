//! # drfleet-chaos — the fault-injection suite
//!
//! `drfleet-chaos` starts real `drfleet-worker` processes of every role and
//! `drfleet-scheduler`s (binaries from `--bin-dir`) against the real services, each run
//! isolated (its own metadata and source databases, RabbitMQ vhost, moto S3 server, and TCP
//! proxies in front of PostgreSQL and S3), runs a workload over 20+ tenants, injects faults
//! at moments drawn from a printed seed, lets the system settle, and audits the outcome from
//! outside. A table goes to the terminal, the same figures to a JSON report; the exit code is
//! 1 when any must-be-0 figure is not 0, 2 on bad flags or a setup failure.
//!
//! Layout:
//! - [`cli`]: flags (`DR_CHAOS_*`) and the run plan;
//! - [`env`]: the run's own services; [`proxy`]: the TCP proxy (reset, stall, slow, down);
//! - [`procs`]: the fleet of processes (kill, restart, stop);
//! - [`tenants`]: schema, data, versions and digests of the tenants' rows;
//! - [`bus`]: publishing that survives cuts, the event tap, the dead letters;
//! - [`workload`]: tenant lanes (including the torn-promotion check and drills), policies;
//! - [`poison`]: messages the workers must refuse;
//! - [`faults`]: the fault kinds and the injector;
//! - [`audit`]: lost, duplicated, events vs sink, chains, tenants, leftovers, recovery;
//! - [`report`]: figures, table, JSON.

pub mod audit;
pub mod bus;
pub mod cli;
pub mod env;
pub mod faults;
pub mod poison;
pub mod procs;
pub mod proxy;
pub mod report;
pub mod rng;
pub mod tenants;
pub mod workload;

mod run;

pub use run::run;
