//! `sluice serve`: the embedded engine shared over the network until a shutdown signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sluice_server::{Auth, ConnectionLimits, Server, ServerConfig};

/// Arguments of `sluice serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Data directory of the engine (created if needed; one process at a time).
    #[arg(long, default_value = "./sluice-data")]
    data: PathBuf,
    /// Address of the `sluice://` protocol listener.
    #[arg(long, default_value = "127.0.0.1:7575")]
    listen: SocketAddr,
    /// Address of the HTTP API (the data API for other languages: publish, receive, settle,
    /// CloudEvents; the admin API), `/metrics` and the dashboard; `off` disables it.
    #[arg(long, default_value = "127.0.0.1:7576")]
    http: String,
    /// File of API tokens, one per line (`#` comments), each optionally followed by its
    /// grants: `admin`, `publish:PATTERNS`, `consume:PATTERNS` (none: everything). Also read:
    /// `SLUICE_TOKENS` (comma-separated, every grant). Without tokens the server listens on
    /// loopback addresses only.
    #[arg(long)]
    tokens_file: Option<PathBuf>,
    /// Durability: `always` (fsync before confirming), `never`, or `interval:MS`.
    #[arg(long, default_value = "always")]
    sync: String,
    /// Certificate chain (PEM): both listeners then speak TLS only (clients use
    /// `sluice://HOST:PORT?tls=true`, or `&ca=PEM` for a private CA).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Most client connections open at once; one more is refused (told why, retryable).
    #[arg(long, default_value_t = ConnectionLimits::DEFAULT_MAX_CONNECTIONS, value_parser = at_least_one)]
    max_connections: usize,
    /// Most client connections open at once from one IP address. Without tokens every
    /// client is on this machine: this is then the bound of the whole server.
    #[arg(long, default_value_t = ConnectionLimits::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, value_parser = at_least_one)]
    max_connections_per_address: usize,
    /// Time a new connection has for its TLS handshake, preface and hello.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    handshake_timeout: Duration,
    /// Time a connection with nothing in flight (no request, no consumer stream, no
    /// delivery whose lease runs) may send nothing before it is closed.
    #[arg(long, default_value = "10m", value_parser = crate::duration::parse)]
    idle_timeout: Duration,
    /// Time a frame may take from its first byte to its last.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse)]
    slow_frame_timeout: Duration,
    /// The job store your applications' `Jobs` share when they give one (`Jobs::job_store`,
    /// on RabbitMQ, SQS or Kafka): the dashboard and `/api/v1/jobs`, `/api/v1/schedules` then
    /// show their jobs and schedules, and cancel pending jobs. Without it they show the
    /// server's own store, which `Jobs` over `sluice://` uses by default.
    /// `postgres://USER@HOST:PORT/DB`, `sqlite:PATH` or `redis://HOST:PORT`.
    #[arg(long, env = "SLUICE_JOB_STORE")]
    job_store: Option<String>,
    /// The key prefix of a Redis job store (the applications' `RedisStore::with_prefix`).
    #[arg(long, default_value = "sluice")]
    redis_prefix: String,
}

/// A count of connections: a positive integer.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{text}` is not a count: {e}")),
    }
}

