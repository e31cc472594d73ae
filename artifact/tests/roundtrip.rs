//! Round trips, manifest behaviour, hashing helpers, API state machine.

mod common;

use std::io::{Read, Write};

use common::*;
use drfleet_artifact::{
    ArtifactReader, ArtifactWriter, CIPHER_NAME, COMPRESSION_NAME, DEFAULT_CHUNK_SIZE,
    HashingReader, HashingWriter, MANIFEST_VERSION, Manifest, verify_against_manifest,
    verify_against_manifest_threaded,
};
use sha2::{Digest, Sha256};

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn round_trip_preserves_bytes_counts_and_hashes() {
    let tables = sample_tables();
    for chunk_size in [1, 7, 64, 4096, DEFAULT_CHUNK_SIZE] {
        let (manifest, stored) = write(&tables, chunk_size);
        let (read, summary) = read_all(&stored, &ring(), binding()).unwrap();
        assert_eq!(read.len(), tables.len());
        let mut total = 0;
        for (i, ((h, pieces), (rh, bytes))) in tables.iter().zip(&read).enumerate() {
            let expected = pieces.concat();
            assert_eq!(rh, h);
            assert_eq!(bytes, &expected, "table {i} bytes, chunk {chunk_size}");
            let rows = expected.iter().filter(|&&b| b == b'\n').count() as u64;
            total += rows;
            for t in [&manifest.tables[i], &summary.tables[i]] {
                assert_eq!(t.name, h.name);
                assert_eq!(t.row_count, rows);
                assert_eq!(t.sha256, sha_hex(&expected));
                assert_eq!(t.schema_fingerprint, h.schema_fingerprint());
                assert_eq!(t.columns, h.columns);
            }
        }
        // Known counts for the sample data.
        assert_eq!(
            manifest
                .tables
                .iter()
                .map(|t| t.row_count)
                .collect::<Vec<_>>(),
            vec![5, 0, 4]
        );
        assert_eq!(manifest.row_count, total);
        assert_eq!(summary.row_count, total);
        assert_eq!(summary.tables, manifest.tables);
        assert_eq!(manifest.byte_size, stored.len() as u64);
        assert_eq!(summary.byte_size, stored.len() as u64);
        assert_eq!(manifest.checksum_sha256, sha_hex(&stored));
        assert_eq!(summary.checksum_sha256, manifest.checksum_sha256);
        assert_eq!(manifest.chunk_size as usize, chunk_size);
        assert_eq!(manifest.format_version, MANIFEST_VERSION);
        assert_eq!(manifest.compression, COMPRESSION_NAME);
        assert_eq!(manifest.cipher, CIPHER_NAME);
        assert_eq!(manifest.key_id, "k1");
        assert_eq!(manifest.organization_id, binding().organization_id);
        assert_eq!(manifest.backup_record_id, binding().backup_record_id);
        assert_eq!(manifest.snapshot_at, None);
        verify_against_manifest(&stored[..], &ring(), &manifest).unwrap();
    }
}

#[test]
fn stored_bytes_start_with_documented_prefix() {
    let (_, stored) = write(&sample_tables(), 64);
    assert_eq!(&stored[..8], b"DRFLART1");
    assert_eq!(u16::from_be_bytes([stored[8], stored[9]]), 1);
    let (header, chunks) = split(&stored);
    let json: serde_json::Value = serde_json::from_slice(&header[14..]).unwrap();
    assert_eq!(json["key_id"], "k1");
    assert_eq!(json["chunk_size"], 64);
    assert_eq!(json["compression"], "zstd");
    assert_eq!(json["cipher"], "AES-256-GCM");
    assert_eq!(
        json["organization_id"],
        binding().organization_id.to_string()
    );
    // All chunks but the last are full (64 + 16 tag) and unflagged; the last
    // carries the flag.
    let (last, rest) = chunks.split_last().unwrap();
    assert!(!rest.is_empty());
    for c in rest {
        assert_eq!(u32::from_be_bytes(c[..4].try_into().unwrap()), 80);
    }
    let p = u32::from_be_bytes(last[..4].try_into().unwrap());
    assert_eq!(p & 0x8000_0000, 0x8000_0000);
    assert!((16..80).contains(&(p & 0x7FFF_FFFF)));
}

#[test]
fn chunk_size_one_ends_with_an_empty_final_chunk() {
    let (_, stored) = write(&sample_tables(), 1);
    let (_, chunks) = split(&stored);
    let last = chunks.last().unwrap();
    assert_eq!(last.len(), 4 + 16);
    assert_eq!(
        u32::from_be_bytes(last[..4].try_into().unwrap()),
        0x8000_0010
    );
    assert!(read_all(&stored, &ring(), binding()).is_ok());
}

