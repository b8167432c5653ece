//! The Redis URL: which schemes the fleet takes, and how it is shown without its password.

/// The URL with the password of its user info replaced by `***`, for logs and errors. Works on
/// any text, parsable or not: everything between `://` and the last `@` is user info.
pub fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = rest[..at].find(':') else {
        // A user name alone.
        return url.to_owned();
    };
    format!("{}***{}", &url[..=start + colon], &rest[at..])
}

/// Why a URL is refused before anything connects.
pub fn check_scheme(url: &str) -> Result<(), &'static str> {
    match url.split_once("://") {
        Some(("redis" | "rediss", _)) => Ok(()),
        _ => Err("expected redis://[user:pass@]host:port/db, or rediss:// for TLS"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            (
                "redis://user:secret@redis.example:6380/2",
                "redis://user:***@redis.example:6380/2",
            ),
            (
                "rediss://:secret@redis.example",
                "rediss://:***@redis.example",
            ),
            ("redis://user@redis.example", "redis://user@redis.example"),
            // Unencoded '@' and '/' in the password, and no scheme at all.
            ("redis://u:p@ss/w@host/1", "redis://u:***@host/1"),
            ("u:secret@host:6379", "u:***@host:6379"),
            ("", ""),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn schemes() {
        assert!(check_scheme("redis://h").is_ok());
        assert!(check_scheme("rediss://h").is_ok());
        for url in ["http://h", "h:6379", "unix:///run/redis.sock", ""] {
            assert!(check_scheme(url).is_err(), "{url}");
        }
    }
}
