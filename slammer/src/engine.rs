//! From replies to blocks: the daemon's decisions, free of I/O so they are tested with a fake
//! blocklist store. The daemon feeds it events and requests; it answers with what to do.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr, time::Duration};

use serde::Serialize;
use slammer_common::hold::ClientCount;

use crate::{
    addr::Target,
    allow::Allowlist,
    blocklist::{BlockError, BlockStore, Blocklist, BulkBlock, BulkRefusal, Source},
    events::Reply,
    history::{Escalation, History, Record},
    known_good::{self, GoodRecord, KnownGood},
    ledger::{Ledger, LogVerdict},
    lru::Lru,
    rules::RuleSet,
    spread::{self, Spread, SpreadConfig},
    tracker::{Offense, OffenseTracker, TrackerConfig, TrackerError},
};

/// Connections whose last reply sequence number is remembered, to drop retransmitted replies.
const SEQ_MEMORY: usize = 65_536;
/// Allowlisted clients whose offenses were logged recently (once per window each).
const ALLOW_LOG_MEMORY: usize = 4_096;

/// What the daemon has counted itself (the kernel's counters are read separately).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Reply events received from the kernel.
    pub events: u64,
    /// Retransmitted replies seen again and ignored.
    pub duplicates: u64,
    /// Replies that matched no rule.
    pub unmatched: u64,
    /// Replies that matched a rule (from the wire or the log).
    pub offenses: u64,
    /// Offenses counted from the wire.
    pub offenses_wire: u64,
    /// Offenses counted from the MTA's log (inside TLS, where the wire is blind).
    pub offenses_log: u64,
    /// Rejections read from the MTA's log.
    pub log_rejections: u64,
    /// Offenses by clients on the allowlist (never blocked).
    pub allowlisted_offenses: u64,
    /// Offenses by clients already blocked (replies to sessions still in flight).
    pub offenses_while_blocked: u64,
    pub auto_blocks: u64,
    pub manual_blocks: u64,
    pub unblocks_manual: u64,
    pub unblocks_expired: u64,
    /// Blocks refused because the blocklist was full.
    pub blocks_refused_full: u64,
    pub tls_sessions: u64,
    pub decode_errors: u64,
    /// Messages the MTA accepted (end of DATA answered with 250).
    pub accepted_messages: u64,
    /// Prefixes blocked because their addresses spread their offenses.
    pub prefix_blocks: u64,
    /// Holds of the classifier (see `slammer_common::hold`) that became blocks, and that were
    /// lifted because the reply was no offense, the client was allowlisted or below its own
    /// threshold.
    pub holds_confirmed: u64,
    pub holds_lifted: u64,
    /// Open SMTP sessions of blocked clients ended (`sock_diag` destroy).
    pub sessions_destroyed: u64,
    /// Blocks and unblocks mirrored from other nodes of the fleet.
    pub fleet_blocks: u64,
    pub fleet_unblocks: u64,
    /// The longest time one step of the sweeper held the daemon's lock (events wait meanwhile).
    pub sweep_lock_max_us: u64,
    /// Replies received, by code.
    pub replies_by_code: BTreeMap<u16, u64>,
    /// Offenses, by the name of the rule that matched.
    pub offenses_by_rule: BTreeMap<String, u64>,
}

/// Settings the engine applies; replaced as a whole on reload.
pub struct Policy {
    pub rules: RuleSet,
    pub allow: Allowlist,
    pub tracker: TrackerConfig,
    pub ttl: Duration,
    /// Observe mode: blocks are decided and listed, the gate only counts.
    pub observe: bool,
    /// Longer TTLs for repeat offenders.
    pub escalation: Escalation,
    /// Clients with a message accepted within `known_good_memory` get their threshold
    /// multiplied by this (1 disables it).
    pub known_good_multiplier: u32,
    pub known_good_memory: Duration,
    /// Blocking whole prefixes whose addresses spread their offenses.
    pub spread: SpreadConfig,
    pub spread_ttl: Duration,
}

impl Policy {
    /// The reply codes the classifier counts towards a hold: the rules'.
    pub fn counted_codes(&self) -> std::collections::BTreeSet<u16> {
        self.rules.codes()
    }

    /// The reply codes the kernel must report: the rules', plus 250 for accepted messages.
    pub fn reported_codes(&self) -> std::collections::BTreeSet<u16> {
        let mut codes = self.rules.codes();
        if self.known_good_multiplier > 1 {
            codes.insert(known_good::ACCEPT_CODE);
        }
        codes
    }
}

