//! What `sluice serve` is told: where the data lives, where to listen, who may connect.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sluice_embedded::SyncMode;
use sluice_protocol::{DEFAULT_MAX_FRAME, DEFAULT_PORT};

/// Who may connect.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    tokens: Vec<String>,
}

impl Auth {
    /// No tokens: any client that can reach the (loopback) listener.
    pub fn open() -> Self {
        Self::default()
    }

    /// Clients must present one of these tokens.
    pub fn tokens(tokens: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            tokens: tokens
                .into_iter()
                .map(Into::into)
                .filter(|t: &String| !t.is_empty())
                .collect(),
        }
    }

    /// Reads tokens from a file: one per line, blank lines and `#` comments ignored.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        Ok(Self::tokens(tokens_in(&std::fs::read_to_string(path)?)))
    }

    /// Whether any token is required.
    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Whether a client presenting `token` is admitted.
    pub fn accepts(&self, token: Option<&str>) -> bool {
        if self.tokens.is_empty() {
            return true;
        }
        // Compare every token in full: the time taken does not say how much matched.
        let Some(token) = token else { return false };
        self.tokens.iter().fold(false, |found, t| {
            found | constant_time_eq(t.as_bytes(), token.as_bytes())
        })
    }
}

/// The tokens of a tokens file's text: one per line, blank lines and `#` comments ignored.
pub fn tokens_in(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Configuration of a server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Data directory of the engine.
    pub data: PathBuf,
    /// Address of the `sluice://` protocol listener (`127.0.0.1:7575` by default).
    pub listen: SocketAddr,
    /// Address of the HTTP admin API, metrics and dashboard (`127.0.0.1:7576` by default;
    /// `None` disables it).
    pub http: Option<SocketAddr>,
    /// Who may connect.
    pub auth: Auth,
    /// Durability of the engine (fsync before confirming by default).
    pub sync: SyncMode,
    /// Largest frame a client may send.
    pub max_frame: usize,
    /// Certificate chain and private key (PEM files): both listeners speak TLS only.
    pub tls: Option<TlsFiles>,
}

/// The PEM files of a server's TLS identity.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

impl ServerConfig {
    /// Serves `data` on the default addresses, durable, without tokens (loopback only).
    pub fn new(data: impl Into<PathBuf>) -> Self {
        Self {
            data: data.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            http: Some(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT + 1))),
            auth: Auth::open(),
            sync: SyncMode::Always,
            max_frame: DEFAULT_MAX_FRAME,
            tls: None,
        }
    }

    /// Serves TLS only, with this certificate chain and key.
    #[must_use]
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Sets the protocol address.
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Sets (or disables) the HTTP address.
    #[must_use]
    pub fn http(mut self, addr: Option<SocketAddr>) -> Self {
        self.http = addr;
        self
    }

    /// Sets who may connect.
    #[must_use]
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Sets the durability mode.
    #[must_use]
    pub fn sync(mut self, sync: SyncMode) -> Self {
        self.sync = sync;
        self
    }

    /// Sets the frame limit.
    #[must_use]
    pub fn max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_tokens_everyone_is_admitted_with_tokens_only_holders() {
        assert!(Auth::open().accepts(None));
        let auth = Auth::tokens(["s3cret", "other"]);
        assert!(auth.accepts(Some("other")));
        assert!(!auth.accepts(Some("s3cre")));
        assert!(!auth.accepts(None));
    }
}
