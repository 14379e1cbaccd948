//! One duration syntax for every flag and argument: whole seconds (`10`) or a number with a
//! unit (`10s`, `500ms`, `2m`, `1h30m`).

use std::time::Duration;

/// Parses `text`, given for `what` (a flag or argument name), or says how to write it.
pub(crate) fn parse(what: &str, text: &str) -> anyhow::Result<Duration> {
    let trimmed = text.trim();
    if let Ok(seconds) = trimmed.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    // humantime's own message ("expected number at 0") helps no one; say what is expected.
    humantime::parse_duration(trimmed).map_err(|_| {
        anyhow::anyhow!(
            "{what} {text:?} is not a duration: give seconds (10) or a number with a unit (10s, 500ms, 2m, 1h30m)"
        )
    })
}

/// Parses a TTL in whole seconds (at least 1; a fraction rounds up).
pub(crate) fn ttl_seconds(what: &str, text: &str) -> anyhow::Result<i64> {
    let duration = parse(what, text)?;
    if duration.is_zero() {
        anyhow::bail!("{what} must be at least 1s");
    }
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    i64::try_from(seconds).map_err(|_| anyhow::anyhow!("{what} {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_seconds_and_units_mean_the_same() {
        assert_eq!(parse("--ttl", "10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("--ttl", "10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("--ttl", "1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("--ttl", "500ms").unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn a_bad_duration_says_how_to_write_one() {
        let message = parse("TTL", "ten").unwrap_err().to_string();
        assert!(
            message.contains("TTL \"ten\" is not a duration"),
            "{message}"
        );
        assert!(message.contains("10s"), "{message}");
        assert!(!message.contains("expected number"), "{message}");
    }

    #[test]
    fn ttls_are_whole_positive_seconds() {
        assert_eq!(ttl_seconds("TTL", "1500ms").unwrap(), 2);
        assert_eq!(ttl_seconds("TTL", "60").unwrap(), 60);
        assert!(ttl_seconds("TTL", "0").is_err());
    }
}