/// The two clocks a decision needs: the boot clock the gate compares expiries with, and the
/// wall clock the block history is kept in (it outlives reboots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub boot_ns: u64,
    pub unix_ms: u64,
}

impl Now {
    pub fn read() -> Self {
        Self {
            boot_ns: crate::clock::boot_ns(),
            unix_ms: crate::state::unix_ms(std::time::SystemTime::now()),
        }
    }
}

/// An automatic block that was just applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoBlock {
    pub client: IpAddr,
    pub reason: String,
    /// From the reply leaving the host to the block being in the map.
    pub latency_ns: u64,
}

/// What became of one reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Duplicate,
    /// A log rejection the wire counted (or will count) already.
    SeenOnWire,
    /// A message was accepted: the client is known-good for a while.
    Accepted,
    NoOffense,
    Allowlisted {
        client: IpAddr,
        log: bool,
    },
    AlreadyBlocked,
    Counted,
    Blocked(AutoBlock),
    BlockFailed(String),
}

pub struct Engine<S> {
    blocklist: Blocklist<S>,
    tracker: OffenseTracker,
    policy: Policy,
    stats: EngineStats,
    last_seq: Lru<(IpAddr, u16, u16), u32>,
    allow_logged: Lru<IpAddr, u64>,
    history: History,
    known_good: KnownGood,
    spread: Spread,
    ledger: Ledger,
    /// Prefix blocks applied since the daemon last asked, with their reasons, for logging.
    prefix_blocks: Vec<(Target, String)>,
}

impl<S: BlockStore> Engine<S> {
    pub fn new(blocklist: Blocklist<S>, policy: Policy) -> Result<Self, TrackerError> {
        let history = History::new(policy.tracker.max_clients);
        let known_good = KnownGood::new(policy.tracker.max_clients);
        let spread = Spread::new(policy.tracker.max_clients);
        let ledger = Ledger::new(policy.tracker.max_clients);
        Ok(Self {
            blocklist,
            tracker: OffenseTracker::new(policy.tracker)?,
            policy,
            stats: EngineStats::default(),
            last_seq: Lru::new(SEQ_MEMORY),
            allow_logged: Lru::new(ALLOW_LOG_MEMORY),
            history,
            known_good,
            spread,
            ledger,
            prefix_blocks: Vec::new(),
        })
    }

    /// Handles one reply; `now_ns` is the boot clock when the daemon read it.
    pub fn on_reply(&mut self, reply: &Reply, now: Now) -> Outcome {
        self.stats.events += 1;
        if self.is_retransmission(reply) {
            self.stats.duplicates += 1;
            return Outcome::Duplicate;
        }
        *self.stats.replies_by_code.entry(reply.code).or_default() += 1;
        if known_good::is_acceptance(reply.code, &reply.text) {
            self.stats.accepted_messages += 1;
            self.known_good.accepted(reply.client, now.unix_ms);
            return Outcome::Accepted;
        }
        let Some((rule, label)) = self.classify(reply.code, &reply.text) else {
            return Outcome::NoOffense;
        };
        self.count_rule(&rule);
        self.stats.offenses_wire += 1;
        self.ledger
            .wire_rejection(reply.client, reply.code, now.unix_ms);
        self.offense(reply.client, reply.code, &label, reply.at_ns, now)
    }

    /// A rejection read from the MTA's log; it counts only where the wire was blind (TLS), see
    /// [`crate::ledger`]. `tls` is what the log line itself says, where it says it (Exim's `X=`,
    /// `OpenSMTPD`'s session): inside TLS it counts, in clear text the wire had it; unknown, the
    /// ledger decides.
    pub fn on_log_rejection(
        &mut self,
        client: IpAddr,
        code: u16,
        text: &str,
        tls: Option<bool>,
        now: Now,
    ) -> Outcome {
        self.stats.log_rejections += 1;
        let Some((rule, label)) = self.classify(code, text) else {
            return Outcome::NoOffense;
        };
        let window = self.policy.tracker.window;
        let verdict = match tls {
            Some(true) => LogVerdict::Count,
            Some(false) => LogVerdict::SeenOnWire,
            None => self.ledger.log_rejection(client, code, now.unix_ms, window),
        };
        match verdict {
            LogVerdict::SeenOnWire | LogVerdict::LeftToWire => Outcome::SeenOnWire,
            LogVerdict::Count => {
                self.stats.offenses_log += 1;
                self.count_rule(&rule);
                self.offense(client, code, &label, now.boot_ns, now)
            }
        }
    }

