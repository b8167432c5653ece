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

pub mod client;
pub mod protocol;
pub mod server;
