//! Durations as operators write them: `30s`, `10m`, `4h`, `7d`, `1h30m`.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {value:?}: {why} (use e.g. 30s, 10m, 4h, 7d)")]
pub struct DurationError {
    pub value: String,
    pub why: String,
}

/// Parses a human duration; zero is refused (a zero TTL or window means nothing).
pub fn parse(value: &str) -> Result<Duration, DurationError> {
    let err = |why: String| DurationError {
        value: value.to_owned(),
        why,
    };
    let d = humantime::parse_duration(value.trim()).map_err(|e| err(e.to_string()))?;
    if d.is_zero() {
        return Err(err("must be longer than zero".to_owned()));
    }
    Ok(d)
}

/// Whole seconds in the same notation (`1h 5m 3s`), for tables.
pub fn format(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_notation() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("10m").unwrap(), Duration::from_mins(10));
        assert_eq!(parse("4h").unwrap(), Duration::from_hours(4));
        assert_eq!(parse("7d").unwrap(), Duration::from_hours(168));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_mins(90));
    }

    #[test]
    fn bad_values_are_named() {
        for v in ["5parsecs", "", "-3s", "0s", "10"] {
            let e = parse(v).unwrap_err();
            assert_eq!(e.value, v);
            assert!(e.to_string().contains(&format!("{v:?}")), "{e}");
        }
    }

    #[test]
    fn formats_whole_seconds() {
        assert_eq!(format(Duration::from_millis(3_723_900)), "1h 2m 3s");
    }
}