    /// The name and label of the rule a reply matches.
    fn classify(&mut self, code: u16, text: &str) -> Option<(String, String)> {
        let Some(rule) = self.policy.rules.classify(code, text) else {
            self.stats.unmatched += 1;
            return None;
        };
        Some((rule.name().to_owned(), rule.label().to_owned()))
    }

    /// Counts an offense by the rule that matched it; only offenses that count get here.
    fn count_rule(&mut self, rule: &str) {
        self.stats.offenses += 1;
        if let Some(n) = self.stats.offenses_by_rule.get_mut(rule) {
            *n += 1;
        } else {
            self.stats.offenses_by_rule.insert(rule.to_owned(), 1);
        }
    }

    /// Counts one offense of `client` (at `at_ns`, boot clock) and blocks it at its threshold.
    fn offense(&mut self, client: IpAddr, code: u16, label: &str, at_ns: u64, now: Now) -> Outcome {
        let now_ns = now.boot_ns;
        if self.policy.allow.contains(client) {
            self.stats.allowlisted_offenses += 1;
            let window = u64::try_from(self.policy.tracker.window.as_nanos()).unwrap_or(u64::MAX);
            let log = self
                .allow_logged
                .get(&client)
                .is_none_or(|&at| now_ns.saturating_sub(at) >= window);
            if log {
                self.allow_logged.put(client, now_ns);
            }
            return Outcome::Allowlisted { client, log };
        }
        self.note_spread(client, at_ns, now);
        if self.blocklist.is_blocked(&Target::Addr(client), now_ns) {
            self.stats.offenses_while_blocked += 1;
            return Outcome::AlreadyBlocked;
        }
        let mut threshold = self.policy.tracker.threshold;
        if self
            .known_good
            .contains(client, now.unix_ms, self.policy.known_good_memory)
        {
            threshold = threshold.saturating_mul(self.policy.known_good_multiplier.max(1));
        }
        let offense = Offense { code, label };
        let Some(decision) = self
            .tracker
            .record_with_threshold(client, at_ns, offense, threshold)
        else {
            return Outcome::Counted;
        };
        self.auto_block(decision.client, decision.reason, at_ns, now)
    }

    /// Blocks `client` automatically, with a TTL escalated by its block history.
    fn auto_block(&mut self, client: IpAddr, mut reason: String, at_ns: u64, now: Now) -> Outcome {
        let esc = self.policy.escalation;
        let earlier = self.history.earlier_blocks(client, now.unix_ms, &esc);
        let ttl = History::ttl(self.policy.ttl, earlier, &esc);
        if earlier > 0 {
            let _ = write!(
                reason,
                "; repeat offender, block #{} for {}",
                earlier + 1,
                crate::duration::format(ttl)
            );
        }
        match self.blocklist.block(
            now.boot_ns,
            Target::Addr(client),
            ttl,
            Source::Auto,
            reason.clone(),
        ) {
            Ok(()) => {
                self.stats.auto_blocks += 1;
                self.history.record_block(client, now.unix_ms, &esc);
                Outcome::Blocked(AutoBlock {
                    client,
                    reason,
                    latency_ns: crate::clock::boot_ns().saturating_sub(at_ns),
                })
            }
            Err(err) => {
                if matches!(err, BlockError::Full { .. }) {
                    self.stats.blocks_refused_full += 1;
                }
                Outcome::BlockFailed(err.to_string())
            }
        }
    }

    /// The threshold that applies to `client` now (known-good senders get a higher one).
    pub fn threshold_for(&self, client: IpAddr, now: Now) -> u32 {
        let threshold = self.policy.tracker.threshold;
        if self
            .known_good
            .contains(client, now.unix_ms, self.policy.known_good_memory)
        {
            threshold.saturating_mul(self.policy.known_good_multiplier.max(1))
        } else {
            threshold
        }
    }

    /// The fleet counted `offenses` of `client` within the window across all nodes: block it
    /// here when that reaches its threshold (the block then propagates to the fleet).
    pub fn on_fleet_count(&mut self, client: IpAddr, offenses: u64, now: Now) -> Outcome {
        let client = crate::addr::canonical(client);
        if offenses < u64::from(self.threshold_for(client, now))
            || self.policy.allow.contains(client)
            || self
                .blocklist
                .is_blocked(&Target::Addr(client), now.boot_ns)
        {
            return Outcome::Counted;
        }
        self.tracker.forget(client);
        let reason = format!(
            "{offenses}x offenses across the fleet within {}",
            crate::duration::format(self.policy.tracker.window)
        );
        self.auto_block(client, reason, now.boot_ns, now)
    }

