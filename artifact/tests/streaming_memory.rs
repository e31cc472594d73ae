//! Streaming: 64 MiB of rows flow writer → OS pipe → reader on two threads
//! with nothing stored in between, while a counting global allocator checks
//! that the Rust heap stays flat (no code path accumulates a table or the
//! artifact). zstd's own C allocations are not counted; they are bounded by
//! its window size.
//!
//! This file holds a single test so no other test disturbs the counters.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use drfleet_artifact::{ArtifactReader, ArtifactWriter, HashingWriter};

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const TOTAL: usize = 64 << 20;
const BUF: usize = 1 << 20;

/// Deterministic COPY-like rows, produced into a reused buffer.
struct RowGen {
    i: u64,
    state: u64,
}
impl RowGen {
    fn fill(&mut self, buf: &mut Vec<u8>) {
        use std::io::Write as _;
        buf.clear();
        while buf.len() < BUF - 200 {
            self.state = self
                .state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            writeln!(
                buf,
                "{}\tuser-{}@example.com\t{:x}\t\\N\tsome text with \\t escapes",
                self.i,
                self.state % 100_000,
                self.state
            )
            .unwrap();
            self.i += 1;
        }
    }
}

#[test]
fn sixty_four_mib_stream_with_flat_memory() {
    let (reader_end, writer_end) = std::io::pipe().unwrap();
    let baseline = CURRENT.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);

    let writer = std::thread::spawn(move || {
        let sink = HashingWriter::new(writer_end);
        let mut w = ArtifactWriter::new(sink, &ring(), binding(), 1).unwrap();
        let mut gen_ = RowGen { i: 0, state: 1 };
        let mut buf = Vec::with_capacity(BUF);
        let mut expected = HashingWriter::new(std::io::sink());
        let mut sent = 0;
        w.begin_table(&header("public.big")).unwrap();
        while sent < TOTAL {
            gen_.fill(&mut buf);
            w.write_rows(&buf).unwrap();
            std::io::Write::write_all(&mut expected, &buf).unwrap();
            sent += buf.len();
        }
        let entry = w.end_table().unwrap();
        let (manifest, sink) = w.finish().unwrap();
        let (pipe, stored, stored_sha) = sink.finish();
        drop(pipe);
        let (_, plain_len, plain_sha) = expected.finish();
        assert_eq!(entry.sha256, plain_sha);
        assert_eq!(entry.row_count, gen_.i);
        assert_eq!(manifest.byte_size, stored);
        assert_eq!(manifest.checksum_sha256, stored_sha);
        (plain_len, manifest)
    });

    let reader = std::thread::spawn(move || {
        let mut r = ArtifactReader::open(reader_end, &ring(), binding()).unwrap();
        let mut got = 0u64;
        r.next_table().unwrap().unwrap();
        while let Some(piece) = r.next_rows().unwrap() {
            got += piece.len() as u64;
        }
        assert!(r.next_table().unwrap().is_none());
        (got, r.finish().unwrap())
    });

    let (plain_len, manifest) = writer.join().unwrap();
    let (got, summary) = reader.join().unwrap();
    assert!(plain_len >= TOTAL as u64);
    assert_eq!(got, plain_len);
    assert_eq!(summary.tables, manifest.tables);
    assert_eq!(summary.checksum_sha256, manifest.checksum_sha256);

    let peak = PEAK.load(Ordering::Relaxed) - baseline;
    // Writer: 1 MiB chunk buffer + 1 MiB row buffer; reader: 1 MiB chunk +
    // 256 KiB decode buffer; plus small change. Far below the 64 MiB moved.
    eprintln!("peak Rust heap: {peak} bytes");
    assert!(peak < 8 << 20, "peak Rust heap {peak} bytes");
}
