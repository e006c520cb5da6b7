//! The one parser for backend URLs.
//!
//! | URL | backend |
//! |---|---|
//! | `memory:` | in-process reference backend |
//! | `embedded:PATH[?sync=always\|never\|interval:MS]` (default `embedded:./sluice-data`) | embedded durable engine |
//! | `sluice://HOST:PORT[?token=T][&tls=true][&ca=PEM]` | `sluice serve` over the network |
//! | `amqp://USER:PASS@HOST:PORT/VHOST` (or `amqps://`) | RabbitMQ |
//! | `sqs://REGION[?endpoint=URL]` | Amazon SQS + SNS |
//! | `kafka://HOST:PORT[,HOST:PORT]` | Apache Kafka |
//!
//! Any backend URL may carry `?namespace=NAME` (or `&namespace=`), the prefix of every
//! physical name.

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, UrlError};
use crate::name::Namespace;

/// The default embedded data directory.
pub const DEFAULT_EMBEDDED_PATH: &str = "./sluice-data";

/// Which backend a URL names, with its connection details.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendKind {
    /// `memory:`
    Memory,
    /// `embedded:PATH[?sync=always|never|interval:MS]`
    Embedded {
        /// Data directory.
        path: PathBuf,
        /// Durability: `always` (the default: fsync before confirming), `never`, or
        /// `interval:MS` (fsync at most every MS milliseconds).
        sync: Option<String>,
    },
    /// `sluice://HOST:PORT[?token=TOKEN]`
    Remote {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// API token (`?token=`), when the server requires one.
        token: Option<String>,
        /// Speak TLS (`?tls=true`).
        tls: bool,
        /// CA certificates to trust, PEM (`?ca=PATH`; implies TLS). Default: the system's.
        ca: Option<PathBuf>,
    },
    /// `amqp://…` or `amqps://…`, kept whole for the AMQP client.
    Amqp {
        /// The AMQP URI without Sluice's own query parameters.
        uri: String,
    },
    /// `sqs://REGION[?endpoint=URL]`
    Sqs {
        /// AWS region.
        region: String,
        /// Endpoint override (an emulator such as moto).
        endpoint: Option<String>,
    },
    /// `kafka://HOST:PORT[,HOST:PORT]`
    Kafka {
        /// Bootstrap servers, `host:port` each.
        brokers: Vec<String>,
    },
}

impl BackendKind {
    /// The URL scheme of this backend.
    pub fn scheme(&self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Embedded { .. } => "embedded",
            BackendKind::Remote { .. } => "sluice",
            BackendKind::Amqp { .. } => "amqp",
            BackendKind::Sqs { .. } => "sqs",
            BackendKind::Kafka { .. } => "kafka",
        }
    }
}

/// A parsed backend URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    /// The backend and its connection details.
    pub kind: BackendKind,
    /// The namespace from `?namespace=`, if any.
    pub namespace: Option<Namespace>,
    original: String,
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a password.
        match &self.kind {
            BackendKind::Amqp { uri } => match url::Url::parse(uri) {
                Ok(mut u) if u.password().is_some() => {
                    let _ = u.set_password(Some("***"));
                    f.write_str(u.as_str())
                }
                _ => f.write_str(uri),
            },
            _ => f.write_str(&self.original),
        }
    }
}

impl std::str::FromStr for BackendUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        BackendUrl::parse(s)
    }
}

fn invalid(url: &str, reason: impl Into<String>) -> Error {
    UrlError::Invalid {
        url: url.to_owned(),
        reason: reason.into(),
    }
    .into()
}

/// Query parameters other than Sluice's own.
type Params = Vec<(String, String)>;

/// Splits Sluice's own `namespace` parameter off a query string.
fn take_namespace(url: &str, query: &str) -> Result<(Option<Namespace>, Params), Error> {
    let mut namespace = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "namespace" {
            namespace = Some(Namespace::new(v).map_err(|e| invalid(url, e.to_string()))?);
        } else {
            rest.push((k.to_owned(), v.to_owned()));
        }
    }
    Ok((namespace, rest))
}

