//! The control socket: a Unix stream socket (mode 0600) speaking line-delimited JSON.
//!
//! Each request is one JSON object on one line; the daemon answers each with one JSON object on
//! one line, in order, and the connection may carry any number of requests:
//!
//! ```text
//! -> {"cmd":"block","target":"192.0.2.7","ttl_secs":3600,"reason":"manual"}
//! <- {"ok":true}
//! -> {"cmd":"unblock","target":"192.0.2.0/24"}
//! <- {"ok":false,"kind":"not_found","error":"192.0.2.0/24 is not blocked"}
//! -> {"cmd":"list"}
//! <- {"ok":true,"result":[{"addr":"192.0.2.7","kind":"address","expires_in_secs":3599,...}]}
//! -> {"cmd":"stats"}
//! <- {"ok":true,"result":{"gate":{...},"replies":{...},"daemon":{...}}}
//! ```
//!
//! `watch` turns its connection into a stream: after `{"ok":true}`, one event per line, first a
//! snapshot of the enforced blocks, then each change (a new snapshot when the follower fell
//! behind or the mode changed):
//!
//! ```text
//! -> {"cmd":"watch"}
//! <- {"ok":true}
//! <- {"event":"snapshot","blocks":[{"target":"192.0.2.7","ttl_secs":3599,"source":"auto","reason":"..."}]}
//! <- {"event":"block","target":"198.51.100.0/24","ttl_secs":86400,"source":"manual","reason":"manual"}
//! <- {"event":"unblock","target":"192.0.2.7","source":"expired"}
//! ```

pub mod client;
pub mod follower;
pub mod protocol;
pub mod server;
