//! Streaming artifact reader and manifest verification.
//!
//! Layers, bottom-up: `ChunkOpener` (authenticate + decrypt one chunk at a
//! time) → `PlainStream` (zstd-decode into a fixed buffer) → frame parsing
//! in [`ArtifactReader`]. Row bytes are handed out as slices of the decode
//! buffer, so memory is bounded by one chunk plus one decode buffer.

use std::io::Read;

use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

use crate::container::{ChunkOpener, ContainerHeader, read_header};
use crate::error::ArtifactError;
use crate::frames::{
    self, FRAME_HEADER_LEN, MAX_ROWS_FRAME, MAX_TABLE_HEADER_LEN, STREAM_END_LEN, TABLE_END_LEN,
    TAG_ROWS, TAG_STREAM_END, TAG_TABLE_BEGIN, TAG_TABLE_END,
};
use crate::hashing::{HashingReader, Sha256};
use crate::keys::{DataKey, KeyScope, Keyring};
use crate::manifest::{ArtifactBinding, Manifest, TableHeader, TableManifest};
use crate::{CIPHER_NAME, COMPRESSION_NAME};

/// Size of the decompression buffer, i.e. the largest piece `next_rows`
/// returns.
pub const READ_PIECE_SIZE: usize = 256 * 1024;

fn corrupt(detail: &'static str) -> ArtifactError {
    ArtifactError::CorruptStream { detail }
}

/// Decompressed plaintext, pulled chunk by chunk (a `BufRead` with our own
/// error type).
struct PlainStream<R: Read> {
    chunks: ChunkOpener<R>,
    decoder: Decoder<'static>,
    out: Vec<u8>,
    start: usize,
    end: usize,
    /// zstd reported the end of its (single) frame.
    frame_done: bool,
    /// The last decode call filled `out` completely, so zstd may still hold
    /// decoded bytes even without more input.
    maybe_pending: bool,
}

impl<R: Read> PlainStream<R> {
    /// Makes decoded bytes available; returns how many. 0 means the end of
    /// the plaintext, which is only reported after the final chunk was
    /// authenticated, nothing trails it, and the zstd frame is complete.
    fn fill(&mut self) -> Result<usize, ArtifactError> {
        loop {
            if self.start < self.end {
                return Ok(self.end - self.start);
            }
            if self.frame_done {
                if !self.chunks.remaining().is_empty() {
                    return Err(corrupt("data after the end of the zstd frame"));
                }
                if self.chunks.is_done() {
                    return Ok(0);
                }
                self.chunks.next_chunk()?;
                continue;
            }
            if self.chunks.remaining().is_empty() && !self.maybe_pending {
                if self.chunks.is_done() {
                    return Err(corrupt("zstd frame is incomplete"));
                }
                self.chunks.next_chunk()?;
                continue;
            }
            let (consumed, produced, hint) = {
                let mut input = InBuffer::around(self.chunks.remaining());
                let mut output = OutBuffer::around(&mut self.out[..]);
                let hint = self
                    .decoder
                    .run(&mut input, &mut output)
                    .map_err(|_| corrupt("zstd decompression failed"))?;
                (input.pos(), output.pos(), hint)
            };
            let had_input = !self.chunks.remaining().is_empty();
            self.chunks.advance(consumed);
            self.start = 0;
            self.end = produced;
            self.maybe_pending = produced == self.out.len();
            if hint == 0 {
                self.frame_done = true;
                self.maybe_pending = false;
            } else if had_input && consumed == 0 && produced == 0 {
                return Err(corrupt("zstd decompression made no progress"));
            }
        }
    }

