//! Test-only helpers that build *authentic* containers around arbitrary
//! (possibly malformed) inner content, so the frame and zstd layers can be
//! exercised past the AEAD layer.

use uuid::Uuid;

use crate::container::{ChunkSealer, encode_header};
use crate::frames;
use crate::keys::{DataKey, Keyring, MasterKey};
use crate::manifest::ArtifactBinding;

pub(crate) fn binding() -> ArtifactBinding {
    ArtifactBinding {
        organization_id: Uuid::from_u128(0x11),
        backup_record_id: Uuid::from_u128(0x22),
    }
}

pub(crate) fn keyring() -> Keyring {
    Keyring::new(MasterKey::new("k1", [0x42; 32]), vec![])
}

/// Seals `compressed` as the artifact's compressed plaintext.
pub(crate) fn seal_compressed(
    binding: ArtifactBinding,
    keyring: &Keyring,
    chunk_size: usize,
    compressed: &[u8],
) -> Vec<u8> {
    let dek = DataKey::generate().unwrap();
    let wrapped = dek
        .wrap(
            keyring.current(),
            binding.organization_id,
            binding.backup_record_id,
        )
        .unwrap();
    let header = encode_header(1, binding, keyring.current_id(), &wrapped, chunk_size);
    let mut sealer = ChunkSealer::new(Vec::new(), dek, binding, &header, chunk_size).unwrap();
    let mut rest = compressed;
    while !rest.is_empty() {
        let (space, fill) = sealer.space();
        let n = (space.len() - fill).min(rest.len());
        space[fill..fill + n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        sealer.set_fill(fill + n).unwrap();
    }
    sealer.finish().unwrap().0
}

/// zstd-compresses `plain` (one frame) and seals it.
pub(crate) fn seal_frames(plain: &[u8]) -> Vec<u8> {
    let compressed = zstd::bulk::compress(plain, 1).unwrap();
    seal_compressed(binding(), &keyring(), 64, &compressed)
}

/// Frame builder.
pub(crate) fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = frames::frame_header(tag, payload.len()).to_vec();
    v.extend_from_slice(payload);
    v
}