    /// Mirrors a block decided by another node: allowlisted targets are refused, and a longer
    /// block here is not shortened.
    pub fn block_from_fleet(
        &mut self,
        target: Target,
        ttl: Duration,
        reason: &str,
        origin: &str,
        now: Now,
    ) -> Result<bool, BlockError> {
        let allowed = match target {
            Target::Addr(a) => self.policy.allow.contains(a),
            Target::Prefix(net) => self.policy.allow.overlaps(&net),
        };
        if allowed {
            return Err(BlockError::Allowlisted { target });
        }
        let expires = crate::clock::expiry_after(now.boot_ns, ttl);
        if self
            .blocklist
            .get(&target)
            .is_some_and(|b| b.expires_at_ns >= expires)
        {
            return Ok(false);
        }
        let reason = crate::reply_text::sanitize(
            &format!("{reason} (from {origin})"),
            crate::reply_text::MAX_TEXT,
        );
        self.blocklist
            .block(now.boot_ns, target, ttl, Source::Fleet, reason)?;
        self.stats.fleet_blocks += 1;
        Ok(true)
    }

    /// Removes a block another node lifted by hand; one that is not here is fine.
    pub fn unblock_from_fleet(&mut self, target: Target) -> bool {
        let removed = self.blocklist.unblock(target).is_ok();
        if removed {
            if let Target::Addr(a) = target {
                self.tracker.forget(a);
            }
            self.stats.fleet_unblocks += 1;
        }
        removed
    }

    /// Replaces rules, allowlist, counting and TTL; offense history is kept (trimmed to the new
    /// bounds) and existing blocks keep their TTLs.
    pub fn set_policy(&mut self, policy: Policy) -> Result<(), TrackerError> {
        self.tracker.set_config(policy.tracker)?;
        self.policy = policy;
        Ok(())
    }

    /// Counts `client` towards its prefix and blocks the prefix (carved around protected
    /// addresses) when enough of its addresses offended within the window.
    fn note_spread(&mut self, client: IpAddr, at_ns: u64, now: Now) {
        let Some(decision) = self.spread.note(client, at_ns, &self.policy.spread) else {
            return;
        };
        let (allow, known_good, memory) = (
            &self.policy.allow,
            &self.known_good,
            self.policy.known_good_memory,
        );
        let protected =
            |net: &ipnet::IpNet| allow.overlaps(net) || known_good.any_in(net, now.unix_ms, memory);
        let members: Vec<String> = decision.members.iter().map(ToString::to_string).collect();
        for net in spread::carve(decision.prefix, &decision.members, &protected) {
            let reason = format!(
                "{} addresses of {} offending within {}: {}",
                decision.members.len(),
                decision.prefix,
                crate::duration::format(self.policy.spread.window),
                members.join(", ")
            );
            let Ok(target) = Target::new_prefix(net) else {
                continue;
            };
            match self.blocklist.block(
                now.boot_ns,
                target,
                self.policy.spread_ttl,
                Source::Auto,
                reason.clone(),
            ) {
                Ok(()) => {
                    self.stats.prefix_blocks += 1;
                    self.prefix_blocks.push((target, reason));
                }
                Err(err) => self
                    .prefix_blocks
                    .push((target, format!("not blocked: {err}"))),
            }
        }
    }

    /// Prefix blocks applied since the last call, with their reasons.
    pub fn take_prefix_blocks(&mut self) -> Vec<(Target, String)> {
        std::mem::take(&mut self.prefix_blocks)
    }

    /// A reply whose first byte is not past the last one seen on its connection was sent before.
    fn is_retransmission(&mut self, reply: &Reply) -> bool {
        let key = (reply.client, reply.client_port, reply.server_port);
        if let Some(&last) = self.last_seq.get(&key) {
            // Serial-number comparison: sequence numbers wrap.
            if reply.seq.wrapping_sub(last).cast_signed() <= 0 {
                return true;
            }
        }
        self.last_seq.put(key, reply.seq);
        false
    }

    /// The classifier held `client` at `reply`, which had `outcome`: whether the hold stands (the
    /// block replaced it). Otherwise the caller gives the classifier [`Self::hold_count`] and
    /// lifts the hold.
    pub fn on_hold(&mut self, outcome: &Outcome) -> bool {
        let confirmed = matches!(outcome, Outcome::Blocked(_));
        if confirmed {
            self.stats.holds_confirmed += 1;
        }
        confirmed
    }

    /// A hold was lifted (it was still in the map).
    pub fn on_hold_lifted(&mut self) {
        self.stats.holds_lifted += 1;
    }

