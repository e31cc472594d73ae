//! A backup's tables as DDL: [`read`] records them from the catalog into the manifest
//! ([`drfleet_artifact::ddl::SchemaDdl`]); [`recreate`] creates them again, placed in other
//! schemas or databases, in pg_restore's order.

pub mod read;
pub mod recreate;

pub use recreate::{ConstraintTimings, Placement};
