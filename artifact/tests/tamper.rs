//! Integrity: every tampering, truncation, reordering, transplant, key and
//! binding problem is detected with the specific error code.

mod common;

use std::io::{self, Read, Write};

use common::*;
use drfleet_artifact::{
    ArtifactBinding, ArtifactError, ArtifactReader, ArtifactWriter, Keyring,
    verify_against_manifest, verify_against_manifest_threaded, verify_sealed,
};
use uuid::Uuid;

fn small() -> (drfleet_artifact::Manifest, Vec<u8>) {
    write(&sample_tables(), 64)
}

#[test]
fn planted_marker_never_appears_in_stored_bytes_or_errors() {
    let tables = sample_tables();
    for chunk_size in [64, 1 << 20] {
        let (manifest, stored) = write(&tables, chunk_size);
        assert!(tables.iter().any(|(_, p)| contains(&p.concat(), MARKER)));
        assert!(!contains(&stored, MARKER));
        assert!(!contains(&manifest.to_json(), MARKER));
        // No plaintext COPY fragments either.
        assert!(!contains(&stored, b"non-ascii"));
    }
    // Errors produced while reading tampered artifacts never echo row data
    // or key material.
    let (_, stored) = small();
    let key_hex = hex::encode([0x11u8; 32]);
    for pos in (0..stored.len()).step_by(7) {
        let mut t = stored.clone();
        t[pos] ^= 0x01;
        if let Err(e) = read_all(&t, &ring(), binding()) {
            for s in [e.to_string(), format!("{e:?}")] {
                assert!(!s.contains("PLANTED"), "{s}");
                assert!(!s.contains(&key_hex), "{s}");
                assert!(!s.contains("17, 17, 17"), "{s}");
            }
        }
    }
}

#[test]
fn every_single_byte_flip_is_detected() {
    let (manifest, stored) = small();
    let (header, chunks) = split(&stored);
    assert!(chunks.len() > 5, "want many chunks, got {}", chunks.len());
    assert!(header.len() > 100);
    for pos in 0..stored.len() {
        for mask in [0x01u8, 0x80, 0xFF] {
            let mut t = stored.clone();
            t[pos] ^= mask;
            let r = read_all(&t, &ring(), binding());
            assert!(r.is_err(), "flip {mask:#x} at {pos} undetected");
            // The verify path detects it too, and so does the sealed-only pass a restore
            // runs before writing anything.
            assert!(verify_against_manifest(&t[..], &ring(), &manifest).is_err());
            assert!(verify_sealed(&t[..], &ring(), &manifest).is_err());
            if mask == 0x01 {
                // The threaded reader reports the same error as the inline one.
                let inline = verify_against_manifest(&t[..], &ring(), &manifest).unwrap_err();
                let threaded = verify_against_manifest_threaded(
                    std::io::Cursor::new(t.clone()),
                    &ring(),
                    &manifest,
                )
                .unwrap_err();
                assert_eq!(threaded.code(), inline.code(), "flip at {pos}");
            }
        }
    }
}

#[test]
fn byte_flips_report_the_expected_layer() {
    let (_, stored) = small();
    let (header, chunks) = split(&stored);
    let flip = |pos: usize| {
        let mut t = stored.clone();
        t[pos] ^= 0x01;
        read_code(&t)
    };
    assert_eq!(flip(0), "ARTIFACT_BAD_MAGIC");
    assert_eq!(flip(9), "ARTIFACT_UNSUPPORTED_VERSION");
    // Inside a chunk's ciphertext and inside its tag.
    let c1 = header.len() + chunks[0].len();
    assert_eq!(flip(c1 + 4 + 10), "ARTIFACT_CHUNK_AUTH_FAILED");
    assert_eq!(flip(c1 + chunks[1].len() - 1), "ARTIFACT_CHUNK_AUTH_FAILED");
    // Length prefix of a non-final chunk.
    assert_eq!(flip(c1 + 3), "ARTIFACT_CORRUPT_STREAM");
}

