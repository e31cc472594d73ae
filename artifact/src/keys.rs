//! The key hierarchy: master keys, per-tenant key-encryption keys, and per-artifact data
//! keys.
//!
//! Every artifact is encrypted under a fresh random 256-bit *data key* (DEK), stored in the
//! artifact header "wrapped" (AES-256-GCM sealed) under a *wrapping key* named by a key id:
//!
//! - format 2 (today's writers): the organization's **tenant key** (a random KEK,
//!   [`KeyScope::Tenant`]), itself stored only wrapped by a master key ([`TenantKey::wrap`])
//!   in the metadata database. Destroying every copy of a tenant key makes all of that
//!   tenant's artifacts undecryptable (crypto-shredding); rotating the master key re-wraps
//!   tenant keys and touches no artifact.
//! - format 1 (artifacts written before tenant keys): the **master key** itself
//!   ([`KeyScope::Master`]).
//!
//! A [`Keyring`] holds the current wrapping key (the writer's) and older ones still accepted
//! for unwrapping; each key carries its scope, and a reader only accepts a key of the scope its
//! container version names.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{ArtifactError, printable_key_id};

/// Length of AES-256 keys.
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM tag.
pub(crate) const TAG_LEN: usize = 16;
/// Length of a wrapped data key: 32 bytes of ciphertext + 16 bytes of tag.
pub(crate) const WRAPPED_KEY_LEN: usize = KEY_LEN + TAG_LEN;
/// Domain separation prefix of the data-key wrapping AAD.
pub(crate) const DEK_AAD_PREFIX: &[u8] = b"drfleet-dek-v1";
/// Longest accepted key id (bytes).
pub const MAX_KEY_ID_LEN: usize = 256;

/// Domain separation prefix of the data-key wrapping AAD under a tenant key (format 2).
pub(crate) const DEK_AAD_PREFIX_V2: &[u8] = b"drfleet-dek-v2";
/// Domain separation prefix of the tenant-key wrapping AAD.
pub(crate) const KEK_AAD_PREFIX: &[u8] = b"drfleet-kek-v1";
/// Key ids of tenant keys, as artifact headers and manifests record them: this prefix and the
/// key's UUID.
pub const TENANT_KEY_ID_PREFIX: &str = "tenant:";

/// What a wrapping key is: which container version its data keys belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyScope {
    /// A master key (DR_MASTER_KEY): wraps data keys of format-1 artifacts, and tenant keys.
    Master,
    /// An organization's key-encryption key: wraps data keys of format-2 artifacts.
    Tenant,
}

/// A 32-byte AES-256 wrapping key with an id and a scope. The key bytes are zeroized on
/// drop and never printed. (Named for its first use; tenant keys are built with
/// [`MasterKey::tenant`].)
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    bytes: [u8; KEY_LEN],
    scope: KeyScope,
}

impl MasterKey {
    /// A master key.
    pub fn new(id: impl Into<String>, bytes: [u8; KEY_LEN]) -> Self {
        Self {
            id: id.into(),
            bytes,
            scope: KeyScope::Master,
        }
    }

    /// An unwrapped tenant key as a wrapping key of format-2 artifacts; its id is
    /// [`tenant_key_id`] of the key's UUID.
    pub fn tenant(key: &TenantKey) -> Self {
        Self {
            id: tenant_key_id(key.id),
            bytes: *key.bytes,
            scope: KeyScope::Tenant,
        }
    }

    pub fn scope(&self) -> KeyScope {
        self.scope
    }

    /// Decodes standard base64 (padding optional, surrounding whitespace
    /// ignored) into exactly 32 bytes.
    pub fn from_base64(id: impl Into<String>, b64: &str) -> Result<Self, ArtifactError> {
        let trimmed = b64.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(trimmed))
            .map_err(|_| ArtifactError::BadKey {
                detail: "master key is not valid base64",
            })?;
        let decoded = Zeroizing::new(decoded);
        let bytes: [u8; KEY_LEN] =
            decoded
                .as_slice()
                .try_into()
                .map_err(|_| ArtifactError::BadKey {
                    detail: "master key must decode to exactly 32 bytes",
                })?;
        Ok(Self::new(id, bytes))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn aead_key(&self) -> LessSafeKey {
        // AES_256_GCM accepts any 32-byte key, so this cannot fail.
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.bytes).expect("32-byte AES-256 key is valid"),
        )
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("scope", &self.scope)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

/// The current master key (wraps new data keys) plus previous keys that are
/// still accepted for unwrapping.
#[derive(Clone)]
pub struct Keyring {
    current: MasterKey,
    previous: Vec<MasterKey>,
}

impl Keyring {
    pub fn new(current: MasterKey, previous: Vec<MasterKey>) -> Self {
        Self { current, previous }
    }

    pub fn current_id(&self) -> &str {
        self.current.id()
    }

