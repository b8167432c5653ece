//! A private Postfix instance inside a namespace: its own config, queue, data directory and log
//! under the test's scratch directory. Configured like the reply corpus (variant A, see
//! /work/shared/smtp-replies/README.md): unknown local users get `550 5.1.1`, relay attempts
//! `554 5.7.1`, and error limits are relaxed so the server never sleeps or disconnects.
//!
//! With [`PostfixOptions::starttls`] it also offers STARTTLS (`smtpd_tls_security_level = may`)
//! with a self-signed certificate for [`DOMAIN`] made at start by `openssl req` in the scratch
//! directory: replies after STARTTLS are encrypted, so only the mail log
//! ([`Postfix::maillog_path`]) tells of them.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{
    command::{describe, run_ok, status_within},
    netns::{Netns, connect_from},
    poll::wait_until,
};

const POSTFIX: &str = "/usr/sbin/postfix";
const MASTER_CF_DIST: &str = "/usr/share/postfix/master.cf.dist";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The domain Postfix accepts mail for; `alice@` and `postmaster@` exist, nobody else.
pub const DOMAIN: &str = "mx.slx.test";

/// How Postfix is set up beyond the defaults of [`Postfix::start`].
#[derive(Clone, Debug, Default)]
pub struct PostfixOptions {
    /// Offer STARTTLS with a self-signed certificate made at start (`smtpd_tls_cert_file`,
    /// `smtpd_tls_key_file` in `<dir>/postfix/tls`, `smtpd_tls_security_level = may`).
    pub starttls: bool,
    /// `smtpd_tls_loglevel` when `starttls` is set: 0 (Postfix's default) logs nothing about
    /// TLS, 1 logs each handshake (`Anonymous TLS connection established from ...`).
    pub tls_loglevel: u8,
}

/// A running Postfix that we started. Drop runs `postfix stop`, waits (bounded) for the master
/// process to exit, SIGKILLs it if it does not, and prints the mail log if the test failed.
pub struct Postfix {
    ns: String,
    config_dir: PathBuf,
    maillog: PathBuf,
    command_log: PathBuf,
    master_pid: Option<libc::pid_t>,
}

impl Postfix {
    /// Writes a config under `<dir>/postfix`, starts Postfix in `ns` and waits until port 25
    /// greets with 220.
    pub fn start(ns: &Netns, dir: &Path) -> Postfix {
        Postfix::start_with(ns, dir, &PostfixOptions::default())
    }

    /// Like [`Postfix::start`], set up as `options` say (e.g. with STARTTLS).
    pub fn start_with(ns: &Netns, dir: &Path, options: &PostfixOptions) -> Postfix {
        assert!(
            Path::new(POSTFIX).is_file() && Path::new(MASTER_CF_DIST).is_file(),
            "Postfix is not installed ({POSTFIX}, {MASTER_CF_DIST}): `apt-get install postfix`"
        );
        let base = dir.join("postfix");
        let (config_dir, queue_dir, data_dir) =
            (base.join("conf"), base.join("queue"), base.join("data"));
        for d in [&config_dir, &queue_dir, &data_dir] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        }
        run_ok(Command::new("chown").arg("postfix:postfix").arg(&data_dir));
        let maillog = base.join("maillog");
        let command_log = base.join("commands.log");
        let mut config = main_cf(&queue_dir, &data_dir, &maillog);
        if options.starttls {
            let (cert, key) = self_signed_cert(&base.join("tls"));
            let _ = write!(
                config,
                "smtpd_tls_cert_file = {}\n\
                 smtpd_tls_key_file = {}\n\
                 smtpd_tls_security_level = may\n\
                 smtpd_tls_loglevel = {}\n",
                cert.display(),
                key.display(),
                options.tls_loglevel
            );
        }
        fs::write(config_dir.join("main.cf"), config)
            .unwrap_or_else(|e| panic!("writing main.cf: {e}"));
        fs::copy(MASTER_CF_DIST, config_dir.join("master.cf"))
            .unwrap_or_else(|e| panic!("copying master.cf: {e}"));
        run_ok(
            Command::new("postconf")
                .arg("-c")
                .arg(&config_dir)
                .args(["-F", "*/*/chroot = n"]),
        );