#[test]
fn header_change_that_still_parses_fails_chunk_auth() {
    // Re-serialize the header JSON with extra whitespace: same values, so
    // binding and key unwrap succeed; only the header hash in the chunk AAD
    // can catch it.
    let (_, stored) = small();
    let (header, chunks) = split(&stored);
    let json = &header[14..];
    let mut spaced = b"{ ".to_vec();
    spaced.extend_from_slice(&json[1..]);
    let mut new_header = header[..10].to_vec();
    new_header.extend_from_slice(&(spaced.len() as u32).to_be_bytes());
    new_header.extend_from_slice(&spaced);
    let t = join(&new_header, &chunks);
    let mut r = ArtifactReader::open(&t[..], &ring(), binding()).unwrap();
    let e = r.next_table().unwrap_err();
    assert_eq!(e, ArtifactError::ChunkAuthFailed { chunk_index: 0 });
}

#[test]
fn relabelling_the_header_to_another_tenant_fails_unwrap() {
    let (_, stored) = small();
    let (header, chunks) = split(&stored);
    let other = ArtifactBinding {
        organization_id: Uuid::from_u128(0xEE),
        ..binding()
    };
    let json = String::from_utf8(header[14..].to_vec()).unwrap().replace(
        &binding().organization_id.to_string(),
        &other.organization_id.to_string(),
    );
    let mut new_header = header[..10].to_vec();
    new_header.extend_from_slice(&(json.len() as u32).to_be_bytes());
    new_header.extend_from_slice(json.as_bytes());
    let t = join(&new_header, &chunks);
    let e = ArtifactReader::open(&t[..], &ring(), other).err().unwrap();
    assert_eq!(e.code(), "ARTIFACT_KEY_UNWRAP_FAILED");
}

#[test]
fn chunk_from_another_artifact_of_same_tenant_fails() {
    let (_, a) = small();
    let (_, b) = small();
    let (ha, mut ca) = split(&a);
    let (_, cb) = split(&b);
    ca[2] = cb[2].clone();
    assert_eq!(
        read_all(&join(&ha, &ca), &ring(), binding()).unwrap_err(),
        ArtifactError::ChunkAuthFailed { chunk_index: 2 }
    );
}

#[test]
fn chunk_from_another_tenant_fails() {
    let other = ArtifactBinding {
        organization_id: Uuid::from_u128(0xC0FFEE),
        backup_record_id: Uuid::from_u128(0xB2),
    };
    let (_, a) = small();
    let (_, b) = write_with(&sample_tables(), &ring(), other, 64);
    let (ha, mut ca) = split(&a);
    let (hb, cb) = split(&b);
    ca[0] = cb[0].clone();
    assert_eq!(
        read_all(&join(&ha, &ca), &ring(), binding()).unwrap_err(),
        ArtifactError::ChunkAuthFailed { chunk_index: 0 }
    );
    // Whole body transplanted under our header.
    assert_eq!(read_code(&join(&ha, &cb)), "ARTIFACT_CHUNK_AUTH_FAILED");
    // Their header with our chunks, opened as theirs.
    let e = read_all(&join(&hb, &ca), &ring(), other).unwrap_err();
    assert_eq!(e.code(), "ARTIFACT_CHUNK_AUTH_FAILED");
}

#[test]
fn reordered_chunks_fail() {
    let (_, stored) = small();
    let (h, mut c) = split(&stored);
    c.swap(1, 2);
    assert_eq!(
        read_all(&join(&h, &c), &ring(), binding()).unwrap_err(),
        ArtifactError::ChunkAuthFailed { chunk_index: 1 }
    );
}

#[test]
fn dropped_chunk_fails() {
    let (_, stored) = small();
    let (h, mut c) = split(&stored);
    c.remove(3);
    assert_eq!(
        read_all(&join(&h, &c), &ring(), binding()).unwrap_err(),
        ArtifactError::ChunkAuthFailed { chunk_index: 3 }
    );
    // Dropping the first chunk too.
    let (h, mut c) = split(&stored);
    c.remove(0);
    assert_eq!(read_code(&join(&h, &c)), "ARTIFACT_CHUNK_AUTH_FAILED");
}

