//! The egress classifier on the real replies of Postfix, Exim, Sendmail and `OpenSMTPD`: every
//! frame of each captured session (both directions, in order) goes through
//! `BPF_PROG_TEST_RUN`, and the events it reports must be exactly the rejections the capture's
//! annotation lists as sent in clear text. Needs root and `../shared/smtp-replies`.

mod common;

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use aya::{
    maps::{MapData, RingBuf},
    programs::{TestRun as _, TestRunOptions},
};
use common::{ETH_P_IPV4, TestKernel, ethernet, ipv4, tcp};
use slammer::{
    addr::Target,
    blocklist::BlockStore as _,
    events::{self, Event},
    kernel::{HOLD_TTL, Holds, KernelStore, read_counters},
    reply_text::reply_text,
    rules::RuleSet,
};
use slammer_common::{
    block::{BlockEntry, source},
    hold::ClientCount,
};

/// `TC_ACT_UNSPEC`: the classifier never changes the fate of a packet.
const CONTINUE: u32 = u32::MAX;

fn corpus() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/smtp-replies");
    assert!(
        dir.is_dir(),
        "the reply corpus is missing at {}",
        dir.display()
    );
    dir
}

/// Ethernet frames of a classic little-endian pcap file.
fn pcap_frames(path: &PathBuf) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &data[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "{} is not a little-endian pcap",
        path.display()
    );
    assert_eq!(
        u32::from_le_bytes(data[20..24].try_into().unwrap()),
        1,
        "not Ethernet"
    );
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let caplen = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        frames.push(data[at + 16..at + 16 + caplen].to_vec());
        at += 16 + caplen;
    }
    frames
}

/// (code, reply bytes) of every reply sent in clear text, from `<mta>.annotated.tsv`.
fn wire_replies(mta: &str) -> Vec<(u16, Vec<u8>)> {
    let tsv = std::fs::read_to_string(corpus().join(format!("{mta}.annotated.tsv"))).unwrap();
    tsv.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() < 7 || cols[4] != "wire" {
                return None;
            }
            let reply = cols[6].replace("\\r\\n", "\r\n");
            Some((cols[3].parse().ok()?, reply.into_bytes()))
        })
        .collect()
}

struct Seen {
    /// (code, text) of each rejection event, counted.
    rejections: BTreeMap<(u16, String), usize>,
    tls_started: usize,
}

fn drain(ring: &mut RingBuf<MapData>, seen: &mut Seen) {
    while let Some(record) = ring.next() {
        match events::decode(&record).expect("well-formed event") {
            Event::Reply(r) => *seen.rejections.entry((r.code, r.text)).or_default() += 1,
            Event::TlsStarted { .. } => seen.tls_started += 1,
        }
    }
}

fn replay(mta: &str) {
    let mut tk = TestKernel::load();
    let codes = RuleSet::defaults().codes();
    tk.get().set_smtp_ports(&[25].into()).unwrap();
    tk.get().set_reply_codes(&codes, &codes).unwrap();
    let mut ring = tk.get().take_events().unwrap();
    let counters = tk.get().take_counters().unwrap();
    let mut seen = Seen {
        rejections: BTreeMap::new(),
        tls_started: 0,
    };
    for frame in pcap_frames(&corpus().join(format!("pcap/{mta}.pcap"))) {
        let opts = TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::default()
        };
        let ret = tk
            .get()
            .classifier()
            .test_run(opts)
            .expect("BPF_PROG_TEST_RUN")
            .return_value;
        assert_eq!(ret, CONTINUE);
        drain(&mut ring, &mut seen);
    }
    let mut expected: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for (code, reply) in wire_replies(mta) {
        if codes.contains(&code) {
            *expected
                .entry((code, reply_text(&reply, code)))
                .or_default() += 1;
        }
    }
    assert!(!expected.is_empty());
    assert_eq!(
        seen.rejections, expected,
        "{mta}: reported rejections differ from the capture"
    );
    assert_eq!(seen.tls_started, 1, "{mta}: one session said STARTTLS");
    let (_, replies) = read_counters(&counters);
    assert_eq!(replies["tls_sessions"], 1);
    assert_eq!(replies["ringbuf_full"], 0);
    assert_eq!(replies["parse_errors"], 0);
}

