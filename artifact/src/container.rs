//! The outer container: fixed prefix + JSON header, then a sequence of
//! AES-256-GCM sealed chunks of compressed plaintext.
//!
//! ```text
//! "DRFLART1" | u16 BE version | u32 BE header_len | header JSON
//! chunk*: u32 BE (last_flag << 31 | sealed_len) | ciphertext || tag
//! ```
//!
//! The "last" flag lives in the length prefix so the reader knows which AAD
//! to use without trial decryption; the flag is also inside the AAD, so
//! flipping it fails authentication. See `docs/artifact-format.md`.

use std::io::{self, Read, Write};

use aws_lc_rs::aead::{Aad, NONCE_LEN, Nonce};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ArtifactError;
use crate::hashing::{HashingReader, HashingWriter, Sha256};
use crate::keys::{DataKey, TAG_LEN, WRAPPED_KEY_LEN, WrappedKey};
use crate::manifest::ArtifactBinding;
use crate::{CIPHER_NAME, COMPRESSION_NAME, FORMAT_VERSIONS_READ};

/// First 8 bytes of every artifact.
pub const MAGIC: &[u8; 8] = b"DRFLART1";
/// magic + version + header_len.
pub(crate) const PREFIX_LEN: usize = 8 + 2 + 4;
/// Upper bound on the JSON header (it is a few hundred bytes in practice).
pub const MAX_HEADER_LEN: u32 = 64 * 1024;
/// Largest accepted chunk size (plaintext bytes per chunk).
pub const MAX_CHUNK_SIZE: usize = 64 * 1024 * 1024;
/// Bit 31 of a chunk length prefix marks the final chunk.
const LAST_FLAG: u32 = 1 << 31;
/// Domain separation prefix of the chunk AAD.
pub(crate) const CHUNK_AAD_PREFIX: &[u8; 16] = b"drfleet-chunk-v1";
/// prefix(16) + org(16) + record(16) + header sha256(32) + index(8) + last(1).
const CHUNK_AAD_LEN: usize = 16 + 16 + 16 + 32 + 8 + 1;
const AAD_INDEX_AT: usize = CHUNK_AAD_LEN - 9;
const AAD_LAST_AT: usize = CHUNK_AAD_LEN - 1;
/// Growth step of the reader's chunk buffer.
const GROW_STEP: usize = 1 << 20;

/// The JSON header. Unknown fields are rejected: the format is versioned by
/// the fixed prefix, not by optional fields.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderJson {
    organization_id: Uuid,
    backup_record_id: Uuid,
    key_id: String,
    /// base64 (standard, padded) of the 12-byte wrapping nonce.
    wrapped_key_nonce: String,
    /// base64 (standard, padded) of the 48-byte sealed data key (ct || tag).
    wrapped_key: String,
    chunk_size: u32,
    compression: String,
    cipher: String,
}

/// Parsed, validated header.
pub(crate) struct ContainerHeader {
    /// 1: the data key is wrapped by a master key; 2: by a tenant key.
    pub version: u16,
    pub binding: ArtifactBinding,
    pub key_id: String,
    pub wrapped: WrappedKey,
    pub chunk_size: usize,
    /// SHA-256 of the stored header bytes (prefix + JSON); bound into every
    /// chunk's AAD.
    pub header_sha256: [u8; 32],
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Serializes the header; returns the bytes to store (prefix + JSON).
pub(crate) fn encode_header(
    version: u16,
    binding: ArtifactBinding,
    key_id: &str,
    wrapped: &WrappedKey,
    chunk_size: usize,
) -> Vec<u8> {
    let json = HeaderJson {
        organization_id: binding.organization_id,
        backup_record_id: binding.backup_record_id,
        key_id: key_id.to_owned(),
        wrapped_key_nonce: b64().encode(wrapped.nonce),
        wrapped_key: b64().encode(wrapped.sealed),
        chunk_size: chunk_size as u32,
        compression: COMPRESSION_NAME.to_owned(),
        cipher: CIPHER_NAME.to_owned(),
    };
    let json = serde_json::to_vec(&json).expect("header serializes to JSON");
    let mut out = Vec::with_capacity(PREFIX_LEN + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out
}

/// Reads and validates the header. Does not check the binding or unwrap the
/// key; the caller does that.
pub(crate) fn read_header<R: Read>(source: &mut R) -> Result<ContainerHeader, ArtifactError> {
    let mut prefix = [0u8; PREFIX_LEN];
    read_exact_or(source, &mut prefix[..8], "header")?;
    if &prefix[..8] != MAGIC {
        return Err(ArtifactError::BadMagic);
    }
    read_exact_or(source, &mut prefix[8..], "header")?;
    let version = u16::from_be_bytes([prefix[8], prefix[9]]);
    if !FORMAT_VERSIONS_READ.contains(&version) {
        return Err(ArtifactError::UnsupportedVersion { found: version });
    }
    let header_len = u32::from_be_bytes([prefix[10], prefix[11], prefix[12], prefix[13]]);
    if header_len == 0 || header_len > MAX_HEADER_LEN {
        return Err(ArtifactError::CorruptStream {
            detail: "header length out of range",
        });
    }
    let mut json = vec![0u8; header_len as usize];
    read_exact_or(source, &mut json, "header")?;

    let mut h = Sha256::new();
    h.update(&prefix);
    h.update(&json);
    let header_sha256 = h.finish();

    let corrupt = |detail| ArtifactError::CorruptStream { detail };
    let parsed: HeaderJson =
        serde_json::from_slice(&json).map_err(|_| corrupt("header is not valid JSON"))?;
    if parsed.compression != COMPRESSION_NAME {
        return Err(corrupt("unsupported compression in header"));
    }
    if parsed.cipher != CIPHER_NAME {
        return Err(corrupt("unsupported cipher in header"));
    }
    let chunk_size = parsed.chunk_size as usize;
    if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
        return Err(corrupt("chunk size in header out of range"));
    }
    let nonce: [u8; NONCE_LEN] = b64()
        .decode(&parsed.wrapped_key_nonce)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| corrupt("malformed wrapped key nonce"))?;
    let sealed: [u8; WRAPPED_KEY_LEN] = b64()
        .decode(&parsed.wrapped_key)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| corrupt("malformed wrapped key"))?;
    Ok(ContainerHeader {
        version,
        binding: ArtifactBinding {
            organization_id: parsed.organization_id,
            backup_record_id: parsed.backup_record_id,
        },
        key_id: parsed.key_id,
        wrapped: WrappedKey { nonce, sealed },
        chunk_size,
        header_sha256,
    })
}

