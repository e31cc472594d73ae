//! Streaming artifact writer.
//!
//! Data path per `write_rows` call (no per-row work, no copies of the
//! caller's buffer): SHA-256 + newline count over the slice, then frame
//! header + slice into the zstd encoder, whose output lands directly in the
//! current chunk buffer; full chunks are sealed in place and written to the
//! sink through a hashing wrapper. Memory is bounded by the chunk buffer and
//! zstd's window, independent of table or artifact size.

use std::io::Write;

use zstd::stream::raw::{Encoder, InBuffer, Operation, OutBuffer};

use crate::container::{ChunkSealer, MAX_CHUNK_SIZE, encode_header};
use crate::error::ArtifactError;
use crate::frames::{
    self, MAX_ROWS_FRAME, MAX_TABLE_HEADER_LEN, TAG_ROWS, TAG_STREAM_END, TAG_TABLE_BEGIN,
    TAG_TABLE_END,
};
use crate::hashing::Sha256;
use crate::keys::{DataKey, Keyring, MAX_KEY_ID_LEN};
use crate::manifest::{ArtifactBinding, ColumnDef, Manifest, TableHeader, TableManifest};
use crate::{CIPHER_NAME, COMPRESSION_NAME, DEFAULT_CHUNK_SIZE};

struct OpenTable {
    name: String,
    columns: Vec<ColumnDef>,
    hasher: Sha256,
    rows: u64,
}

/// Writes one artifact. Call `begin_table` / `write_rows`* / `end_table` per
/// table, then `finish`. Dropping the writer without `finish` leaves an
/// artifact without its final chunk, which readers reject as truncated.
pub struct ArtifactWriter<W: Write> {
    sealer: ChunkSealer<W>,
    encoder: Encoder<'static>,
    binding: ArtifactBinding,
    key_id: String,
    chunk_size: usize,
    table: Option<OpenTable>,
    tables: Vec<TableManifest>,
    total_rows: u64,
    /// Set by the first I/O or internal failure; the output is unusable
    /// afterwards, so every later call returns the same error.
    poisoned: Option<ArtifactError>,
}

impl<W: Write> ArtifactWriter<W> {
    /// Generates a fresh random data key, wraps it with the keyring's current
    /// key and writes the header. Uses [`DEFAULT_CHUNK_SIZE`].
    pub fn new(
        sink: W,
        keyring: &Keyring,
        binding: ArtifactBinding,
        zstd_level: i32,
    ) -> Result<Self, ArtifactError> {
        Self::with_chunk_size(sink, keyring, binding, zstd_level, DEFAULT_CHUNK_SIZE)
    }

    /// Like [`ArtifactWriter::new`] with an explicit chunk size
    /// (1..=64 MiB compressed bytes per chunk).
    pub fn with_chunk_size(
        sink: W,
        keyring: &Keyring,
        binding: ArtifactBinding,
        zstd_level: i32,
        chunk_size: usize,
    ) -> Result<Self, ArtifactError> {
        Self::with_data_key(
            sink,
            keyring,
            binding,
            zstd_level,
            chunk_size,
            DataKey::generate()?,
        )
    }

