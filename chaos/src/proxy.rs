//! A TCP proxy in front of PostgreSQL and of the S3 server: the workers reach both only
//! through it, so the harness can cut, stall and slow their connections without touching
//! anybody else's.
//!
//! Modes: pass; slow (each chunk waits a delay in each direction); stall (nothing moves, new
//! connections are accepted and hang); down (the listener is closed, so a connect is refused
//! as by a stopped server, and every open connection is reset). [`Proxy::reset`] resets every
//! open connection (RST, as a dropped link or a killed server process does).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Slow(Duration),
    Stall,
    Down,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Cancelled to reset every connection opened under it; replaced by a fresh one.
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listen on a free loopback port and forward to `target`.
    pub async fn start(target: SocketAddr, stop: CancellationToken) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        tokio::spawn(accept_loop(
            listener,
            addr,
            target,
            rx,
            generation.clone(),
            stop.clone(),
        ));
        Ok(Self {
            addr,
            mode,
            generation,
            stop,
        })
    }

    pub fn set(&self, mode: Mode) {
        if mode == Mode::Down {
            self.reset();
        }
        self.mode.send_replace(mode);
    }

    /// Reset every open connection.
    pub fn reset(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        g.cancel();
        *g = self.stop.child_token();
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    generation: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
) {
    let mut listener = Some(listener);
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Down {
            // A stopped server: nothing listens on the port.
            listener = None;
            tokio::select! {
                _ = stop.cancelled() => return,
                r = mode.changed() => if r.is_err() { return },
            }
            continue;
        }
        if listener.is_none() {
            match bind_again(addr, &stop).await {
                Some(l) => listener = Some(l),
                None => return,
            }
        }
        let Some(l) = listener.as_ref() else { continue };
        tokio::select! {
            _ = stop.cancelled() => return,
            r = mode.changed() => if r.is_err() { return },
            acc = l.accept() => {
                let Ok((inbound, _)) = acc else { continue };
                let token = generation.lock().unwrap_or_else(|p| p.into_inner()).clone();
                tokio::spawn(connection(inbound, target, mode.clone(), token));
            }
        }
    }
}

/// The port is ours again after a short while (a closed listener leaves no TIME_WAIT that
/// blocks a bind with SO_REUSEADDR, which tokio sets).
async fn bind_again(addr: SocketAddr, stop: &CancellationToken) -> Option<TcpListener> {
    loop {
        if let Ok(l) = TcpListener::bind(addr).await {
            return Some(l);
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

async fn connection(
    inbound: TcpStream,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    token: CancellationToken,
) {
    let outbound = tokio::select! {
        _ = token.cancelled() => { reset_stream(&inbound); return; }
        c = TcpStream::connect(target) => match c {
            Ok(c) => c,
            Err(_) => { reset_stream(&inbound); return; }
        },
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    let up = pump(in_r, out_w, mode.clone());
    let down = pump(out_r, in_w, mode);
    tokio::pin!(up, down);
    let mut up_done = false;
    let mut down_done = false;
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                // Dropping the halves with SO_LINGER 0 sends RST both ways.
                return;
            }
            r = &mut up, if !up_done => { up_done = true; if r.is_err() { return; } }
            r = &mut down, if !down_done => { down_done = true; if r.is_err() { return; } }
        }
        if up_done && down_done {
            return;
        }
    }
}

fn reset_stream(s: &TcpStream) {
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
}

/// Copy one direction, obeying the mode before each chunk. Sets SO_LINGER 0 on both sockets
/// first, so a connection dropped by a reset ends with RST rather than a clean FIN.
async fn pump(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) -> std::io::Result<()> {
    reset_stream(rd.as_ref());
    reset_stream(wr.as_ref());
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            let _ = wr.shutdown().await;
            return Ok(());
        }
        loop {
            let m = *mode.borrow_and_update();
            match m {
                Mode::Pass => break,
                Mode::Slow(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Stall => {
                    let _ = mode.changed().await;
                }
                Mode::Down => return Err(std::io::ErrorKind::ConnectionReset.into()),
            }
        }
        wr.write_all(&buf[..n]).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await?;
        Ok(b.to_vec())
    }

    #[tokio::test]
    async fn forwards_resets_stalls_and_goes_down() {
        let stop = CancellationToken::new();
        let p = Proxy::start(echo_server().await, stop.clone())
            .await
            .unwrap();
        assert_eq!(roundtrip(p.addr).await.unwrap(), b"ping");

        // An open connection is reset.
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(b"a").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        p.reset();
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        assert!(matches!(r, Ok(Err(_)) | Ok(Ok(0))), "{r:?}");

        // Stalled: nothing comes back until the stall ends.
        p.set(Mode::Stall);
        let pending = tokio::spawn(roundtrip(p.addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!pending.is_finished());
        p.set(Mode::Pass);
        assert_eq!(pending.await.unwrap().unwrap(), b"ping");

        // Down: refused; up again: served on the same port.
        p.set(Mode::Down);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(TcpStream::connect(p.addr).await.is_err());
        p.set(Mode::Pass);
        let back = async {
            loop {
                if let Ok(v) = roundtrip(p.addr).await {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let v = tokio::time::timeout(Duration::from_secs(5), back)
            .await
            .unwrap();
        assert_eq!(v, b"ping");
        stop.cancel();
    }
}