    pub(crate) fn current(&self) -> &MasterKey {
        &self.current
    }

    /// All keys of `scope` carrying `key_id`, current first.
    fn candidates<'a>(
        &'a self,
        key_id: &'a str,
        scope: KeyScope,
    ) -> impl Iterator<Item = &'a MasterKey> + 'a {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .filter(move |k| k.id == key_id && k.scope == scope)
    }

    /// The master key named `key_id` (current or previous), if the keyring has it.
    pub fn master(&self, key_id: &str) -> Option<&MasterKey> {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|k| k.id == key_id && k.scope == KeyScope::Master)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self
                    .previous
                    .iter()
                    .map(|k| k.id.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A wrapped data key as stored in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WrappedKey {
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext || tag.
    pub sealed: [u8; WRAPPED_KEY_LEN],
}

/// The per-artifact data key. Raw bytes are zeroized on drop; aws-lc keeps
/// (and cleanses) its own expanded copy inside the `LessSafeKey`.
pub(crate) struct DataKey {
    raw: Zeroizing<[u8; KEY_LEN]>,
    aead: LessSafeKey,
}

impl DataKey {
    pub(crate) fn generate() -> Result<Self, ArtifactError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(raw.as_mut()).map_err(|_| ArtifactError::InvalidState {
            detail: "system random number generator failed",
        })?;
        Ok(Self::from_bytes(raw))
    }

    pub(crate) fn from_bytes(raw: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, raw.as_ref()).expect("32-byte AES-256 key is valid"),
        );
        Self { raw, aead }
    }

    pub(crate) fn aead(&self) -> &LessSafeKey {
        &self.aead
    }

    /// Seals the data key under `master` with a random nonce.
    pub(crate) fn wrap(
        &self,
        master: &MasterKey,
        organization_id: Uuid,
        backup_record_id: Uuid,
    ) -> Result<WrappedKey, ArtifactError> {
        let aad = dek_aad(master.scope, organization_id, backup_record_id, master.id());
        let (nonce, sealed) = seal_key(master, &aad, &self.raw, "data key wrapping failed")?;
        Ok(WrappedKey { nonce, sealed })
    }

    /// Unwraps with the keyring key(s) of `scope` named `key_id`.
    pub(crate) fn unwrap(
        keyring: &Keyring,
        scope: KeyScope,
        key_id: &str,
        wrapped: &WrappedKey,
        organization_id: Uuid,
        backup_record_id: Uuid,
    ) -> Result<Self, ArtifactError> {
        let aad = dek_aad(scope, organization_id, backup_record_id, key_id);
        let raw = open_key(
            keyring.candidates(key_id, scope),
            key_id,
            &wrapped.nonce,
            &wrapped.sealed,
            &aad,
        )?;
        Ok(Self::from_bytes(raw))
    }
}

/// `"drfleet-dek-v1"` (master) or `"drfleet-dek-v2"` (tenant key) `|| org (16) || record (16)
/// || key_id bytes`.
fn dek_aad(
    scope: KeyScope,
    organization_id: Uuid,
    backup_record_id: Uuid,
    key_id: &str,
) -> Vec<u8> {
    let prefix = match scope {
        KeyScope::Master => DEK_AAD_PREFIX,
        KeyScope::Tenant => DEK_AAD_PREFIX_V2,
    };
    let mut aad = Vec::with_capacity(prefix.len() + 32 + key_id.len());
    aad.extend_from_slice(prefix);
    aad.extend_from_slice(organization_id.as_bytes());
    aad.extend_from_slice(backup_record_id.as_bytes());
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

/// The key id artifacts record for the tenant key `id`: `tenant:<uuid>`.
pub fn tenant_key_id(id: Uuid) -> String {
    format!("{TENANT_KEY_ID_PREFIX}{id}")
}

/// The tenant key's UUID named by an artifact key id, or `None` for a master key id.
pub fn parse_tenant_key_id(key_id: &str) -> Option<Uuid> {
    key_id
        .strip_prefix(TENANT_KEY_ID_PREFIX)
        .and_then(|u| Uuid::parse_str(u).ok())
}

/// A tenant key as the metadata database stores it: sealed under a master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedTenantKey {
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext || tag (48 bytes).
    pub sealed: [u8; WRAPPED_KEY_LEN],
    /// The master key that sealed it.
    pub master_key_id: String,
}

/// An organization's key-encryption key, unwrapped: held in memory only by the job that uses
/// it; zeroized on drop, never printed.
pub struct TenantKey {
    pub id: Uuid,
    pub organization_id: Uuid,
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantKey")
            .field("id", &self.id)
            .field("organization_id", &self.organization_id)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

impl TenantKey {
    /// A fresh random key for `organization_id`.
    pub fn generate(id: Uuid, organization_id: Uuid) -> Result<Self, ArtifactError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(bytes.as_mut()).map_err(|_| ArtifactError::InvalidState {
            detail: "system random number generator failed",
        })?;
        Ok(Self {
            id,
            organization_id,
            bytes,
        })
    }