    pub(crate) fn with_data_key(
        sink: W,
        keyring: &Keyring,
        binding: ArtifactBinding,
        zstd_level: i32,
        chunk_size: usize,
        data_key: DataKey,
    ) -> Result<Self, ArtifactError> {
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(ArtifactError::InvalidArgument {
                detail: "chunk size must be between 1 byte and 64 MiB",
            });
        }
        if !zstd::compression_level_range().contains(&zstd_level) {
            return Err(ArtifactError::InvalidArgument {
                detail: "zstd level out of range",
            });
        }
        let master = keyring.current();
        if master.id().is_empty() || master.id().len() > MAX_KEY_ID_LEN {
            return Err(ArtifactError::InvalidArgument {
                detail: "master key id must be 1..=256 bytes",
            });
        }
        let encoder = Encoder::new(zstd_level).map_err(|_| ArtifactError::InvalidArgument {
            detail: "zstd encoder could not be created",
        })?;
        let wrapped = data_key.wrap(master, binding.organization_id, binding.backup_record_id)?;
        let version = crate::container_version(master.scope());
        let header = encode_header(version, binding, master.id(), &wrapped, chunk_size);
        let sealer = ChunkSealer::new(sink, data_key, binding, &header, chunk_size)?;
        Ok(Self {
            sealer,
            encoder,
            binding,
            key_id: master.id().to_owned(),
            chunk_size,
            table: None,
            tables: Vec::new(),
            total_rows: 0,
            poisoned: None,
        })
    }

    /// Opens a table section.
    pub fn begin_table(&mut self, header: &TableHeader) -> Result<(), ArtifactError> {
        self.check_poison()?;
        if self.table.is_some() {
            return Err(ArtifactError::InvalidState {
                detail: "begin_table called while a table is open",
            });
        }
        let json = serde_json::to_vec(header).expect("table header serializes to JSON");
        if json.len() > MAX_TABLE_HEADER_LEN {
            return Err(ArtifactError::InvalidArgument {
                detail: "table header exceeds 1 MiB",
            });
        }
        self.guarded(|w| {
            w.compress(&frames::frame_header(TAG_TABLE_BEGIN, json.len()))?;
            w.compress(&json)
        })?;
        self.table = Some(OpenTable {
            name: header.name.clone(),
            columns: header.columns.clone(),
            hasher: Sha256::new(),
            rows: 0,
        });
        Ok(())
    }

    /// Appends raw COPY TEXT bytes to the open table. Rows may be split
    /// anywhere across calls; rows are counted as `\n` bytes.
    pub fn write_rows(&mut self, copy_bytes: &[u8]) -> Result<(), ArtifactError> {
        self.check_poison()?;
        let Some(table) = self.table.as_mut() else {
            return Err(ArtifactError::InvalidState {
                detail: "write_rows called without an open table",
            });
        };
        if copy_bytes.is_empty() {
            return Ok(());
        }
        table.hasher.update(copy_bytes);
        table.rows += frames::count_rows(copy_bytes);
        self.guarded(|w| {
            for piece in copy_bytes.chunks(MAX_ROWS_FRAME) {
                w.compress(&frames::frame_header(TAG_ROWS, piece.len()))?;
                w.compress(piece)?;
            }
            Ok(())
        })
    }

    /// Closes the open table, writing its in-stream trailer (row count and
    /// SHA-256), and returns its manifest entry.
    pub fn end_table(&mut self) -> Result<TableManifest, ArtifactError> {
        self.check_poison()?;
        let Some(table) = self.table.take() else {
            return Err(ArtifactError::InvalidState {
                detail: "end_table called without an open table",
            });
        };
        let sha = table.hasher.finish();
        let rows = table.rows;
        self.guarded(|w| {
            w.compress(&frames::frame_header(TAG_TABLE_END, frames::TABLE_END_LEN))?;
            w.compress(&frames::table_end_payload(rows, &sha))
        })?;
        let entry = TableManifest {
            schema_fingerprint: crate::manifest::schema_fingerprint(&table.columns),
            name: table.name,
            row_count: rows,
            sha256: hex::encode(sha),
            columns: table.columns,
            reach: None,
        };
        self.total_rows += rows;
        self.tables.push(entry.clone());
        Ok(entry)
    }

    /// Writes the stream trailer, ends the zstd frame, seals the final chunk,
    /// flushes the sink and returns the manifest (with `snapshot_at: None`)
    /// and the sink.
    pub fn finish(mut self) -> Result<(Manifest, W), ArtifactError> {
        self.check_poison()?;
        if self.table.is_some() {
            return Err(ArtifactError::InvalidState {
                detail: "finish called while a table is open",
            });
        }
        let table_count = self.tables.len() as u64;
        let total_rows = self.total_rows;
        self.compress(&frames::frame_header(
            TAG_STREAM_END,
            frames::STREAM_END_LEN,
        ))?;
        self.compress(&frames::stream_end_payload(table_count, total_rows))?;
        self.end_zstd_frame()?;
        let (sink, byte_size, checksum_sha256) = self.sealer.finish()?;
        let manifest = Manifest {
            format_version: crate::MANIFEST_VERSION,
            organization_id: self.binding.organization_id,
            backup_record_id: self.binding.backup_record_id,
            key_id: self.key_id,
            tables: self.tables,
            row_count: total_rows,
            byte_size,
            checksum_sha256,
            compression: COMPRESSION_NAME.to_owned(),
            cipher: CIPHER_NAME.to_owned(),
            chunk_size: self.chunk_size as u32,
            snapshot_at: None,
            extra: serde_json::Map::new(),
            schema: None,
        };
        Ok((manifest, sink))
    }

    /// Stored bytes written to the sink so far (header + sealed chunks).
    pub fn bytes_written(&self) -> u64 {
        self.sealer.bytes_written()
    }

    fn check_poison(&self) -> Result<(), ArtifactError> {
        match &self.poisoned {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn guarded(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), ArtifactError>,
    ) -> Result<(), ArtifactError> {
        let r = f(self);
        if let Err(e) = &r {
            self.poisoned = Some(e.clone());
        }
        r
    }

    /// Feeds bytes to zstd; compressed output goes straight into the chunk
    /// buffer, which is sealed and emitted whenever it fills up.
    fn compress(&mut self, data: &[u8]) -> Result<(), ArtifactError> {
        let mut input = InBuffer::around(data);
        while input.pos() < data.len() {
            let before_in = input.pos();
            let (before_out, after_out) = {
                let (space, fill) = self.sealer.space();
                let mut out = OutBuffer::around_pos(space, fill);
                self.encoder.run(&mut input, &mut out).map_err(|_| {
                    ArtifactError::InvalidState {
                        detail: "zstd compression failed",
                    }
                })?;
                (fill, out.pos())
            };
            if input.pos() == before_in && after_out == before_out {
                return Err(ArtifactError::InvalidState {
                    detail: "zstd compression made no progress",
                });
            }
            self.sealer.set_fill(after_out)?;
        }
        Ok(())
    }

    /// Writes the zstd frame epilogue (flushing all buffered input).
    fn end_zstd_frame(&mut self) -> Result<(), ArtifactError> {
        loop {
            let (remaining, after_out) = {
                let (space, fill) = self.sealer.space();
                let mut out = OutBuffer::around_pos(space, fill);
                let remaining = self.encoder.finish(&mut out, true).map_err(|_| {
                    ArtifactError::InvalidState {
                        detail: "zstd compression failed",
                    }
                })?;
                (remaining, out.pos())
            };
            self.sealer.set_fill(after_out)?;
            if remaining == 0 {
                return Ok(());
            }
        }
    }
}