        let started = Instant::now();
        let mut postfix = Postfix {
            ns: ns.name().to_owned(),
            config_dir,
            maillog,
            command_log,
            master_pid: None,
        };
        let status = status_within(&mut postfix.command("start"), START_TIMEOUT);
        postfix.master_pid = fs::read_to_string(queue_dir.join("pid/master.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        assert!(
            status.success(),
            "`postfix start` failed ({status}):\n{}",
            postfix.logs()
        );

        let banner = SocketAddr::from((Ipv4Addr::LOCALHOST, 25));
        wait_until("Postfix to greet on port 25", START_TIMEOUT, || {
            ns.run(|| connect_from(Ipv4Addr::LOCALHOST.into(), banner, Duration::from_secs(1)))
                .ok()
                .and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                    let mut line = String::new();
                    std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).ok()?;
                    line.starts_with("220 ").then_some(())
                })
        });
        eprintln!(
            "postfix ready after {:.3}s (master pid {:?})",
            started.elapsed().as_secs_f64(),
            postfix.master_pid
        );
        postfix
    }

    /// The mail log so far (`maillog_file`).
    pub fn maillog(&self) -> String {
        fs::read_to_string(&self.maillog).unwrap_or_default()
    }

    /// Where Postfix writes its log (`maillog_file`, under the test's scratch directory): the
    /// path for slammer's `[[logs]]` source.
    pub fn maillog_path(&self) -> &Path {
        &self.maillog
    }

    /// `ip netns exec NS postfix -c CONF <action>`, output appended to the command log.
    fn command(&self, action: &str) -> Command {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.command_log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.command_log.display()));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, POSTFIX, "-c"])
            .arg(&self.config_dir)
            .arg(action)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        cmd
    }

    fn logs(&self) -> String {
        format!(
            "---- postfix commands ----\n{}---- postfix maillog ----\n{}---- end of postfix logs ----",
            fs::read_to_string(&self.command_log).unwrap_or_default(),
            self.maillog()
        )
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let mut cmd = self.command("stop");
        let status = status_within(&mut cmd, STOP_TIMEOUT);
        if !status.success() {
            eprintln!("warning: {} failed ({status})", describe(&cmd));
        }
        let Some(pid) = self.master_pid else { return };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while process_alive(pid) {
            if Instant::now() >= deadline {
                eprintln!(
                    "warning: postfix master (pid {pid}) still runs {STOP_TIMEOUT:?} after `postfix stop`; SIGKILL"
                );
                // SAFETY: kill(2) on the master process this guard started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `pid` exists and is not a zombie.
fn process_alive(pid: libc::pid_t) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Makes a self-signed certificate for [`DOMAIN`] (valid one day) and its unencrypted key in
/// `dir` with `openssl req`; the key gets mode 0600 (smtpd reads it as root before it drops
/// privileges). Returns (certificate, key).
fn self_signed_cert(dir: &Path) -> (PathBuf, PathBuf) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN={DOMAIN}"),
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", key.display()));
    (cert, key)
}

fn main_cf(queue_dir: &Path, data_dir: &Path, maillog: &Path) -> String {
    format!(
        "\
compatibility_level = 3.6
myhostname = {DOMAIN}
mydomain = slx.test
mydestination = {DOMAIN}, localhost
inet_interfaces = all
inet_protocols = all
mynetworks = 127.0.0.0/8 [::1]/128
local_recipient_maps = inline:{{ alice=ok, postmaster=ok }}
local_transport = discard:local
default_transport = discard:none
alias_maps =
biff = no
smtpd_banner = $myhostname ESMTP
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_error_sleep_time = 0
smtpd_junk_command_limit = 1000
queue_directory = {queue}
data_directory = {data}
maillog_file = {maillog}
maillog_file_prefixes = /var, /tmp, /run, {prefix}
",
        queue = queue_dir.display(),
        data = data_dir.display(),
        maillog = maillog.display(),
        prefix = maillog.parent().unwrap_or(maillog).display(),
    )
}
