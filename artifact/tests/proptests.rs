//! Property tests: arbitrary content round-trips; arbitrary or mutated
//! stored bytes never panic (and mutations are always detected).

mod common;

use common::*;
use drfleet_artifact::{ArtifactReader, ColumnDef, TableHeader};
use proptest::prelude::*;

fn arb_table() -> impl Strategy<Value = Table> {
    let header = (
        "[a-z_.]{1,20}|\\PC{0,12}",
        proptest::collection::vec(("\\PC{0,10}", "[a-z ()0-9]{1,16}", any::<bool>()), 0..5),
    )
        .prop_map(|(name, cols)| TableHeader {
            name,
            columns: cols
                .into_iter()
                .map(|(name, data_type, nullable)| ColumnDef {
                    name,
                    data_type,
                    nullable,
                })
                .collect(),
        });
    // Pieces = arbitrary split points; bytes biased towards COPY-ish content.
    let byte = prop_oneof![
        4 => any::<u8>(),
        2 => Just(b'\n'),
        1 => Just(b'\t'),
        1 => Just(b'\\'),
    ];
    let pieces = proptest::collection::vec(proptest::collection::vec(byte, 0..300), 0..6);
    (header, pieces)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_tables_round_trip(
        tables in proptest::collection::vec(arb_table(), 0..4),
        chunk_size in prop_oneof![1usize..200, Just(1usize << 20)],
    ) {
        let (manifest, stored) = write(&tables, chunk_size);
        let (read, summary) = read_all(&stored, &ring(), binding()).unwrap();
        prop_assert_eq!(read.len(), tables.len());
        for ((h, pieces), (rh, bytes)) in tables.iter().zip(&read) {
            prop_assert_eq!(rh, h);
            prop_assert_eq!(bytes, &pieces.concat());
        }
        prop_assert_eq!(&summary.tables, &manifest.tables);
        let rows: u64 = tables
            .iter()
            .map(|(_, p)| p.iter().flatten().filter(|&&b| b == b'\n').count() as u64)
            .sum();
        prop_assert_eq!(manifest.row_count, rows);
        drfleet_artifact::verify_against_manifest(&stored[..], &ring(), &manifest).unwrap();
        let back = drfleet_artifact::Manifest::from_json(&manifest.to_json()).unwrap();
        prop_assert_eq!(back, manifest);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        with_prefix in any::<bool>(),
    ) {
        // Optionally behind a valid magic + version so header parsing runs.
        let input = if with_prefix {
            [b"DRFLART1\x00\x01".to_vec(), bytes].concat()
        } else {
            bytes
        };
        let r = read_all(&input, &ring(), binding());
        prop_assert!(r.is_err());
    }

    #[test]
    fn mutated_artifacts_never_panic_and_are_rejected(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let (_, stored) = write(&sample_tables(), 64);
        let mut t = stored.clone();
        for (idx, byte, op) in edits {
            let pos = idx.index(t.len());
            match op {
                0 => t[pos] ^= byte | 1,
                1 => { t.remove(pos); }
                _ => t.insert(pos, byte),
            }
        }
        prop_assume!(t != stored);
        prop_assert!(read_all(&t, &ring(), binding()).is_err());
    }

    #[test]
    fn partial_reads_never_panic(
        stop_after in 0usize..40,
        chunk_size in 1usize..100,
    ) {
        // Abandoning a reader at any point is fine (no panic on drop).
        let (_, stored) = write(&sample_tables(), chunk_size);
        let mut r = ArtifactReader::open(&stored[..], &ring(), binding()).unwrap();
        let mut steps = 0;
        'outer: while let Some(_h) = r.next_table().unwrap() {
            while r.next_rows().unwrap().is_some() {
                steps += 1;
                if steps >= stop_after {
                    break 'outer;
                }
            }
        }
    }
}