#[test]
fn duplicated_chunk_fails() {
    let (_, stored) = small();
    let (h, mut c) = split(&stored);
    let dup = c[1].clone();
    c.insert(2, dup);
    assert_eq!(read_code(&join(&h, &c)), "ARTIFACT_CHUNK_AUTH_FAILED");
}

#[test]
fn dropping_the_final_chunk_is_truncation() {
    let (_, stored) = small();
    let (h, mut c) = split(&stored);
    c.pop();
    assert_eq!(read_code(&join(&h, &c)), "ARTIFACT_TRUNCATED");
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let (manifest, stored) = small();
    for len in 0..stored.len() {
        assert_eq!(read_code(&stored[..len]), "ARTIFACT_TRUNCATED", "len {len}");
        assert_eq!(
            verify_against_manifest(&stored[..len], &ring(), &manifest)
                .unwrap_err()
                .code(),
            "ARTIFACT_TRUNCATED"
        );
    }
}

#[test]
fn flipping_the_last_flag_fails() {
    let (_, stored) = small();
    let (h, mut c) = split(&stored);
    // Mark a full middle chunk as final.
    c[1][0] |= 0x80;
    assert_eq!(
        read_all(&join(&h, &c), &ring(), binding()).unwrap_err(),
        ArtifactError::ChunkAuthFailed { chunk_index: 1 }
    );
    // Unmark the real final chunk.
    let (h, mut c) = split(&stored);
    c.last_mut().unwrap()[0] &= 0x7F;
    let e = read_code(&join(&h, &c));
    assert!(
        e == "ARTIFACT_CORRUPT_STREAM" || e == "ARTIFACT_CHUNK_AUTH_FAILED",
        "{e}"
    );
}

#[test]
fn trailing_bytes_are_rejected() {
    let (manifest, stored) = small();
    for extra in [&b"\0"[..], b"garbage", &stored[stored.len() - 20..]] {
        let t = [stored.clone(), extra.to_vec()].concat();
        assert_eq!(read_code(&t), "ARTIFACT_TRAILING_DATA");
        assert_eq!(
            verify_against_manifest(&t[..], &ring(), &manifest)
                .unwrap_err()
                .code(),
            "ARTIFACT_TRAILING_DATA"
        );
    }
    // A whole second copy of the final chunk.
    let (h, mut c) = split(&stored);
    let last = c.last().unwrap().clone();
    c.push(last);
    assert_eq!(read_code(&join(&h, &c)), "ARTIFACT_TRAILING_DATA");
}

/// Counts how many bytes the reader pulled from the source.
struct CountingSource<'a> {
    data: &'a [u8],
    read: usize,
}
impl Read for CountingSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.len().min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.read += n;
        Ok(n)
    }
}

#[test]
fn absurd_chunk_length_is_rejected_before_reading_it() {
    let (_, stored) = small();
    let (h, c) = split(&stored);
    for prefix in [
        0x7FFF_FFFFu32,
        0xFFFF_FFFF,
        64 + 16 + 1,
        0x8000_0000 | (64 + 17),
    ] {
        let mut t = h.clone();
        t.extend_from_slice(&prefix.to_be_bytes());
        // Enough bytes behind it that a naive reader would try to consume them.
        t.extend(std::iter::repeat_n(0u8, 1 << 16));
        let mut src = CountingSource { data: &t, read: 0 };
        let mut r = ArtifactReader::open(&mut src, &ring(), binding()).unwrap();
        let e = r.next_table().unwrap_err();
        assert_eq!(e.code(), "ARTIFACT_CORRUPT_STREAM");
        drop(r);
        assert_eq!(src.read, h.len() + 4, "prefix {prefix:#x}");
    }
    // Shorter than a tag.
    let mut t = h.clone();
    t.extend_from_slice(&(0x8000_0000u32 | 15).to_be_bytes());
    t.extend_from_slice(&[0; 15]);
    assert_eq!(read_code(&t), "ARTIFACT_CORRUPT_STREAM");
    let _ = c;
}

