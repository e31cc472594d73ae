//! Shared helpers for the integration tests.
#![allow(dead_code)]

use drfleet_artifact::{
    ArtifactBinding, ArtifactError, ArtifactReader, ArtifactWriter, ColumnDef, Keyring, Manifest,
    MasterKey, ReadSummary, TableHeader,
};
use uuid::Uuid;

pub const MARKER: &[u8] = b"PLANTED-MARKER-7f3a9c";

pub fn key(id: &str, byte: u8) -> MasterKey {
    MasterKey::new(id, [byte; 32])
}

pub fn ring() -> Keyring {
    Keyring::new(key("k1", 0x11), vec![])
}

pub fn binding() -> ArtifactBinding {
    ArtifactBinding {
        organization_id: Uuid::from_u128(0xA1),
        backup_record_id: Uuid::from_u128(0xB1),
    }
}

pub fn col(name: &str, ty: &str, nullable: bool) -> ColumnDef {
    ColumnDef {
        name: name.into(),
        data_type: ty.into(),
        nullable,
    }
}

pub fn header(name: &str) -> TableHeader {
    TableHeader {
        name: name.into(),
        columns: vec![col("id", "bigint", false), col("body", "text", true)],
    }
}

/// A table: header + COPY bytes as a list of write_rows() calls.
pub type Table = (TableHeader, Vec<Vec<u8>>);

/// Tables exercising COPY TEXT escapes, raw control bytes, UTF-8 and binary.
pub fn sample_tables() -> Vec<Table> {
    let mut binary: Vec<u8> = (0u8..=255).collect();
    binary.extend_from_slice(b"\n");
    vec![
        (
            header("public.accounts"),
            vec![
                b"1\tplain\n2\twith\\ttab escaped\n".to_vec(),
                b"3\tback\\\\slash and \"quotes\" 'single'\n4\t\\N\n".to_vec(),
                "5\tnon-ascii: zoë, 日本語, emoji 🦀\n".as_bytes().to_vec(),
            ],
        ),
        (
            TableHeader {
                name: "public.empty".into(),
                columns: vec![col("x", "integer", true)],
            },
            vec![],
        ),
        (
            header("tenant_data.notes"),
            vec![
                // A row split across calls at awkward places.
                b"10\tline one\\nline two\t".to_vec(),
                b"raw\ttab and raw\r carriage".to_vec(),
                b"\n11\t".to_vec(),
                [b"secret ".as_slice(), MARKER, b" here\n"].concat(),
                binary,
                // No trailing newline: the partial row is kept but not counted.
                b"12\tunterminated".to_vec(),
            ],
        ),
    ]
}

pub fn write_with(
    tables: &[Table],
    keyring: &Keyring,
    binding: ArtifactBinding,
    chunk_size: usize,
) -> (Manifest, Vec<u8>) {
    let mut w =
        ArtifactWriter::with_chunk_size(Vec::new(), keyring, binding, 1, chunk_size).unwrap();
    for (h, pieces) in tables {
        w.begin_table(h).unwrap();
        for p in pieces {
            w.write_rows(p).unwrap();
        }
        w.end_table().unwrap();
    }
    w.finish().unwrap()
}

pub fn write(tables: &[Table], chunk_size: usize) -> (Manifest, Vec<u8>) {
    write_with(tables, &ring(), binding(), chunk_size)
}

/// A table as read back: header + concatenated COPY bytes.
pub type ReadTable = (TableHeader, Vec<u8>);

/// Reads a whole artifact, returning headers with their concatenated bytes.
pub fn read_all(
    stored: &[u8],
    keyring: &Keyring,
    binding: ArtifactBinding,
) -> Result<(Vec<ReadTable>, ReadSummary), ArtifactError> {
    let mut r = ArtifactReader::open(stored, keyring, binding)?;
    let mut out = Vec::new();
    while let Some(h) = r.next_table()? {
        let mut bytes = Vec::new();
        while let Some(piece) = r.next_rows()? {
            assert!(!piece.is_empty());
            bytes.extend_from_slice(piece);
        }
        out.push((h, bytes));
    }
    let summary = r.finish()?;
    Ok((out, summary))
}

pub fn read_code(stored: &[u8]) -> &'static str {
    read_all(stored, &ring(), binding()).unwrap_err().code()
}

/// Splits stored bytes into (header bytes, chunks incl. their 4-byte prefix).
pub fn split(stored: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let hlen = 14 + u32::from_be_bytes(stored[10..14].try_into().unwrap()) as usize;
    let mut chunks = Vec::new();
    let mut pos = hlen;
    while pos < stored.len() {
        let prefix = u32::from_be_bytes(stored[pos..pos + 4].try_into().unwrap());
        let len = (prefix & 0x7FFF_FFFF) as usize;
        chunks.push(stored[pos..pos + 4 + len].to_vec());
        pos += 4 + len;
    }
    (stored[..hlen].to_vec(), chunks)
}

pub fn join(header: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut v = header.to_vec();
    for c in chunks {
        v.extend_from_slice(c);
    }
    v
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
