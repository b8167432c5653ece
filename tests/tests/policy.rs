//! Policy end to end, each test against a real Postfix in mx with slammer on mx's veth: repeat
//! offenders get longer blocks, a prefix whose addresses spread their offenses is blocked (carved
//! around protected addresses), a sender whose mail was accepted gets a higher threshold, observe
//! mode decides without dropping until a reload enforces, and a block ends the blocked client's
//! open SMTP sessions.
//!
//! Settings come from `--threshold/--window/--ttl` flags plus a TOML file (`--config`) in the
//! test's scratch directory, which the observe test rewrites before `slammer reload`.

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use tests::{
    BlockEntry, Cli, Daemon, DaemonConfig, Postfix, Smtp, Timeline, Topology,
    command::run_ok,
    daemon::same_target,
    poll::{poll_until, wait_until},
    postfix::DOMAIN,
    scenario,
};

/// Rejections that get a client blocked (`--threshold`); low to keep the tests fast.
const THRESHOLD: u32 = 3;
/// `--window`, as the daemon writes it in reasons.
const WINDOW: &str = "10m";
/// `--ttl` in seconds (1h).
const TTL_SECS: f64 = 3600.0;
/// The default known-good multiplier (`known_good_multiplier`, not set by the tests).
const KNOWN_GOOD_MULTIPLIER: u32 = 5;
/// `expires_in_secs` is whole seconds and read a moment after the block: this much below the
/// TTL still counts as "the TTL".
const TTL_SLACK: f64 = 5.0;
/// How long the daemon may take to block after the deciding rejection.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to count an offense or update a counter.
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a blocked client's open session may survive on the server side.
const SESSION_KILL_TIMEOUT: Duration = Duration::from_secs(1);
/// A SYN that gets no answer within this is taken as dropped.
const DROP_TIMEOUT: Duration = Duration::from_secs(1);

/// Postfix and slammer (with a config file) in mx, clients in cl. Fields drop in order: daemon,
/// Postfix, namespaces and scratch directory (with the config file).
struct MailHost {
    cli: Cli,
    /// The `--config` file; rewrite it and `slammer reload` to change settings.
    config: PathBuf,
    _daemon: Daemon,
    _postfix: Postfix,
    topo: Topology,
}

impl MailHost {
    /// A topology with `extra_clients` more client addresses per family, Postfix, and the daemon
    /// with `config` as its TOML file and `--allow` for each address `allow` names.
    fn start(
        t: &Timeline,
        extra_clients: u8,
        config: &str,
        allow: impl FnOnce(&Topology) -> Vec<IpAddr>,
    ) -> MailHost {
        let topo = Topology::with_extra_clients(extra_clients);
        t.mark(&format!("topology slt{} up (N={})", topo.id, topo.n));
        let postfix = Postfix::start(&topo.mx, topo.dir.path());
        t.mark("postfix up");
        let config_path = topo.dir.path().join("slammer.toml");
        write_config(&config_path, config);
        let mut extra = vec!["--config".to_owned(), config_path.display().to_string()];
        for addr in allow(&topo) {
            let len = if addr.is_ipv4() { 32 } else { 128 };
            extra.extend(["--allow".to_owned(), format!("{addr}/{len}")]);
        }
        let cfg = DaemonConfig {
            threshold: THRESHOLD,
            window: WINDOW.into(),
            ttl: "1h".into(),
            extra,
        };
        let daemon = Daemon::start(&topo, &cfg);
        t.mark(&format!("daemon ready ({})", cfg.args().join(" ")));
        MailHost {
            cli: daemon.cli(),
            config: config_path,
            _daemon: daemon,
            _postfix: postfix,
            topo,
        }
    }

    /// (attacker .2, other client .3) of one family.
    fn clients(&self, v6: bool) -> (IpAddr, IpAddr) {
        scenario::clients(&self.topo, v6)
    }

    /// An SMTP session from `src` to mx:25 (banner read).
    fn smtp(&self, src: IpAddr) -> Smtp {
        scenario::connect(&self.topo, src, 25)
    }

