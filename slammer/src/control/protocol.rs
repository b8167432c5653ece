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
    /// Block many addresses or prefixes at once, all or none: the whole request is checked
    /// before anything changes. `ttl_secs` (default: the daemon's TTL) and `reason` apply to
    /// each; of a target given twice, the last counts.
    BlockMany {
        targets: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    List,
    Stats,
    /// Re-read the configuration and apply what can change without a restart.
    Reload,
    /// Follow the blocklist: after the `ok` response the connection carries one
    /// [`WatchEvent`] per line, first a snapshot of the enforced blocks, then every change.
    Watch,
}

/// One enforced block as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedBlock {
    /// An address (`192.0.2.7`) or a prefix (`192.0.2.0/24`).
    pub target: String,
    /// Seconds until the block ends, rounded up.
    pub ttl_secs: u64,
    /// `auto`, `manual`, `restored` or `fleet`.
    pub source: String,
    pub reason: String,
}

/// A line of the `watch` stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// Everything enforced now. Sent first, and again whenever the watcher may have missed
    /// changes (it fell behind, or the mode changed): replace what you hold with it.
    Snapshot { blocks: Vec<WatchedBlock> },
    /// A block started (or was extended).
    Block(WatchedBlock),
    /// A block ended. `source` says why: `manual`, `expired` or `fleet`.
    Unblock { target: String, source: String },
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

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub kind: Option<ErrorKind>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    /// A result serialised already, sent as `result` (a list of a million blocks would take
    /// seconds and a gigabyte as a [`serde_json::Value`]).
    #[serde(skip)]
    pub raw_result: Option<RawJson>,
}

/// JSON text that is sent as it is.
#[derive(Clone, Debug)]
pub struct RawJson(pub Box<serde_json::value::RawValue>);

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Serialize for Response {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut out = s.serialize_struct("Response", 4)?;
        out.serialize_field("ok", &self.ok)?;
        match &self.kind {
            Some(kind) => out.serialize_field("kind", kind)?,
            None => out.skip_field("kind")?,
        }
        match &self.error {
            Some(error) => out.serialize_field("error", error)?,
            None => out.skip_field("error")?,
        }
        match (&self.raw_result, &self.result) {
            (Some(raw), _) => out.serialize_field("result", &raw.0)?,
            (None, Some(result)) => out.serialize_field("result", result)?,
            (None, None) => out.skip_field("result")?,
        }
        out.end()
    }
}

impl Response {
    pub fn ok(result: Option<serde_json::Value>) -> Self {
        Self {
            ok: true,
            kind: None,
            error: None,
            result,
            raw_result: None,
        }
    }

    /// Success with a result serialised already.
    pub fn ok_raw(result: Box<serde_json::value::RawValue>) -> Self {
        Self {
            raw_result: Some(RawJson(result)),
            ..Self::ok(None)
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
            raw_result: None,
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
    fn block_many_and_raw_results_are_plain_json() {
        let r: Request = serde_json::from_str(
            r#"{"cmd":"block_many","targets":["192.0.2.7","198.51.100.0/24"],"reason":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::BlockMany {
                targets: vec!["192.0.2.7".into(), "198.51.100.0/24".into()],
                ttl_secs: None,
                reason: Some("x".into())
            }
        );
        let raw = serde_json::value::to_raw_value(&[1, 2]).unwrap();
        let s = serde_json::to_string(&Response::ok_raw(raw)).unwrap();
        assert_eq!(s, r#"{"ok":true,"result":[1,2]}"#);
        let back: Response = serde_json::from_str(&s).unwrap();
        assert_eq!(back.result, Some(serde_json::json!([1, 2])));
        assert_eq!(
            serde_json::to_string(&Response::ok(None)).unwrap(),
            r#"{"ok":true}"#
        );
    }

    #[test]
    fn errors_carry_their_kind() {
        let s = serde_json::to_string(&Response::error(ErrorKind::NotFound, "nope")).unwrap();
        assert_eq!(s, r#"{"ok":false,"kind":"not_found","error":"nope"}"#);
    }
}
