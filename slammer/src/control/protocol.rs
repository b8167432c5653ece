//! Requests and responses of the control socket.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Block an address or prefix. `ttl_secs` defaults to the daemon's TTL.
    Block {
        target: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Unblock {
        target: String,
    },
    List,
    Stats,
    /// Re-read the configuration and apply what can change without a restart.
    Reload,
}

/// Why a request failed; the CLI maps `BadRequest` to exit code 2, the rest to 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Full,
    Internal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    pub fn ok(result: Option<serde_json::Value>) -> Self {
        Self {
            ok: true,
            kind: None,
            error: None,
            result,
        }
    }

    #[expect(
        clippy::needless_pass_by_value,
        reason = "callers hand over temporaries"
    )]
    pub fn error(kind: ErrorKind, error: impl ToString) -> Self {
        Self {
            ok: false,
            kind: Some(kind),
            error: Some(error.to_string()),
            result: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_documented() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"block","target":"192.0.2.7","ttl_secs":60}"#).unwrap();
        assert_eq!(
            r,
            Request::Block {
                target: "192.0.2.7".into(),
                ttl_secs: Some(60),
                reason: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::List).unwrap(),
            r#"{"cmd":"list"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"block"}"#).is_err());
    }

    #[test]
    fn errors_carry_their_kind() {
        let s = serde_json::to_string(&Response::error(ErrorKind::NotFound, "nope")).unwrap();
        assert_eq!(s, r#"{"ok":false,"kind":"not_found","error":"nope"}"#);
    }
}