#[test]
fn empty_artifact_round_trips() {
    let (manifest, stored) = write(&[], DEFAULT_CHUNK_SIZE);
    assert!(manifest.tables.is_empty());
    let (read, summary) = read_all(&stored, &ring(), binding()).unwrap();
    assert!(read.is_empty());
    assert_eq!(summary.row_count, 0);
    verify_against_manifest(&stored[..], &ring(), &manifest).unwrap();
}

#[test]
fn large_writes_are_split_into_frames_and_pieces_are_bounded() {
    // 3.5 MiB single write: several ROWS frames; reader pieces bounded.
    let mut data = Vec::with_capacity(3_670_016);
    let mut i = 0u64;
    while data.len() < 3_670_016 {
        data.extend_from_slice(format!("{i}\tuser-{i}@example.com\t\\N\n").as_bytes());
        i += 1;
    }
    let tables = vec![(header("public.big"), vec![data.clone()])];
    let (manifest, stored) = write(&tables, DEFAULT_CHUNK_SIZE);
    assert_eq!(manifest.tables[0].row_count, i);
    let mut r = ArtifactReader::open(&stored[..], &ring(), binding()).unwrap();
    r.next_table().unwrap().unwrap();
    let mut got = Vec::new();
    let mut max_piece = 0;
    while let Some(p) = r.next_rows().unwrap() {
        max_piece = max_piece.max(p.len());
        got.extend_from_slice(p);
    }
    assert!(max_piece <= drfleet_artifact::reader::READ_PIECE_SIZE);
    assert_eq!(got, data);
    assert_eq!(r.last_table_summary().unwrap().row_count, i);
    assert!(r.next_table().unwrap().is_none());
    assert_eq!(r.finish().unwrap().row_count, i);
}

#[test]
fn manifest_json_round_trips_with_extra_and_snapshot() {
    let (mut manifest, _) = write(&sample_tables(), 64);
    manifest.snapshot_at = Some(
        chrono::DateTime::parse_from_rfc3339("2024-05-06T07:08:09.123Z")
            .unwrap()
            .to_utc(),
    );
    manifest
        .extra
        .insert("pg_version".into(), serde_json::json!("16.3"));
    manifest
        .extra
        .insert("lsn".into(), serde_json::json!({"hi": 1, "lo": 2}));
    let json = manifest.to_json();
    let back = Manifest::from_json(&json).unwrap();
    assert_eq!(back, manifest);
    // `extra` may be absent.
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v.as_object_mut().unwrap().remove("extra");
    let back = Manifest::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(back.extra.is_empty());
    assert_eq!(
        Manifest::from_json(b"[]").unwrap_err().code(),
        "ARTIFACT_BAD_MANIFEST"
    );
}

#[test]
fn next_table_drains_an_unread_table_and_still_verifies_it() {
    let tables = sample_tables();
    let (manifest, stored) = write(&tables, 64);
    let mut r = ArtifactReader::open(&stored[..], &ring(), binding()).unwrap();
    assert_eq!(r.key_id(), "k1");
    assert_eq!(r.binding(), binding());
    assert_eq!(r.chunk_size(), 64);
    assert!(r.last_table_summary().is_none());
    let mut names = Vec::new();
    while let Some(h) = r.next_table().unwrap() {
        names.push(h.name);
    }
    // Further calls stay at the end.
    assert!(r.next_table().unwrap().is_none());
    assert!(r.next_rows().unwrap().is_none());
    assert_eq!(
        names,
        tables.iter().map(|t| t.0.name.clone()).collect::<Vec<_>>()
    );
    assert_eq!(r.finish().unwrap().tables, manifest.tables);
}

#[test]
fn writer_rejects_out_of_order_calls_without_poisoning() {
    let mut w = ArtifactWriter::new(Vec::new(), &ring(), binding(), 1).unwrap();
    let code = |e: drfleet_artifact::ArtifactError| e.code();
    assert_eq!(
        code(w.write_rows(b"x\n").unwrap_err()),
        "ARTIFACT_INVALID_STATE"
    );
    assert_eq!(code(w.end_table().unwrap_err()), "ARTIFACT_INVALID_STATE");
    w.begin_table(&header("t")).unwrap();
    assert_eq!(
        code(w.begin_table(&header("u")).unwrap_err()),
        "ARTIFACT_INVALID_STATE"
    );
    w.write_rows(b"1\n").unwrap();
    w.write_rows(b"").unwrap();
    let entry = w.end_table().unwrap();
    assert_eq!(entry.row_count, 1);
    w.begin_table(&header("u")).unwrap();
    assert_eq!(code(w.finish().unwrap_err()), "ARTIFACT_INVALID_STATE");

    let w = ArtifactWriter::new(Vec::new(), &ring(), binding(), 1).unwrap();
    assert!(w.bytes_written() > 14);
    let (m, stored) = w.finish().unwrap();
    assert_eq!(m.byte_size, stored.len() as u64);
}

