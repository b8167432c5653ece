//! Bulk blocks: `slammer block --file` (one request, `block_many`) blocks every line, enforced
//! and announced like single blocks, or refuses the whole file naming the line at fault.

use std::{
    io::Write as _,
    net::IpAddr,
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use tests::{Daemon, DaemonConfig, Timeline, Topology, daemon::slammer_bin};

const PORT: u16 = 8025;
const DROP_TIMEOUT: Duration = Duration::from_secs(1);
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

fn assert_dropped_soon(topo: &Topology, client: IpAddr) {
    topo.assert_dropped_soon(client, PORT, DROP_TIMEOUT, APPLY_TIMEOUT);
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path.display().to_string()
}

/// `slammer block --file - --socket S ...` with `input` on standard input (bounded).
fn block_stdin(socket: &Path, input: &str, extra: &[&str]) -> Output {
    let mut child = Command::new(slammer_bin())
        .args(["block", "--file", "-", "--socket"])
        .arg(socket)
        .args(extra)
        .env_remove("SLAMMER_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting slammer block");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .expect("writing to slammer block");
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    for _ in 0..200 {
        if waiter.is_finished() {
            return waiter
                .join()
                .expect("waiter")
                .expect("slammer block output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("slammer block --file - (pid {pid}) did not finish within 20 s");
}

#[test]
fn a_file_blocks_every_line_enforced_and_announced() {
    let t = Timeline::new("bulk/file");
    let topo = Topology::new();
    let _listener = topo.listen_mx(PORT);
    let daemon = Daemon::start(&topo, &DaemonConfig::default());
    let cli = daemon.cli();
    let (a, b, other) = (topo.cl4(2), topo.cl6(2), topo.cl4(3));
    let file = write(
        &topo.dir.path().join("blocks.txt"),
        &format!("# seen on mx2\n{a}\n\n  {b}   # and its IPv6 side\n198.51.100.0/24\n{a}\n"),
    );
    let out = cli.run(&[
        "block", "--file", &file, "--ttl", "2h", "--reason", "imported",
    ]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("blocked 3 addresses and prefixes"), "{said}");
    t.mark(&format!("slammer block --file: {}", said.trim()));

    let list = cli.list();
    assert_eq!(list.len(), 3, "{list:?}");
    for entry in &list {
        assert_eq!(
            (entry.source.as_str(), entry.reason.as_str()),
            ("manual", "imported")
        );
        assert!(
            (7190.0..=7200.0).contains(&entry.expires_in_secs),
            "{entry:?}"
        );
    }
    assert_dropped_soon(&topo, a);
    assert_dropped_soon(&topo, b);
    topo.wait_connects(other, PORT, APPLY_TIMEOUT);
    t.mark("both addresses dropped, the other client connects");
    assert_eq!(cli.stats().get("daemon.manual_blocks"), 3);

    // Announced like single blocks: one action log line each.
    let actions = std::fs::read_to_string(daemon.paths.state_dir.join("actions.log"))
        .expect("the action log");
    for target in [a.to_string(), b.to_string(), "198.51.100.0/24".to_owned()] {
        assert!(
            actions.contains(&format!("block {target} ttl=")),
            "no action log line for {target}:\n{actions}"
        );
    }

    // Standard input works the same; re-blocking replaces.
    let out = block_stdin(
        cli.socket(),
        &format!("{a}\n{other}\n"),
        &["--reason", "again"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_dropped_soon(&topo, other);
    assert_eq!(cli.list().len(), 4, "{:?}", cli.list());
    assert_eq!(
        cli.entry(&a.to_string()).map(|e| e.reason),
        Some("again".into())
    );
    t.mark("blocked from standard input");
}

#[test]
fn a_bad_file_changes_nothing_and_names_its_line() {
    let t = Timeline::new("bulk/refused");
    let topo = Topology::new();
    let cfg = DaemonConfig {
        extra: vec!["--capacity".into(), "2".into()],
        ..DaemonConfig::default()
    };
    let daemon = Daemon::start(&topo, &cfg);
    let cli = daemon.cli();
    let dir = topo.dir.path();
    let (a, b, c) = (topo.cl4(2), topo.cl4(3), topo.cl6(2));

    let refused = |text: &str, code: i32, wanted: &[&str]| {
        let file = write(&dir.join("refused.txt"), text);
        let out = cli.run(&["block", "--file", &file]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{text:?}: {out:?}");
        for w in wanted {
            assert!(err.contains(w), "{text:?}: {err} does not say {w:?}");
        }
        assert!(
            cli.list().is_empty(),
            "{text:?} applied something: {:?}",
            cli.list()
        );
        t.mark(&format!("refused: {}", err.trim()));
    };
    // Checked by the CLI: the daemon never sees it.
    refused(
        &format!("{a}\n# x\n10.0.0.300\n"),
        2,
        &["line 3", "\"10.0.0.300\""],
    );
    refused(&format!("{a}\n::/0\n"), 2, &["line 2", "every address"]);
    refused("# nothing here\n\n", 2, &["no address or prefix"]);
    // Checked by the daemon: the mx address is on its allowlist.
    refused(
        &format!("{a}\n{c}\n{}\n", topo.mx4()),
        2,
        &["line 3", "allowlist"],
    );
    // Three IPv4 addresses do not fit two entries per family.
    refused(
        &format!("{a}\n{b}\n10.231.{}.9\n", topo.n),
        1,
        &["3 more IPv4 addresses", "room for 2"],
    );
    let out = cli.run(&[
        "block",
        "--file",
        &dir.join("missing.txt").display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("missing.txt"), "{out:?}");

    // What fits is applied.
    let file = write(&dir.join("fits.txt"), &format!("{a}\n{b}\n{c}\n"));
    let out = cli.run(&["block", "--file", &file]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(cli.list().len(), 3, "{:?}", cli.list());
    let stats = cli.stats();
    assert_eq!(stats.get("daemon.blocks_refused_full"), 1, "{}", stats.0);
    assert_eq!(stats.get("daemon.manual_blocks"), 3, "{}", stats.0);
}
