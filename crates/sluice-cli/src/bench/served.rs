//! `serve:DIR` URLs: the bench starts `sluice serve --data DIR` itself (this same binary, as a
//! child process on a free loopback port, HTTP off), runs the workload against it over
//! `sluice://`, reports the server's CPU time and peak memory with the figures, and stops it
//! (SIGTERM: a graceful shutdown) at the end.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::workload::{self, BackendResult};
use super::BenchArgs;

/// Runs the workload against a `sluice serve` started on `dir`.
pub(crate) async fn run(dir: &str, args: &BenchArgs) -> anyhow::Result<BackendResult> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let exe = std::env::current_exe().context("finding the sluice binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args(["serve", "--data", dir, "--listen", &listen, "--http", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting sluice serve")?;
    let pid = child
        .id()
        .context("sluice serve exited at once")?
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&listen).await.is_err() {
        if let Some(status) = child.try_wait()? {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                use tokio::io::AsyncReadExt as _;
                let _ = err.read_to_string(&mut stderr).await;
            }
            anyhow::bail!(
                "sluice serve --data {dir} exited ({status}): {}",
                stderr.trim()
            );
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "sluice serve --data {dir} did not listen on {listen} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("sluice://{listen}");
    let result = workload::run_with(&url, args, Some(&pid)).await;
    // A graceful stop; killed if it has not exited after 10 s.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    let mut result = result?;
    result.url = format!("serve:{dir}");
    Ok(result)
}
