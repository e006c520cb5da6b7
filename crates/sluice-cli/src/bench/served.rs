//! `serve:DIR` and `serve-http:DIR` URLs: the bench starts `sluice serve --data DIR` itself
//! (this same binary, as a child process on free loopback ports), runs the workload against
//! it over `sluice://` (`serve:`) or through its HTTP data API (`serve-http:`), reports the
//! server's CPU time and peak memory with the figures, and stops it (SIGTERM: a graceful
//! shutdown) at the end.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::workload::{self, BackendResult};
use super::BenchArgs;

fn free_addr() -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// Runs the workload against a `sluice serve` started on `dir`: over `sluice://`, or with
/// `http` through its HTTP data API.
pub(crate) async fn run(dir: &str, args: &BenchArgs, http: bool) -> anyhow::Result<BackendResult> {
    let listen = free_addr()?;
    let http_addr = if http { free_addr()? } else { "off".to_owned() };
    let exe = std::env::current_exe().context("finding the sluice binary")?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "serve", "--data", dir, "--listen", &listen, "--http", &http_addr,
        ])
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
    let ready = if http { &http_addr } else { &listen };
    while tokio::net::TcpStream::connect(ready).await.is_err() {
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
            "sluice serve --data {dir} did not listen on {ready} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let result = if http {
        super::http_api::run(&format!("http://{http_addr}"), args, Some(&pid)).await
    } else {
        workload::run_with(&format!("sluice://{listen}"), args, Some(&pid)).await
    };
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
    result.url = format!("{}:{dir}", if http { "serve-http" } else { "serve" });
    Ok(result)
}