fn read_exact_or<R: Read>(
    source: &mut R,
    buf: &mut [u8],
    context: &'static str,
) -> Result<(), ArtifactError> {
    source
        .read_exact(buf)
        .map_err(|e| ArtifactError::from_read(e, context))
}

fn chunk_aad_template(binding: ArtifactBinding, header_sha256: &[u8; 32]) -> [u8; CHUNK_AAD_LEN] {
    let mut aad = [0u8; CHUNK_AAD_LEN];
    aad[..16].copy_from_slice(CHUNK_AAD_PREFIX);
    aad[16..32].copy_from_slice(binding.organization_id.as_bytes());
    aad[32..48].copy_from_slice(binding.backup_record_id.as_bytes());
    aad[48..80].copy_from_slice(header_sha256);
    aad
}

fn set_aad_position(aad: &mut [u8; CHUNK_AAD_LEN], index: u64, last: bool) {
    aad[AAD_INDEX_AT..AAD_INDEX_AT + 8].copy_from_slice(&index.to_be_bytes());
    aad[AAD_LAST_AT] = u8::from(last);
}

/// Nonce = 96-bit big-endian chunk index. Unique because the data key is
/// fresh per artifact and indices never repeat within one.
fn chunk_nonce(index: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals compressed plaintext into chunks and writes them to the sink.
///
/// The chunk buffer is laid out as `[4-byte prefix][chunk_size plaintext]
/// [16-byte tag]` so that the zstd encoder writes straight into it, sealing
/// happens in place, and each chunk reaches the sink in a single `write_all`.
pub(crate) struct ChunkSealer<W: Write> {
    sink: HashingWriter<W>,
    key: DataKey,
    aad: [u8; CHUNK_AAD_LEN],
    buf: Vec<u8>,
    chunk_size: usize,
    fill: usize,
    index: u64,
}

impl<W: Write> ChunkSealer<W> {
    /// Writes `header_bytes` and prepares for chunks.
    pub(crate) fn new(
        sink: W,
        key: DataKey,
        binding: ArtifactBinding,
        header_bytes: &[u8],
        chunk_size: usize,
    ) -> Result<Self, ArtifactError> {
        let mut sink = HashingWriter::new(sink);
        sink.write_all(header_bytes)?;
        let header_sha256 = Sha256::digest(header_bytes);
        Ok(Self {
            sink,
            key,
            aad: chunk_aad_template(binding, &header_sha256),
            buf: vec![0u8; 4 + chunk_size + TAG_LEN],
            chunk_size,
            fill: 0,
            index: 0,
        })
    }

    pub(crate) fn bytes_written(&self) -> u64 {
        self.sink.bytes_written()
    }

    /// The plaintext area of the current chunk and how much of it is used.
    pub(crate) fn space(&mut self) -> (&mut [u8], usize) {
        (&mut self.buf[4..4 + self.chunk_size], self.fill)
    }

    /// Records that the plaintext area is now filled up to `fill`; seals and
    /// emits the chunk (as non-final) when it is full.
    pub(crate) fn set_fill(&mut self, fill: usize) -> Result<(), ArtifactError> {
        debug_assert!(fill <= self.chunk_size);
        self.fill = fill;
        if self.fill == self.chunk_size {
            self.seal(false)?;
        }
        Ok(())
    }

    fn seal(&mut self, last: bool) -> Result<(), ArtifactError> {
        let len = self.fill;
        set_aad_position(&mut self.aad, self.index, last);
        let tag = self
            .key
            .aead()
            .seal_in_place_separate_tag(
                chunk_nonce(self.index),
                Aad::from(&self.aad[..]),
                &mut self.buf[4..4 + len],
            )
            .map_err(|_| ArtifactError::InvalidState {
                detail: "chunk encryption failed",
            })?;
        self.buf[4 + len..4 + len + TAG_LEN].copy_from_slice(tag.as_ref());
        let mut prefix = (len + TAG_LEN) as u32;
        if last {
            prefix |= LAST_FLAG;
        }
        self.buf[..4].copy_from_slice(&prefix.to_be_bytes());
        self.sink.write_all(&self.buf[..4 + len + TAG_LEN])?;
        self.fill = 0;
        self.index = self
            .index
            .checked_add(1)
            .ok_or(ArtifactError::InvalidState {
                detail: "chunk index overflow",
            })?;
        Ok(())
    }

    /// Seals whatever is buffered as the final chunk (possibly empty),
    /// flushes, and returns the sink with the stored byte count and hash.
    pub(crate) fn finish(mut self) -> Result<(W, u64, String), ArtifactError> {
        self.seal(true)?;
        self.sink.flush()?;
        Ok(self.sink.finish())
    }
}

/// Reads, authenticates and decrypts chunks one at a time into a reused
/// buffer.
pub(crate) struct ChunkOpener<R: Read> {
    source: HashingReader<R>,
    key: DataKey,
    aad: [u8; CHUNK_AAD_LEN],
    buf: Vec<u8>,
    chunk_size: usize,
    /// Index of the next chunk to read.
    index: u64,
    /// Unconsumed plaintext of the current chunk is `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// The final chunk has been read and nothing follows it.
    done: bool,
}

impl<R: Read> ChunkOpener<R> {
    /// `source` must be positioned right after the header.
    pub(crate) fn new(source: HashingReader<R>, key: DataKey, header: &ContainerHeader) -> Self {
        Self {
            source,
            key,
            aad: chunk_aad_template(header.binding, &header.header_sha256),
            buf: Vec::new(),
            chunk_size: header.chunk_size,
            index: 0,
            pos: 0,
            end: 0,
            done: false,
        }
    }

    /// Unconsumed plaintext of the current chunk.
    pub(crate) fn remaining(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    pub(crate) fn advance(&mut self, n: usize) {
        debug_assert!(self.pos + n <= self.end);
        self.pos += n;
    }

    /// True once the final chunk has been read (and verified to be the end
    /// of the stored bytes).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Loads the next chunk. Must only be called when the current chunk is
    /// consumed and `!is_done()`.
    pub(crate) fn next_chunk(&mut self) -> Result<(), ArtifactError> {
        debug_assert!(!self.done && self.pos == self.end);
        let mut prefix = [0u8; 4];
        read_exact_or(&mut self.source, &mut prefix, "missing final chunk")?;
        let prefix = u32::from_be_bytes(prefix);
        let last = prefix & LAST_FLAG != 0;
        let sealed_len = (prefix & !LAST_FLAG) as usize;
        // Validate before allocating or reading anything.
        if sealed_len < TAG_LEN {
            return Err(ArtifactError::CorruptStream {
                detail: "chunk shorter than its tag",
            });
        }
        if sealed_len > self.chunk_size + TAG_LEN {
            return Err(ArtifactError::CorruptStream {
                detail: "chunk length exceeds chunk size",
            });
        }
        if !last && sealed_len != self.chunk_size + TAG_LEN {
            return Err(ArtifactError::CorruptStream {
                detail: "non-final chunk is not full",
            });
        }
        // The buffer only grows (in 1 MiB steps, as bytes actually arrive),
        // so a forged length backed by a short stream never causes a large
        // allocation, and steady-state chunks are read with one read_exact
        // into already-initialized memory.
        let mut filled = 0;
        while filled < sealed_len {
            let end = sealed_len.min(self.buf.len().max(filled + GROW_STEP));
            if self.buf.len() < end {
                self.buf.resize(end, 0);
            }
            read_exact_or(
                &mut self.source,
                &mut self.buf[filled..end],
                "chunk cut short",
            )?;
            filled = end;
        }
        set_aad_position(&mut self.aad, self.index, last);
        let plain_len = self
            .key
            .aead()
            .open_in_place(
                chunk_nonce(self.index),
                Aad::from(&self.aad[..]),
                &mut self.buf[..sealed_len],
            )
            .map_err(|_| ArtifactError::ChunkAuthFailed {
                chunk_index: self.index,
            })?
            .len();
        self.pos = 0;
        self.end = plain_len;
        self.index += 1;
        if last {
            self.check_eof()?;
            self.done = true;
        }
        Ok(())
    }

    fn check_eof(&mut self) -> Result<(), ArtifactError> {
        let mut probe = [0u8; 1];
        loop {
            match self.source.read(&mut probe) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(ArtifactError::TrailingData),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stored byte count and hex SHA-256 of everything read so far.
    pub(crate) fn stored_totals(&self) -> (u64, String) {
        self.source.current()
    }
}
