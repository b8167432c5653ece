//! What fleet members keep in Redis and say on its channel, free of I/O.
//!
//! | what | Redis | content |
//! |---|---|---|
//! | a block | string key `<prefix>:block:<target>`, `PX` = the block's remaining time | [`BlockValue`] as JSON |
//! | an unblock (tombstone) | string key `<prefix>:unblocked:<target>`, `PX` = what the block had left, or [`TOMBSTONE_TTL`] | [`Tombstone`] as JSON |
//! | a change | `PUBLISH <prefix>:events` | [`Message`] as JSON |
//! | offenses of a client | sorted set `<prefix>:offenses:<addr>`, expiring after the window | one member per offense, scored with Redis' clock in ms |
//!
//! `<target>` is [`Target`]'s canonical spelling (`192.0.2.7`, `2001:db8::/64`), so every node
//! names a block the same way. Unknown JSON fields are ignored, so a newer node can add some.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    addr::{Target, canonical},
    reply_text::{MAX_TEXT, sanitize},
};

/// Longest message or block value taken from Redis; anything longer is not ours.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// Longest node name kept, in characters.
pub const MAX_NODE_CHARS: usize = 64;

/// Names of everything the fleet keeps under one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// `<prefix>:block:<target>`.
    pub fn block(&self, target: &Target) -> String {
        format!("{}:block:{target}", self.prefix)
    }

    /// The `SCAN MATCH` pattern of every block key; glob characters of the prefix are escaped.
    pub fn block_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 8);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str(":block:*");
        pattern
    }

    /// The target a block key names; `None` for a key that is not a block key in canonical form.
    pub fn target_of(&self, key: &str) -> Option<Target> {
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix(":block:")?;
        let target: Target = rest.parse().ok()?;
        (target.to_string() == rest).then_some(target)
    }

    /// `<prefix>:unblocked:<target>`: the tombstone that tells a node coming back that the block
    /// was unblocked rather than lost.
    pub fn tombstone(&self, target: &Target) -> String {
        format!("{}:unblocked:{target}", self.prefix)
    }

    /// `<prefix>:events`.
    pub fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// `<prefix>:offenses:<addr>`; an IPv4-mapped IPv6 address is the IPv4 address.
    pub fn offenses(&self, client: IpAddr) -> String {
        format!("{}:offenses:{}", self.prefix, canonical(client))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Block,
    Unblock,
}

/// One change, as published on `<prefix>:events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The node that made the change.
    pub node: String,
    pub action: Action,
    pub target: Target,
    /// The block's remaining time when it was sent; 0 for an unblock.
    #[serde(default)]
    pub ttl_ms: u64,
    #[serde(default)]
    pub reason: String,
    /// Wall-clock ms at which the node decided the change (`publish_*` was called), so the
    /// receiver's lag includes any time spent queued while Redis was away.
    pub sent_at_ms: u64,
}

/// The value of a block key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockValue {
    /// The node that decided the block.
    pub node: String,
    pub reason: String,
    /// Wall-clock ms at which it was decided.
    #[serde(default)]
    pub at_ms: u64,
}

/// The value of a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The node that unblocked.
    pub node: String,
    #[serde(default)]
    pub at_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{len} bytes is more than the {MAX_PAYLOAD_BYTES} a fleet message may have")]
    TooLong { len: usize },
    #[error("not a fleet message")]
    Json(#[source] serde_json::Error),
    #[error("no node name")]
    NoNode,
    #[error("a block of {target} without a TTL")]
    NoTtl { target: Target },
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLong { len: bytes.len() });
    }
    serde_json::from_slice(bytes).map_err(DecodeError::Json)
}

/// Another node's name and reason reach logs and the action log: made safe like reply text.
fn clean_node(node: &str) -> Result<String, DecodeError> {
    let node = sanitize(node, MAX_NODE_CHARS);
    if node.is_empty() {
        return Err(DecodeError::NoNode);
    }
    Ok(node)
}

impl Message {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    /// Parses a message and makes its text safe: node and reason are sanitized and cut.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut message: Self = parse(bytes)?;
        message.node = clean_node(&message.node)?;
        message.reason = sanitize(&message.reason, MAX_TEXT);
        if message.action == Action::Block && message.ttl_ms == 0 {
            return Err(DecodeError::NoTtl {
                target: message.target,
            });
        }
        Ok(message)
    }
}

impl BlockValue {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut value: Self = parse(bytes)?;
        value.node = clean_node(&value.node)?;
        value.reason = sanitize(&value.reason, MAX_TEXT);
        Ok(value)
    }
}

impl Tombstone {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut value: Self = parse(bytes)?;
        value.node = clean_node(&value.node)?;
        Ok(value)
    }
}

/// Whether `node` is usable as this node's identity: what [`Message::decode`] keeps of it is
/// itself, so other nodes see exactly this name.
pub fn node_is_valid(node: &str) -> bool {
    !node.is_empty() && node.chars().all(|c| c.is_ascii_graphic()) && node.len() <= MAX_NODE_CHARS
}

/// The fleet-wide sliding-window offense count, on Redis' clock so that the nodes' clocks do not
/// matter: drops offenses older than the window, adds this one, keeps at most `cap` (the newest),
/// lets the set expire with the window, and returns the count.
///
/// `KEYS[1]` the set, `ARGV[1]` the window in ms, `ARGV[2]` a member unique to this call,
/// `ARGV[3]` the cap. An offense scored `t` counts while `now - t < window`, as locally.
pub const OFFENSE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local cap = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[2] .. ':' .. t[1] .. '.' .. t[2])
local n = redis.call('ZCARD', KEYS[1])
if n > cap then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - cap - 1)
  n = cap
