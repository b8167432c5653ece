//! Operating the daemon: crashes and restarts, a reboot (pins gone, only the state file left), a
//! corrupt state file, reloading the configuration, `detach`, the metrics endpoint and a full
//! blocklist. Each test builds its own namespaces and daemon, so they run in parallel.
//!
//! As in the gate tests, a TCP listener in mx (port 8025, nobody accepts) tells whether a client's
//! SYN got through: a blocked client's connect times out because the gate drops its SYN.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde::Deserialize;
use tests::{
    Cli, Daemon, DaemonConfig, Postfix, Smtp, Timeline, Topology,
    command::run_ok,
    daemon::{DaemonPaths, same_target, slammer},
    poll::wait_until,
    postfix::DOMAIN,
};

const PORT: u16 = 8025;
/// Connect timeout for attempts that must fail: short, so the suite stays fast.
const DROP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an accepted block/unblock (or a detach) may take to reach the data path.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The daemon rewrites the state file within about a second of a change.
const PERSIST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to log something it does at once (start-up, reload).
const LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the daemon may take to count an offense or block after the triggering reply.
const DETECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One block in `state.json`, as the daemon writes it.
#[derive(Clone, Debug, Deserialize)]
struct SavedBlock {
    target: String,
    expires_at_unix_ms: u64,
    source: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
struct SavedState {
    version: u32,
    blocks: Vec<SavedBlock>,
}

/// The blocks in `<state_dir>/state.json`; `None` while the file is missing or unreadable.
fn saved_blocks(state_dir: &Path) -> Option<Vec<SavedBlock>> {
    let text = fs::read_to_string(state_dir.join("state.json")).ok()?;
    let state: SavedState = serde_json::from_str(&text).ok()?;
    assert_eq!(state.version, 1, "state.json: {text}");
    Some(state.blocks)
}

/// Waits until the state file holds a block of every one of `targets`; returns those blocks.
fn wait_saved(daemon: &Daemon, targets: &[&str]) -> Vec<SavedBlock> {
    let dir = &daemon.paths.state_dir;
    wait_until(
        &format!("{}/state.json to hold {targets:?}", dir.display()),
        PERSIST_TIMEOUT,
        || {
            let blocks = saved_blocks(dir)?;
            targets
                .iter()
                .map(|t| blocks.iter().find(|b| same_target(&b.target, t)).cloned())
                .collect()
        },
    )
}

/// The block reaches the data path within [`APPLY_TIMEOUT`]: an attempt from `client` times out
/// (a connection that still gets through is retried: it may have raced the map update).
fn assert_dropped_soon(topo: &Topology, client: IpAddr) {
    topo.assert_dropped_soon(client, PORT, DROP_TIMEOUT, APPLY_TIMEOUT);
}

/// The pinned links of the gate and the classifier on `iface`.
fn link_pins(daemon: &Daemon, iface: &str) -> [std::path::PathBuf; 2] {
    let dir = &daemon.paths.pin_dir;
    [
        dir.join(format!("link_xdp_{iface}")),
        dir.join(format!("link_tc_{iface}")),
    ]
}

fn assert_pinned(daemon: &Daemon, iface: &str) {
    for pin in link_pins(daemon, iface) {
        assert!(pin.exists(), "{} is missing", pin.display());
    }
}

/// Whether an XDP program is attached to mx's veth (`ip link` shows `xdp`/`xdpgeneric`).
fn xdp_attached(topo: &Topology) -> bool {
    let out =
        run_ok(Command::new("ip").args(["-n", topo.mx.name(), "link", "show", "dev", &topo.mx_if]));
    out.contains("prog/xdp")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kill -9` leaves the pinned links and maps, so the gate keeps dropping while no daemon runs.
/// A daemon restarted on the same pin dir, state dir and socket adopts the block (source and
/// reason intact, drops counted while it was down) and can lift it.
#[test]
fn kill9_keeps_blocking() {
    let t = Timeline::new("operations/kill9");
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let mut daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    let (blocked, other) = (topo.cl4(2), topo.cl4(3));
    let target = blocked.to_string();

    cli.block(&target, &["--reason", "kill -9 test"]);
    assert_dropped_soon(&topo, blocked);
    let saved = wait_saved(&daemon, &[&target]);
    let before = cli
        .entry(&target)
        .unwrap_or_else(|| panic!("{target} not listed: {:?}", cli.list()));
    t.mark(&format!("blocked {target}, saved as {saved:?}"));

    daemon.kill9();
    t.mark("daemon killed with SIGKILL");
    let out = cli.run(&["stats"]);
    assert!(
        !out.status.success(),
        "`slammer stats` still succeeds after kill -9: {out:?}"
    );
    assert_pinned(&daemon, &topo.mx_if);
    topo.assert_dropped(blocked, PORT, DROP_TIMEOUT);
    topo.wait_connects(other, PORT, APPLY_TIMEOUT);
    t.mark(&format!(
        "no daemon: {blocked} still dropped, {other} connects"
    ));

    daemon.restart();
    let log = daemon.wait_log("adopted 1 blocks from the pinned maps", LOG_TIMEOUT);
    t.mark("restarted on the same pins, state and socket");
    assert!(
        !log.contains("blocks from the state file"),
        "with the pins in place nothing should be restored from the state file:\n{log}"
    );
    let list = cli.list();
    assert_eq!(list.len(), 1, "{list:?}");
    let entry = &list[0];
    assert!(entry.is(&target), "{entry:?}");
    assert_eq!(entry.source, "manual", "{entry:?}");
    assert_eq!(entry.reason, "kill -9 test", "{entry:?}");
    assert!(
        entry.expires_in_secs <= before.expires_in_secs
            && entry.expires_in_secs > before.expires_in_secs - 120.0,
        "expiry changed over the restart: before {before:?}, after {entry:?}"
    );
    assert!(
        entry.dropped_packets > before.dropped_packets,
        "the SYNs dropped while no daemon ran were not counted: before {before:?}, after {entry:?}"
    );
    topo.assert_dropped(blocked, PORT, DROP_TIMEOUT);
    t.mark(&format!("adopted: {entry:?}"));

    cli.unblock(&target);
    let took = topo.wait_connects(blocked, PORT, APPLY_TIMEOUT);
    assert!(cli.list().is_empty(), "{:?}", cli.list());
    t.mark(&format!(
        "unblocked by the new daemon; {blocked} connects after {:.3}s",
        took.as_secs_f64()
    ));
}

/// A reboot loses the pins (and with them the programs and maps) but not the state file: the
/// next daemon restores the blocks from it with source `restored`, their reasons and what is left
/// of their TTLs, and enforces them again.
#[test]
fn reboot_restores_from_state_file() {
    let t = Timeline::new("operations/reboot");
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    // A third client inside 10.231.N.128/25: the prefix block is seen on the wire without
    // covering .2/.3 (and never mx's own .1, which the allowlist protects).
    let in_prefix = IpAddr::V4(Ipv4Addr::new(10, 231, topo.n, 130));
    topo.cl.ip(&[
        "addr",
        "add",
        &format!("{in_prefix}/24"),
        "dev",
        &topo.cl_if,
    ]);
    topo.wait_connects(in_prefix, PORT, APPLY_TIMEOUT);
    let mut daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    let (addr, other) = (topo.cl4(2), topo.cl4(3));
    let addr_target = addr.to_string();
    let prefix = format!("10.231.{}.128/25", topo.n);
    let targets = [
        (addr_target.as_str(), "reboot test: address", "1h"),
        (prefix.as_str(), "reboot test: prefix", "2h"),
    ];

    for (target, reason, ttl) in targets {
        cli.block(target, &["--reason", reason, "--ttl", ttl]);
    }
    assert_dropped_soon(&topo, addr);
    assert_dropped_soon(&topo, in_prefix);
    topo.wait_connects(other, PORT, APPLY_TIMEOUT);
    let before: Vec<_> = targets
        .iter()
        .map(|(target, ..)| {
            cli.entry(target)
                .unwrap_or_else(|| panic!("{target} not listed: {:?}", cli.list()))
        })
        .collect();
    wait_saved(&daemon, &[&addr_target, &prefix]);
    t.mark(&format!("blocked and saved: {before:?}"));

    let stopped_at = Instant::now();
    daemon.terminate();
    let saved = saved_blocks(&daemon.paths.state_dir)
        .expect("state.json is readable after a clean shutdown");
    assert_eq!(saved.len(), 2, "{saved:?}");
    for (target, reason, _) in targets {
        let b = saved
            .iter()
            .find(|b| same_target(&b.target, target))
            .unwrap_or_else(|| panic!("{target} missing from state.json: {saved:?}"));
        assert_eq!((b.source.as_str(), b.reason.as_str()), ("manual", reason));
        assert!(b.expires_at_unix_ms > 0, "{b:?}");
    }
    topo.assert_dropped(addr, PORT, DROP_TIMEOUT);
    t.mark(&format!(
        "SIGTERM: state file holds {saved:?}; {addr} still dropped"
    ));

    // The reboot: bpffs starts empty. Unpinning the links (no daemon holds them) detaches the
    // programs.
    fs::remove_dir_all(&daemon.paths.pin_dir).unwrap_or_else(|e| {
        panic!(
            "removing the pin dir {}: {e}",
            daemon.paths.pin_dir.display()
        )
    });
    topo.wait_connects(addr, PORT, APPLY_TIMEOUT);
    topo.wait_connects(in_prefix, PORT, APPLY_TIMEOUT);
    assert!(
        !xdp_attached(&topo),
        "an XDP program is still attached after the pins were removed"
    );
    t.mark("pins removed: programs detached, everyone connects");

    daemon.restart();
    daemon.wait_log("restored 2 blocks from the state file", LOG_TIMEOUT);
    let down = stopped_at.elapsed().as_secs_f64();
    t.mark(&format!("restarted {down:.3}s after the shutdown"));
    for ((target, reason, _), before) in targets.iter().zip(&before) {
        let entry = cli
            .entry(target)
            .unwrap_or_else(|| panic!("{target} not restored: {:?}", cli.list()));
        assert_eq!(entry.source, "restored", "{entry:?}");
        assert_eq!(entry.reason, *reason, "{entry:?}");
        assert!(
            entry.expires_in_secs <= before.expires_in_secs
                && entry.expires_in_secs >= before.expires_in_secs - down - 60.0,
            "the remaining TTL is not what was left: before {before:?}, after {entry:?} ({down:.1}s later)"
        );
        t.mark(&format!("restored {entry:?}"));
    }
    assert_eq!(cli.list().len(), 2, "{:?}", cli.list());
    let stats = cli.stats();
    assert_eq!(stats.get("daemon.blocked_addresses"), 1, "{}", stats.0);
    assert_eq!(stats.get("daemon.blocked_prefixes"), 1, "{}", stats.0);
    assert_dropped_soon(&topo, addr);
    assert_dropped_soon(&topo, in_prefix);
    topo.wait_connects(other, PORT, APPLY_TIMEOUT);
    t.mark(&format!(
        "{addr} and {in_prefix} dropped again, {other} connects"
    ));
}

/// The daemon started with `state` in its state dir (and no pins) logged an error, kept the file
/// aside as `state.json.corrupt-<secs>` and started empty, and still saves new blocks.
fn assert_corrupt_state_kept_aside(topo: &Topology, daemon: &Daemon, state: &[u8]) {
    let dir = &daemon.paths.state_dir;
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("is unreadable"))
        .unwrap_or_else(|| panic!("no error about the state file in the log:\n{log}"));
    assert!(line.contains("ERROR"), "not logged as an error: {line}");
    assert!(
        line.contains(&dir.join("state.json.corrupt-").display().to_string()),
        "the error does not say where the file went: {line}"
    );
    let kept: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("state.json.corrupt-"))
        })
        .collect();
    assert_eq!(kept.len(), 1, "expected one kept-aside file: {kept:?}");
    assert_eq!(
        fs::read(&kept[0]).expect("reading the kept file"),
        state,
        "{} does not hold the corrupt file",
        kept[0].display()
    );
    eprintln!("kept aside as {}: {line}", kept[0].display());

    let cli = daemon.cli();
    assert!(cli.list().is_empty(), "{:?}", cli.list());
    let client = topo.cl4(2);
    topo.wait_connects(client, PORT, APPLY_TIMEOUT);
    // Still a working daemon: a new block is enforced and saved in a readable state file.
    cli.block(&client.to_string(), &["--reason", "after corruption"]);
    assert_dropped_soon(topo, client);
    let saved = wait_saved(daemon, &[&client.to_string()]);
    assert_eq!(saved[0].reason, "after corruption", "{saved:?}");
}

/// Binary garbage in the state file: logged, kept aside, the daemon starts empty.
#[test]
fn corrupt_state_file_garbage() {
    let t = Timeline::new("operations/corrupt_garbage");
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let paths = DaemonPaths::new(&topo, "d");
    let garbage: Vec<u8> = b"\x00\xffnot json {\"version\":1,\"blocks\":[\x80\x81"
        .iter()
        .copied()
        .chain((0..=255).rev())
        .collect();
    fs::write(paths.state_dir.join("state.json"), &garbage).expect("writing state.json");
    assert!(!paths.pin_dir.exists(), "{}", paths.pin_dir.display());
    let mut daemon = Daemon::spawn(&topo, &[&topo.mx_if], paths, &DaemonConfig::default(), true);
    daemon.wait_ready();
    t.mark("daemon started on a garbage state file");
    assert_corrupt_state_kept_aside(&topo, &daemon, &garbage);
}

/// A state file cut in half (a real one, written by the daemon): logged, kept aside, the daemon
/// starts empty.
#[test]
fn corrupt_state_file_truncated() {
    let t = Timeline::new("operations/corrupt_truncated");
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let mut daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    let client = topo.cl4(2);
    cli.block(&client.to_string(), &["--reason", "before truncation"]);
    wait_saved(&daemon, &[&client.to_string()]);
    daemon.terminate();
    let path = daemon.paths.state_dir.join("state.json");
    let full = fs::read(&path).expect("reading state.json");
    let truncated = &full[..full.len() / 2];
    fs::write(&path, truncated).expect("truncating state.json");
    fs::remove_dir_all(&daemon.paths.pin_dir).expect("removing the pin dir");
    topo.wait_connects(client, PORT, APPLY_TIMEOUT);
    t.mark(&format!(
        "state.json cut from {} to {} bytes, pins removed",
        full.len(),
        truncated.len()
    ));

    daemon.restart();
    t.mark("daemon restarted on the truncated state file");
    assert!(
        !daemon.log().contains("blocks from the state file"),
        "restored something from a truncated file:\n{}",
        daemon.log()
    );
    assert_corrupt_state_kept_aside(&topo, &daemon, truncated);
}

/// `slammer check-config` accepts a good file (exit 0, shows the settings) and refuses bad ones
/// with exit 2, naming the key or value and the line.
#[test]
fn check_config_validates_files() {
    let dir = tests::Scratch::new(&tests::unique_id());
    let check = |name: &str, text: &str| {
        let path = dir.path().join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        let out = slammer(&[
            "check-config".as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
        ]);
        eprintln!(
            "check-config {name} -> {}: {}{}",
            out.status,
            stdout(&out),
            stderr(&out).trim()
        );
        (out, path)
    };

    let (out, path) = check(
        "good.toml",
        "# a valid file\nthreshold = 2\nwindow = \"10m\"\nttl = \"1h\"\nsmtp_ports = [25, 587]\nallow = [\"192.0.2.0/24\"]\n",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{} is valid", path.display()))
            && text.contains("2 offenses in 10m"),
        "{text}"
    );

    // (file, text, what the error must name, whether it names the file and line: semantic
    // checks run after parsing and name the key and value only).
    let bad: &[(&str, &str, &[&str], bool)] = &[
        (
            "unknown-key.toml",
            "threshold = 2\nwindow = \"10m\"\ntreshold = 3\n",
            &["treshold", "line 3"],
            true,
        ),
        (
            "bad-duration.toml",
            "threshold = 2\nttl = \"5parsecs\"\n",
            &["ttl", "5parsecs", "line 2"],
            true,
        ),
        (
            "bad-allow.toml",
            "\n\nallow = [\"10.0.0.300/8\"]\n",
            &["allow", "10.0.0.300/8", "line 3"],
            true,
        ),
        ("not-toml.toml", "threshold = = 5\n", &["line 1"], true),
        (
            "zero-threshold.toml",
            "threshold = 0\n",
            &["threshold = 0"],
            false,
        ),
    ];
    for (name, text, named, names_file) in bad {
        let (out, path) = check(name, text);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        for n in *named {
            assert!(err.contains(n), "{name}: stderr does not name {n:?}: {err}");
        }
        if *names_file {
            assert!(
                err.contains(&path.display().to_string()),
                "{name}: stderr does not name the file: {err}"
            );
        }
    }

    let missing = dir.path().join("missing.toml");
    let out = slammer(&[
        "check-config".as_ref(),
        "--config".as_ref(),
        missing.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "{out:?}"
    );
}

/// An SMTP session from `src` to the Postfix in mx that collects `n` unknown-user rejections,
/// numbered from `first`. Returned open, so more can follow.
fn rejections(topo: &Topology, src: IpAddr, first: u32, n: u32) -> Smtp {
    let mut c = Smtp::connect(topo.cl.name(), src, SocketAddr::new(topo.mx_for(src), 25));
    c.ehlo("atk.slx.test");
    c.expect("MAIL FROM:<probe@atk.slx.test>", 250);
    for k in first..first + n {
        reject(&mut c, k);
    }
    c
}

fn reject(c: &mut Smtp, k: u32) {
    let reply = c.expect(&format!("RCPT TO:<nouser{k}@{DOMAIN}>"), 550);
    assert!(reply.text().contains("User unknown"), "{reply}");
}

/// Waits until the daemon counted `n` offenses in all, then checks it counted no more.
fn wait_offenses(cli: &Cli, n: u64) {
    let got = wait_until(
        &format!("stats.daemon.offenses to reach {n}"),
        DETECT_TIMEOUT,
        || {
            let got = cli.stats().get("daemon.offenses");
            (got >= n).then_some(got)
        },
    );
    assert_eq!(got, n, "more offenses counted than rejections sent");
}

fn wait_listed(cli: &Cli, client: IpAddr) -> tests::BlockEntry {
    wait_until(&format!("{client} to be blocked"), DETECT_TIMEOUT, || {
        cli.entry(&client.to_string())
    })
}

/// Writes the config file (replacing it in one rename, as an editor or config manager would).
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("renaming to {}: {e}", path.display()));
}

/// The daemon reads `--config`; `slammer reload` and SIGHUP re-read it. An invalid file is
/// refused (reload exits 2 and names the key) and the running settings stay; a valid one applies
/// at once (checked with real rejections from Postfix). Flags given to `slammer run` still beat
/// the file after a reload.
#[test]
fn reload_applies_config_file() {
    let t = Timeline::new("operations/reload");
    let topo = Topology::new();
    let _postfix = Postfix::start(&topo.mx, topo.dir.path());
    t.mark("postfix up");
    let config = topo.dir.subdir("conf").join("slammer.toml");
    write_config(
        &config,
        "# operations test\nthreshold = 5\nwindow = \"10m\"\nttl = \"1m\"\n",
    );
    let args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--metrics",
        "127.0.0.1:0",
        "--ttl",
        "2h",
    ]
    .map(str::to_owned)
    .into();
    let mut daemon = Daemon::start_with_args(&topo, &args);
    let cli = daemon.cli();
    daemon.wait_log("threshold 5 in 10m, TTL 2h", LOG_TIMEOUT);
    t.mark("daemon running with threshold 5 from the file, TTL 2h from the flag");

    // An unknown key: refused, nothing changes.
    write_config(
        &config,
        "# operations test\nthreshold = 2\nwindow = \"10m\"\ntreshold = 2\n",
    );
    let out = cli.run(&["reload"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "reload of a bad file: {out:?}");
    assert!(
        err.contains("treshold") && err.contains("line 4"),
        "the refusal does not name the key and line: {err}"
    );
    daemon.wait_log("reload refused", LOG_TIMEOUT);
    cli.stats();
    t.mark(&format!("bad file refused: {}", err.trim()));
    let (early, attacker) = (topo.cl4(3), topo.cl4(2));
    rejections(&topo, early, 1, 2).quit();
    wait_offenses(&cli, 2);
    assert!(
        cli.list().is_empty(),
        "blocked after 2 rejections although the threshold 2 file was refused: {:?}",
        cli.list()
    );
    t.mark(&format!(
        "{early}: 2 rejections, not blocked (threshold still 5)"
    ));

    // A valid file: applied; the --ttl flag still beats the file's ttl.
    write_config(
        &config,
        "# operations test\nthreshold = 2\nwindow = \"10m\"\nttl = \"1m\"\n",
    );
    let out = cli.run(&["reload"]);
    assert_eq!(out.status.code(), Some(0), "reload of a good file: {out:?}");
    let said = stdout(&out);
    assert!(
        said.contains("threshold 2 in 10m, TTL 2h"),
        "reload does not report the new settings (TTL from the flag): {said}"
    );
    t.mark(&format!("reloaded: {}", said.trim()));
    let atk = rejections(&topo, attacker, 10, 2);
    let entry = wait_listed(&cli, attacker);
    drop(atk);
    assert_eq!(entry.source, "auto", "{entry:?}");
    assert!(
        entry.expires_in_secs > 3600.0,
        "the block does not have the --ttl 2h of the command line (the file says 1m): {entry:?}"
    );
    wait_offenses(&cli, 4);
    topo.assert_dropped(attacker, 25, DROP_TIMEOUT);
    t.mark(&format!("{attacker} blocked after 2 rejections: {entry:?}"));

    sighup_reload(&t, &topo, &mut daemon, &config);
}

/// The SIGHUP half of [`reload_applies_config_file`]: a good file applies (threshold 3), a bad
/// one is refused and changes nothing. Offenses so far: 4; blocked so far: 1.
fn sighup_reload(t: &Timeline, topo: &Topology, daemon: &mut Daemon, config: &Path) {
    let cli = daemon.cli();
    write_config(
        config,
        "# operations test\nthreshold = 3\nwindow = \"10m\"\nttl = \"1m\"\n",
    );
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("threshold 3 in 10m, TTL 2h", LOG_TIMEOUT);
    t.mark("SIGHUP: threshold 3 applied");
    write_config(
        config,
        "# operations test\nthreshold = 1\nwindow = \"5parsecs\"\n",
    );
    daemon.signal(libc::SIGHUP);
    // The first refusal was the unknown key of `slammer reload`; this is the second.
    let log = wait_until(
        "the daemon to refuse the SIGHUP reload",
        LOG_TIMEOUT,
        || {
            let log = daemon.log();
            (log.matches("reload refused").count() >= 2).then_some(log)
        },
    );
    let refusal = &log[log.rfind("reload refused").expect("waited for it")..];
    assert!(
        refusal.contains("line 3") && refusal.contains("5parsecs"),
        "the refusal does not name the value and line: {refusal}"
    );
    cli.stats();
    t.mark("SIGHUP with a bad file refused");
    let third = topo.cl6(3);
    let mut c = rejections(topo, third, 20, 2);
    wait_offenses(&cli, 6);
    assert!(
        cli.entry(&third.to_string()).is_none(),
        "{third} blocked after 2 rejections (threshold 3, the bad file's 1 was refused): {:?}",
        cli.list()
    );
    reject(&mut c, 22);
    let entry = wait_listed(&cli, third);
    drop(c);
    assert_eq!(entry.source, "auto", "{entry:?}");
    assert_eq!(cli.list().len(), 2, "{:?}", cli.list());
    assert_eq!(cli.stats().get("daemon.auto_blocks"), 2);
    t.mark(&format!("{third} blocked at its 3rd rejection: {entry:?}"));
}

/// `detach` is refused while a daemon holds the pin dir; after the daemon stopped (blocks still
/// enforced) it removes links and maps, and the programs are gone.
#[test]
fn detach_turns_everything_off() {
    let t = Timeline::new("operations/detach");
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let mut daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    let (blocked, other) = (topo.cl4(2), topo.cl4(3));
    let pin_dir = daemon.paths.pin_dir.clone();
    let detach = || slammer(&["detach".as_ref(), "--pin-dir".as_ref(), pin_dir.as_os_str()]);
    cli.block(&blocked.to_string(), &["--reason", "detach test"]);
    assert_dropped_soon(&topo, blocked);
    assert!(xdp_attached(&topo), "no XDP program on {}", topo.mx_if);

    let out = detach();
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "detach with a daemon running: {out:?}"
    );
    assert!(
        err.contains("stop it first") && err.contains(&pin_dir.display().to_string()),
        "{err}"
    );
    assert_pinned(&daemon, &topo.mx_if);
    assert!(
        cli.entry(&blocked.to_string()).is_some(),
        "{:?}",
        cli.list()
    );
    topo.assert_dropped(blocked, PORT, DROP_TIMEOUT);
    t.mark(&format!("detach refused while running: {}", err.trim()));

    daemon.terminate();
    topo.assert_dropped(blocked, PORT, DROP_TIMEOUT);
    topo.wait_connects(other, PORT, APPLY_TIMEOUT);
    t.mark(&format!("daemon stopped; {blocked} still dropped"));

    let out = detach();
    assert_eq!(out.status.code(), Some(0), "detach after stop: {out:?}");
    let said = stdout(&out);
    for pin in link_pins(&daemon, &topo.mx_if) {
        assert!(
            said.contains(&format!("removed {}", pin.display())),
            "detach does not report removing {}: {said}",
            pin.display()
        );
    }
    assert!(
        !pin_dir.exists(),
        "{} still exists after detach",
        pin_dir.display()
    );
    let took = topo.wait_connects(blocked, PORT, APPLY_TIMEOUT);
    assert!(!xdp_attached(&topo), "an XDP program is still attached");
    t.mark(&format!(
        "detached ({} pins); {blocked} connects after {:.3}s",
        said.lines().count(),
        took.as_secs_f64()
    ));

    let out = detach();
    assert_eq!(out.status.code(), Some(0), "detach twice: {out:?}");
    assert!(stdout(&out).contains("nothing attached"), "{out:?}");
}

/// `/metrics` answers a real HTTP GET from inside mx with Prometheus text, every series
/// `slammer_`-prefixed, and follows a manual block and the drops it causes.
#[test]
fn metrics_endpoint_reports_blocks_and_drops() {
    let t = Timeline::new("operations/metrics");
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    let addr = daemon.metrics_addr();
    assert!(
        addr.ip().is_loopback() && addr.port() != 0,
        "--metrics 127.0.0.1:0 logged as {addr}"
    );

    let s = daemon.scrape_metrics();
    assert_eq!(s.status, 200, "{}", s.head);
    assert!(
        s.head
            .to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{}",
        s.head
    );
    let names = s.names();
    assert!(
        names.iter().all(|n| n.starts_with("slammer_")),
        "series without the slammer_ prefix: {names:?}"
    );
    for want in [
        "slammer_blocks_total",
        "slammer_dropped_packets_total",
        "slammer_blocked_addresses",
        "slammer_block_latency_seconds_bucket",
    ] {
        assert!(names.contains(&want), "no {want} in {names:?}");
    }
    assert_eq!(s.count(r#"slammer_blocks_total{source="manual"}"#), 0);
    assert_eq!(s.count("slammer_blocked_addresses"), 0);
    assert_eq!(s.count("slammer_dropped_packets_total"), 0);
    t.mark(&format!(
        "GET http://{addr}/metrics: {} series",
        names.len()
    ));

    let blocked = topo.cl4(2);
    cli.block(&blocked.to_string(), &["--reason", "metrics test"]);
    let s = daemon.scrape_metrics();
    assert_eq!(s.count(r#"slammer_blocks_total{source="manual"}"#), 1);
    assert_eq!(s.count(r#"slammer_blocks_total{source="auto"}"#), 0);
    assert_eq!(s.count("slammer_blocked_addresses"), 1);
    assert_eq!(s.count("slammer_blocked_prefixes"), 0);

    assert_dropped_soon(&topo, blocked);
    let dropped = wait_until(
        "slammer_dropped_packets_total to count the dropped SYN",
        APPLY_TIMEOUT,
        || {
            let v = daemon
                .scrape_metrics()
                .count("slammer_dropped_packets_total");
            (v > 0).then_some(v)
        },
    );
    let gate = cli.stats().get("gate.dropped_packets");
    assert!(
        gate >= dropped,
        "stats gate.dropped_packets {gate} < the scraped {dropped}"
    );
    t.mark(&format!("after the block: dropped_packets_total {dropped}"));

    let other = daemon.metrics_get("/nope");
    assert_eq!(other.status, 404, "{}", other.head);
}

/// `--capacity 2`: two addresses of a family fit, the third is refused (exit 1, "full") and
/// counted; the other family has its own map; unblocking makes room; re-blocking a listed
/// address still works when full.
#[test]
fn capacity_limits_the_blocklist() {
    let t = Timeline::new("operations/capacity");
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let cfg = DaemonConfig {
        extra: vec!["--capacity".into(), "2".into()],
        ..DaemonConfig::default()
    };
    let daemon = Daemon::start(&topo, &cfg);
    let cli = daemon.cli();
    let (a, b) = (topo.cl4(2), topo.cl4(3));
    let third = IpAddr::V4(Ipv4Addr::new(10, 231, topo.n, 9));

    cli.block(&a.to_string(), &["--reason", "first"]);
    cli.block(&b.to_string(), &["--reason", "second"]);
    let out = cli.run(&["block", &third.to_string(), "--reason", "third"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "a third block: {out:?}");
    assert!(err.contains("full"), "the refusal does not say full: {err}");
    t.mark(&format!("third block refused: {}", err.trim()));

    let list = cli.list();
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(list.iter().all(|e| !e.is(&third.to_string())), "{list:?}");
    let stats = cli.stats();
    assert_eq!(stats.get("daemon.blocks_refused_full"), 1, "{}", stats.0);
    assert_eq!(stats.get("daemon.manual_blocks"), 2, "{}", stats.0);
    assert_dropped_soon(&topo, a);
    assert_dropped_soon(&topo, b);
    t.mark("the two blocks that fit are enforced");

    cli.block(&a.to_string(), &["--reason", "first, renewed"]);
    assert_eq!(
        cli.entry(&a.to_string()).map(|e| e.reason),
        Some("first, renewed".to_owned()),
        "{:?}",
        cli.list()
    );
    let v6 = topo.cl6(2);
    cli.block(&v6.to_string(), &["--reason", "other family"]);
    assert_dropped_soon(&topo, v6);
    t.mark("re-blocking a listed address and an IPv6 block work while IPv4 is full");

    cli.unblock(&b.to_string());
    cli.block(
        &third.to_string(),
        &["--reason", "third, now that there is room"],
    );
    let list = cli.list();
    assert_eq!(list.len(), 3, "{list:?}");
    topo.wait_connects(b, PORT, APPLY_TIMEOUT);
    assert_eq!(cli.stats().get("daemon.blocks_refused_full"), 1);
    t.mark(&format!("after an unblock the third fits: {list:?}"));
}

/// The action log gets one line per block and unblock, and the hooks run with the target and an
/// attacker-influenced reason as single arguments; after the log is moved away (logrotate), a
/// SIGHUP makes the daemon write to a new file at the same path.
#[test]
fn action_log_and_hooks() {
    let t = Timeline::new("operations/actions");
    let topo = Topology::new();
    let conf = topo.dir.subdir("conf");
    let calls = conf.join("hook-calls");
    let config = conf.join("slammer.toml");
    // The hook appends its arguments, one per line, then a separator.
    let hook = |action: &str| {
        format!(
            "{action} = {{ argv = [\"sh\", \"-c\", 'printf \"%s\\n\" \"$@\" \"--\" >> {}', \"sh\", \"{{action}}\", \"{{target}}\", \"{{reason}}\"], timeout = \"5s\" }}",
            calls.display()
        )
    };
    write_config(
        &config,
        &format!("[hooks]\n{}\n{}\n", hook("on_block"), hook("on_unblock")),
    );
    let args: Vec<String> = [
        "--config",
        &config.display().to_string(),
        "--metrics",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .into();
    let mut daemon = Daemon::start_with_args(&topo, &args);
    let cli = daemon.cli();
    let actions = daemon.paths.state_dir.join("actions.log");
    let attacker = topo.cl4(2);
    let target = attacker.to_string();
    let reason = "x\"; touch /tmp/slammer-pwned; echo \"$(id)";
    cli.ok(&["block", &target, "--ttl", "1h", "--reason", reason]);
    let read = |path: &Path| fs::read_to_string(path).unwrap_or_default();
    let lines = wait_until("the block hook to run", Duration::from_secs(10), || {
        let text = read(&calls);
        text.contains("\n--\n").then_some(text)
    });
    let args: Vec<&str> = lines.lines().take_while(|l| *l != "--").collect();
    assert_eq!(args[0], "block", "{lines}");
    assert_eq!(args[1], target, "{lines}");
    assert_eq!(
        args.len(),
        3,
        "the reason must arrive as one argument: {lines}"
    );
    assert!(args[2].contains("touch /tmp/slammer-pwned"), "{lines}");
    assert!(
        !Path::new("/tmp/slammer-pwned").exists(),
        "the reason was run by a shell"
    );
    let log = wait_until("the action log line", Duration::from_secs(5), || {
        let text = read(&actions);
        text.contains(" block ").then_some(text)
    });
    assert!(
        log.contains(&format!(" block {target} ttl=")) && log.contains("source=manual"),
        "{log}"
    );
    assert_eq!(log.lines().count(), 1, "{log}");
    t.mark("block: hook ran with 3 arguments, one action log line");

    // logrotate: move the file away, SIGHUP, and the unblock goes to a new file.
    let rotated = daemon.paths.state_dir.join("actions.log.1");
    fs::rename(&actions, &rotated).unwrap();
    daemon.signal(libc::SIGHUP);
    wait_until("the log reopened", Duration::from_secs(5), || {
        actions.exists().then_some(())
    });
    cli.ok(&["unblock", &target]);
    let log = wait_until(
        "the unblock line in the new file",
        Duration::from_secs(5),
        || {
            let text = read(&actions);
            text.contains(" unblock ").then_some(text)
        },
    );
    assert!(
        log.contains(&format!(" unblock {target} ttl=- source=manual")),
        "{log}"
    );
    assert_eq!(
        read(&rotated).lines().count(),
        1,
        "the rotated file keeps its line"
    );
    wait_until("the unblock hook to run", Duration::from_secs(10), || {
        read(&calls).lines().any(|l| l == "unblock").then_some(())
    });
    t.mark("unblock: new file after SIGHUP, hook ran");
}

/// `slammer watch` starts with a snapshot of what is enforced, then reports each block and
/// unblock (manual and expired) as it happens, and ends when the daemon goes away.
#[test]
fn watch_follows_the_blocklist() {
    const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
    let t = Timeline::new("operations/watch");
    let topo = Topology::new();
    let mut daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    let (before, during, brief) = (topo.cl4(2), topo.cl4(3), topo.cl6(4));
    cli.block(&before.to_string(), &["--ttl", "1h", "--reason", "before"]);

    let mut watch = tests::watch::Watch::start(cli.socket());
    let snapshot = watch.next("the snapshot", EVENT_TIMEOUT);
    assert_eq!(snapshot["event"], "snapshot", "{snapshot}");
    let blocks = snapshot["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 1, "{snapshot}");
    assert_eq!(blocks[0]["target"], before.to_string(), "{snapshot}");
    assert_eq!(blocks[0]["source"], "manual", "{snapshot}");
    assert_eq!(blocks[0]["reason"], "before", "{snapshot}");
    let ttl = blocks[0]["ttl_secs"].as_u64().expect("ttl_secs");
    assert!((3590..=3600).contains(&ttl), "{snapshot}");
    t.mark("snapshot holds the earlier block");

    cli.block(&during.to_string(), &["--ttl", "10m", "--reason", "during"]);
    let event = watch.next(&format!("the block of {during}"), EVENT_TIMEOUT);
    assert_eq!(event["event"], "block", "{event}");
    assert_eq!(event["target"], during.to_string(), "{event}");
    assert_eq!(event["ttl_secs"], 600, "{event}");
    assert_eq!(event["reason"], "during", "{event}");
    cli.unblock(&during.to_string());
    let event = watch.next(&format!("the unblock of {during}"), EVENT_TIMEOUT);
    assert_eq!(event["event"], "unblock", "{event}");
    assert_eq!(event["target"], during.to_string(), "{event}");
    assert_eq!(event["source"], "manual", "{event}");
    t.mark("manual block and unblock followed");

    cli.block(&brief.to_string(), &["--ttl", "1s"]);
    let event = watch.next(&format!("the block of {brief}"), EVENT_TIMEOUT);
    assert_eq!(
        (event["event"].as_str(), event["target"].as_str()),
        (Some("block"), Some(brief.to_string().as_str())),
        "{event}"
    );
    let event = watch.next(&format!("the expiry of {brief}"), EVENT_TIMEOUT);
    assert_eq!(event["event"], "unblock", "{event}");
    assert_eq!(event["target"], brief.to_string(), "{event}");
    assert_eq!(event["source"], "expired", "{event}");
    t.mark("expiry followed");

    daemon.terminate();
    assert!(
        watch.ends_within(EVENT_TIMEOUT),
        "slammer watch still running after the daemon stopped"
    );
}