#[test]
fn postfix_replies() {
    replay("postfix");
}

#[test]
fn exim_replies() {
    replay("exim4");
}

#[test]
fn sendmail_replies() {
    replay("sendmail");
}

#[test]
fn opensmtpd_replies() {
    replay("opensmtpd");
}

/// Runs `frame` through the classifier and returns the events it reported.
fn classify(tk: &mut TestKernel, ring: &mut RingBuf<MapData>, frame: &[u8]) -> Seen {
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    };
    tk.get()
        .classifier()
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN");
    let mut seen = Seen {
        rejections: BTreeMap::new(),
        tls_started: 0,
    };
    drain(ring, &mut seen);
    seen
}

/// Runs one server segment of flow 198.51.100.7:40000 <- :25 and returns the events.
fn segment(tk: &mut TestKernel, ring: &mut RingBuf<MapData>, seq: u32, payload: &[u8]) -> Seen {
    let mut frame = ethernet(&[], ETH_P_IPV4);
    frame.extend(ipv4(
        [192, 0, 2, 1],
        [198, 51, 100, 7],
        &[],
        &tcp(25, 40000, seq, 0x18, payload),
    ));
    classify(tk, ring, &frame)
}

fn loaded() -> (TestKernel, RingBuf<MapData>) {
    let mut tk = TestKernel::load();
    tk.get().set_smtp_ports(&[25].into()).unwrap();
    let codes = RuleSet::defaults().codes();
    tk.get().set_reply_codes(&codes, &codes).unwrap();
    let ring = tk.get().take_events().unwrap();
    (tk, ring)
}

/// The client of [`segment`]'s flow.
const CLIENT: [u8; 4] = [198, 51, 100, 7];
const UNKNOWN: &[u8] = b"550 5.1.1 <a@b>: Recipient address rejected: User unknown\r\n";

/// The classifier's events of one segment, with their hold flags.
fn held_flags(
    tk: &mut TestKernel,
    ring: &mut RingBuf<MapData>,
    seq: u32,
    body: &[u8],
) -> Vec<bool> {
    let mut frame = ethernet(&[], ETH_P_IPV4);
    frame.extend(ipv4(
        [192, 0, 2, 1],
        CLIENT,
        &[],
        &tcp(25, 40000, seq, 0x18, body),
    ));
    let opts = TestRunOptions {
        data_in: Some(&frame),
        ..TestRunOptions::default()
    };
    tk.get()
        .classifier()
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN");
    let mut held = Vec::new();
    while let Some(record) = ring.next() {
        if let Event::Reply(r) = events::decode(&record).expect("well-formed event") {
            held.push(r.held);
        }
    }
    held
}

/// [`loaded`], with holds at `threshold` in a 10-minute window lasting at most `ttl`, and the
/// blocklist maps to look at.
fn with_holds(threshold: u32, ttl: Duration) -> (TestKernel, RingBuf<MapData>, Holds, KernelStore) {
    let (mut tk, ring) = loaded();
    let mut holds = tk.get().take_holds().unwrap();
    holds
        .configure(threshold, Duration::from_mins(10), ttl)
        .unwrap();
    let store = tk.get().take_store().unwrap();
    (tk, ring, holds, store)
}

fn hold_entry(store: &KernelStore) -> Option<BlockEntry> {
    store.get(&Target::Addr(IpAddr::from(CLIENT)))
}