    fn available(&self) -> &[u8] {
        &self.out[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(self.start + n <= self.end);
        self.start += n;
    }
}

/// Where the reader's plaintext comes from: decrypted and decompressed on the
/// caller's thread, or on a helper thread that hands over decoded blocks (so
/// decompression overlaps frame parsing and hashing).
enum Plain<R: Read> {
    Inline(Box<PlainStream<R>>),
    Threaded(ThreadedPlain),
}

enum Block {
    Data(Vec<u8>),
    /// The verified end of the plaintext, with the stored byte count and SHA-256.
    End(u64, String),
    Failed(ArtifactError),
}

/// Consumer side of a [`PlainStream`] running on its own thread.
struct ThreadedPlain {
    rx: std::sync::mpsc::Receiver<Block>,
    cur: Vec<u8>,
    pos: usize,
    totals: Option<(u64, String)>,
}

/// Decoded blocks in flight between the helper thread and the reader.
const THREADED_DEPTH: usize = 8;

impl ThreadedPlain {
    fn spawn<R: Read + Send + 'static>(mut plain: PlainStream<R>) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(THREADED_DEPTH);
        std::thread::spawn(move || {
            loop {
                let block = match plain.fill() {
                    Ok(0) => {
                        let (n, sum) = plain.chunks.stored_totals();
                        Block::End(n, sum)
                    }
                    Ok(_) => {
                        let b = plain.available().to_vec();
                        plain.consume(b.len());
                        Block::Data(b)
                    }
                    Err(e) => Block::Failed(e),
                };
                let last = !matches!(block, Block::Data(_));
                // A closed channel: the reader stopped; so do we.
                if tx.send(block).is_err() || last {
                    return;
                }
            }
        });
        Self {
            rx,
            cur: Vec::new(),
            pos: 0,
            totals: None,
        }
    }

    fn fill(&mut self) -> Result<usize, ArtifactError> {
        while self.pos == self.cur.len() {
            if self.totals.is_some() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Block::Data(b)) => {
                    self.cur = b;
                    self.pos = 0;
                }
                Ok(Block::End(n, sum)) => self.totals = Some((n, sum)),
                Ok(Block::Failed(e)) => return Err(e),
                Err(_) => {
                    return Err(ArtifactError::InvalidState {
                        detail: "artifact decoding thread stopped",
                    });
                }
            }
        }
        Ok(self.cur.len() - self.pos)
    }
}

impl<R: Read> Plain<R> {
    fn fill(&mut self) -> Result<usize, ArtifactError> {
        match self {
            Plain::Inline(p) => p.fill(),
            Plain::Threaded(t) => t.fill(),
        }
    }

    fn available(&self) -> &[u8] {
        match self {
            Plain::Inline(p) => p.available(),
            Plain::Threaded(t) => &t.cur[t.pos..],
        }
    }

    fn consume(&mut self, n: usize) {
        match self {
            Plain::Inline(p) => p.consume(n),
            Plain::Threaded(t) => {
                debug_assert!(t.pos + n <= t.cur.len());
                t.pos += n;
            }
        }
    }

    /// Offset of `available()` in the current buffer; with [`Plain::slice`],
    /// consumed bytes stay readable until the next `fill`.
    fn position(&self) -> usize {
        match self {
            Plain::Inline(p) => p.start,
            Plain::Threaded(t) => t.pos,
        }
    }

    fn slice(&self, start: usize, len: usize) -> &[u8] {
        match self {
            Plain::Inline(p) => &p.out[start..start + len],
            Plain::Threaded(t) => &t.cur[start..start + len],
        }
    }

    fn stored_totals(&self) -> (u64, String) {
        match self {
            Plain::Inline(p) => p.chunks.stored_totals(),
            Plain::Threaded(t) => t.totals.clone().unwrap_or_default(),
        }
    }

    fn read_exact(&mut self, dst: &mut [u8]) -> Result<(), ArtifactError> {
        let mut done = 0;
        while done < dst.len() {
            let avail = self.fill()?;
            if avail == 0 {
                return Err(corrupt("frame stream ends inside a frame"));
            }
            let n = (dst.len() - done).min(avail);
            dst[done..done + n].copy_from_slice(&self.available()[..n]);
            self.consume(n);
            done += n;
        }
        Ok(())
    }

    fn read_frame_header(&mut self) -> Result<(u8, usize), ArtifactError> {
        if self.fill()? == 0 {
            return Err(corrupt("frame stream ends without STREAM_END"));
        }
        let mut h = [0u8; FRAME_HEADER_LEN];
        self.read_exact(&mut h)?;
        Ok(frames::parse_frame_header(&h))
    }
}

struct OpenTable {
    header: TableHeader,
    /// Bytes of the current ROWS frame not yet returned.
    frame_left: usize,
    hasher: Sha256,
    rows: u64,
}

enum State {
    BetweenTables,
    InTable(Box<OpenTable>),
    Ended,
}

/// Totals of a fully read artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadSummary {
    pub tables: Vec<TableManifest>,
    pub row_count: u64,
    /// Stored bytes consumed from the source.
    pub byte_size: u64,
    /// Lowercase hex SHA-256 of the stored bytes.
    pub checksum_sha256: String,
}