impl ServeArgs {
    fn limits(&self) -> ConnectionLimits {
        ConnectionLimits::default()
            .max_connections(self.max_connections)
            .max_connections_per_address(self.max_connections_per_address)
            .handshake_timeout(self.handshake_timeout)
            .idle_timeout(self.idle_timeout)
            .slow_frame_timeout(self.slow_frame_timeout)
    }
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut auth = Auth::open();
    if let Some(path) = &args.tokens_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the tokens file {}", path.display()))?;
        auth = Auth::parse(&text)
            .with_context(|| format!("the tokens file {} is not valid", path.display()))?;
    }
    if let Ok(env) = std::env::var("SLUICE_TOKENS") {
        auth = auth.merge(Auth::tokens(
            env.split(',').map(str::trim).filter(|t| !t.is_empty()),
        ));
    }
    let http = match args.http.as_str() {
        "off" | "none" => None,
        addr => Some(
            addr.parse::<SocketAddr>()
                .with_context(|| format!("--http `{addr}` is not an address (or `off`)"))?,
        ),
    };
    let sync = args.sync.parse().map_err(anyhow::Error::msg)?;
    let token_count = auth.len();
    let mut config = ServerConfig::new(&args.data)
        .listen(args.listen)
        .http(http)
        .auth(auth)
        .sync(sync)
        .limits(args.limits());
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config = config.tls(cert, key);
    }
    if let Some(url) = &args.job_store {
        let store = crate::ops::jobs::open(url, &args.redis_prefix)
            .await
            .with_context(|| format!("opening the job store {url}"))?;
        config = config.job_store(store);
    }
    let (query, http_scheme) = if args.tls_cert.is_some() {
        ("?tls=true", "https")
    } else {
        ("", "http")
    };
    let server = Server::start(config)
        .await
        .with_context(|| format!("starting sluice serve on {}", args.data.display()))?;
    eprintln!(
        "sluice serve {}: data {}, sync {}",
        env!("CARGO_PKG_VERSION"),
        args.data.display(),
        args.sync
    );
    eprintln!("  protocol   sluice://{}{query}", server.addr());
    if let Some(http) = server.http_addr() {
        eprintln!("  dashboard  {http_scheme}://{http}/   (HTTP API /api/v1, docs/http-api.md; metrics /metrics)");
    }
    if let Some(url) = &args.job_store {
        eprintln!("  jobs       {}", without_password(url));
    }
    if token_count == 0 {
        eprintln!("  auth       none: no API tokens configured, so only this machine may connect (loopback addresses)");
    } else {
        eprintln!("  auth       {token_count} API token(s); clients pass ?token= or SLUICE_TOKEN");
    }
    let stop = sluice::runtime::shutdown_on_signals();
    stop.cancelled().await;
    eprintln!("sluice serve: shutting down (finishing requests in flight, flushing)");
    server.shutdown().await.context("closing the engine")?;
    eprintln!("sluice serve: stopped cleanly");
    Ok(())
}

/// `url` with the password of its user info (`user:password@`) hidden.
fn without_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[start..];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}{}:***{}", &url[..start], &rest[..colon], &rest[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_job_store_url_is_printed_without_its_password() {
        assert_eq!(
            super::without_password("postgres://app:s3cret@db:5432/jobs"),
            "postgres://app:***@db:5432/jobs"
        );
        assert_eq!(
            super::without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(super::without_password("sqlite:jobs.db"), "sqlite:jobs.db");
    }

    use clap::Parser;
    use sluice_server::ConnectionLimits;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: super::ServeArgs,
    }

    #[test]
    fn without_flags_the_limits_are_the_servers_defaults() {
        let cli = Cli::try_parse_from(["sluice"]).unwrap();
        assert_eq!(cli.serve.limits(), ConnectionLimits::default());
    }

    #[test]
    fn the_limit_flags_reach_the_server_config() {
        let cli = Cli::try_parse_from([
            "sluice",
            "--max-connections",
            "10",
            "--max-connections-per-address",
            "2",
            "--handshake-timeout",
            "1s",
            "--idle-timeout",
            "2m",
            "--slow-frame-timeout",
            "500ms",
        ])
        .unwrap();
        let limits = cli.serve.limits();
        assert_eq!(
            (limits.max_connections, limits.max_connections_per_address),
            (10, 2)
        );
        assert_eq!(
            (
                limits.handshake_timeout.as_millis(),
                limits.idle_timeout.as_secs(),
                limits.slow_frame_timeout.as_millis()
            ),
            (1000, 120, 500)
        );
        assert!(
            Cli::try_parse_from(["sluice", "--max-connections", "0"]).is_err(),
            "at least one connection"
        );
    }
}
