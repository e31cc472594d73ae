//! A minimal Chrome DevTools Protocol client over `--remote-debugging-pipe` (file
//! descriptors 3 and 4, NUL-terminated JSON messages): enough to open a page in a real
//! headless Chromium, record its console errors, exceptions and network requests, evaluate an
//! expression, take a screenshot and print it. No websocket and no browser-driver crate.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

pub struct Browser {
    child: Child,
    to_browser: std::fs::File,
    from_browser: Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    /// Events received and not yet looked at.
    pub events: VecDeque<Value>,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // Close-on-exec: other children (drctl runs) must not inherit it; dup2 in the browser's
    // child clears the flag on fds 3 and 4.
    assert_eq!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        0,
        "pipe2()"
    );
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl Browser {
    pub fn launch(chromium: &Path) -> Self {
        let profile = std::env::temp_dir().join(format!("drfleet-cdp-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).unwrap();
        // fd 3: the browser reads commands; fd 4: it writes answers and events.
        let (cmd_read, cmd_write) = pipe();
        let (evt_read, evt_write) = pipe();
        let (r3, w4) = (cmd_read.as_raw_fd(), evt_write.as_raw_fd());
        let mut cmd = Command::new(chromium);
        cmd.args([
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,2000",
            "about:blank",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first, so that neither lands on the other's target.
                let (a, b) = (
                    libc::fcntl(r3, libc::F_DUPFD, 10),
                    libc::fcntl(w4, libc::F_DUPFD, 10),
                );
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("chromium starts");
        drop(cmd_read);
        drop(evt_write);
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(std::fs::File::from(evt_read));
            loop {
                let mut buf = Vec::new();
                match r.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                            && tx.send(v).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        Self {
            child,
            to_browser: std::fs::File::from(cmd_write),
            from_browser: rx,
            next_id: 0,
            session: None,
            events: VecDeque::new(),
            _profile: TempDir(profile),
        }
    }

    fn recv(&mut self, deadline: Instant) -> Value {
        match self
            .from_browser
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(v) => v,
            Err(RecvTimeoutError::Timeout) => panic!("chromium did not answer in time"),
            Err(RecvTimeoutError::Disconnected) => panic!("chromium closed the pipe"),
        }
    }

    /// Send a command (to the attached page once there is one) and wait for its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v = self.recv(deadline);
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
            self.events.push_back(v);
        }
    }

    /// Open a new page and talk to it from now on.
    pub fn open_page(&mut self) {
        let target = self.call("Target.createTarget", json!({"url": "about:blank"}));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = attached["sessionId"].as_str().map(str::to_string);
    }

    /// Wait for an event of `method` (returns it); the others stay recorded.
    pub fn wait_event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events[i].clone();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let v = self.recv(deadline);
            self.events.push_back(v.clone());
            if v["method"] == method {
                return v;
            }
        }
    }

    /// Take in whatever arrived by now.
    pub fn drain(&mut self) {
        while let Ok(v) = self.from_browser.try_recv() {
            self.events.push_back(v);
        }
    }

    pub fn screenshot_png(&mut self) -> Vec<u8> {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }

    pub fn print_pdf(&mut self) -> Vec<u8> {
        let r = self.call("Page.printToPDF", json!({"printBackground": true}));
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
