//! Master keys, the keyring, and per-artifact data keys.
//!
//! Every artifact is encrypted under a fresh random 256-bit *data key*
//! (DEK). The DEK is stored in the artifact header "wrapped" (AES-256-GCM
//! sealed) under a long-lived *master key* identified by a key id. Rotation
//! therefore never touches stored artifacts: new artifacts use the keyring's
//! current key, old ones are still opened with a previous key.

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

/// A 32-byte AES-256 master key with an id. The key bytes are zeroized on
/// drop and never printed.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    bytes: [u8; KEY_LEN],
}

impl MasterKey {
    pub fn new(id: impl Into<String>, bytes: [u8; KEY_LEN]) -> Self {
        Self {
            id: id.into(),
            bytes,
        }
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

    /// All keys carrying `key_id`, current first.
    fn candidates<'a>(&'a self, key_id: &'a str) -> impl Iterator<Item = &'a MasterKey> + 'a {
        std::iter::once(&self.current)
            .chain(self.previous.iter())
            .filter(move |k| k.id == key_id)
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
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| ArtifactError::InvalidState {
            detail: "system random number generator failed",
        })?;
        let aad = dek_aad(organization_id, backup_record_id, master.id());
        let mut sealed = [0u8; WRAPPED_KEY_LEN];
        sealed[..KEY_LEN].copy_from_slice(self.raw.as_ref());
        let tag = master
            .aead_key()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut sealed[..KEY_LEN],
            )
            .map_err(|_| ArtifactError::InvalidState {
                detail: "data key wrapping failed",
            })?;
        sealed[KEY_LEN..].copy_from_slice(tag.as_ref());
        Ok(WrappedKey { nonce, sealed })
    }

    /// Unwraps with the keyring key(s) named `key_id`.
    pub(crate) fn unwrap(
        keyring: &Keyring,
        key_id: &str,
        wrapped: &WrappedKey,
        organization_id: Uuid,
        backup_record_id: Uuid,
    ) -> Result<Self, ArtifactError> {
        let aad = dek_aad(organization_id, backup_record_id, key_id);
        let mut found = false;
        for master in keyring.candidates(key_id) {
            found = true;
            let mut buf = Zeroizing::new(wrapped.sealed);
            if let Ok(plain) = master.aead_key().open_in_place(
                Nonce::assume_unique_for_key(wrapped.nonce),
                Aad::from(&aad),
                buf.as_mut(),
            ) {
                let mut raw = Zeroizing::new([0u8; KEY_LEN]);
                raw.copy_from_slice(plain);
                return Ok(Self::from_bytes(raw));
            }
        }
        let key_id = printable_key_id(key_id);
        if found {
            Err(ArtifactError::KeyUnwrapFailed { key_id })
        } else {
            Err(ArtifactError::UnknownKeyId { key_id })
        }
    }
}

/// `"drfleet-dek-v1" || org (16) || record (16) || key_id bytes`.
fn dek_aad(organization_id: Uuid, backup_record_id: Uuid, key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DEK_AAD_PREFIX.len() + 32 + key_id.len());
    aad.extend_from_slice(DEK_AAD_PREFIX);
    aad.extend_from_slice(organization_id.as_bytes());
    aad.extend_from_slice(backup_record_id.as_bytes());
    aad.extend_from_slice(key_id.as_bytes());
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
        let back = DataKey::unwrap(&ring, "k1", &wrapped, org, rec).unwrap();
        assert_eq!(*back.raw, *dek.raw);
        // Any other org/record/key id breaks the AAD.
        let e = DataKey::unwrap(&ring, "k1", &wrapped, Uuid::from_u128(3), rec)
            .err()
            .unwrap();
        assert_eq!(e.code(), "ARTIFACT_KEY_UNWRAP_FAILED");
        let e = DataKey::unwrap(&ring, "k1", &wrapped, org, Uuid::from_u128(3))
            .err()
            .unwrap();
        assert_eq!(e.code(), "ARTIFACT_KEY_UNWRAP_FAILED");
        let e = DataKey::unwrap(&ring, "k2", &wrapped, org, rec)
            .err()
            .unwrap();
        assert_eq!(e.code(), "ARTIFACT_UNKNOWN_KEY_ID");
        // Duplicate ids in a misconfigured keyring: the right one still wins.
        let ring2 = Keyring::new(
            MasterKey::new("k1", [5; 32]),
            vec![MasterKey::new("k1", [1; 32])],
        );
        assert!(DataKey::unwrap(&ring2, "k1", &wrapped, org, rec).is_ok());
    }
}