/// Reads the header, checks its binding and unwraps the data key: the start of
/// every read of an artifact.
fn open_container<R: Read>(
    source: R,
    keyring: &Keyring,
    expected: ArtifactBinding,
) -> Result<(HashingReader<R>, ContainerHeader, DataKey), ArtifactError> {
    let mut source = HashingReader::new(source);
    let header = read_header(&mut source)?;
    if header.binding != expected {
        return Err(ArtifactError::BindingMismatch {
            expected_organization_id: expected.organization_id,
            expected_backup_record_id: expected.backup_record_id,
            found_organization_id: header.binding.organization_id,
            found_backup_record_id: header.binding.backup_record_id,
        });
    }
    let scope = match header.version {
        1 => KeyScope::Master,
        _ => KeyScope::Tenant,
    };
    let data_key = DataKey::unwrap(
        keyring,
        scope,
        &header.key_id,
        &header.wrapped,
        header.binding.organization_id,
        header.binding.backup_record_id,
    )?;
    Ok((source, header, data_key))
}

/// The decoding layers of a reader, shared by both ways of opening.
fn open_plain<R: Read>(
    source: R,
    keyring: &Keyring,
    expected: ArtifactBinding,
) -> Result<(PlainStream<R>, ContainerHeader), ArtifactError> {
    let (source, header, data_key) = open_container(source, keyring, expected)?;
    let decoder = Decoder::new().map_err(|_| ArtifactError::InvalidState {
        detail: "zstd decoder could not be created",
    })?;
    let chunks = ChunkOpener::new(source, data_key, &header);
    let plain = PlainStream {
        chunks,
        decoder,
        out: vec![0u8; READ_PIECE_SIZE],
        start: 0,
        end: 0,
        frame_done: false,
        maybe_pending: false,
    };
    Ok((plain, header))
}

impl<R: Read + Send + 'static> ArtifactReader<R> {
    /// Like [`ArtifactReader::open`], but the source is read, authenticated,
    /// decrypted and decompressed on a helper thread, overlapping the frame
    /// parsing and hashing done by the caller. Same checks, same errors.
    pub fn open_threaded(
        source: R,
        keyring: &Keyring,
        expected: ArtifactBinding,
    ) -> Result<Self, ArtifactError> {
        let (plain, header) = open_plain(source, keyring, expected)?;
        Ok(Self::with_plain(
            Plain::Threaded(ThreadedPlain::spawn(plain)),
            header,
        ))
    }
}

/// Reads one artifact. Call `next_table` until it returns `None`, draining
/// each table with `next_rows`, then `finish`.
///
/// Every read of the source is exact-sized (prefixes, then whole chunks);
/// wrap sources that cost a syscall per read in a `BufReader`.
pub struct ArtifactReader<R: Read> {
    plain: Plain<R>,
    binding: ArtifactBinding,
    key_id: String,
    chunk_size: usize,
    state: State,
    tables: Vec<TableManifest>,
    total_rows: u64,
    /// After any integrity or I/O error the stream position is meaningless;
    /// every later call returns the same error.
    poisoned: Option<ArtifactError>,
}

impl<R: Read> ArtifactReader<R> {
    /// Reads the header, checks the binding against `expected`, and unwraps
    /// the data key with the keyring key named in the header.
    pub fn open(
        source: R,
        keyring: &Keyring,
        expected: ArtifactBinding,
    ) -> Result<Self, ArtifactError> {
        let (plain, header) = open_plain(source, keyring, expected)?;
        Ok(Self::with_plain(Plain::Inline(Box::new(plain)), header))
    }

    fn with_plain(plain: Plain<R>, header: ContainerHeader) -> Self {
        Self {
            plain,
            binding: header.binding,
            key_id: header.key_id,
            chunk_size: header.chunk_size,
            state: State::BetweenTables,
            tables: Vec::new(),
            total_rows: 0,
            poisoned: None,
        }
    }