#[test]
fn the_threshold_th_counted_reply_places_a_hold_before_it_leaves() {
    let (mut tk, mut ring, holds, store) = with_holds(3, Duration::from_hours(1));
    let mut seq = 1000;
    for expected in [false, false, true] {
        assert_eq!(held_flags(&mut tk, &mut ring, seq, UNKNOWN), [expected]);
        seq += 100;
    }
    let entry = hold_entry(&store).expect("a hold in BLOCK_V4");
    assert_eq!(entry.source, source::HOLD);
    let left = Duration::from_nanos(
        entry
            .expires_at_ns
            .saturating_sub(slammer::clock::boot_ns()),
    );
    assert!(
        left + Duration::from_secs(5) > HOLD_TTL && left <= HOLD_TTL,
        "{entry:?}"
    );
    // Blocked already: the next counted reply places nothing (and replaces nothing).
    assert_eq!(held_flags(&mut tk, &mut ring, seq, UNKNOWN), [false]);
    assert_eq!(hold_entry(&store), Some(entry));
    assert_eq!(holds.count(IpAddr::from(CLIENT)).map(|c| c.count), Some(4));
}

#[test]
fn a_hold_replaces_an_expired_block_but_never_a_live_one() {
    let (mut tk, mut ring, _holds, mut store) = with_holds(1, Duration::from_secs(30));
    let target = Target::Addr(IpAddr::from(CLIENT));
    let live = BlockEntry::new(u64::MAX, source::MANUAL);
    store.put(&target, &live).unwrap();
    assert_eq!(held_flags(&mut tk, &mut ring, 1000, UNKNOWN), [false]);
    assert_eq!(store.get(&target), Some(live));
    assert!(
        !store.lift_hold(IpAddr::from(CLIENT)).unwrap(),
        "not a hold"
    );
    assert_eq!(store.get(&target), Some(live));

    store
        .put(&target, &BlockEntry::new(1, source::AUTO))
        .unwrap();
    assert_eq!(held_flags(&mut tk, &mut ring, 1100, UNKNOWN), [true]);
    let hold = store.get(&target).expect("a hold");
    assert_eq!(hold.source, source::HOLD);
    let left = hold.expires_at_ns.saturating_sub(slammer::clock::boot_ns());
    assert!(
        Duration::from_nanos(left) <= Duration::from_secs(30),
        "a hold never outlasts the blocks' TTL: {hold:?}"
    );
    assert!(store.lift_hold(IpAddr::from(CLIENT)).unwrap());
    assert_eq!(store.get(&target), None);
}

#[test]
fn only_codes_rules_name_count_and_a_clients_own_threshold_wins() {
    let (mut tk, mut ring) = loaded();
    // 550 is reported but counted by no rule (say, only for known-good bookkeeping).
    tk.get()
        .set_reply_codes(&[550, 554].into(), &[554].into())
        .unwrap();
    let mut holds = tk.get().take_holds().unwrap();
    holds
        .configure(2, Duration::from_mins(10), Duration::from_hours(1))
        .unwrap();
    let store = tk.get().take_store().unwrap();
    let relay: &[u8] = b"554 5.7.1 <v@relay.example>: Relay access denied\r\n";
    assert_eq!(held_flags(&mut tk, &mut ring, 1000, UNKNOWN), [false]);
    assert_eq!(held_flags(&mut tk, &mut ring, 1100, UNKNOWN), [false]);
    assert!(hold_entry(&store).is_none());
    // The daemon raised this client's threshold to 3 (a known-good sender).
    holds
        .set_count(
            IpAddr::from(CLIENT),
            ClientCount {
                last_ns: slammer::clock::boot_ns(),
                count: 1,
                threshold: 3,
                _pad: 0,
            },
        )
        .unwrap();
    assert_eq!(held_flags(&mut tk, &mut ring, 1200, relay), [false]);
    assert_eq!(held_flags(&mut tk, &mut ring, 1300, relay), [true]);
    assert!(hold_entry(&store).is_some());
}