#[test]
fn writer_rejects_bad_arguments() {
    for cs in [0, (64 << 20) + 1] {
        let e = ArtifactWriter::with_chunk_size(Vec::new(), &ring(), binding(), 1, cs)
            .err()
            .unwrap();
        assert_eq!(e.code(), "ARTIFACT_INVALID_ARGUMENT");
    }
    let e = ArtifactWriter::new(Vec::new(), &ring(), binding(), 99)
        .err()
        .unwrap();
    assert_eq!(e.code(), "ARTIFACT_INVALID_ARGUMENT");
    let mut w = ArtifactWriter::new(Vec::new(), &ring(), binding(), 1).unwrap();
    let huge = drfleet_artifact::TableHeader {
        name: "x".repeat(2 << 20),
        columns: vec![],
    };
    assert_eq!(
        w.begin_table(&huge).unwrap_err().code(),
        "ARTIFACT_INVALID_ARGUMENT"
    );
    // Not poisoned: the writer is still usable.
    w.begin_table(&header("t")).unwrap();
    w.end_table().unwrap();
    w.finish().unwrap();
}

#[test]
fn reader_finish_before_end_is_rejected() {
    let (_, stored) = write(&sample_tables(), 64);
    let mut r = ArtifactReader::open(&stored[..], &ring(), binding()).unwrap();
    r.next_table().unwrap().unwrap();
    assert_eq!(r.finish().unwrap_err().code(), "ARTIFACT_INVALID_STATE");
}

#[test]
fn hashing_writer_matches_sha2() {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = HashingWriter::new(Vec::new());
    for piece in data.chunks(333) {
        w.write_all(piece).unwrap();
    }
    w.flush().unwrap();
    assert_eq!(w.bytes_written(), data.len() as u64);
    let (inner, n, hex_sha) = w.finish();
    assert_eq!(inner, data);
    assert_eq!(n, data.len() as u64);
    assert_eq!(hex_sha, sha_hex(&data));

    let (_, n, empty) = HashingWriter::new(Vec::new()).finish();
    assert_eq!(n, 0);
    assert_eq!(empty, sha_hex(b""));
}

#[test]
fn hashing_writer_hashes_only_accepted_bytes() {
    // A writer that accepts at most 3 bytes per call.
    struct Trickle(Vec<u8>);
    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(3);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashingWriter::new(Trickle(Vec::new()));
    assert_eq!(w.write(b"abcdef").unwrap(), 3);
    w.write_all(b"ghij").unwrap();
    let (inner, n, h) = w.finish();
    assert_eq!(inner.0, b"abcghij");
    assert_eq!(n, 7);
    assert_eq!(h, sha_hex(b"abcghij"));
}

#[test]
fn hashing_reader_matches_sha2() {
    let data: Vec<u8> = (0..70_001u32).map(|i| (i % 256) as u8).collect();
    let mut r = HashingReader::new(&data[..]);
    let mut buf = [0u8; 1000];
    let mut first = Vec::new();
    let n = r.read(&mut buf).unwrap();
    first.extend_from_slice(&buf[..n]);
    assert_eq!(r.current(), (n as u64, sha_hex(&first)));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(r.bytes_read(), data.len() as u64);
    let (_, total, h) = r.finish();
    assert_eq!(total, data.len() as u64);
    assert_eq!(h, sha_hex(&data));
    assert_eq!([first, rest].concat(), data);
}

#[test]
fn threaded_reader_reads_what_the_inline_reader_reads() {
    let tables = sample_tables();
    for chunk_size in [1, 64, DEFAULT_CHUNK_SIZE] {
        let (manifest, stored) = write(&tables, chunk_size);
        let (inline, inline_summary) = read_all(&stored, &ring(), binding()).unwrap();
        let mut r =
            ArtifactReader::open_threaded(std::io::Cursor::new(stored.clone()), &ring(), binding())
                .unwrap();
        let mut threaded = Vec::new();
        while let Some(h) = r.next_table().unwrap() {
            let mut bytes = Vec::new();
            while let Some(p) = r.next_rows().unwrap() {
                bytes.extend_from_slice(p);
            }
            threaded.push((h, bytes));
        }
        assert_eq!(threaded, inline);
        assert_eq!(r.finish().unwrap(), inline_summary);
        let summary = verify_against_manifest_threaded(
            std::io::Cursor::new(stored.clone()),
            &ring(),
            &manifest,
        )
        .unwrap();
        assert_eq!(summary, inline_summary);
    }
}

#[test]
fn threaded_reader_dropped_midway_stops_cleanly() {
    let big: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("{i}\trow\n").into_bytes())
        .collect();
    let tables = vec![(header("public.big"), vec![big])];
    let (_, stored) = write(&tables, 4096);
    let mut r =
        ArtifactReader::open_threaded(std::io::Cursor::new(stored), &ring(), binding()).unwrap();
    r.next_table().unwrap().unwrap();
    r.next_rows().unwrap().unwrap();
    drop(r); // the helper thread sees a closed channel and ends
}