    /// A session from `src` with EHLO and MAIL FROM done: ready for rejected RCPTs.
    fn probe_session(&self, src: IpAddr) -> Smtp {
        let mut s = self.smtp(src);
        s.ehlo("atk.slx.test");
        s.expect("MAIL FROM:<probe@atk.slx.test>", 250);
        s
    }

    /// A counter of `slammer stats --json` by dotted path.
    fn counter(&self, path: &str) -> u64 {
        self.cli.stats().get(path)
    }

    /// Waits until counter `path` is at least `n`; returns its value.
    fn wait_counter(&self, path: &str, n: u64) -> u64 {
        wait_until(&format!("stats {path} to reach {n}"), COUNT_TIMEOUT, || {
            let got = self.counter(path);
            (got >= n).then_some(got)
        })
    }

    /// Waits until the daemon has counted `n` offenses in all, then checks it counted no more:
    /// every rejection sent so far has been decided on.
    fn wait_offenses(&self, n: u32) {
        let got = self.wait_counter("daemon.offenses", u64::from(n));
        assert_eq!(
            got,
            u64::from(n),
            "the daemon counted more offenses than rejections sent"
        );
    }

    /// Polls `list` until `client` has an entry; panics (with list and stats) after
    /// [`DETECT_TIMEOUT`].
    fn wait_listed(&self, client: IpAddr, after: &str) -> BlockEntry {
        let target = client.to_string();
        poll_until(DETECT_TIMEOUT, || self.cli.entry(&target)).unwrap_or_else(|| {
            panic!(
                "{client} not blocked within {DETECT_TIMEOUT:?} after {after}; list: {:?}; stats: {}",
                self.cli.list(),
                self.cli.stats().0
            )
        })
    }

    fn assert_not_listed(&self, client: IpAddr, why: &str) {
        let list = self.cli.list();
        assert!(
            !list.iter().any(|e| e.covers(client)),
            "{client} is blocked but should not be ({why}): {list:?}"
        );
    }

    /// The entry of `target`, which must be listed.
    fn entry(&self, target: IpAddr) -> BlockEntry {
        self.cli
            .entry(&target.to_string())
            .unwrap_or_else(|| panic!("{target} is not listed: {:?}", self.cli.list()))
    }

    /// `client` delivers a mail to alice (MAIL/RCPT/DATA -> `250 2.0.0 Ok: queued as ...`).
    fn deliver(&self, client: IpAddr) -> String {
        let mut c = self.smtp(client);
        c.ehlo("client.slx.test");
        let reply = c.send_mail(
            "bob@client.slx.test",
            &format!("alice@{DOMAIN}"),
            "Subject: hello\n\nJust a normal mail.\n",
        );
        assert!(reply.text().contains("queued as"), "{reply}");
        c.quit();
        reply.to_string()
    }

    /// The peers of the established TCP sessions on mx's port 25, as `ss` in mx shows them.
    fn smtp_peers(&self) -> Vec<IpAddr> {
        let out = run_ok(self.topo.mx.exec("ss").args([
            "-tnH",
            "state",
            "established",
            "( sport = :25 )",
        ]));
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                // Recv-Q Send-Q Local:Port Peer:Port (no State column with a state filter).
                let peer = line.split_whitespace().nth(3).unwrap_or_else(|| {
                    panic!("unexpected `ss` line {line:?} in:\n{out}");
                });
                let host = peer.rsplit_once(':').map_or(peer, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host.parse::<IpAddr>().map_or_else(
                    |e| panic!("`ss` peer {peer:?} ({line:?}): {e}"),
                    |a| a.to_canonical(),
                )
            })
            .collect()
    }
}

