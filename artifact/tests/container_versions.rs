//! Container versions: format 1 (data key wrapped by a master key) — a stored artifact written
//! before tenant keys — still reads; format 2 (data key wrapped by a tenant key, itself wrapped
//! by a master key) round-trips, and each version only opens with a key of its own scope.

mod common;

use common::*;
use drfleet_artifact::{
    Keyring, Manifest, MasterKey, TenantKey, tenant_key_id, verify_against_manifest,
};
use uuid::Uuid;

/// A format-1 artifact as stored: `write(&sample_tables(), 64)` of tests/common (master key "k1"
/// of 0x11 bytes) written to these files once, when format 2 was introduced. Never regenerate
/// them: they stand for artifacts already in object stores.
const V1_ARTIFACT: &[u8] = include_bytes!("fixtures/artifact-v1.bin");
const V1_MANIFEST: &[u8] = include_bytes!("fixtures/artifact-v1.manifest.json");

#[test]
fn a_stored_format_1_artifact_still_reads_with_its_master_key() {
    assert_eq!(u16::from_be_bytes([V1_ARTIFACT[8], V1_ARTIFACT[9]]), 1);
    let manifest = Manifest::from_json(V1_MANIFEST).unwrap();
    let (tables, summary) = read_all(V1_ARTIFACT, &ring(), binding()).unwrap();
    assert_eq!(summary.tables, manifest.tables);
    assert_eq!(tables.len(), 3);
    verify_against_manifest(V1_ARTIFACT, &ring(), &manifest).unwrap();
    // Today's writer, given a master key, still writes format 1, byte-compatible in layout.
    let (_, again) = write(&sample_tables(), 64);
    assert_eq!(u16::from_be_bytes([again[8], again[9]]), 1);
    assert_eq!(again.len(), V1_ARTIFACT.len());
}

fn tenant_ring(key: &TenantKey) -> Keyring {
    Keyring::new(MasterKey::tenant(key), vec![])
}

#[test]
fn format_2_is_wrapped_by_the_tenant_key() {
    let b = binding();
    let key = TenantKey::generate(Uuid::from_u128(0x7E), b.organization_id).unwrap();
    let (manifest, stored) = write_with(&sample_tables(), &tenant_ring(&key), b, 64);
    assert_eq!(u16::from_be_bytes([stored[8], stored[9]]), 2);
    assert_eq!(manifest.key_id, tenant_key_id(key.id));
    let (_, summary) = read_all(&stored, &tenant_ring(&key), b).unwrap();
    assert_eq!(summary.tables, manifest.tables);

    // The master keyring alone cannot open it: the data key is not wrapped by a master key.
    let e = read_all(&stored, &ring(), b).unwrap_err();
    assert_eq!(e.code(), "ARTIFACT_UNKNOWN_KEY_ID");
    // Another tenant key (a new key of the same organization) cannot either.
    let other = TenantKey::generate(Uuid::from_u128(0x7F), b.organization_id).unwrap();
    let e = read_all(&stored, &tenant_ring(&other), b).unwrap_err();
    assert_eq!(e.code(), "ARTIFACT_UNKNOWN_KEY_ID");
    // A master key given the tenant key's id (a confused keyring) is not of the right scope.
    let confused = Keyring::new(MasterKey::new(tenant_key_id(key.id), [0x11; 32]), vec![]);
    assert_eq!(
        read_all(&stored, &confused, b).unwrap_err().code(),
        "ARTIFACT_UNKNOWN_KEY_ID"
    );

    // The tenant key survives a master-key rotation by re-wrapping; the artifact is untouched.
    let m1 = Keyring::new(MasterKey::new("m1", [1; 32]), vec![]);
    let stored_key = key.wrap(m1.master("m1").unwrap()).unwrap();
    let m2 = Keyring::new(
        MasterKey::new("m2", [2; 32]),
        vec![MasterKey::new("m1", [1; 32])],
    );
    let rewrapped = TenantKey::unwrap(&m2, key.id, b.organization_id, &stored_key)
        .unwrap()
        .wrap(m2.master("m2").unwrap())
        .unwrap();
    let only_m2 = Keyring::new(MasterKey::new("m2", [2; 32]), vec![]);
    let opened = TenantKey::unwrap(&only_m2, key.id, b.organization_id, &rewrapped).unwrap();
    let (_, again) = read_all(&stored, &tenant_ring(&opened), b).unwrap();
    assert_eq!(again.tables, manifest.tables);
}

#[test]
fn a_format_1_artifact_relabelled_as_format_2_does_not_open() {
    let mut t = V1_ARTIFACT.to_vec();
    t[8..10].copy_from_slice(&2u16.to_be_bytes());
    assert_eq!(read_code(&t), "ARTIFACT_UNKNOWN_KEY_ID");
    t[8..10].copy_from_slice(&3u16.to_be_bytes());
    assert_eq!(read_code(&t), "ARTIFACT_UNSUPPORTED_VERSION");
}
