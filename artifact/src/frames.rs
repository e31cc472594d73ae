//! The plaintext frame stream that is fed to zstd.
//!
//! ```text
//! frame = u8 tag | u32 BE payload_len | payload
//! stream = (TABLE_BEGIN ROWS* TABLE_END)* STREAM_END
//! ```
//!
//! Frames are tiny fixed headers around large payloads, so framing costs
//! nothing per row: ROWS payloads are the caller's COPY bytes verbatim,
//! split only when a write exceeds [`MAX_ROWS_FRAME`].

/// Payload: JSON [`crate::TableHeader`].
pub(crate) const TAG_TABLE_BEGIN: u8 = 1;
/// Payload: raw COPY bytes (1..=MAX_ROWS_FRAME).
pub(crate) const TAG_ROWS: u8 = 2;
/// Payload: u64 BE row_count | 32-byte SHA-256 of the table's COPY bytes.
pub(crate) const TAG_TABLE_END: u8 = 3;
/// Payload: u64 BE table_count | u64 BE total row_count.
pub(crate) const TAG_STREAM_END: u8 = 4;

pub(crate) const FRAME_HEADER_LEN: usize = 5;
/// Largest ROWS payload.
pub const MAX_ROWS_FRAME: usize = 1 << 20;
/// Largest TABLE_BEGIN payload (JSON table header).
pub const MAX_TABLE_HEADER_LEN: usize = 1 << 20;
pub(crate) const TABLE_END_LEN: usize = 8 + 32;
pub(crate) const STREAM_END_LEN: usize = 8 + 8;

pub(crate) fn frame_header(tag: u8, len: usize) -> [u8; FRAME_HEADER_LEN] {
    debug_assert!(len <= u32::MAX as usize);
    let l = (len as u32).to_be_bytes();
    [tag, l[0], l[1], l[2], l[3]]
}

pub(crate) fn parse_frame_header(h: &[u8; FRAME_HEADER_LEN]) -> (u8, usize) {
    (h[0], u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize)
}

pub(crate) fn table_end_payload(row_count: u64, sha256: &[u8; 32]) -> [u8; TABLE_END_LEN] {
    let mut p = [0u8; TABLE_END_LEN];
    p[..8].copy_from_slice(&row_count.to_be_bytes());
    p[8..].copy_from_slice(sha256);
    p
}

pub(crate) fn parse_table_end(p: &[u8; TABLE_END_LEN]) -> (u64, [u8; 32]) {
    let mut rows = [0u8; 8];
    rows.copy_from_slice(&p[..8]);
    let mut sha = [0u8; 32];
    sha.copy_from_slice(&p[8..]);
    (u64::from_be_bytes(rows), sha)
}

pub(crate) fn stream_end_payload(table_count: u64, row_count: u64) -> [u8; STREAM_END_LEN] {
    let mut p = [0u8; STREAM_END_LEN];
    p[..8].copy_from_slice(&table_count.to_be_bytes());
    p[8..].copy_from_slice(&row_count.to_be_bytes());
    p
}

pub(crate) fn parse_stream_end(p: &[u8; STREAM_END_LEN]) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&p[..8]);
    b.copy_from_slice(&p[8..]);
    (u64::from_be_bytes(a), u64::from_be_bytes(b))
}

/// Rows are counted as `\n` bytes (COPY TEXT terminates every row with one;
/// embedded newlines are escaped as `\n` two-byte sequences).
pub(crate) fn count_rows(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}