#[test]
fn the_daemons_count_raises_the_classifiers_and_an_unblock_restarts_it() {
    let (mut tk, mut ring, mut holds, store) = with_holds(3, Duration::from_hours(1));
    let client = IpAddr::from(CLIENT);
    let daemons = |count| ClientCount {
        last_ns: slammer::clock::boot_ns(),
        count,
        threshold: 0,
        _pad: 0,
    };
    assert_eq!(held_flags(&mut tk, &mut ring, 1000, UNKNOWN), [false]);
    // The daemon read two offenses from the MTA's log (inside TLS): the count catches up.
    holds.raise_count(client, daemons(2)).unwrap();
    assert_eq!(holds.count(client).map(|c| c.count), Some(2));
    holds.raise_count(client, daemons(1)).unwrap();
    assert_eq!(
        holds.count(client).map(|c| c.count),
        Some(2),
        "never lowered"
    );
    assert_eq!(held_flags(&mut tk, &mut ring, 1100, UNKNOWN), [true]);
    assert!(hold_entry(&store).is_some());

    holds.forget(client);
    assert_eq!(holds.count(client), None);
    holds.forget(client);
    assert_eq!(held_flags(&mut tk, &mut ring, 1200, UNKNOWN), [false]);
    assert_eq!(holds.count(client).map(|c| c.count), Some(1));
}

#[test]
fn holds_are_off_at_threshold_zero() {
    let (mut tk, mut ring) = loaded();
    let store = tk.get().take_store().unwrap();
    // Never configured: the map holds zeros.
    for seq in [1000, 1100, 1200] {
        assert_eq!(held_flags(&mut tk, &mut ring, seq, UNKNOWN), [false]);
    }
    assert!(hold_entry(&store).is_none());
}

#[test]
fn a_segment_starting_mid_line_reports_nothing_for_its_first_partial_line() {
    let (mut tk, mut ring) = loaded();
    // A long 250 reply split so that the second segment begins with text that looks like a code.
    let first = b"250-mx.test Hello 550 x\r\n250-a long line that goes on ";
    assert!(
        segment(&mut tk, &mut ring, 1000, first)
            .rejections
            .is_empty()
    );
    let second = b"550 5.1.1 User unknown in the middle\r\n550 5.1.1 <a@b>: User unknown\r\n";
    let seq = 1000 + u32::try_from(first.len()).unwrap();
    let seen = segment(&mut tk, &mut ring, seq, second);
    let texts: Vec<&String> = seen.rejections.keys().map(|(_, t)| t).collect();
    assert_eq!(texts, ["5.1.1 <a@b>: User unknown"]);
}

#[test]
fn lines_past_the_scan_window_are_not_read_but_the_first_window_is() {
    let (mut tk, mut ring) = loaded();
    let mut payload = Vec::new();
    for _ in 0..40 {
        payload.extend_from_slice(
            b"550 5.1.1 <nobody@mx.test>: Recipient address rejected: User unknown\r\n",
        );
    }
    let seen = segment(&mut tk, &mut ring, 5000, &payload);
    let reported: usize = seen.rejections.values().sum();
    // 70-byte lines: those whose code lies inside the first 2048 bytes count (k * 70 + 4 <= 2048).
    assert_eq!(reported, 30);
    assert_eq!(payload.len(), 2800);
}

#[test]
fn client_commands_never_count() {
    let (mut tk, mut ring) = loaded();
    let mut frame = ethernet(&[], ETH_P_IPV4);
    let body = b"550 5.1.1 <a@b>: Recipient address rejected: User unknown\r\n554 5.7.1 Relay access denied\r\n";
    frame.extend(ipv4(
        [198, 51, 100, 7],
        [192, 0, 2, 1],
        &[],
        &tcp(40000, 25, 1, 0x18, body),
    ));
    let seen = classify(&mut tk, &mut ring, &frame);
    assert!(seen.rejections.is_empty());
}
