//! One conformance suite, run against every backend: the local filesystem and an
//! S3-compatible server (`DR_TEST_S3_ENDPOINT`, started by scripts/s3-test-server.sh).

use std::io::{Read, Write};

use bytes::Bytes;
use drfleet_infra::config::ObjectStoreLocation;
use drfleet_storage::{ArtifactStore, StorageErrorKind, keys};
use futures::TryStreamExt;
use uuid::Uuid;

/// Create a bucket on the S3-compatible test server (moto accepts unsigned requests).
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).expect("S3 test server reachable");
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "bucket created: {out}");
}

fn s3_store() -> ArtifactStore {
    let endpoint = std::env::var("DR_TEST_S3_ENDPOINT")
        .expect("DR_TEST_S3_ENDPOINT must point at an S3-compatible server (scripts/s3-test-server.sh start)");
    let bucket = format!("conf-{}", &Uuid::new_v4().simple().to_string()[..12]);
    create_bucket(&endpoint, &bucket);
    // SAFETY: tests in this binary set the same values; nothing reads them concurrently
    // in a way that could observe a torn write.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    ArtifactStore::open(&ObjectStoreLocation::S3 {
        bucket,
        prefix: "drfleet".into(),
    })
    .unwrap()
}

fn local_store() -> ArtifactStore {
    let dir = std::env::temp_dir().join(format!("drfleet-conf-{}", Uuid::new_v4().simple()));
    ArtifactStore::open(&ObjectStoreLocation::Local(dir)).unwrap()
}

async fn suite(store: ArtifactStore) {
    let (org, rec) = (Uuid::new_v4(), Uuid::new_v4());
    let key = keys::artifact(org, rec, 1);

    // Streaming multipart upload larger than one part, written in odd-sized pieces.
    let mut up = store.upload(&key).await.unwrap();
    let piece: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
    let mut expected = Vec::new();
    for _ in 0..20 {
        up.write(&piece).await.unwrap();
        expected.extend_from_slice(&piece);
    }
    assert_eq!(up.finish().await.unwrap(), expected.len() as u64);
    assert_eq!(store.size(&key).await.unwrap(), expected.len() as u64);
    let got: Vec<Bytes> = store
        .get_stream(&key)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(got.concat(), expected);

    // Create-only put: a second put to the same key is refused and the first stays; the
    // same bytes again (a retried put) count as written.
    let mkey = keys::manifest(org, rec, 1);
    store
        .put_create(&mkey, Bytes::from_static(b"{\"v\":1}"))
        .await
        .unwrap();
    store
        .put_create(&mkey, Bytes::from_static(b"{\"v\":1}"))
        .await
        .unwrap();
    let err = store
        .put_create(&mkey, Bytes::from_static(b"{\"v\":2}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind, StorageErrorKind::AlreadyExists);
    assert_eq!(
        store.get_bytes(&mkey).await.unwrap(),
        Bytes::from_static(b"{\"v\":1}")
    );

    // Missing objects are NotFound, not transient.
    let missing = keys::artifact(org, Uuid::new_v4(), 1);
    let e = store.get_bytes(&missing).await.unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::NotFound);
    assert!(!e.is_transient());
    assert_eq!(
        store.size(&missing).await.unwrap_err().kind,
        StorageErrorKind::NotFound
    );

    // Delete, idempotently.
    store.delete(&key).await.unwrap();
    store.delete(&key).await.unwrap();
    assert_eq!(
        store.get_bytes(&key).await.unwrap_err().kind,
        StorageErrorKind::NotFound
    );

    // Listing and deleting under a record's prefix: every attempt, nothing of another record.
    let other = keys::manifest(org, Uuid::new_v4(), 1);
    store
        .put_create(&other, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    store
        .put_create(&keys::artifact(org, rec, 3), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let prefix = keys::record_prefix(org, rec);
    let mut listed: Vec<String> = store
        .list(&prefix)
        .await
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            keys::manifest(org, rec, 1).to_string(),
            keys::artifact(org, rec, 3).to_string()
        ]
    );
    let modified = store
        .list_modified(&keys::org_backups_prefix(org))
        .await
        .unwrap();
    assert_eq!(modified.len(), 3, "{modified:?}");
    for (k, at) in &modified {
        assert!(
            at.elapsed().unwrap() < std::time::Duration::from_secs(600),
            "{k}"
        );
        assert!(keys::record_of(k).is_some(), "{k}");
    }
    assert_eq!(keys::record_of(&keys::artifact(org, rec, 3)), Some(rec));
    assert_eq!(store.delete_prefix(&prefix).await.unwrap(), 2);
    assert!(store.list(&prefix).await.unwrap().is_empty());
    assert_eq!(store.delete_prefix(&prefix).await.unwrap(), 0);
    assert!(store.size(&other).await.is_ok());
    assert!(
        store
            .list(&keys::record_prefix(Uuid::new_v4(), Uuid::new_v4()))
            .await
            .unwrap()
            .is_empty()
    );

    // An aborted upload leaves nothing readable.
    let akey = keys::artifact(org, rec, 2);
    let mut up = store.upload(&akey).await.unwrap();
    up.write(&piece).await.unwrap();
    up.abort().await;
    assert_eq!(
        store.get_bytes(&akey).await.unwrap_err().kind,
        StorageErrorKind::NotFound
    );
}

#[tokio::test]
async fn conformance_local_filesystem() {
    suite(local_store()).await;
}

#[tokio::test]
async fn conformance_s3_compatible() {
    suite(s3_store()).await;
}

#[tokio::test]
async fn unreachable_s3_is_a_transient_error() {
    // SAFETY: see s3_store.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
    }
    let store = {
        use object_store::aws::AmazonS3Builder;
        let s3 = AmazonS3Builder::from_env()
            .with_bucket_name("nowhere")
            .with_endpoint("http://127.0.0.1:9")
            .with_allow_http(true)
            .with_retry(object_store::RetryConfig {
                max_retries: 1,
                retry_timeout: std::time::Duration::from_secs(2),
                ..Default::default()
            })
            .build()
            .unwrap();
        ArtifactStore::from_store(std::sync::Arc::new(s3))
    };
    let e = store
        .get_bytes(&keys::manifest(Uuid::new_v4(), Uuid::new_v4(), 1))
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(
        !e.to_string().contains("127.0.0.1"),
        "no endpoint in Display: {e}"
    );
}
