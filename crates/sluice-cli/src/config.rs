//! The CLI's config file: a default backend URL for every command that takes `--url`, so a
//! team sets it once per project or per user instead of exporting `SLUICE_URL`.
//!
//! ```toml
//! # ./sluice.toml (or ~/.config/sluice/config.toml)
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! ```
//!
//! The first file found is read: `$SLUICE_CONFIG` (which must exist), `./sluice.toml`,
//! `$XDG_CONFIG_HOME/sluice/config.toml` (`~/.config/sluice/config.toml`). `--url` and
//! `SLUICE_URL` win over it.

use std::path::PathBuf;

use anyhow::Context;

/// What a config file may hold.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The default backend URL.
    url: Option<String>,
}

/// The files looked at, in order; the first that exists is read.
fn candidates() -> Vec<(PathBuf, bool)> {
    if let Some(path) = std::env::var_os("SLUICE_CONFIG") {
        return vec![(PathBuf::from(path), true)];
    }
    let mut paths = vec![(PathBuf::from("sluice.toml"), false)];
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")));
    if let Some(dir) = config_home {
        paths.push((dir.join("sluice").join("config.toml"), false));
    }
    paths
}

/// The `url` of the first config file found, if any.
pub(crate) fn url() -> anyhow::Result<Option<String>> {
    for (path, required) in candidates() {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("reading the config file {}", path.display()))
            }
        };
        let file: File = toml::from_str(&text)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        return Ok(file.url);
    }
    Ok(None)
}