    /// Id of the master key that wrapped this artifact's data key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn binding(&self) -> ArtifactBinding {
        self.binding
    }

    /// Chunk size recorded in the header.
    pub fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    /// Next table section, or `None` at the verified end of the stream
    /// (final chunk authenticated, nothing trailing). If the current table
    /// was not drained it is drained (and verified) first.
    pub fn next_table(&mut self) -> Result<Option<TableHeader>, ArtifactError> {
        self.check_poison()?;
        let r = self.next_table_inner();
        self.poison_on_err(r)
    }

    /// Next piece (at most [`READ_PIECE_SIZE`] bytes, never empty) of the
    /// current table's COPY bytes, or `None` at the table's end — at which
    /// point the row count and SHA-256 of everything yielded have been
    /// checked against the table's in-stream trailer. Also `None` when no
    /// table is open.
    pub fn next_rows(&mut self) -> Result<Option<&[u8]>, ArtifactError> {
        self.check_poison()?;
        match self.next_rows_inner() {
            Ok(Some((start, len))) => Ok(Some(self.plain.slice(start, len))),
            Ok(None) => Ok(None),
            Err(e) => {
                self.poisoned = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Summary of the most recently finished table.
    pub fn last_table_summary(&self) -> Option<&TableManifest> {
        self.tables.last()
    }

    /// After `next_table` returned `None`: returns the totals. Errors with
    /// `ARTIFACT_INVALID_STATE` if the end of the stream was not reached
    /// (a reader abandoned midway must not look like a complete read).
    pub fn finish(self) -> Result<ReadSummary, ArtifactError> {
        self.check_poison()?;
        if !matches!(self.state, State::Ended) {
            return Err(ArtifactError::InvalidState {
                detail: "finish called before next_table returned None",
            });
        }
        let (byte_size, checksum_sha256) = self.plain.stored_totals();
        Ok(ReadSummary {
            tables: self.tables,
            row_count: self.total_rows,
            byte_size,
            checksum_sha256,
        })
    }

    fn check_poison(&self) -> Result<(), ArtifactError> {
        match &self.poisoned {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn poison_on_err<T>(&mut self, r: Result<T, ArtifactError>) -> Result<T, ArtifactError> {
        if let Err(e) = &r {
            self.poisoned = Some(e.clone());
        }
        r
    }

    fn next_table_inner(&mut self) -> Result<Option<TableHeader>, ArtifactError> {
        match self.state {
            State::Ended => return Ok(None),
            State::InTable(_) => while self.next_rows_inner()?.is_some() {},
            State::BetweenTables => {}
        }
        let (tag, len) = self.plain.read_frame_header()?;
        match tag {
            TAG_TABLE_BEGIN => {
                if len == 0 || len > MAX_TABLE_HEADER_LEN {
                    return Err(corrupt("table header frame length out of range"));
                }
                let mut json = vec![0u8; len];
                self.plain.read_exact(&mut json)?;
                let header: TableHeader = serde_json::from_slice(&json)
                    .map_err(|_| corrupt("table header is not valid JSON"))?;
                self.state = State::InTable(Box::new(OpenTable {
                    header: header.clone(),
                    frame_left: 0,
                    hasher: Sha256::new(),
                    rows: 0,
                }));
                Ok(Some(header))
            }
            TAG_STREAM_END => {
                if len != STREAM_END_LEN {
                    return Err(corrupt("stream end frame has the wrong length"));
                }
                let mut p = [0u8; STREAM_END_LEN];
                self.plain.read_exact(&mut p)?;
                let (table_count, rows) = frames::parse_stream_end(&p);
                if table_count != self.tables.len() as u64 || rows != self.total_rows {
                    return Err(corrupt("stream trailer does not match the tables read"));
                }
                // Drives the chunk layer to its verified end: final chunk
                // seen, zstd frame complete, no trailing bytes.
                if self.plain.fill()? != 0 {
                    return Err(corrupt("data after the stream end frame"));
                }
                self.state = State::Ended;
                Ok(None)
            }
            _ => Err(corrupt("unexpected frame between tables")),
        }
    }

    /// Returns the position of the next piece inside the decode buffer.
    fn next_rows_inner(&mut self) -> Result<Option<(usize, usize)>, ArtifactError> {
        let State::InTable(table) = &mut self.state else {
            return Ok(None);
        };
        loop {
            if table.frame_left > 0 {
                if self.plain.fill()? == 0 {
                    return Err(corrupt("frame stream ends inside a rows frame"));
                }
                let piece = self.plain.available();
                let n = piece.len().min(table.frame_left);
                let piece = &piece[..n];
                table.hasher.update(piece);
                table.rows += frames::count_rows(piece);
                table.frame_left -= n;
                let start = self.plain.position();
                self.plain.consume(n);
                return Ok(Some((start, n)));
            }
            let (tag, len) = self.plain.read_frame_header()?;
            match tag {
                TAG_ROWS => {
                    if len == 0 || len > MAX_ROWS_FRAME {
                        return Err(corrupt("rows frame length out of range"));
                    }
                    table.frame_left = len;
                }
                TAG_TABLE_END => {
                    if len != TABLE_END_LEN {
                        return Err(corrupt("table end frame has the wrong length"));
                    }
                    let mut p = [0u8; TABLE_END_LEN];
                    self.plain.read_exact(&mut p)?;
                    let (rows, sha) = frames::parse_table_end(&p);
                    let table_index = self.tables.len();
                    let State::InTable(table) =
                        std::mem::replace(&mut self.state, State::BetweenTables)
                    else {
                        unreachable!("state checked above");
                    };
                    let table = *table;
                    if rows != table.rows {
                        return Err(ArtifactError::TableMismatch {
                            table_index,
                            detail: "row count differs from the in-stream trailer",
                        });
                    }
                    let actual = table.hasher.finish();
                    if actual != sha {
                        return Err(ArtifactError::TableMismatch {
                            table_index,
                            detail: "sha256 differs from the in-stream trailer",
                        });
                    }
                    let header = table.header;
                    self.total_rows += rows;
                    self.tables.push(TableManifest {
                        schema_fingerprint: header.schema_fingerprint(),
                        name: header.name,
                        row_count: rows,
                        sha256: hex::encode(actual),
                        columns: header.columns,
                        reach: None,
                    });
                    return Ok(None);
                }
                _ => return Err(corrupt("unexpected frame inside a table")),
            }
        }
    }
}

/// The outer layer only, against `manifest`: binding, key id, chunk size,
/// every chunk's AEAD tag (decrypting it, without decompressing), the end of
/// the stored bytes, their size and SHA-256. This is what a restore checks
/// before writing a single row; the frame stream and the per-table hashes are
/// checked as the rows are read in a second pass.
pub fn verify_sealed<R: Read>(
    source: R,
    keyring: &Keyring,
    manifest: &Manifest,
) -> Result<(u64, String), ArtifactError> {
    check_manifest_format(manifest)?;
    let mismatch = |detail| ArtifactError::ManifestMismatch { detail };
    let (source, header, data_key) = open_container(source, keyring, manifest.binding())?;
    if header.key_id != manifest.key_id {
        return Err(mismatch("key id differs from manifest"));
    }
    if header.chunk_size != manifest.chunk_size as usize {
        return Err(mismatch("chunk size differs from manifest"));
    }
    let mut chunks = ChunkOpener::new(source, data_key, &header);
    while !chunks.is_done() {
        chunks.next_chunk()?;
        let n = chunks.remaining().len();
        chunks.advance(n);
    }
    let (byte_size, checksum) = chunks.stored_totals();
    if byte_size != manifest.byte_size {
        return Err(mismatch("stored byte size differs from manifest"));
    }
    if !checksum.eq_ignore_ascii_case(&manifest.checksum_sha256) {
        return Err(mismatch("stored checksum differs from manifest"));
    }
    Ok((byte_size, checksum))
}

fn check_manifest_format(manifest: &Manifest) -> Result<(), ArtifactError> {
    if !crate::MANIFEST_VERSIONS_READ.contains(&manifest.format_version) {
        return Err(ArtifactError::UnsupportedVersion {
            found: manifest.format_version,
        });
    }
    let mismatch = |detail| ArtifactError::ManifestMismatch { detail };
    if manifest.compression != COMPRESSION_NAME {
        return Err(mismatch("manifest compression is not zstd"));
    }
    if manifest.cipher != CIPHER_NAME {
        return Err(mismatch("manifest cipher is not AES-256-GCM"));
    }
    Ok(())
}

/// Checks a reader's progress against a manifest, table by table, for callers
/// that consume the rows themselves (a restore streaming them into
/// PostgreSQL). [`verify_against_manifest`] is this plus draining.
pub struct ManifestCheck<'m> {
    manifest: &'m Manifest,
    index: usize,
}

impl<'m> ManifestCheck<'m> {
    /// Checks the format, key id and chunk size of an opened reader.
    pub fn new<R: Read>(
        manifest: &'m Manifest,
        reader: &ArtifactReader<R>,
    ) -> Result<Self, ArtifactError> {
        check_manifest_format(manifest)?;
        let mismatch = |detail| ArtifactError::ManifestMismatch { detail };
        if reader.binding() != manifest.binding() {
            return Err(mismatch("binding differs from manifest"));
        }
        if reader.key_id() != manifest.key_id {
            return Err(mismatch("key id differs from manifest"));
        }
        if reader.chunk_size() != manifest.chunk_size as usize {
            return Err(mismatch("chunk size differs from manifest"));
        }
        Ok(Self { manifest, index: 0 })
    }

    fn table_mismatch(&self, detail: &'static str) -> ArtifactError {
        ArtifactError::TableMismatch {
            table_index: self.index,
            detail,
        }
    }

    /// A table section began: it must be the manifest's next table, same schema.
    pub fn table_begun(&mut self, header: &TableHeader) -> Result<(), ArtifactError> {
        let Some(expected) = self.manifest.tables.get(self.index) else {
            return Err(self.table_mismatch("artifact has more tables than the manifest"));
        };
        if header.name != expected.name {
            return Err(self.table_mismatch("table name or order differs from manifest"));
        }
        if header.columns != expected.columns
            || header.schema_fingerprint() != expected.schema_fingerprint
        {
            return Err(self.table_mismatch("schema differs from manifest"));
        }
        Ok(())
    }

    /// The current table was drained (`next_rows` returned `None`): its row
    /// count and SHA-256 must be the manifest's.
    pub fn table_ended<R: Read>(
        &mut self,
        reader: &ArtifactReader<R>,
    ) -> Result<(), ArtifactError> {
        let expected = &self.manifest.tables[self.index];
        let Some(actual) = reader.last_table_summary() else {
            return Err(self.table_mismatch("table did not complete"));
        };
        if reader.tables.len() != self.index + 1 || actual.name != expected.name {
            return Err(self.table_mismatch("table did not complete"));
        }
        if actual.row_count != expected.row_count {
            return Err(self.table_mismatch("row count differs from manifest"));
        }
        if !actual.sha256.eq_ignore_ascii_case(&expected.sha256) {
            return Err(self.table_mismatch("sha256 differs from manifest"));
        }
        self.index += 1;
        Ok(())
    }

    /// The reader finished: every table seen, totals, stored size and SHA-256.
    pub fn finished(self, summary: &ReadSummary) -> Result<(), ArtifactError> {
        let mismatch = |detail| ArtifactError::ManifestMismatch { detail };
        if self.index != self.manifest.tables.len() {
            return Err(self.table_mismatch("artifact has fewer tables than the manifest"));
        }
        if summary.row_count != self.manifest.row_count {
            return Err(mismatch("total row count differs from manifest"));
        }
        if summary.byte_size != self.manifest.byte_size {
            return Err(mismatch("stored byte size differs from manifest"));
        }
        if !summary
            .checksum_sha256
            .eq_ignore_ascii_case(&self.manifest.checksum_sha256)
        {
            return Err(mismatch("stored checksum differs from manifest"));
        }
        Ok(())
    }
}

/// Drains a whole artifact and compares it against `manifest`: binding, key
/// id, chunk size, table order/names/schemas, per-table row counts and
/// SHA-256, totals, stored size and stored SHA-256.
pub fn verify_against_manifest<R: Read>(
    source: R,
    keyring: &Keyring,
    manifest: &Manifest,
) -> Result<ReadSummary, ArtifactError> {
    check_manifest_format(manifest)?;
    let reader = ArtifactReader::open(source, keyring, manifest.binding())?;
    drain_against_manifest(reader, manifest)
}

/// [`verify_against_manifest`] with decryption and decompression on a helper
/// thread ([`ArtifactReader::open_threaded`]): the same checks in less time
/// on a machine with a spare core.
pub fn verify_against_manifest_threaded<R: Read + Send + 'static>(
    source: R,
    keyring: &Keyring,
    manifest: &Manifest,
) -> Result<ReadSummary, ArtifactError> {
    check_manifest_format(manifest)?;
    let reader = ArtifactReader::open_threaded(source, keyring, manifest.binding())?;
    drain_against_manifest(reader, manifest)
}

fn drain_against_manifest<R: Read>(
    mut reader: ArtifactReader<R>,
    manifest: &Manifest,
) -> Result<ReadSummary, ArtifactError> {
    let mut check = ManifestCheck::new(manifest, &reader)?;
    while let Some(header) = reader.next_table()? {
        check.table_begun(&header)?;
        while reader.next_rows()?.is_some() {}
        check.table_ended(&reader)?;
    }
    let summary = reader.finish()?;
    check.finished(&summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::frames::{stream_end_payload, table_end_payload};
    use crate::keys::DataKey;
    use crate::testutil::{binding, frame, keyring, seal_compressed, seal_frames};
    use crate::writer::ArtifactWriter;

    fn table_begin(name: &str) -> Vec<u8> {
        let h = TableHeader {
            name: name.into(),
            columns: vec![],
        };
        frame(TAG_TABLE_BEGIN, &serde_json::to_vec(&h).unwrap())
    }

    fn sha(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data)
    }

    /// Reads everything; returns the first error.
    fn drain(stored: &[u8]) -> Result<ReadSummary, ArtifactError> {
        let mut r = ArtifactReader::open(stored, &keyring(), binding())?;
        while r.next_table()?.is_some() {
            while r.next_rows()?.is_some() {}
        }
        r.finish()
    }

    fn code(stored: &[u8]) -> &'static str {
        drain(stored).unwrap_err().code()
    }

    #[test]
    fn hand_built_valid_stream_reads() {
        let rows = b"1\ta\n2\tb\n";
        let mut s = table_begin("t");
        s.extend(frame(TAG_ROWS, rows));
        s.extend(frame(TAG_TABLE_END, &table_end_payload(2, &sha(rows))));
        s.extend(frame(TAG_STREAM_END, &stream_end_payload(1, 2)));
        let summary = drain(&seal_frames(&s)).unwrap();
        assert_eq!(summary.row_count, 2);
        assert_eq!(summary.tables[0].sha256, hex::encode(sha(rows)));
    }

    #[test]
    fn trailer_row_count_mismatch_is_table_mismatch() {
        let rows = b"1\n2\n";
        let mut s = table_begin("t");
        s.extend(frame(TAG_ROWS, rows));
        s.extend(frame(TAG_TABLE_END, &table_end_payload(3, &sha(rows))));
        s.extend(frame(TAG_STREAM_END, &stream_end_payload(1, 3)));
        let err = drain(&seal_frames(&s)).unwrap_err();
        assert_eq!(err.code(), "ARTIFACT_TABLE_MISMATCH");
        assert_eq!(
            err,
            ArtifactError::TableMismatch {
                table_index: 0,
                detail: "row count differs from the in-stream trailer"
            }
        );
    }

    #[test]
    fn trailer_sha_mismatch_is_table_mismatch() {
        let rows = b"1\n2\n";
        let mut s = table_begin("t");
        s.extend(frame(TAG_ROWS, rows));
        s.extend(frame(TAG_TABLE_END, &table_end_payload(2, &sha(b"1\n3\n"))));
        s.extend(frame(TAG_STREAM_END, &stream_end_payload(1, 2)));
        let err = drain(&seal_frames(&s)).unwrap_err();
        assert_eq!(
            err,
            ArtifactError::TableMismatch {
                table_index: 0,
                detail: "sha256 differs from the in-stream trailer"
            }
        );
    }

    #[test]
    fn malformed_frame_streams_are_corrupt() {
        let end = frame(TAG_STREAM_END, &stream_end_payload(0, 0));
        let cases: Vec<Vec<u8>> = vec![
            // Missing STREAM_END.
            vec![],
            // Unknown tag.
            [frame(9, b""), end.clone()].concat(),
            // ROWS outside a table.
            [frame(TAG_ROWS, b"x\n"), end.clone()].concat(),
            // STREAM_END totals disagree.
            frame(TAG_STREAM_END, &stream_end_payload(1, 0)),
            // Data after STREAM_END.
            [end.clone(), vec![0]].concat(),
            // Frame header cut short.
            vec![TAG_TABLE_BEGIN, 0, 0],
            // Oversized frames.
            [vec![TAG_TABLE_BEGIN], (2u32 << 20).to_be_bytes().to_vec()].concat(),
            [
                table_begin("t"),
                vec![TAG_ROWS],
                (2u32 << 20).to_be_bytes().to_vec(),
            ]
            .concat(),
            // Empty ROWS frame.
            [table_begin("t"), frame(TAG_ROWS, b""), end.clone()].concat(),
            // Table header not JSON.
            [frame(TAG_TABLE_BEGIN, b"{nope"), end.clone()].concat(),
            // Table never ended.
            [table_begin("t"), frame(TAG_ROWS, b"a\n")].concat(),
            // Rows frame longer than the stream.
            [
                table_begin("t"),
                vec![TAG_ROWS, 0, 0, 1, 0],
                b"abc".to_vec(),
            ]
            .concat(),
            // Wrong trailer lengths.
            [
                table_begin("t"),
                frame(TAG_TABLE_END, &[0; 39]),
                end.clone(),
            ]
            .concat(),
            frame(TAG_STREAM_END, &[0; 15]),
        ];
        for (i, plain) in cases.iter().enumerate() {
            assert_eq!(
                code(&seal_frames(plain)),
                "ARTIFACT_CORRUPT_STREAM",
                "case {i}"
            );
        }
    }

    #[test]
    fn zstd_layer_anomalies_are_corrupt() {
        let end = frame(TAG_STREAM_END, &stream_end_payload(0, 0));
        let one = zstd::bulk::compress(&end, 1).unwrap();
        // Second zstd frame after the first.
        let two = [one.clone(), one.clone()].concat();
        // zstd frame cut short.
        let cut = &one[..one.len() - 1];
        for compressed in [&two[..], cut, b"not zstd at all", b""] {
            let stored = seal_compressed(binding(), &keyring(), 64, compressed);
            assert_eq!(code(&stored), "ARTIFACT_CORRUPT_STREAM");
        }
        let stored = seal_compressed(binding(), &keyring(), 7, &one);
        assert!(drain(&stored).is_ok());
    }

    #[test]
    fn same_data_key_other_binding_still_fails() {
        // Even if two artifacts shared a data key (they never do), the AAD
        // binds chunks to org, record and header.
        let raw = [7u8; 32];
        let other = ArtifactBinding {
            organization_id: uuid::Uuid::from_u128(0x99),
            ..binding()
        };
        let write = |b: ArtifactBinding| {
            let dek = DataKey::from_bytes(zeroize::Zeroizing::new(raw));
            let mut w =
                ArtifactWriter::with_data_key(Vec::new(), &keyring(), b, 1, 32, dek).unwrap();
            w.begin_table(&TableHeader {
                name: "t".into(),
                columns: vec![],
            })
            .unwrap();
            w.write_rows(&[b'x'; 500]).unwrap();
            w.end_table().unwrap();
            w.finish().unwrap().1
        };
        let mine = write(binding());
        let theirs = write(other);
        let (hdr_len_mine, hdr_len_theirs) = (header_len(&mine), header_len(&theirs));
        // Our header + their chunks.
        let spliced = [&mine[..hdr_len_mine], &theirs[hdr_len_theirs..]].concat();
        assert_eq!(code(&spliced), "ARTIFACT_CHUNK_AUTH_FAILED");
    }

    fn header_len(stored: &[u8]) -> usize {
        14 + u32::from_be_bytes(stored[10..14].try_into().unwrap()) as usize
    }

    #[test]
    fn reader_poisons_after_error() {
        let rows = b"1\n";
        let mut s = table_begin("t");
        s.extend(frame(TAG_ROWS, rows));
        s.extend(frame(TAG_TABLE_END, &table_end_payload(5, &sha(rows))));
        let stored = seal_frames(&s);
        let mut r = ArtifactReader::open(&stored[..], &keyring(), binding()).unwrap();
        r.next_table().unwrap().unwrap();
        let first = loop {
            match r.next_rows() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("mismatch not detected"),
                Err(e) => break e,
            }
        };
        assert_eq!(r.next_rows().unwrap_err(), first);
        assert_eq!(r.next_table().unwrap_err(), first);
        assert_eq!(r.finish().unwrap_err(), first);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary frame-stream bytes behind a valid AEAD layer never
        /// panic or hang.
        #[test]
        fn arbitrary_frames_never_panic(
            prefix in prop_oneof![Just(Vec::new()), Just(table_begin("t"))],
            body in proptest::collection::vec(any::<u8>(), 0..400),
        ) {
            let _ = drain(&seal_frames(&[prefix, body].concat()));
        }

        /// Arbitrary "compressed" bytes never panic or hang.
        #[test]
        fn arbitrary_compressed_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..400),
            chunk_size in 1usize..100,
        ) {
            let stored = seal_compressed(binding(), &keyring(), chunk_size, &body);
            let _ = drain(&stored);
        }
    }
}
