//! The one parser of durations on the command line (`--duration`, `--delay`, `--idle`…).

use std::time::Duration;

/// `250ms`, `30s`, `2m`, `1h` (humantime's syntax, `1m 30s` included), or a bare number of
/// seconds.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like 250ms, 30s or 2m: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds_parse_and_nonsense_is_refused() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("45"), Ok(Duration::from_secs(45)));
        assert!(parse("soon").is_err());
    }
}