end
redis.call('PEXPIRE', KEYS[1], window)
return n
";

/// An unblock: deletes the block key and leaves a tombstone for as long as the block had left
/// (by its key's TTL or, if that is gone, by what the unblocking node knew of it), or for
/// `ARGV[3]` ms when neither knows.
///
/// `KEYS[1]` the block, `KEYS[2]` the tombstone, `ARGV[1]` the tombstone's value, `ARGV[2]` the
/// ms the unblocking node knew the block had left (0 if it knew of none), `ARGV[3]` the default.
pub const UNBLOCK_SCRIPT: &str = r"
local left = math.max(redis.call('PTTL', KEYS[1]), tonumber(ARGV[2]))
if left <= 0 then left = tonumber(ARGV[3]) end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', left)
return left
";

/// How long a tombstone stays when nobody knew how long the block had left.
pub const TOMBSTONE_TTL: std::time::Duration = std::time::Duration::from_hours(24);

/// Most offenses kept per client: the fleet count saturates there, far above any sensible
/// threshold, so one client cannot grow a set without bound.
pub const MAX_OFFENSES_KEPT: u64 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn key_names() {
        let keys = Keys::new("slammer");
        assert_eq!(keys.block(&t("192.0.2.7")), "slammer:block:192.0.2.7");
        assert_eq!(
            keys.block(&t("2001:db8::1/64")),
            "slammer:block:2001:db8::/64"
        );
        assert_eq!(keys.channel(), "slammer:events");
        assert_eq!(
            keys.tombstone(&t("192.0.2.0/24")),
            "slammer:unblocked:192.0.2.0/24"
        );
        assert_eq!(
            keys.offenses("::ffff:192.0.2.7".parse().unwrap()),
            "slammer:offenses:192.0.2.7"
        );
        assert_eq!(keys.block_pattern(), "slammer:block:*");
        assert_eq!(
            Keys::new("a*b?[c]\\").block_pattern(),
            "a\\*b\\?\\[c\\]\\\\:block:*"
        );
    }

    #[test]
    fn block_keys_parse_back() {
        let keys = Keys::new("mx");
        for target in [
            "192.0.2.7",
            "198.51.100.0/24",
            "2001:db8::7",
            "2001:db8::/48",
        ] {
            assert_eq!(keys.target_of(&keys.block(&t(target))), Some(t(target)));
        }
        for key in [
            "mx:block:",
            "mx:block:nonsense",
            "mx:block:192.0.2.7/24",
            "mx:blocks:192.0.2.7",
            "other:block:192.0.2.7",
            "mx:offenses:192.0.2.7",
        ] {
            assert_eq!(keys.target_of(key), None, "{key}");
        }
    }

    #[test]
    fn messages_round_trip() {
        let message = Message {
            node: "mx1".into(),
            action: Action::Block,
            target: t("2001:db8::/64"),
            ttl_ms: 3_600_000,
            reason: "10 offenses".into(),
            sent_at_ms: 1_700_000_000_000,
        };
        let json = message.encode();
        assert_eq!(
            json,
            r#"{"node":"mx1","action":"block","target":"2001:db8::/64","ttl_ms":3600000,"reason":"10 offenses","sent_at_ms":1700000000000}"#
        );
        assert_eq!(Message::decode(json.as_bytes()).unwrap(), message);
        let unblock =
            br#"{"node":"mx2","action":"unblock","target":"192.0.2.7","sent_at_ms":5,"future":1}"#;
        let decoded = Message::decode(unblock).unwrap();
        assert_eq!(
            (decoded.action, decoded.ttl_ms, decoded.reason.as_str()),
            (Action::Unblock, 0, "")
        );
    }

    #[test]
    fn bad_messages_are_refused() {
        let cases: [&[u8]; 6] = [
            b"",
            b"{}",
            br#"{"node":"a","action":"block","target":"192.0.2.7","sent_at_ms":1}"#,
            br#"{"node":" ","action":"unblock","target":"192.0.2.7","sent_at_ms":1}"#,
            br#"{"node":"a","action":"drop","target":"192.0.2.7","sent_at_ms":1}"#,
            br#"{"node":"a","action":"unblock","target":"0.0.0.0/0","sent_at_ms":1}"#,
        ];
        for bytes in cases {
            assert!(
                Message::decode(bytes).is_err(),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let long = vec![b' '; MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            Message::decode(&long),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn remote_text_is_made_safe() {
        let bytes = "{\"node\":\"mx\\u001b[31m1\",\"action\":\"block\",\"target\":\"192.0.2.7\",\"ttl_ms\":1,\"reason\":\"a\\nb\",\"sent_at_ms\":1}";
        let message = Message::decode(bytes.as_bytes()).unwrap();
        assert_eq!(message.node, "mx [31m1");
        assert_eq!(message.reason, "a b");
        let value = BlockValue::decode(br#"{"node":"mx1","reason":"x","at_ms":7}"#).unwrap();
        assert_eq!(
            value,
            BlockValue {
                node: "mx1".into(),
                reason: "x".into(),
                at_ms: 7
            }
        );
        assert_eq!(
            BlockValue::decode(value.encode().as_bytes()).unwrap(),
            value
        );
    }

    #[test]
    fn node_names() {
        assert!(node_is_valid("mx1.example.org"));
        assert!(!node_is_valid(""));
        assert!(!node_is_valid("mx 1"));
        assert!(!node_is_valid("mx\u{e9}"));
        assert!(!node_is_valid(&"a".repeat(MAX_NODE_CHARS + 1)));
    }
}
