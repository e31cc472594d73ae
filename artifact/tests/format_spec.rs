//! Decodes an artifact independently of the crate's reader, following only
//! docs/artifact-format.md, to pin the documented byte layouts (DEK AAD,
//! chunk nonce/AAD, zstd layer, frame stream, trailers, fingerprint).

mod common;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use base64::Engine as _;
use common::*;
use sha2::{Digest, Sha256};

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

#[test]
fn independent_decoder_follows_the_spec() {
    let tables = sample_tables();
    let (manifest, stored) = write(&tables, 100);

    // §2 prefix and §3 header.
    assert_eq!(&stored[..8], b"DRFLART1");
    assert_eq!(u16::from_be_bytes([stored[8], stored[9]]), 1);
    let header_len = be32(&stored[10..]) as usize;
    let header_end = 14 + header_len;
    let header_sha256 = Sha256::digest(&stored[..header_end]);
    let h: serde_json::Value = serde_json::from_slice(&stored[14..header_end]).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let wrap_nonce: [u8; 12] = b64
        .decode(h["wrapped_key_nonce"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let mut wrapped = b64.decode(h["wrapped_key"].as_str().unwrap()).unwrap();
    assert_eq!(wrapped.len(), 48);
    let org = binding().organization_id;
    let rec = binding().backup_record_id;

    // §3.1 DEK unwrap with the master key 0x11 * 32.
    let mut dek_aad = b"drfleet-dek-v1".to_vec();
    dek_aad.extend_from_slice(org.as_bytes());
    dek_aad.extend_from_slice(rec.as_bytes());
    dek_aad.extend_from_slice(b"k1");
    let master = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0x11; 32]).unwrap());
    let dek = master
        .open_in_place(
            Nonce::assume_unique_for_key(wrap_nonce),
            Aad::from(&dek_aad),
            &mut wrapped,
        )
        .unwrap()
        .to_vec();
    let dek = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &dek).unwrap());

    // §4 chunks.
    let mut compressed = Vec::new();
    let mut pos = header_end;
    let mut index = 0u64;
    loop {
        let prefix = be32(&stored[pos..]);
        let last = prefix >> 31 == 1;
        let sealed_len = (prefix & 0x7FFF_FFFF) as usize;
        if !last {
            assert_eq!(sealed_len, 100 + 16);
        }
        let mut sealed = stored[pos + 4..pos + 4 + sealed_len].to_vec();
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&index.to_be_bytes());
        let mut aad = b"drfleet-chunk-v1".to_vec();
        aad.extend_from_slice(org.as_bytes());
        aad.extend_from_slice(rec.as_bytes());
        aad.extend_from_slice(&header_sha256);
        aad.extend_from_slice(&index.to_be_bytes());
        aad.push(u8::from(last));
        assert_eq!(aad.len(), 89);
        let plain = dek
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut sealed,
            )
            .unwrap();
        compressed.extend_from_slice(plain);
        pos += 4 + sealed_len;
        index += 1;
        if last {
            break;
        }
    }
    assert_eq!(pos, stored.len(), "nothing after the final chunk");

    // §5 exactly one zstd frame.
    assert_eq!(
        zstd::zstd_safe::find_frame_compressed_size(&compressed).unwrap(),
        compressed.len()
    );
    let plain = zstd::stream::decode_all(&compressed[..]).unwrap();

    // §6 frame stream.
    let mut p = &plain[..];
    let mut next = || {
        let tag = p[0];
        let len = be32(&p[1..]) as usize;
        let payload = p[5..5 + len].to_vec();
        p = &p[5 + len..];
        (tag, payload)
    };
    for (i, (header, pieces)) in tables.iter().enumerate() {
        let (tag, payload) = next();
        assert_eq!(tag, 1);
        let th: drfleet_artifact::TableHeader = serde_json::from_slice(&payload).unwrap();
        assert_eq!(&th, header);
        let mut rows = Vec::new();
        let (tag, payload) = loop {
            let (tag, payload) = next();
            if tag != 2 {
                break (tag, payload);
            }
            assert!(!payload.is_empty());
            rows.extend_from_slice(&payload);
        };
        assert_eq!(rows, pieces.concat());
        assert_eq!(tag, 3);
        assert_eq!(payload.len(), 40);
        let count = rows.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(be64(&payload), count);
        assert_eq!(payload[8..], Sha256::digest(&rows)[..]);
        assert_eq!(manifest.tables[i].row_count, count);

        // §7 schema fingerprint.
        let mut fp = Sha256::new();
        fp.update(b"drfleet-schema-v1\0");
        fp.update((header.columns.len() as u32).to_be_bytes());
        for c in &header.columns {
            fp.update((c.name.len() as u32).to_be_bytes());
            fp.update(c.name.as_bytes());
            fp.update((c.data_type.len() as u32).to_be_bytes());
            fp.update(c.data_type.as_bytes());
            fp.update([u8::from(c.nullable)]);
        }
        assert_eq!(
            manifest.tables[i].schema_fingerprint,
            hex::encode(fp.finalize())
        );
    }
    let (tag, payload) = next();
    assert_eq!(tag, 4);
    assert_eq!(be64(&payload), tables.len() as u64);
    assert_eq!(be64(&payload[8..]), manifest.row_count);
    assert!(p.is_empty());

    // §8 manifest checksum of the stored bytes.
    assert_eq!(
        manifest.checksum_sha256,
        hex::encode(Sha256::digest(&stored))
    );
}

#[test]
fn data_keys_and_wrapping_nonces_are_fresh_per_artifact() {
    let (_, a) = write(&[], 64);
    let (_, b) = write(&[], 64);
    let header = |s: &[u8]| {
        let len = be32(&s[10..]) as usize;
        serde_json::from_slice::<serde_json::Value>(&s[14..14 + len]).unwrap()
    };
    let (ha, hb) = (header(&a), header(&b));
    assert_ne!(ha["wrapped_key_nonce"], hb["wrapped_key_nonce"]);
    assert_ne!(ha["wrapped_key"], hb["wrapped_key"]);
    // Same empty content, different ciphertext.
    assert_ne!(a, b);
}
