//! A backup's tables as DDL: [`read`] records them from the catalog into the manifest
//! ([`drfleet_artifact::ddl::SchemaDdl`]); [`recreate`] creates them again, placed in other
//! schemas or databases, in pg_restore's order, with the SQL that [`sql`] builds.

pub mod read;
pub mod recreate;
pub mod sql;

pub use recreate::ConstraintTimings;
pub use sql::Placement;

#[cfg(test)]
mod tests;
