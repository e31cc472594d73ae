//! An order-independent digest of a set of COPY text rows.
//!
//! A restore computes it twice: over the rows it streams into `COPY … FROM STDIN` (whose
//! ordered SHA-256 the artifact reader has just checked against the manifest), and over the
//! rows it reads back out of the staging tables. Equal digests and counts mean the staging
//! tables hold exactly the backup's rows. Because the digest does not depend on row order,
//! a large table is read back in block ranges over several connections at once.
//!
//! Each row (its bytes without the `\n`; COPY text escapes newlines inside values) is hashed
//! with seeded XXH3-128 and the hashes are added modulo 2^128. The seed is random per
//! restore, so the rows that would collide are unknown in advance; the digest guards
//! against PostgreSQL storing something other than what was sent, while the artifact's
//! authenticity comes from its AEAD tags and SHA-256.
//!
//! The read-back side also checks the tenant column of every row.

use xxhash_rust::xxh3::xxh3_128_with_seed;

/// Digest of some rows; digests of disjoint parts of a table add up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowSet {
    pub rows: u64,
    pub sum: u128,
    /// Rows whose tenant column is not the expected organization (read-back side only).
    pub foreign: u64,
}

impl RowSet {
    pub fn combine(self, other: RowSet) -> RowSet {
        RowSet {
            rows: self.rows + other.rows,
            sum: self.sum.wrapping_add(other.sum),
            foreign: self.foreign + other.foreign,
        }
    }

    /// Same rows (as a multiset), whatever the order.
    pub fn same_rows(&self, other: &RowSet) -> bool {
        self.rows == other.rows && self.sum == other.sum
    }
}

/// The input ended inside a row (no final `\n`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ROWSET_PARTIAL_ROW: the row stream ends inside a row")]
pub struct PartialRow;

/// Incremental [`RowSet`] over COPY text split at arbitrary points.
pub struct RowDigest {
    seed: u64,
    set: RowSet,
    /// The unfinished row of the previous `update`.
    carry: Vec<u8>,
    /// (field index, expected text) of the tenant column.
    tenant: Option<(usize, Vec<u8>)>,
}

impl RowDigest {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            set: RowSet::default(),
            carry: Vec::new(),
            tenant: None,
        }
    }

    /// Also count rows whose field `column` (0-based) is not exactly `value`.
    pub fn with_tenant(mut self, column: usize, value: &str) -> Self {
        self.tenant = Some((column, value.as_bytes().to_vec()));
        self
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        if !self.carry.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                None => {
                    self.carry.extend_from_slice(bytes);
                    return;
                }
                Some(i) => {
                    let mut row = std::mem::take(&mut self.carry);
                    row.extend_from_slice(&bytes[..i]);
                    self.row(&row);
                    row.clear();
                    self.carry = row; // keep the allocation
                    bytes = &bytes[i + 1..];
                }
            }
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', bytes) {
            self.row(&bytes[start..end]);
            start = end + 1;
        }
        self.carry.extend_from_slice(&bytes[start..]);
    }

    fn row(&mut self, row: &[u8]) {
        self.set.rows += 1;
        self.set.sum = self
            .set
            .sum
            .wrapping_add(xxh3_128_with_seed(row, self.seed));
        if let Some((column, value)) = &self.tenant
            && row.split(|b| *b == b'\t').nth(*column) != Some(value.as_slice())
        {
            self.set.foreign += 1;
        }
    }

    pub fn finish(self) -> Result<RowSet, PartialRow> {
        if self.carry.is_empty() {
            Ok(self.set)
        } else {
            Err(PartialRow)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn digest(seed: u64, parts: &[&[u8]]) -> RowSet {
        let mut d = RowDigest::new(seed);
        for p in parts {
            d.update(p);
        }
        d.finish().unwrap()
    }

    fn rows_text(rows: &[Vec<u8>]) -> Vec<u8> {
        rows.iter()
            .flat_map(|r| r.iter().copied().chain([b'\n']))
            .collect()
    }

    fn row_strategy() -> impl Strategy<Value = Vec<u8>> {
        // COPY text rows: any bytes but a raw newline.
        proptest::collection::vec(
            any::<u8>().prop_filter("no newline", |b| *b != b'\n'),
            0..40,
        )
    }

    proptest! {
        #[test]
        fn split_points_do_not_matter(rows in proptest::collection::vec(row_strategy(), 0..30),
                                      cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
                                      seed in any::<u64>()) {
            let text = rows_text(&rows);
            let whole = digest(seed, &[&text]);
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(text.len() + 1)).collect();
            at.sort();
            let mut parts = Vec::new();
            let mut prev = 0;
            for a in at {
                parts.push(&text[prev..a]);
                prev = a;
            }
            parts.push(&text[prev..]);
            prop_assert_eq!(digest(seed, &parts), whole);
            prop_assert_eq!(whole.rows, rows.len() as u64);
        }

        #[test]
        fn order_does_not_matter_and_parts_combine(rows in proptest::collection::vec(row_strategy(), 1..30),
                                                   split in any::<prop::sample::Index>(),
                                                   seed in any::<u64>()) {
            let whole = digest(seed, &[&rows_text(&rows)]);
            let mut reversed = rows.clone();
            reversed.reverse();
            prop_assert_eq!(digest(seed, &[&rows_text(&reversed)]), whole);
            let k = split.index(rows.len() + 1);
            let a = digest(seed, &[&rows_text(&rows[..k])]);
            let b = digest(seed, &[&rows_text(&rows[k..])]);
            prop_assert!(a.combine(b).same_rows(&whole));
        }

        #[test]
        fn any_changed_byte_changes_the_digest(rows in proptest::collection::vec(row_strategy(), 1..20),
                                               at in any::<prop::sample::Index>(),
                                               flip in 1u8..=255,
                                               seed in any::<u64>()) {
            let text = rows_text(&rows);
            let pos = at.index(text.len());
            let mut changed = text.clone();
            changed[pos] ^= flip;
            // A flip into or out of '\n' changes the rows' split instead: still a different set.
            let whole = digest(seed, &[&text]);
            let mut d = RowDigest::new(seed);
            d.update(&changed);
            // A flip that leaves a partial row is caught by `finish` itself.
            if let Ok(other) = d.finish() {
                prop_assert!(!other.same_rows(&whole));
            }
        }
    }

    #[test]
    fn duplicates_count_and_empty_rows_are_rows() {
        let one = digest(1, &[b"a\tb\n"]);
        let two = digest(1, &[b"a\tb\na\tb\n"]);
        assert_eq!(two.rows, 2);
        assert!(!one.same_rows(&two));
        assert_eq!(digest(1, &[b"\n\n"]).rows, 2);
        assert_eq!(digest(1, &[b""]), RowSet::default());
        // The seed changes every hash.
        assert_ne!(digest(1, &[b"x\n"]).sum, digest(2, &[b"x\n"]).sum);
    }

    #[test]
    fn a_missing_final_newline_is_a_partial_row() {
        let mut d = RowDigest::new(7);
        d.update(b"a\nb");
        assert_eq!(d.finish(), Err(PartialRow));
    }

    #[test]
    fn tenant_column_is_checked_per_row() {
        let org = "0b0b0b0b-0000-4000-8000-00000000be0c";
        let mut d = RowDigest::new(3).with_tenant(1, org);
        d.update(format!("1\t{org}\tx\n2\tother\tx\n3\t{org}").as_bytes());
        d.update(b"\n4\n");
        let s = d.finish().unwrap();
        assert_eq!(s.rows, 4);
        assert_eq!(s.foreign, 2); // "other" and a row without that column
    }
}