    /// Seals this key under `master` (a [`KeyScope::Master`] key) with a random nonce, bound to
    /// the organization, the key id and the master key id.
    pub fn wrap(&self, master: &MasterKey) -> Result<WrappedTenantKey, ArtifactError> {
        if master.scope != KeyScope::Master {
            return Err(ArtifactError::InvalidArgument {
                detail: "tenant keys are wrapped by a master key",
            });
        }
        let aad = kek_aad(self.organization_id, self.id, master.id());
        let (nonce, sealed) = seal_key(master, &aad, &self.bytes, "tenant key wrapping failed")?;
        Ok(WrappedTenantKey {
            nonce,
            sealed,
            master_key_id: master.id().to_owned(),
        })
    }

    /// Opens a stored tenant key with the keyring's master key named in it.
    pub fn unwrap(
        keyring: &Keyring,
        id: Uuid,
        organization_id: Uuid,
        wrapped: &WrappedTenantKey,
    ) -> Result<Self, ArtifactError> {
        let aad = kek_aad(organization_id, id, &wrapped.master_key_id);
        let bytes = open_key(
            keyring.candidates(&wrapped.master_key_id, KeyScope::Master),
            &wrapped.master_key_id,
            &wrapped.nonce,
            &wrapped.sealed,
            &aad,
        )?;
        Ok(Self {
            id,
            organization_id,
            bytes,
        })
    }
}

/// Seals a 32-byte key under `wrapping` with a fresh random nonce: (nonce, ciphertext ‖ tag).
fn seal_key(
    wrapping: &MasterKey,
    aad: &[u8],
    raw: &[u8; KEY_LEN],
    failed: &'static str,
) -> Result<([u8; NONCE_LEN], [u8; WRAPPED_KEY_LEN]), ArtifactError> {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| ArtifactError::InvalidState {
        detail: "system random number generator failed",
    })?;
    let mut sealed = [0u8; WRAPPED_KEY_LEN];
    sealed[..KEY_LEN].copy_from_slice(raw);
    let tag = wrapping
        .aead_key()
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut sealed[..KEY_LEN],
        )
        .map_err(|_| ArtifactError::InvalidState { detail: failed })?;
    sealed[KEY_LEN..].copy_from_slice(tag.as_ref());
    Ok((nonce, sealed))
}

/// Opens a sealed key with the first of `candidates` (keys named `key_id`) that authenticates
/// it. None of them → `KeyUnwrapFailed`; no candidate at all → `UnknownKeyId`.
fn open_key<'a>(
    candidates: impl Iterator<Item = &'a MasterKey>,
    key_id: &str,
    nonce: &[u8; NONCE_LEN],
    sealed: &[u8; WRAPPED_KEY_LEN],
    aad: &[u8],
) -> Result<Zeroizing<[u8; KEY_LEN]>, ArtifactError> {
    let mut found = false;
    for key in candidates {
        found = true;
        let mut buf = Zeroizing::new(*sealed);
        if let Ok(plain) = key.aead_key().open_in_place(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            buf.as_mut(),
        ) {
            let mut raw = Zeroizing::new([0u8; KEY_LEN]);
            raw.copy_from_slice(plain);
            return Ok(raw);
        }
    }
    let key_id = printable_key_id(key_id);
    Err(if found {
        ArtifactError::KeyUnwrapFailed { key_id }
    } else {
        ArtifactError::UnknownKeyId { key_id }
    })
}