    /// The classifier's count for `client` after a lifted hold: the daemon's own count, and the
    /// client's own threshold where it differs from the configured one (never, for an
    /// allowlisted client), so the next hold comes when the daemon would block.
    pub fn hold_count(&self, client: IpAddr, at_ns: u64, now: Now) -> ClientCount {
        let client = crate::addr::canonical(client);
        let own = if self.policy.allow.contains(client) {
            u32::MAX
        } else {
            self.threshold_for(client, now)
        };
        ClientCount {
            last_ns: at_ns,
            count: u64::from(self.tracker.count(client, now.boot_ns)),
            threshold: if own == self.policy.tracker.threshold {
                0
            } else {
                own
            },
            _pad: 0,
        }
    }

    pub fn on_sessions_destroyed(&mut self, n: usize) {
        self.stats.sessions_destroyed += n as u64;
    }

    /// A session of `client` switched to TLS: its log rejections count for a while.
    pub fn on_tls_started(&mut self, client: IpAddr, now: Now) {
        self.stats.tls_sessions += 1;
        self.ledger.tls_started(client, now.unix_ms);
    }

    pub fn on_decode_error(&mut self) {
        self.stats.decode_errors += 1;
    }

    /// `slammer block`: allowlisted targets are refused.
    pub fn block_manual(
        &mut self,
        now_ns: u64,
        target: Target,
        ttl: Option<Duration>,
        reason: String,
    ) -> Result<(), BlockError> {
        let allowed = match target {
            Target::Addr(a) => self.policy.allow.contains(a),
            Target::Prefix(net) => self.policy.allow.overlaps(&net),
        };
        if allowed {
            return Err(BlockError::Allowlisted { target });
        }
        let res = self.blocklist.block(
            now_ns,
            target,
            ttl.unwrap_or(self.policy.ttl),
            Source::Manual,
            reason,
        );
        match &res {
            Ok(()) => self.stats.manual_blocks += 1,
            Err(BlockError::Full { .. }) => self.stats.blocks_refused_full += 1,
            Err(_) => {}
        }
        res
    }

    pub fn unblock(&mut self, target: Target) -> Result<(), BlockError> {
        self.blocklist.unblock(target)?;
        if let Target::Addr(a) = target {
            self.tracker.forget(a);
        }
        self.stats.unblocks_manual += 1;
        Ok(())
    }

    /// Removes at most `max` expired blocks (the rest stay due); returns them for logging.
    pub fn sweep(&mut self, now_ns: u64, max: usize) -> Vec<(Target, crate::blocklist::Block)> {
        let expired = self.blocklist.sweep(now_ns, max);
        self.stats.unblocks_expired += expired.len() as u64;
        expired
    }

    /// The sweeper held the daemon's lock for `held` in one go.
    pub fn note_sweep_hold(&mut self, held: Duration) {
        let us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.stats.sweep_lock_max_us = self.stats.sweep_lock_max_us.max(us);
    }

    /// The chunked steps of a bulk block (`block_many`, see [`BulkBlock`]), each under one hold
    /// of the daemon's lock: [`Engine::bulk_count_new`] until it returns true, then
    /// [`Engine::bulk_check_room`], then [`Engine::bulk_apply`] until it returns true, or after
    /// its error [`Engine::bulk_undo`] until that returns true.
    pub fn bulk_count_new(&self, bulk: &mut BulkBlock, max: usize) -> bool {
        bulk.count_new(&self.blocklist, max)
    }

    pub fn bulk_check_room(&mut self, bulk: &BulkBlock) -> Result<(), BulkRefusal> {
        let checked = bulk.check_room(&self.blocklist);
        if checked.is_err() {
            self.stats.blocks_refused_full += 1;
        }
        checked
    }

    pub fn bulk_apply(
        &mut self,
        bulk: &mut BulkBlock,
        now_ns: u64,
        max: usize,
    ) -> Result<bool, BulkRefusal> {
        let applied = bulk.apply(&mut self.blocklist, now_ns, max);
        match &applied {
            Ok(true) => self.stats.manual_blocks += bulk.applied() as u64,
            Ok(false) => {}
            Err(refusal) => {
                if matches!(refusal.error, BlockError::Full { .. }) {
                    self.stats.blocks_refused_full += 1;
                }
            }
        }
        applied
    }

