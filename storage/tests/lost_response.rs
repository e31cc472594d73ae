//! A create-only put whose response is lost (the store wrote the object, a proxy closed the
//! connection before the answer came back) is retried by the S3 client; the retry then finds
//! the object. If it is byte for byte what we wrote, the put succeeded: the fault
//! injection suite saw `backup_failed OBJECT_EXISTS` for exactly this. Other bytes under the
//! key stay a conflict. The completion of a multipart upload (the artifact) is retried the
//! same way and must succeed too.
//!
//! Needs the S3-compatible test server (`DR_TEST_S3_ENDPOINT`, scripts/s3-test-server.sh).
//! Its own test binary: it points AWS_ENDPOINT_URL at a proxy, which no other test may see.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::Bytes;
use drfleet_infra::config::ObjectStoreLocation;
use drfleet_storage::{ArtifactStore, StorageErrorKind, keys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// What the proxy does to connections.
#[derive(Default)]
struct Lossy {
    /// The next matching request's response is swallowed and its connection closed.
    armed: AtomicBool,
    /// Matching requests forwarded to the store.
    seen: AtomicU32,
    /// Match completions of multipart uploads instead of create-only PUTs.
    completes: bool,
}

impl Lossy {
    fn matches(&self, chunk: &[u8]) -> bool {
        let text = String::from_utf8_lossy(chunk).to_ascii_lowercase();
        let line = text.lines().next().unwrap_or_default();
        if self.completes {
            line.starts_with("post ") && line.contains("uploadid=")
        } else {
            line.starts_with("put ") && text.contains("\r\nif-none-match:")
        }
    }
}

/// A TCP proxy to `upstream`: forwards everything, except that when armed it lets one
/// create-only PUT through and closes the client's connection (cleanly, as a proxy or a
/// load balancer does) instead of passing the store's answer on.
async fn proxy(upstream: SocketAddr, lossy: Arc<Lossy>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let lossy = lossy.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let swallow = Arc::new(AtomicBool::new(false));
                let up = {
                    let (lossy, swallow) = (lossy.clone(), swallow.clone());
                    async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = cr.read(&mut buf).await?;
                            if n == 0 {
                                return sw.shutdown().await;
                            }
                            if lossy.matches(&buf[..n]) {
                                lossy.seen.fetch_add(1, Ordering::SeqCst);
                                if lossy.armed.swap(false, Ordering::SeqCst) {
                                    swallow.store(true, Ordering::SeqCst);
                                }
                            }
                            sw.write_all(&buf[..n]).await?;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = sr.read(&mut buf).await?;
                        if n == 0 || swallow.load(Ordering::SeqCst) {
                            // The store has answered (or hung up): the client never hears it.
                            return cw.shutdown().await;
                        }
                        cw.write_all(&buf[..n]).await?;
                    }
                };
                let _ = tokio::try_join!(up, down);
            });
        }
    });
    addr
}

fn create_bucket(endpoint: &str, bucket: &str) {
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(hostport).expect("S3 test server reachable");
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "bucket created: {out}");
}

/// A store reached through a [`proxy`] with `lossy`, opened as the workers open it (its
/// retry settings included).
async fn lossy_store(lossy: Arc<Lossy>) -> ArtifactStore {
    let endpoint = std::env::var("DR_TEST_S3_ENDPOINT")
        .expect("DR_TEST_S3_ENDPOINT must point at an S3-compatible server (scripts/s3-test-server.sh start)");
    let upstream: SocketAddr =
        tokio::net::lookup_host(endpoint.trim_start_matches("http://").trim_end_matches('/'))
            .await
            .unwrap()
            .next()
            .unwrap();
    let bucket = format!("lost-{}", &Uuid::new_v4().simple().to_string()[..12]);
    create_bucket(&endpoint, &bucket);
    let via = proxy(upstream, lossy).await;
    // SAFETY: the tests of this binary set these to a proxy of theirs while opening their
    // store (the builder reads them then), one at a time under OPENING.
    let _one = OPENING.lock().await;
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", format!("http://{via}"));
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

static OPENING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_create_put_whose_response_was_lost_succeeds_on_retry() {
    let lossy = Arc::new(Lossy::default());
    let store = lossy_store(lossy.clone()).await;

    let (org, rec) = (Uuid::new_v4(), Uuid::new_v4());
    let key = keys::manifest(org, rec, 1);
    let body = Bytes::from_static(b"{\"manifest\":\"ours\"}");
    lossy.armed.store(true, Ordering::SeqCst);
    store.put_create(&key, body.clone()).await.unwrap();
    assert_eq!(
        lossy.seen.load(Ordering::SeqCst),
        2,
        "the first answer was lost and the client sent the put again"
    );
    assert!(!lossy.armed.load(Ordering::SeqCst));
    assert_eq!(store.get_bytes(&key).await.unwrap(), body);

    // Someone else's bytes under the key remain a conflict, and stay as they were.
    let e = store
        .put_create(&key, Bytes::from_static(b"{\"manifest\":\"theirs\"}"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, StorageErrorKind::AlreadyExists);
    assert_eq!(e.code(), "OBJECT_EXISTS");
    assert_eq!(store.get_bytes(&key).await.unwrap(), body);
}

#[tokio::test]
async fn an_upload_whose_completion_response_was_lost_succeeds_on_retry() {
    let lossy = Arc::new(Lossy {
        completes: true,
        ..Default::default()
    });
    let store = lossy_store(lossy.clone()).await;
    let key = keys::artifact(Uuid::new_v4(), Uuid::new_v4(), 1);
    let piece: Vec<u8> = (0..100_003u32).map(|i| (i % 251) as u8).collect();
    lossy.armed.store(true, Ordering::SeqCst);
    let mut up = store.upload(&key).await.unwrap();
    up.write(&piece).await.unwrap();
    assert_eq!(up.finish().await.unwrap(), piece.len() as u64);
    assert_eq!(
        lossy.seen.load(Ordering::SeqCst),
        2,
        "the first answer was lost and the client completed the upload again"
    );
    assert_eq!(store.get_bytes(&key).await.unwrap(), Bytes::from(piece));
}
