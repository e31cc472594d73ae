//! Object keys. Built from UUIDs and numbers only, so no caller text reaches a key.

use object_store::path::Path;
use uuid::Uuid;

/// `orgs/<org>/backups/<record>/a<attempt>/artifact.drfa`. Each attempt writes its own
/// keys, so a retry after a crash never overwrites what an earlier attempt stored.
pub fn artifact(org: Uuid, record: Uuid, attempt: u32) -> Path {
    Path::from(format!(
        "orgs/{}/backups/{}/a{attempt}/artifact.drfa",
        org.hyphenated(),
        record.hyphenated()
    ))
}

/// `orgs/<org>/backups/<record>/a<attempt>/manifest.json`, written last, create-only.
pub fn manifest(org: Uuid, record: Uuid, attempt: u32) -> Path {
    Path::from(format!(
        "orgs/{}/backups/{}/a{attempt}/manifest.json",
        org.hyphenated(),
        record.hyphenated()
    ))
}

/// `orgs/<org>/backups`: every backup of one organization lives under it.
pub fn org_backups_prefix(org: Uuid) -> Path {
    Path::from(format!("orgs/{}/backups", org.hyphenated()))
}

/// The backup record id a key under [`org_backups_prefix`] belongs to.
pub fn record_of(key: &Path) -> Option<Uuid> {
    key.parts().nth(3)?.as_ref().parse().ok()
}

/// `orgs/<org>/backups/<record>`: every attempt's objects of one backup live under it.
pub fn record_prefix(org: Uuid, record: Uuid) -> Path {
    Path::from(format!(
        "orgs/{}/backups/{}",
        org.hyphenated(),
        record.hyphenated()
    ))
}

pub fn parse(key: &str) -> Result<Path, crate::StorageError> {
    Path::parse(key).map_err(|_| crate::StorageError {
        op: "key",
        kind: crate::StorageErrorKind::Permanent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_derived_from_ids_only() {
        let o = Uuid::nil();
        let r = Uuid::from_u128(1);
        assert_eq!(
            artifact(o, r, 2).as_ref(),
            "orgs/00000000-0000-0000-0000-000000000000/backups/00000000-0000-0000-0000-000000000001/a2/artifact.drfa"
        );
        assert!(manifest(o, r, 1).as_ref().ends_with("/a1/manifest.json"));
    }
}