fn host_port(url: &str, authority: &str) -> Result<(String, u16), Error> {
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| invalid(url, format!("`{authority}` needs a port (HOST:PORT)")))?;
    if host.is_empty() {
        return Err(invalid(url, "the host is empty"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| invalid(url, format!("`{port}` is not a port number")))?;
    Ok((host.to_owned(), port))
}

impl BackendUrl {
    /// Parses a backend URL (see the module docs for the schemes).
    pub fn parse(input: &str) -> Result<Self, Error> {
        let input = input.trim();
        let (scheme, rest) = input.split_once(':').ok_or_else(|| {
            invalid(
                input,
                "expected SCHEME:…, for example memory: or embedded:./sluice-data",
            )
        })?;
        let (body, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (namespace, params) = take_namespace(input, query)?;
        let no_params = |params: &[(String, String)]| -> Result<(), Error> {
            match params.first() {
                Some((k, _)) => Err(invalid(input, format!("unknown parameter `{k}`"))),
                None => Ok(()),
            }
        };
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "memory" => {
                if !body.is_empty() && body != "//" {
                    return Err(invalid(input, "memory: takes no address"));
                }
                no_params(&params)?;
                BackendKind::Memory
            }
            "embedded" => {
                let mut sync = None;
                for (k, v) in params {
                    match k.as_str() {
                        "sync"
                            if v == "always"
                                || v == "never"
                                || v.strip_prefix("interval:")
                                    .is_some_and(|ms| ms.parse::<u64>().is_ok()) =>
                        {
                            sync = Some(v)
                        }
                        "sync" => {
                            return Err(invalid(
                                input,
                                format!("sync=`{v}`: use always, never or interval:MS"),
                            ))
                        }
                        other => {
                            return Err(invalid(input, format!("unknown parameter `{other}`")))
                        }
                    }
                }
                let path = body.strip_prefix("//").unwrap_or(body);
                let path = if path.is_empty() {
                    DEFAULT_EMBEDDED_PATH
                } else {
                    path
                };
                BackendKind::Embedded {
                    path: path.into(),
                    sync,
                }
            }
            "sluice" => {
                let (mut token, mut tls, mut ca) = (None, false, None);
                let mut rest = Vec::new();
                for (k, v) in params {
                    match k.as_str() {
                        "token" => token = Some(v),
                        "tls" => {
                            tls = match v.as_str() {
                                "true" | "1" | "" => true,
                                "false" | "0" => false,
                                _ => {
                                    return Err(invalid(
                                        input,
                                        format!("tls=`{v}`: expected true or false"),
                                    ))
                                }
                            }
                        }
                        "ca" => {
                            tls = true;
                            ca = Some(PathBuf::from(v));
                        }
                        _ => rest.push((k, v)),
                    }
                }
                no_params(&rest)?;
                let authority = body
                    .strip_prefix("//")
                    .ok_or_else(|| invalid(input, "expected sluice://HOST:PORT"))?
                    .trim_end_matches('/');
                let (host, port) = host_port(input, authority)?;
                BackendKind::Remote {
                    host,
                    port,
                    token,
                    tls,
                    ca,
                }
            }
            "amqp" | "amqps" => {
                let mut uri = format!("{scheme}:{body}");
                let parsed = url::Url::parse(&uri).map_err(|e| invalid(input, e.to_string()))?;
                if parsed.host_str().is_none_or(str::is_empty) {
                    return Err(invalid(input, "expected amqp://USER:PASS@HOST:PORT/VHOST"));
                }
                if !params.is_empty() {
                    let q: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    uri = format!("{uri}?{}", q.join("&"));
                }
                BackendKind::Amqp { uri }
            }
            "sqs" => {
                let region = body
                    .strip_prefix("//")
                    .unwrap_or(body)
                    .trim_end_matches('/');
                if region.is_empty()
                    || !region
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-')
                {
                    return Err(invalid(
                        input,
                        "expected sqs://REGION, for example sqs://us-east-1",
                    ));
                }
                let mut endpoint = None;
                for (k, v) in params {
                    match k.as_str() {
                        "endpoint" => {
                            url::Url::parse(&v)
                                .map_err(|e| invalid(input, format!("endpoint: {e}")))?;
                            endpoint = Some(v);
                        }
                        other => {
                            return Err(invalid(input, format!("unknown parameter `{other}`")))
                        }
                    }
                }
                BackendKind::Sqs {
                    region: region.to_owned(),
                    endpoint,
                }
            }
            "kafka" => {
                no_params(&params)?;
                let list = body
                    .strip_prefix("//")
                    .ok_or_else(|| invalid(input, "expected kafka://HOST:PORT[,HOST:PORT]"))?
                    .trim_end_matches('/');
                let mut brokers = Vec::new();
                for broker in list.split(',') {
                    let (host, port) = host_port(input, broker)?;
                    brokers.push(format!("{host}:{port}"));
                }
                BackendKind::Kafka { brokers }
            }
            other => {
                return Err(UrlError::UnknownScheme {
                    url: input.to_owned(),
                    scheme: other.to_owned(),
                }
                .into())
            }
        };
        Ok(Self {
            kind,
            namespace,
            original: input.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &str) -> BackendKind {
        BackendUrl::parse(s).unwrap().kind
    }

    #[test]
    fn every_scheme_parses() {
        assert_eq!(kind("memory:"), BackendKind::Memory);
        assert_eq!(
            kind("embedded:"),
            BackendKind::Embedded {
                path: DEFAULT_EMBEDDED_PATH.into(),
                sync: None
            }
        );
        assert_eq!(
            kind("embedded:/var/lib/sluice"),
            BackendKind::Embedded {
                path: "/var/lib/sluice".into(),
                sync: None
            }
        );
        assert_eq!(
            kind("embedded:/d?sync=interval:10&namespace=dev"),
            BackendKind::Embedded {
                path: "/d".into(),
                sync: Some("interval:10".into())
            }
        );
        assert!(BackendUrl::parse("embedded:/d?sync=sometimes").is_err());
        assert_eq!(
            kind("sluice://127.0.0.1:7575"),
            BackendKind::Remote {
                host: "127.0.0.1".into(),
                port: 7575,
                token: None,
                tls: false,
                ca: None
            }
        );
        assert_eq!(
            kind("sluice://localhost:7575?token=s3cret"),
            BackendKind::Remote {
                host: "localhost".into(),
                port: 7575,
                token: Some("s3cret".into()),
                tls: false,
                ca: None
            }
        );
        assert_eq!(
            kind("sluice://broker:7575?ca=/etc/sluice/ca.pem"),
            BackendKind::Remote {
                host: "broker".into(),
                port: 7575,
                token: None,
                tls: true,
                ca: Some("/etc/sluice/ca.pem".into())
            }
        );
        assert!(BackendUrl::parse("sluice://broker:7575?tls=maybe").is_err());
        assert_eq!(
            kind("amqp://guest:guest@127.0.0.1:5672/%2f"),
            BackendKind::Amqp {
                uri: "amqp://guest:guest@127.0.0.1:5672/%2f".into()
            }
        );
        assert_eq!(
            kind("sqs://us-east-1?endpoint=http://127.0.0.1:4566"),
            BackendKind::Sqs {
                region: "us-east-1".into(),
                endpoint: Some("http://127.0.0.1:4566".into())
            }
        );
        assert_eq!(
            kind("kafka://127.0.0.1:9092,localhost:9093"),
            BackendKind::Kafka {
                brokers: vec!["127.0.0.1:9092".into(), "localhost:9093".into()]
            }
        );
    }

    #[test]
    fn namespace_parameter_is_taken_from_any_url() {
        let url = BackendUrl::parse("memory:?namespace=dev").unwrap();
        assert_eq!(url.namespace.unwrap().as_str(), "dev");
        let url = BackendUrl::parse("amqp://h:5672/?namespace=ci&heartbeat=10").unwrap();
        assert_eq!(
            url.kind,
            BackendKind::Amqp {
                uri: "amqp://h:5672/?heartbeat=10".into()
            }
        );
        assert!(BackendUrl::parse("memory:?namespace=Bad.Name").is_err());
    }

    #[test]
    fn bad_urls_get_clear_errors() {
        let err = BackendUrl::parse("redis://x").unwrap_err();
        assert!(
            err.to_string().contains("unknown backend scheme `redis`"),
            "{err}"
        );
        assert!(BackendUrl::parse("sluice://host")
            .unwrap_err()
            .to_string()
            .contains("needs a port"));
        assert!(BackendUrl::parse("kafka://h:notaport").is_err());
        assert!(BackendUrl::parse("nothing").is_err());
        assert!(BackendUrl::parse("sqs://").is_err());
        assert!(BackendUrl::parse("memory:?bogus=1")
            .unwrap_err()
            .to_string()
            .contains("bogus"));
    }

    #[test]
    fn passwords_are_never_displayed() {
        let url = BackendUrl::parse("amqp://guest:secret@127.0.0.1:5672/%2f").unwrap();
        assert!(!url.to_string().contains("secret"), "{url}");
    }
}