/// `"drfleet-kek-v1" || org (16) || tenant key id (16) || master key id bytes`.
fn kek_aad(organization_id: Uuid, tenant_key_id: Uuid, master_key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(KEK_AAD_PREFIX.len() + 32 + master_key_id.len());
    aad.extend_from_slice(KEK_AAD_PREFIX);
    aad.extend_from_slice(organization_id.as_bytes());
    aad.extend_from_slice(tenant_key_id.as_bytes());
    aad.extend_from_slice(master_key_id.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_key_bytes() {
        let key = MasterKey::new("k1", [0xAB; 32]);
        let dbg = format!("{key:?}");
        assert!(dbg.contains("k1"));
        assert!(!dbg.to_lowercase().contains("ab, ") && !dbg.contains("171"));
        let ring = Keyring::new(key, vec![MasterKey::new("k0", [7; 32])]);
        let dbg = format!("{ring:?}");
        assert!(dbg.contains("k0") && dbg.contains("k1") && !dbg.contains("171"));
    }

    #[test]
    fn from_base64_checks_length_and_alphabet() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let key = MasterKey::from_base64("k", &format!(" {b64}\n")).unwrap();
        assert_eq!(key.bytes, [9u8; 32]);
        assert_eq!(key.id(), "k");
        let unpadded = b64.trim_end_matches('=');
        assert!(MasterKey::from_base64("k", unpadded).is_ok());
        let short = base64::engine::general_purpose::STANDARD.encode([9u8; 31]);
        assert_eq!(
            MasterKey::from_base64("k", &short).unwrap_err().code(),
            "ARTIFACT_BAD_KEY"
        );
        let err = MasterKey::from_base64("k", "not base64 !!").unwrap_err();
        assert_eq!(err.code(), "ARTIFACT_BAD_KEY");
        assert!(!err.to_string().contains("!!"));
    }

    #[test]
    fn wrap_unwrap_and_binding() {
        let org = Uuid::from_u128(1);
        let rec = Uuid::from_u128(2);
        let ring = Keyring::new(MasterKey::new("k1", [1; 32]), vec![]);
        let dek = DataKey::generate().unwrap();
        let wrapped = dek.wrap(ring.current(), org, rec).unwrap();
        let m = KeyScope::Master;
        let back = DataKey::unwrap(&ring, m, "k1", &wrapped, org, rec).unwrap();
        assert_eq!(*back.raw, *dek.raw);
        // Any other org/record/key id breaks the AAD.
        let e = DataKey::unwrap(&ring, m, "k1", &wrapped, Uuid::from_u128(3), rec)
            .err()
            .unwrap();
        assert_eq!(e.code(), "ARTIFACT_KEY_UNWRAP_FAILED");
        let e = DataKey::unwrap(&ring, m, "k1", &wrapped, org, Uuid::from_u128(3))
            .err()
            .unwrap();
        assert_eq!(e.code(), "ARTIFACT_KEY_UNWRAP_FAILED");
        // A key of the other scope with the same id is not a candidate.
        let e = DataKey::unwrap(&ring, KeyScope::Tenant, "k1", &wrapped, org, rec)
            .err()
            .unwrap();
        assert_eq!(e.code(), "ARTIFACT_UNKNOWN_KEY_ID");
        let e = DataKey::unwrap(&ring, m, "k2", &wrapped, org, rec)
            .err()
            .unwrap();
        assert_eq!(e.code(), "ARTIFACT_UNKNOWN_KEY_ID");
        // Duplicate ids in a misconfigured keyring: the right one still wins.
        let ring2 = Keyring::new(
            MasterKey::new("k1", [5; 32]),
            vec![MasterKey::new("k1", [1; 32])],
        );
        assert!(DataKey::unwrap(&ring2, m, "k1", &wrapped, org, rec).is_ok());
    }

    #[test]
    fn tenant_keys_wrap_under_a_master_key_and_bind_their_ids() {
        let org = Uuid::from_u128(1);
        let id = Uuid::from_u128(9);
        let ring = Keyring::new(
            MasterKey::new("m2", [2; 32]),
            vec![MasterKey::new("m1", [1; 32])],
        );
        let key = TenantKey::generate(id, org).unwrap();
        let wrapped = key.wrap(ring.master("m1").unwrap()).unwrap();
        assert_eq!(wrapped.master_key_id, "m1");
        let back = TenantKey::unwrap(&ring, id, org, &wrapped).unwrap();
        assert_eq!(*back.bytes, *key.bytes);
        // Re-wrapping under the current master key: same key, new envelope.
        let rewrapped = back.wrap(ring.master("m2").unwrap()).unwrap();
        let only_m2 = Keyring::new(MasterKey::new("m2", [2; 32]), vec![]);
        let again = TenantKey::unwrap(&only_m2, id, org, &rewrapped).unwrap();
        assert_eq!(*again.bytes, *key.bytes);
        assert_eq!(
            TenantKey::unwrap(&only_m2, id, org, &wrapped)
                .unwrap_err()
                .code(),
            "ARTIFACT_UNKNOWN_KEY_ID"
        );
        // Bound to the organization and the key id.
        for (i, o) in [(id, Uuid::from_u128(2)), (Uuid::from_u128(8), org)] {
            assert_eq!(
                TenantKey::unwrap(&ring, i, o, &wrapped).unwrap_err().code(),
                "ARTIFACT_KEY_UNWRAP_FAILED"
            );
        }
        // A tenant key never wraps another tenant key, and never prints its bytes.
        let as_wrapping = MasterKey::tenant(&key);
        assert_eq!(as_wrapping.scope(), KeyScope::Tenant);
        assert_eq!(parse_tenant_key_id(as_wrapping.id()), Some(id));
        assert!(key.wrap(&as_wrapping).is_err());
        assert!(!format!("{key:?}").contains(&format!("{:?}", &key.bytes[..4])));
        assert_eq!(parse_tenant_key_id("k1"), None);
    }
}
