//! `slammer list`: blocks as rows, and a serialiser that writes a million of them as JSON without
//! building a tree of values first.

use std::collections::HashMap;

use serde::ser::{SerializeSeq as _, SerializeStruct as _};
use slammer_common::block::BlockEntry;

use super::{Block, Source};
use crate::addr::Target;

/// A block as `slammer list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListEntry {
    pub addr: String,
    /// `address` or `prefix`.
    pub kind: String,
    pub expires_in_secs: u64,
    pub source: Source,
    pub reason: String,
    /// Packets (and bytes) dropped because of it; in observe mode, those that would have been.
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// False in observe mode: listed, counted, not dropped.
    #[serde(default = "enforced_default")]
    pub enforced: bool,
}

fn enforced_default() -> bool {
    true
}

/// The gate's per-block drop counters, `(packets, bytes)`, of the blocks that dropped anything.
#[derive(Clone, Debug, Default)]
pub struct DropCounters(HashMap<Target, (u64, u64)>);

impl DropCounters {
    /// Keeps the entries that counted something (most blocks never see a packet again).
    pub fn from_entries(entries: impl IntoIterator<Item = (Target, BlockEntry)>) -> Self {
        Self(
            entries
                .into_iter()
                .filter(|(_, e)| e.dropped_packets > 0 || e.dropped_bytes > 0)
                .map(|(t, e)| (t, (e.dropped_packets, e.dropped_bytes)))
                .collect(),
        )
    }

    pub fn get(&self, target: &Target) -> (u64, u64) {
        self.0.get(target).copied().unwrap_or_default()
    }
}

fn kind(target: &Target) -> &'static str {
    if matches!(target, Target::Prefix(_)) {
        "prefix"
    } else {
        "address"
    }
}

fn expires_in_secs(block: &Block, now_ns: u64) -> u64 {
    block
        .expires_at_ns
        .saturating_sub(now_ns)
        .div_ceil(1_000_000_000)
}

/// One row as a [`ListEntry`].
pub fn list_entry(
    target: &Target,
    block: &Block,
    now_ns: u64,
    (dropped_packets, dropped_bytes): (u64, u64),
    enforced: bool,
) -> ListEntry {
    ListEntry {
        addr: target.to_string(),
        kind: kind(target).to_owned(),
        expires_in_secs: expires_in_secs(block, now_ns),
        source: block.source,
        reason: block.reason.clone(),
        dropped_packets,
        dropped_bytes,
        enforced,
    }
}

/// Rows serialised exactly as a `[ListEntry]` would be, field for field, straight from the
/// daemon's blocks.
pub struct ListJson<'a> {
    pub rows: &'a [(Target, Block)],
    pub counters: &'a DropCounters,
    pub now_ns: u64,
    pub enforced: bool,
}

struct Row<'a> {
    target: &'a Target,
    block: &'a Block,
    counters: (u64, u64),
    now_ns: u64,
    enforced: bool,
}

impl serde::Serialize for Row<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The order of `ListEntry`'s fields.
        let mut row = s.serialize_struct("ListEntry", 8)?;
        row.serialize_field("addr", &Display(self.target))?;
        row.serialize_field("kind", kind(self.target))?;
        row.serialize_field("expires_in_secs", &expires_in_secs(self.block, self.now_ns))?;
        row.serialize_field("source", &self.block.source)?;
        row.serialize_field("reason", &self.block.reason)?;
        row.serialize_field("dropped_packets", &self.counters.0)?;
        row.serialize_field("dropped_bytes", &self.counters.1)?;
        row.serialize_field("enforced", &self.enforced)?;
        row.end()
    }
}

/// Serialises through `Display` without an intermediate `String`.
struct Display<'a>(&'a Target);

impl serde::Serialize for Display<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

impl serde::Serialize for ListJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.rows.len()))?;
        for (target, block) in self.rows {
            seq.serialize_element(&Row {
                target,
                block,
                counters: self.counters.get(target),
                now_ns: self.now_ns,
                enforced: self.enforced,
            })?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_serialise_like_list_entries() {
        let rows: Vec<(Target, Block)> = vec![
            (
                "192.0.2.7".parse().unwrap(),
                Block {
                    expires_at_ns: 3_500_000_000,
                    source: Source::Auto,
                    reason: "10x 550 \"User unknown\" in 42s".into(),
                },
            ),
            (
                "2001:db8::/64".parse().unwrap(),
                Block {
                    expires_at_ns: 900,
                    source: Source::Manual,
                    reason: "ctl\u{1} char".into(),
                },
            ),
        ];
        let mut entry = BlockEntry::new(0, 0);
        entry.dropped_packets = 7;
        entry.dropped_bytes = 420;
        let counters =
            DropCounters::from_entries([(rows[0].0, entry), (rows[1].0, BlockEntry::new(0, 0))]);
        let fast = serde_json::to_string(&ListJson {
            rows: &rows,
            counters: &counters,
            now_ns: 1_000,
            enforced: false,
        })
        .unwrap();
        let entries: Vec<ListEntry> = rows
            .iter()
            .map(|(t, b)| list_entry(t, b, 1_000, counters.get(t), false))
            .collect();
        assert_eq!(fast, serde_json::to_string(&entries).unwrap());
        assert_eq!(
            (entries[0].expires_in_secs, entries[0].dropped_packets),
            (4, 7)
        );
        assert_eq!(
            (entries[1].kind.as_str(), entries[1].dropped_bytes),
            ("prefix", 0)
        );
    }
}