    pub fn bulk_undo(&mut self, bulk: &mut BulkBlock, max: usize) -> bool {
        bulk.undo(&mut self.blocklist, max)
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn tracked_clients(&self) -> usize {
        self.tracker.len()
    }

    pub fn blocklist(&self) -> &Blocklist<S> {
        &self.blocklist
    }

    pub fn blocklist_mut(&mut self) -> &mut Blocklist<S> {
        &mut self.blocklist
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Block history to save with the blocklist.
    pub fn history_records(&self, now_unix_ms: u64) -> Vec<Record> {
        self.history.records(now_unix_ms, &self.policy.escalation)
    }

    pub fn restore_history(&mut self, records: Vec<Record>) {
        self.history.restore(records);
    }

    /// Known-good senders to save with the blocklist.
    pub fn known_good_records(&self, now_unix_ms: u64) -> Vec<GoodRecord> {
        self.known_good
            .records(now_unix_ms, self.policy.known_good_memory)
    }

    pub fn restore_known_good(&mut self, records: Vec<GoodRecord>) {
        self.known_good.restore(records);
    }

    pub fn known_good_clients(&self) -> usize {
        self.known_good.len()
    }
}

/// A policy for tests: the default rules, no allowlist, no spread.
#[cfg(test)]
fn test_policy(threshold: u32) -> Policy {
    Policy {
        rules: RuleSet::defaults(),
        allow: Allowlist::new([]),
        tracker: TrackerConfig {
            threshold,
            window: Duration::from_mins(10),
            max_clients: 1000,
        },
        ttl: Duration::from_hours(1),
        observe: false,
        escalation: Escalation::default(),
        known_good_multiplier: 5,
        known_good_memory: Duration::from_hours(168),
        spread: SpreadConfig {
            min_addresses: 0,
            v4_prefix_len: 24,
            v6_prefix_len: 64,
            window: Duration::from_mins(10),
        },
        spread_ttl: Duration::from_hours(1),
    }
}

#[cfg(test)]
fn test_engine(policy: Policy) -> Engine<crate::blocklist::fake::FakeStore> {
    let store = crate::blocklist::fake::FakeStore {
        capacity: 100,
        ..Default::default()
    };
    Engine::new(Blocklist::new(store, 100), policy).expect("valid test policy")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocklist::fake::FakeStore;

    const S: u64 = 1_000_000_000;

    fn engine(threshold: u32) -> Engine<FakeStore> {
        test_engine(Policy {
            allow: Allowlist::defaults(["192.0.2.1".parse().unwrap()]),
            ..test_policy(threshold)
        })
    }

    fn reply(client: &str, port: u16, seq: u32, code: u16, text: &str) -> Reply {
        Reply {
            at_ns: u64::from(seq) * S,
            client: client.parse().unwrap(),
            client_port: port,
            server_port: 25,
            seq,
            code,
            text: text.to_owned(),
            held: false,
        }
    }

    fn at(boot_ns: u64) -> Now {
        Now {
            boot_ns,
            unix_ms: boot_ns / 1_000_000,
        }
    }

    const UNKNOWN: &str =
        "5.1.1 <x@mx.test>: Recipient address rejected: User unknown in local recipient table";

    #[test]
    fn blocks_at_exactly_the_threshold() {
        let mut e = engine(3);
        assert_eq!(
            e.on_reply(&reply("198.51.100.7", 1000, 1, 550, UNKNOWN), at(1)),
            Outcome::Counted
        );
        assert_eq!(
            e.on_reply(&reply("198.51.100.7", 1000, 2, 550, UNKNOWN), at(2)),
            Outcome::Counted
        );
        let Outcome::Blocked(b) = e.on_reply(&reply("198.51.100.7", 1001, 3, 550, UNKNOWN), at(3))
        else {
            panic!("third offense must block")
        };
        assert!(
            b.reason.starts_with("3x 550 \"User unknown\""),
            "{}",
            b.reason
        );
        let target: Target = "198.51.100.7".parse().unwrap();
        assert!(e.blocklist().is_blocked(&target, 4));
        assert_eq!(
            e.on_reply(&reply("198.51.100.7", 1001, 4, 550, UNKNOWN), at(4)),
            Outcome::AlreadyBlocked
        );
        assert_eq!(e.stats().auto_blocks, 1);
    }

    #[test]
    fn a_hold_stands_only_when_the_reply_blocked() {
        let mut e = engine(2);
        let counted = e.on_reply(&reply("198.51.100.7", 1000, 1, 550, UNKNOWN), at(1));
        assert!(!e.on_hold(&counted));
        let blocked = e.on_reply(&reply("198.51.100.7", 1000, 2, 550, UNKNOWN), at(2));
        assert!(e.on_hold(&blocked));
        assert!(!e.on_hold(&Outcome::AlreadyBlocked));
        assert!(!e.on_hold(&Outcome::NoOffense));
        e.on_hold_lifted();
        assert_eq!((e.stats().holds_confirmed, e.stats().holds_lifted), (1, 1));
    }

    #[test]
    fn a_lifted_hold_counts_on_from_the_daemons_count_and_threshold() {
        let mut e = engine(3);
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        e.on_reply(&reply("198.51.100.7", 1000, 1, 550, UNKNOWN), at(S));
        e.on_reply(
            &reply(
                "198.51.100.7",
                1000,
                2,
                550,
                "5.7.1 message content rejected",
            ),
            at(2 * S),
        );
        assert_eq!(
            e.hold_count(client, 2 * S, at(2 * S)),
            ClientCount {
                last_ns: 2 * S,
                count: 1,
                threshold: 0,
                _pad: 0,
            },
            "the daemon counted one offense; the configured threshold applies"
        );
        let allowed = e.hold_count("192.0.2.1".parse().unwrap(), 5, at(5));
        assert_eq!((allowed.count, allowed.threshold), (0, u32::MAX));
        // A sender with an accepted message: the multiplied threshold.
        let good: IpAddr = "198.51.100.8".parse().unwrap();
        let accepted = Reply {
            code: 250,
            text: "2.0.0 Ok: queued as 4F2A".to_owned(),
            ..reply("198.51.100.8", 1000, 3, 250, "")
        };
        assert_eq!(e.on_reply(&accepted, at(3 * S)), Outcome::Accepted);
        assert_eq!(e.hold_count(good, 3 * S, at(3 * S)).threshold, 15);
    }

    #[test]
    fn retransmitted_replies_count_once() {
        let mut e = engine(2);
        assert_eq!(
            e.on_reply(&reply("198.51.100.7", 1000, 10, 550, UNKNOWN), at(1)),
            Outcome::Counted
        );
        assert_eq!(
            e.on_reply(&reply("198.51.100.7", 1000, 10, 550, UNKNOWN), at(1)),
            Outcome::Duplicate
        );
        assert_eq!(e.stats().duplicates, 1);
        assert!(matches!(
            e.on_reply(&reply("198.51.100.7", 1000, 11, 550, UNKNOWN), at(1)),
            Outcome::Blocked(_)
        ));
    }

    #[test]
    fn allowlisted_clients_are_counted_not_blocked_and_logged_once_per_window() {
        let mut e = engine(1);
        let first = e.on_reply(&reply("192.0.2.1", 1000, 1, 550, UNKNOWN), at(S));
        assert_eq!(
            first,
            Outcome::Allowlisted {
                client: "192.0.2.1".parse().unwrap(),
                log: true
            }
        );
        let second = e.on_reply(&reply("192.0.2.1", 1000, 2, 550, UNKNOWN), at(2 * S));
        assert_eq!(
            second,
            Outcome::Allowlisted {
                client: "192.0.2.1".parse().unwrap(),
                log: false
            }
        );
        let later = e.on_reply(&reply("192.0.2.1", 1000, 3, 550, UNKNOWN), at(700 * S));
        assert!(matches!(later, Outcome::Allowlisted { log: true, .. }));
        assert_eq!(e.stats().allowlisted_offenses, 3);
        assert!(e.blocklist().list(0).is_empty());
    }

    #[test]
    fn syntax_errors_and_good_replies_never_count() {
        let mut e = engine(1);
        let replies = [
            (501, "5.1.7 Bad sender address syntax"),
            (500, "5.5.2 Error: command not recognized"),
        ];
        for (seq, (code, text)) in (1..).zip(replies) {
            assert_eq!(
                e.on_reply(&reply("198.51.100.7", 1000, seq, code, text), at(1)),
                Outcome::NoOffense
            );
        }
    }

    #[test]
    fn manual_blocks_respect_the_allowlist() {
        let mut e = engine(1);
        let err = e.block_manual(0, "192.0.2.0/24".parse().unwrap(), None, String::new());
        assert!(matches!(err, Err(BlockError::Allowlisted { .. })));
        e.block_manual(0, "198.51.100.0/24".parse().unwrap(), None, "x".into())
            .unwrap();
        assert_eq!(e.blocklist().list(0)[0].expires_in_secs, 3600);
        e.unblock("198.51.100.0/24".parse().unwrap()).unwrap();
        assert!(e.unblock("198.51.100.0/24".parse().unwrap()).is_err());
    }
}

#[cfg(test)]
mod escalation_tests {
    use super::*;

    #[test]
    fn a_second_block_lasts_twice_as_long() {
        let policy = test_policy(1);
        let mut e = test_engine(policy);
        let reply = |seq| Reply {
            at_ns: 1,
            client: "198.51.100.7".parse().unwrap(),
            client_port: 1,
            server_port: 25,
            seq,
            code: 550,
            text: "5.1.1 <a@b>: Recipient address rejected: User unknown".into(),
            held: false,
        };
        let now = Now {
            boot_ns: 1_000,
            unix_ms: 5_000,
        };
        assert!(matches!(e.on_reply(&reply(1), now), Outcome::Blocked(_)));
        let target: Target = "198.51.100.7".parse().unwrap();
        assert_eq!(e.blocklist().list(1_000)[0].expires_in_secs, 3600);
        e.unblock(target).unwrap();
        let Outcome::Blocked(b) = e.on_reply(&reply(2), now) else {
            panic!("not blocked")
        };
        assert!(
            b.reason.contains("repeat offender, block #2 for 2h"),
            "{}",
            b.reason
        );
        assert_eq!(e.blocklist().list(1_000)[0].expires_in_secs, 7200);
        assert_eq!(e.history_records(5_000)[0].blocks, 2);
    }
}

#[cfg(test)]
mod known_good_tests {
    use super::*;

    #[test]
    fn a_sender_that_delivered_gets_a_multiplied_threshold() {
        let policy = test_policy(2);
        let mut e = test_engine(policy);
        let now = Now {
            boot_ns: 1,
            unix_ms: 1,
        };
        let mut seq = 0;
        let mut reply = |client: &str, code, text: &str| {
            seq += 1;
            Reply {
                at_ns: u64::from(seq),
                client: client.parse().unwrap(),
                client_port: 1,
                server_port: 25,
                seq,
                code,
                text: text.into(),
                held: false,
            }
        };
        let unknown = "5.1.1 <a@b>: Recipient address rejected: User unknown";
        assert_eq!(
            e.on_reply(&reply("192.0.2.1", 250, "2.0.0 Ok: queued as ABC"), now),
            Outcome::Accepted
        );
        for i in 1..10 {
            assert_eq!(
                e.on_reply(&reply("192.0.2.1", 550, unknown), now),
                Outcome::Counted,
                "offense {i}"
            );
        }
        assert!(matches!(
            e.on_reply(&reply("192.0.2.1", 550, unknown), now),
            Outcome::Blocked(_)
        ));
        // A prober with no accepted message is blocked at the plain threshold.
        assert_eq!(
            e.on_reply(&reply("192.0.2.2", 550, unknown), now),
            Outcome::Counted
        );
        assert!(matches!(
            e.on_reply(&reply("192.0.2.2", 550, unknown), now),
            Outcome::Blocked(_)
        ));
        assert_eq!(e.stats().accepted_messages, 1);
    }
}

#[cfg(test)]
mod spread_tests {
    use super::*;

    #[test]
    fn a_rotating_attacker_loses_its_prefix_but_not_the_allowlisted_neighbour() {
        let mut e = test_engine(Policy {
            allow: Allowlist::new(["198.51.100.9/32".parse().unwrap()]),
            spread: SpreadConfig {
                min_addresses: 4,
                ..test_policy(10).spread
            },
            spread_ttl: Duration::from_hours(2),
            ..test_policy(10)
        });
        let now = Now {
            boot_ns: 1,
            unix_ms: 1,
        };
        for (seq, last) in (1..).zip([200, 201, 202]) {
            let r = Reply {
                at_ns: 1,
                client: format!("198.51.100.{last}").parse().unwrap(),
                client_port: 1,
                server_port: 25,
                seq,
                code: 550,
                text: "5.1.1 <a@b>: Recipient address rejected: User unknown".into(),
                held: false,
            };
            assert_eq!(e.on_reply(&r, now), Outcome::Counted);
        }
        assert!(e.take_prefix_blocks().is_empty());
        let r = Reply {
            at_ns: 2,
            client: "198.51.100.203".parse().unwrap(),
            client_port: 1,
            server_port: 25,
            seq: 9,
            code: 550,
            text: "5.1.1 <a@b>: Recipient address rejected: User unknown".into(),
            held: false,
        };
        assert_eq!(e.on_reply(&r, now), Outcome::Counted);
        let blocks = e.take_prefix_blocks();
        assert!(!blocks.is_empty());
        let keep: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(blocks.iter().all(|(t, _)| !t.contains(keep)), "{blocks:?}");
        assert!(
            blocks
                .iter()
                .any(|(t, _)| t.contains("198.51.100.201".parse().unwrap()))
        );
        assert!(
            blocks[0].1.contains("4 addresses of 198.51.100.0/24"),
            "{}",
            blocks[0].1
        );
        assert_eq!(e.stats().prefix_blocks, blocks.len() as u64);
        assert_eq!(e.blocklist().list(1)[0].expires_in_secs, 7200);
    }
}