fn write_config(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A rejected RCPT (`550 5.1.1 ... User unknown`); `k` makes the recipient unique.
fn reject(s: &mut Smtp, k: u32) {
    let reply = s.expect(&format!("RCPT TO:<nouser{k}@{DOMAIN}>"), 550);
    assert!(reply.text().contains("User unknown"), "{reply}");
}

/// Panics unless `entry` expires in about `ttl_secs` (a little less, never more).
fn assert_ttl(entry: &BlockEntry, ttl_secs: f64, what: &str) {
    assert!(
        (ttl_secs - TTL_SLACK..=ttl_secs).contains(&entry.expires_in_secs),
        "{what}: expected expires_in_secs ~{ttl_secs} (within {TTL_SLACK}s below), got {entry:?}"
    );
}

/// The /`len` prefix of `addr`, as the daemon writes it (`10.231.7.0/24`, `fd31:7::/64`).
fn prefix_of(addr: IpAddr, len: u8) -> String {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX << (32 - len);
            format!("{}/{len}", Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX << (128 - len);
            format!("{}/{len}", Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// Each new automatic block of an address blocked before lasts `escalation_factor` (2) times
/// longer per earlier block, up to `escalation_cap` (3h here): 1h, then 2h, then 3h instead of
/// 4h; the reason says which block it is. An unblock in between does not forget the history.
#[test]
fn repeat_offender_gets_escalated_ttl() {
    let t = Timeline::new("policy/escalation");
    let host = MailHost::start(
        &t,
        0,
        "# Repeat offenders: the TTL doubles per earlier block, up to 3h.\n\
         escalation_factor = 2.0\n\
         escalation_cap = \"3h\"\n\
         history_retention = \"1d\"\n",
        |_| Vec::new(),
    );
    let (attacker, _) = host.clients(true);
    let rounds: [(f64, Option<&str>); 3] = [
        (TTL_SECS, None),
        (2.0 * TTL_SECS, Some("; repeat offender, block #2 for 2h")),
        (3.0 * TTL_SECS, Some("; repeat offender, block #3 for 3h")),
    ];
    let mut k = 0;
    for (round, (ttl, repeat)) in (1_u32..).zip(rounds) {
        if round > 1 {
            host.cli.unblock(&attacker.to_string());
            let took = host
                .topo
                .wait_connects(attacker, 25, Duration::from_secs(2));
            t.mark(&format!(
                "unblocked {attacker}; it connects again after {:.0} ms",
                took.as_secs_f64() * 1000.0
            ));
        }
        let mut atk = host.probe_session(attacker);
        for _ in 1..THRESHOLD {
            k += 1;
            reject(&mut atk, k);
        }
        host.wait_offenses(round * THRESHOLD - 1);
        host.assert_not_listed(attacker, "one rejection below the threshold");
        k += 1;
        reject(&mut atk, k);
        let entry = host.wait_listed(
            attacker,
            &format!("its rejection #{THRESHOLD} of round {round}"),
        );
        t.mark(&format!("block #{round}: {entry:?}"));
        assert_eq!(entry.source, "auto", "{entry:?}");
        assert_eq!(entry.kind, "address", "{entry:?}");
        assert_ttl(&entry, ttl, &format!("block #{round}"));
        match repeat {
            None => assert!(
                !entry.reason.contains("repeat offender"),
                "a first block is no repeat: {entry:?}"
            ),
            Some(tail) => assert!(
                entry.reason.ends_with(tail),
                "block #{round}: the reason should end with {tail:?}: {:?}",
                entry.reason
            ),
        }
        host.topo.assert_dropped(attacker, 25, DROP_TIMEOUT);
        let stats = host.cli.stats();
        assert_eq!(
            stats.get("daemon.auto_blocks"),
            u64::from(round),
            "stats: {}",
            stats.0
        );
        drop(atk);
    }
    assert_eq!(host.cli.list().len(), 1, "{:?}", host.cli.list());
}

/// How the neighbour of the spreading attackers is protected from their prefix block.
#[derive(Clone, Copy, Debug)]
enum Neighbour {
    /// `--allow ADDR`.
    Allowlisted,
    /// It delivered a mail before the attack.
    KnownGood,
}

/// `spread_min_addresses` (4) addresses of one prefix (`10.231.N.10-13` or `fd31:N::10-13`)
/// offend once each (below the threshold of 3) and keep their sessions open: the prefix is
/// blocked for `spread_ttl`, carved around mx's own address and a protected neighbour right
/// next to them (`.14` or `::14`), and the attackers' open sessions are ended. Their new
/// connections are dropped; the neighbour's open session survives and it still connects.
fn spread(name: &str, v6: bool, protection: Neighbour) {
    let t = Timeline::new(name);
    let host = MailHost::start(
        &t,
        5,
        "# Subnet spread: 4 offending addresses of a /24 or /64 block it for 30m.\n\
         spread_min_addresses = 4\n\
         spread_v4_prefix = 24\n\
         spread_v6_prefix = 64\n\
         spread_ttl = \"30m\"\n",
        |topo| match protection {
            Neighbour::Allowlisted => vec![topo.extra_clients(v6)[4]],
            Neighbour::KnownGood => Vec::new(),
        },
    );
    let mut attackers = host.topo.extra_clients(v6);
    let neighbour = attackers.pop().expect("5 extra clients");
    let mx = host.topo.mx_for(neighbour);
    let prefix = prefix_of(mx, if v6 { 64 } else { 24 });
    if let Neighbour::KnownGood = protection {
        let queued = host.deliver(neighbour);
        host.wait_counter("daemon.accepted_messages", 1);
        t.mark(&format!("{neighbour} delivered a mail: {queued}"));
    }
    let mut bystander = host.smtp(neighbour);
    bystander.ehlo("client.slx.test");

    let sessions = spread_offenses(&host, &attackers, &prefix);
    t.mark(&format!(
        "4 addresses of {prefix} got one rejection each (sessions kept open)"
    ));
    let prefixes = wait_prefix_blocks(&host, &prefix);
    for e in &prefixes {
        t.mark(&format!("listed: {e:?}"));
    }
    let what = match protection {
        Neighbour::Allowlisted => "the allowlisted neighbour",
        Neighbour::KnownGood => "the known-good neighbour",
    };
    check_carved(
        &prefixes,
        &prefix,
        &attackers,
        &[(mx, "mx's own address"), (neighbour, what)],
    );
    let stats = host.cli.stats();
    let n = prefixes.len() as u64;
    assert_eq!(stats.get("daemon.prefix_blocks"), n, "stats: {}", stats.0);
    assert_eq!(
        stats.get("daemon.blocked_prefixes"),
        n,
        "stats: {}",
        stats.0
    );
    assert_eq!(stats.get("daemon.auto_blocks"), 0, "stats: {}", stats.0);

    let peers = poll_until(SESSION_KILL_TIMEOUT, || {
        let peers = host.smtp_peers();
        (!attackers.iter().any(|a| peers.contains(a))).then_some(peers)
    })
    .unwrap_or_else(|| {
        panic!(
            "attackers' sessions still established {SESSION_KILL_TIMEOUT:?} after the prefix \
             block: {:?}",
            host.smtp_peers()
        )
    });
    assert!(
        peers.contains(&neighbour),
        "{what} {neighbour} lost its open session: {peers:?}"
    );
    let destroyed = host.wait_counter("daemon.sessions_destroyed", 4);
    assert_eq!(destroyed, 4, "the 4 attackers' sessions only");
    t.mark("the 4 attackers' open sessions were ended");
    drop(sessions);

    bystander.expect("NOOP", 250);
    bystander.quit();
    host.smtp(neighbour).quit();
    t.mark(&format!(
        "{what} {neighbour} keeps its session and still connects"
    ));
    thread::scope(|s| {
        for &attacker in &attackers {
            let topo = &host.topo;
            s.spawn(move || topo.assert_dropped(attacker, 25, DROP_TIMEOUT));
        }
    });
    let dropped = wait_until(
        "the prefix blocks to count the dropped SYNs",
        COUNT_TIMEOUT,
        || {
            let sum: u64 = host.cli.list().iter().map(|e| e.dropped_packets).sum();
            (sum >= attackers.len() as u64).then_some(sum)
        },
    );
    t.mark(&format!(
        "new connections of all 4 attackers dropped ({dropped} packets counted)"
    ));
}

/// Polls `list` until it shows a prefix block; returns the whole list then.
fn wait_prefix_blocks(host: &MailHost, prefix: &str) -> Vec<BlockEntry> {
    poll_until(DETECT_TIMEOUT, || {
        let list = host.cli.list();
        list.iter().any(|e| e.kind == "prefix").then_some(list)
    })
    .unwrap_or_else(|| {
        panic!(
            "no prefix blocked within {DETECT_TIMEOUT:?} after 4 addresses of {prefix} offended; \
             list: {:?}; stats: {}",
            host.cli.list(),
            host.cli.stats().0
        )
    })
}

/// One rejection from each of `attackers`, in order, each in its own session, which is kept
/// open and returned. Nothing is blocked before the last one.
fn spread_offenses(host: &MailHost, attackers: &[IpAddr], prefix: &str) -> Vec<Smtp> {
    let offenses_before = host.counter("daemon.offenses");
    let mut sessions = Vec::new();
    for (k, &attacker) in (1..).zip(attackers) {
        let mut atk = host.probe_session(attacker);
        reject(&mut atk, k);
        sessions.push(atk);
        if k < 4 {
            host.wait_offenses(u32::try_from(offenses_before).expect("few") + k);
            let list = host.cli.list();
            assert!(
                list.is_empty(),
                "{k} offending address(es) of {prefix}, one rejection each: nothing to block \
                 yet: {list:?}"
            );
        }
    }
    sessions
}

/// Checks the entries a spread of `attackers` over `prefix` produced: prefix blocks only (every
/// attacker offended below the threshold), automatic, enforced, for `spread_ttl` (30m), with the
/// documented reason, together covering every attacker and none of the `protected` addresses
/// (so `prefix` itself, which holds them, is carved).
fn check_carved(
    entries: &[BlockEntry],
    prefix: &str,
    attackers: &[IpAddr],
    protected: &[(IpAddr, &str)],
) {
    let members: Vec<String> = attackers.iter().map(ToString::to_string).collect();
    let reason = format!(
        "{} addresses of {prefix} offending within {WINDOW}: {}",
        attackers.len(),
        members.join(", ")
    );
    for e in entries {
        assert_eq!(
            e.kind, "prefix",
            "one rejection each blocks no single address: {e:?}"
        );
        assert_eq!(e.source, "auto", "{e:?}");
        assert!(e.enforced, "{e:?}");
        assert!(
            e.addr.contains('/') && !same_target(&e.addr, prefix),
            "{prefix} holds protected addresses and must be carved: {e:?}"
        );
        assert_eq!(e.reason, reason, "{e:?}");
        assert_ttl(e, 1800.0, "spread_ttl 30m");
    }
    for &attacker in attackers {
        assert!(
            entries.iter().any(|e| e.covers(attacker)),
            "no prefix block covers the offender {attacker}: {entries:?}"
        );
    }
    for &(addr, what) in protected {
        assert!(
            !entries.iter().any(|e| e.covers(addr)),
            "a prefix block covers {what} {addr}: {entries:?}"
        );
    }
}

#[test]
fn spread_v4_blocks_carved_prefix() {
    spread("policy/spread_v4", false, Neighbour::Allowlisted);
}

#[test]
fn spread_v6_blocks_carved_prefix() {
    spread("policy/spread_v6", true, Neighbour::Allowlisted);
}

#[test]
fn spread_v4_spares_known_good_neighbour() {
    spread("policy/spread_v4_known_good", false, Neighbour::KnownGood);
}

/// .3 delivers a mail (`250 ... queued as`), so it is known-good: its threshold is multiplied by
/// `known_good_multiplier` (5). .2, which delivered nothing, is blocked at the plain threshold
/// meanwhile; .3 only at `THRESHOLD * 5` rejections.
#[test]
fn known_good_sender_gets_higher_threshold() {
    let t = Timeline::new("policy/known_good");
    let host = MailHost::start(
        &t,
        0,
        "# Defaults: known_good_multiplier = 5, known_good_memory = \"7d\".\n",
        |_| Vec::new(),
    );
    let (prober, sender) = host.clients(false);
    let high = THRESHOLD * KNOWN_GOOD_MULTIPLIER;

    let queued = host.deliver(sender);
    host.wait_counter("daemon.accepted_messages", 1);
    let stats = host.cli.stats();
    assert_eq!(
        stats.get("daemon.accepted_messages"),
        1,
        "stats: {}",
        stats.0
    );
    assert_eq!(
        stats.get("daemon.known_good_clients"),
        1,
        "stats: {}",
        stats.0
    );
    t.mark(&format!("{sender} delivered a mail: {queued}"));

    let mut good = host.probe_session(sender);
    let mut k = 0;
    for _ in 0..THRESHOLD {
        k += 1;
        reject(&mut good, k);
    }
    host.wait_offenses(THRESHOLD);
    host.assert_not_listed(sender, "known-good, only at the plain threshold");
    t.mark(&format!("{sender}: {THRESHOLD} rejections, not blocked"));

    let mut bad = host.probe_session(prober);
    for j in 1..=THRESHOLD {
        reject(&mut bad, 1000 + j);
    }
    let entry = host.wait_listed(prober, &format!("{THRESHOLD} rejections (no delivery)"));
    assert_eq!(entry.source, "auto", "{entry:?}");
    assert_ttl(&entry, TTL_SECS, "plain block");
    t.mark(&format!(
        "{prober} blocked at the plain threshold: {entry:?}"
    ));
    drop(bad);

    while k < high - 1 {
        k += 1;
        reject(&mut good, k);
    }
    host.wait_offenses(THRESHOLD + high - 1);
    host.assert_not_listed(
        sender,
        "known-good, one rejection below threshold x multiplier",
    );
    t.mark(&format!("{sender}: {k} rejections, not blocked"));
    k += 1;
    reject(&mut good, k);
    let entry = host.wait_listed(sender, &format!("its rejection #{high}"));
    t.mark(&format!("{sender} blocked at {high}: {entry:?}"));
    assert_eq!(entry.source, "auto", "{entry:?}");
    assert!(
        entry.reason.starts_with(&format!("{high}x ")),
        "the reason should count {high} rejections: {:?}",
        entry.reason
    );
    let stats = host.cli.stats();
    assert_eq!(stats.get("daemon.auto_blocks"), 2, "stats: {}", stats.0);
    assert_eq!(host.cli.list().len(), 2, "{:?}", host.cli.list());
    // The classifier knows no senders: it held the known-good one at the plain threshold too,
    // and the daemon lifted that hold and gave it the higher threshold, where it held it again.
    assert_eq!(stats.get("replies.holds_placed"), 3, "stats: {}", stats.0);
    assert_eq!(stats.get("daemon.holds_confirmed"), 2, "stats: {}", stats.0);
    assert_eq!(stats.get("daemon.holds_lifted"), 1, "stats: {}", stats.0);
    drop(good);
}

/// `mode = "observe"`: the attacker is listed with `enforced: false`, keeps its open session,
/// can still connect, and the gate counts its packets as would-be drops. Switching the file to
/// `mode = "enforce"` and `slammer reload` enforces the entry at once, with the TTL it had left.
#[test]
fn observe_mode_then_reload_enforces() {
    let t = Timeline::new("policy/observe");
    let observe = "# Trial: decide, list and count; drop nothing.\nmode = \"observe\"\n";
    let host = MailHost::start(&t, 0, observe, |_| Vec::new());
    let (attacker, legit) = host.clients(false);

    let mut atk = host.probe_session(attacker);
    for k in 1..=THRESHOLD {
        reject(&mut atk, k);
    }
    let entry = host.wait_listed(attacker, &format!("{THRESHOLD} rejections"));
    t.mark(&format!("decided: {entry:?}"));
    assert!(
        !entry.enforced,
        "observe mode lists entries as not enforced: {entry:?}"
    );
    assert_eq!(entry.source, "auto", "{entry:?}");
    assert_ttl(&entry, TTL_SECS, "observed block");
    let first_expiry = entry.expires_in_secs;
    let reply = atk.expect("NOOP", 250);
    t.mark(&format!(
        "the attacker's open session still answers: {reply}"
    ));

    let observed = host.counter("gate.observed_packets");
    let again = host.smtp(attacker);
    again.quit();
    let now = host.wait_counter("gate.observed_packets", observed + 1);
    t.mark(&format!(
        "{attacker} connects again; gate.observed_packets {observed} -> {now}"
    ));
    let stats = host.cli.stats();
    assert_eq!(stats.get("gate.dropped_packets"), 0, "stats: {}", stats.0);
    assert_eq!(
        stats.get("daemon.sessions_destroyed"),
        0,
        "stats: {}",
        stats.0
    );
    let entry = host.entry(attacker);
    assert!(
        entry.dropped_packets > 0,
        "the entry counts would-be drops: {entry:?}"
    );

    // Let the pending entry's clock run, so a TTL restarted by the reload would show.
    let before = wait_until(
        "the observed entry's expires_in_secs to drop by 2",
        Duration::from_secs(5),
        || {
            let e = host.entry(attacker);
            (e.expires_in_secs <= first_expiry - 2.0).then_some(e.expires_in_secs)
        },
    );
    write_config(&host.config, "# Trial over: enforce.\nmode = \"enforce\"\n");
    let out = host.cli.ok(&["reload"]);
    t.mark(&format!("reload: {}", out.trim()));
    assert!(out.contains("enforce mode"), "`slammer reload` said: {out}");

    let entry = host.entry(attacker);
    t.mark(&format!("after reload: {entry:?}"));
    assert!(entry.enforced, "enforced after the reload: {entry:?}");
    assert!(
        entry.expires_in_secs <= before && entry.expires_in_secs >= before - TTL_SLACK,
        "the reload must keep the TTL left ({before}s), not restart it: {entry:?}"
    );
    host.topo.assert_dropped(attacker, 25, DROP_TIMEOUT);
    host.wait_counter("gate.dropped_packets", 1);
    // The session the attacker opened while observed is ended when enforcement starts.
    host.wait_counter("daemon.sessions_destroyed", 1);
    let c = host.smtp(legit);
    c.quit();
    t.mark(&format!("{attacker} dropped now; {legit} still connects"));
    drop(atk);
}

/// The attacker keeps its session open after its threshold-th rejection (no QUIT). The block
/// destroys the server side of it (`sock_diag`) within a second, the attacker sees the reset, and
/// another client's open session is left alone.
fn session_kill(name: &str, v6: bool) {
    let t = Timeline::new(name);
    let host = MailHost::start(&t, 0, "# Defaults.\n", |_| Vec::new());
    let (attacker, other) = host.clients(v6);

    let mut bystander = host.smtp(other);
    bystander.ehlo("client.slx.test");
    let mut atk = host.probe_session(attacker);
    for k in 1..THRESHOLD {
        reject(&mut atk, k);
    }
    host.wait_offenses(THRESHOLD - 1);
    let peers = host.smtp_peers();
    assert!(
        peers.contains(&attacker) && peers.contains(&other),
        "ss in mx should show established sessions of {attacker} and {other} on port 25: {peers:?}"
    );
    t.mark(&format!("established on mx:25: {peers:?}"));

    reject(&mut atk, THRESHOLD);
    let sent = Instant::now();
    let entry = host.wait_listed(attacker, &format!("its rejection #{THRESHOLD}"));
    t.mark(&format!("blocked: {entry:?}"));
    let gone = poll_until(SESSION_KILL_TIMEOUT, || {
        let peers = host.smtp_peers();
        (!peers.contains(&attacker)).then_some(peers)
    })
    .unwrap_or_else(|| {
        panic!(
            "the server side of {attacker}'s session still established {SESSION_KILL_TIMEOUT:?} \
             after its block: {:?}; stats: {}",
            host.smtp_peers(),
            host.cli.stats().0
        )
    });
    eprintln!(
        "SESSION KILL [{name}]: last rejection sent -> no established session in mx: {:.1} ms",
        sent.elapsed().as_secs_f64() * 1000.0
    );
    assert!(
        gone.contains(&other),
        "{other}'s session must survive the block of {attacker}: {gone:?}"
    );
    let destroyed = host.wait_counter("daemon.sessions_destroyed", 1);
    assert_eq!(
        destroyed,
        1,
        "only the attacker's session: {}",
        host.cli.stats().0
    );

    match atk.read_reply() {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
            ) =>
        {
            t.mark(&format!("the attacker's end sees the session end: {e}"));
        }
        Err(e) => panic!("the attacker's end should see a reset, got: {e}"),
        Ok(reply) => panic!("the attacker got a reply on a destroyed session: {reply}"),
    }
    bystander.expect("NOOP", 250);
    bystander.quit();
    t.mark(&format!("{other}'s session still answers"));
}

#[test]
fn session_killed_on_block_v4() {
    session_kill("policy/session_kill_v4", false);
}

#[test]
fn session_killed_on_block_v6() {
    session_kill("policy/session_kill_v6", true);
}