#[test]
fn bad_magic_and_version() {
    let (_, stored) = small();
    let mut t = stored.clone();
    t[..8].copy_from_slice(b"PGDMP\0\0\0");
    assert_eq!(read_code(&t), "ARTIFACT_BAD_MAGIC");
    let mut t = stored.clone();
    t[8..10].copy_from_slice(&3u16.to_be_bytes());
    let e = read_all(&t, &ring(), binding()).unwrap_err();
    assert_eq!(e, ArtifactError::UnsupportedVersion { found: 3 });
    // Oversized header length is rejected without reading it.
    let mut t = stored[..14].to_vec();
    t[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(read_code(&t), "ARTIFACT_CORRUPT_STREAM");
}

#[test]
fn wrong_master_key_bytes_fail_unwrap() {
    let (_, stored) = small();
    let wrong = Keyring::new(key("k1", 0x99), vec![]);
    let e = read_all(&stored, &wrong, binding()).unwrap_err();
    assert_eq!(
        e,
        ArtifactError::KeyUnwrapFailed {
            key_id: "k1".into()
        }
    );
    assert!(!e.is_transient());
}

#[test]
fn unknown_master_key_id_fails() {
    let (_, stored) = small();
    let other = Keyring::new(key("k9", 0x11), vec![key("k8", 0x11)]);
    let e = read_all(&stored, &other, binding()).unwrap_err();
    assert_eq!(
        e,
        ArtifactError::UnknownKeyId {
            key_id: "k1".into()
        }
    );
    assert!(e.to_string().contains("k1"));
}

#[test]
fn key_rotation_previous_key_still_reads() {
    let k1_ring = ring();
    let (manifest, stored) = write_with(&sample_tables(), &k1_ring, binding(), 64);
    assert_eq!(manifest.key_id, "k1");

    let rotated = Keyring::new(key("k2", 0x22), vec![key("k1", 0x11)]);
    assert_eq!(rotated.current_id(), "k2");
    let (_, summary) = read_all(&stored, &rotated, binding()).unwrap();
    assert_eq!(summary.tables, manifest.tables);
    verify_against_manifest(&stored[..], &rotated, &manifest).unwrap();

    // New artifacts use the current key.
    let (m2, stored2) = write_with(&sample_tables(), &rotated, binding(), 64);
    assert_eq!(m2.key_id, "k2");
    let r = ArtifactReader::open(&stored2[..], &rotated, binding()).unwrap();
    assert_eq!(r.key_id(), "k2");

    // Once k1 is retired, old artifacts are unreadable with a clear code.
    let retired = Keyring::new(key("k2", 0x22), vec![]);
    assert_eq!(
        read_all(&stored, &retired, binding()).unwrap_err().code(),
        "ARTIFACT_UNKNOWN_KEY_ID"
    );
    assert!(read_all(&stored2, &retired, binding()).is_ok());
}

#[test]
fn opening_with_another_binding_fails() {
    let (_, stored) = small();
    for other in [
        ArtifactBinding {
            organization_id: Uuid::from_u128(0xDEAD),
            ..binding()
        },
        ArtifactBinding {
            backup_record_id: Uuid::from_u128(0xBEEF),
            ..binding()
        },
    ] {
        let e = ArtifactReader::open(&stored[..], &ring(), other)
            .err()
            .unwrap();
        assert_eq!(e.code(), "ARTIFACT_BINDING_MISMATCH");
        assert!(e.to_string().contains(&other.organization_id.to_string()));
    }
}

#[test]
fn verify_detects_manifest_disagreements() {
    let (manifest, stored) = small();
    verify_against_manifest(&stored[..], &ring(), &manifest).unwrap();
    type Edit = fn(&mut drfleet_artifact::Manifest);
    let table_cases: Vec<(Edit, usize)> = vec![
        (|m| m.tables[0].row_count += 1, 0),
        (|m| m.tables[2].sha256 = "00".repeat(32), 2),
        (|m| m.tables[1].name = "public.other".into(), 1),
        (|m| m.tables.swap(0, 2), 0),
        (|m| m.tables[2].schema_fingerprint = "ab".repeat(32), 2),
        (|m| m.tables[0].columns[0].nullable = true, 0),
        (|m| drop(m.tables.pop()), 2),
        (
            |m| {
                let t = m.tables[0].clone();
                m.tables.push(t)
            },
            3,
        ),
    ];
    for (i, (edit, idx)) in table_cases.into_iter().enumerate() {
        let mut m = manifest.clone();
        edit(&mut m);
        let e = verify_against_manifest(&stored[..], &ring(), &m).unwrap_err();
        assert_eq!(e.code(), "ARTIFACT_TABLE_MISMATCH", "case {i}: {e}");
        assert!(
            matches!(e, ArtifactError::TableMismatch { table_index, .. } if table_index == idx),
            "case {i}: {e}"
        );
    }
    let manifest_cases: Vec<(Edit, &str)> = vec![
        (|m| m.row_count += 1, "ARTIFACT_MANIFEST_MISMATCH"),
        (|m| m.byte_size -= 1, "ARTIFACT_MANIFEST_MISMATCH"),
        (
            |m| m.checksum_sha256 = "0".repeat(64),
            "ARTIFACT_MANIFEST_MISMATCH",
        ),
        (|m| m.chunk_size = 65, "ARTIFACT_MANIFEST_MISMATCH"),
        (|m| m.key_id = "k0".into(), "ARTIFACT_MANIFEST_MISMATCH"),
        (|m| m.cipher = "none".into(), "ARTIFACT_MANIFEST_MISMATCH"),
        (|m| m.format_version = 3, "ARTIFACT_UNSUPPORTED_VERSION"),
        (|m| m.format_version = 0, "ARTIFACT_UNSUPPORTED_VERSION"),
        (
            |m| m.organization_id = Uuid::from_u128(5),
            "ARTIFACT_BINDING_MISMATCH",
        ),
    ];
    for (i, (edit, code)) in manifest_cases.into_iter().enumerate() {
        let mut m = manifest.clone();
        edit(&mut m);
        let e = verify_against_manifest(&stored[..], &ring(), &m).unwrap_err();
        assert_eq!(e.code(), code, "case {i}: {e}");
    }
    // Upper-case hex in a manifest is accepted.
    let mut m = manifest.clone();
    m.checksum_sha256 = m.checksum_sha256.to_uppercase();
    verify_against_manifest(&stored[..], &ring(), &m).unwrap();
}

/// Sink that fails with `kind` once `limit` bytes were accepted.
struct FailingSink {
    limit: usize,
    written: usize,
    kind: io::ErrorKind,
}
impl Write for FailingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() > self.limit {
            return Err(io::Error::new(self.kind, "upload failed: /secret/path"));
        }
        self.written += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn sink_failures_are_io_errors_and_poison_the_writer() {
    let sink = FailingSink {
        limit: 2000,
        written: 0,
        kind: io::ErrorKind::ConnectionReset,
    };
    let mut w = ArtifactWriter::with_chunk_size(sink, &ring(), binding(), 1, 64).unwrap();
    w.begin_table(&header("t")).unwrap();
    let mut first = None;
    for i in 0..10_000u32 {
        let row: Vec<u8> = (0..50).map(|j| ((i * 31 + j * 17) % 251) as u8).collect();
        if let Err(e) = w.write_rows(&row) {
            first = Some(e);
            break;
        }
    }
    let e = first.expect("sink failure surfaced");
    assert_eq!(
        e,
        ArtifactError::Io {
            kind: io::ErrorKind::ConnectionReset
        }
    );
    assert!(e.is_transient());
    assert!(!e.to_string().contains("secret"));
    assert_eq!(w.write_rows(b"x\n").unwrap_err(), e);
    assert_eq!(w.end_table().unwrap_err(), e);
    assert_eq!(w.finish().err().unwrap(), e);

    let sink = FailingSink {
        limit: 10,
        written: 0,
        kind: io::ErrorKind::PermissionDenied,
    };
    let e = ArtifactWriter::new(sink, &ring(), binding(), 1)
        .err()
        .unwrap();
    assert_eq!(e.code(), "ARTIFACT_IO");
    assert!(!e.is_transient());
}

#[test]
fn source_failures_are_io_errors() {
    struct Flaky<'a>(&'a [u8], usize);
    impl Read for Flaky<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 == 0 {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            self.1 -= n;
            Ok(n)
        }
    }
    let (_, stored) = small();
    let mut r = ArtifactReader::open(Flaky(&stored, 600), &ring(), binding()).unwrap();
    let e = loop {
        match r.next_table() {
            Ok(Some(_)) => while let Ok(Some(_)) = r.next_rows() {},
            Ok(None) => panic!("should fail"),
            Err(e) => break e,
        }
    };
    assert_eq!(
        e,
        ArtifactError::Io {
            kind: io::ErrorKind::TimedOut
        }
    );
    assert!(e.is_transient());
    for integrity in [
        ArtifactError::ChunkAuthFailed { chunk_index: 0 },
        ArtifactError::TrailingData,
        ArtifactError::Truncated { context: "x" },
    ] {
        assert!(!integrity.is_transient());
    }
}

