//! What the CLI's integration tests share: a free port, and `sluice serve` as a child
//! process that is killed when dropped.
#![allow(dead_code)] // each test binary uses a part of it

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `sluice ARGS` with `SLUICE_URL=url` (and `stdin` piped in); returns the exit code
/// (-1 if killed by a signal), stdout and stderr.
pub(crate) fn run_sluice(url: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("wait for sluice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free loopback port (bound, then released for the server to take).
pub(crate) fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// `sluice serve` on `data` at `addr` (no HTTP), running until dropped (then SIGKILLed).
pub(crate) struct Served(Option<Child>);

impl Served {
    /// Starts it and waits (with a deadline) until it accepts connections; its standard
    /// error goes to `stderr`.
    pub(crate) fn start_with(data: &Path, addr: SocketAddr, stderr: Stdio) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "serve",
                "--http",
                "off",
                "--listen",
                &addr.to_string(),
                "--data",
            ])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn sluice serve");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "sluice serve did not start listening on {addr} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self(Some(child))
    }

    /// The process.
    pub(crate) fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("a running server")
    }

    /// The process, no longer killed on drop (to wait for it yourself).
    pub(crate) fn into_child(mut self) -> Child {
        self.0.take().expect("a running server")
    }

    /// Starts it with its standard error discarded.
    pub(crate) fn start(data: &Path, addr: SocketAddr) -> Self {
        Self::start_with(data, addr, Stdio::null())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
