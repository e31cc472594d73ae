//! Repository-level checks: the integration tests under `tests/` validate files that are not
//! Rust code (for example `docker-compose.yml` and the configuration it mounts). No library
//! code lives here.