#[test]
fn sealed_pass_accepts_the_intact_artifact_and_rejects_layer_problems() {
    let (manifest, stored) = small();
    let (size, sum) = verify_sealed(&stored[..], &ring(), &manifest).expect("intact");
    assert_eq!(size, manifest.byte_size);
    assert_eq!(sum, manifest.checksum_sha256);
    let code = |stored: &[u8], m: &drfleet_artifact::Manifest| {
        verify_sealed(stored, &ring(), m).unwrap_err().code()
    };
    // Truncated at every chunk boundary, a chunk dropped, two chunks swapped.
    let (header, chunks) = split(&stored);
    for n in 0..chunks.len() {
        assert!(verify_sealed(&join(&header, &chunks[..n])[..], &ring(), &manifest).is_err());
    }
    let mut dropped = chunks.clone();
    dropped.remove(1);
    assert_eq!(
        code(&join(&header, &dropped), &manifest),
        "ARTIFACT_CHUNK_AUTH_FAILED"
    );
    let mut swapped = chunks.clone();
    swapped.swap(1, 2);
    assert_eq!(
        code(&join(&header, &swapped), &manifest),
        "ARTIFACT_CHUNK_AUTH_FAILED"
    );
    // Trailing bytes.
    let mut longer = stored.clone();
    longer.push(0);
    assert_eq!(code(&longer, &manifest), "ARTIFACT_TRAILING_DATA");
    // A manifest that disagrees with the stored bytes.
    let mut m = manifest.clone();
    m.checksum_sha256 = "00".repeat(32);
    assert_eq!(code(&stored, &m), "ARTIFACT_MANIFEST_MISMATCH");
    let mut m = manifest.clone();
    m.key_id = "other".into();
    assert_eq!(code(&stored, &m), "ARTIFACT_MANIFEST_MISMATCH");
    // Another record's manifest: the binding differs.
    let mut m = manifest.clone();
    m.backup_record_id = Uuid::from_u128(99);
    assert_eq!(code(&stored, &m), "ARTIFACT_BINDING_MISMATCH");
    // A keyring without the key.
    let other = Keyring::new(key("k9", 9), vec![]);
    assert!(verify_sealed(&stored[..], &other, &manifest).is_err());
}
