//! `slammer man`: print the manual page, `slammer(8)`, in roff.
//!
//! One page for the whole program: the synopsis and options of every subcommand come from the
//! same clap definitions as `--help` (through `clap_mangen`), so they cannot drift; the
//! sections around them (files, signals, exit status) are written here.
//!
//! ```sh
//! slammer man > /usr/local/share/man/man8/slammer.8
//! slammer man | man -l -
//! ```

use std::io::Write as _;

use clap::CommandFactory as _;
use clap_mangen::{
    Man,
    roff::{Roff, bold, italic, roman},
};

use super::{Cli, Failure};
use crate::config::{
    DEFAULT_CONFIG, DEFAULT_METRICS, DEFAULT_PIN_DIR, DEFAULT_SOCKET, DEFAULT_STATE_DIR,
};

pub fn man() -> Result<(), Failure> {
    std::io::stdout().lock().write_all(page().as_bytes())?;
    Ok(())
}

/// The whole page.
pub fn page() -> String {
    // `slammer help` is no command worth a section of its own.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Sets the subcommands' bin names (`slammer run`), which their synopses show.
    cmd.build();
    let man = Man::new(cmd.clone())
        .title("SLAMMER")
        .section("8")
        .manual("System Manager's Manual");
    let mut page = String::new();
    page.push_str(&render(|w| man.render_title(w)));
    page.push_str(&fragment(|w| man.render_name_section(w), false));
    page.push_str(&fragment(|w| man.render_synopsis_section(w), false));
    page.push_str(&description().to_roff());
    page.push_str(&fragment(|w| man.render_options_section(w), false));

    page.push_str(&Roff::new().control("SH", ["COMMANDS"]).to_roff());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        let mut head = Roff::new();
        head.control("SS", [name]);
        for line in sub
            .get_long_about()
            .or_else(|| sub.get_about())
            .map(ToString::to_string)
            .unwrap_or_default()
            .lines()
        {
            head.text([roman(line)]);
        }
        page.push_str(&head.to_roff());
        let sub_man = Man::new(sub.clone());
        page.push_str(&fragment(|w| sub_man.render_synopsis_section(w), true));
        page.push_str(&fragment(|w| sub_man.render_options_section(w), true));
    }
    page.push_str(&trailer().to_roff());
    page
}

/// What `render` writes.
fn render(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    render(&mut out).expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("clap_mangen writes UTF-8")
}

/// What `render` writes, without the preamble every `clap_mangen` section repeats (the title
/// already has it) and, for `nested`, without the section heading: a subcommand's synopsis and
/// options sit under its own `.SS`, the synopsis set off by a paragraph break.
fn fragment(render_fn: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>, nested: bool) -> String {
    let text = render(render_fn);
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq") {
            continue;
        }
        if nested && line.starts_with(".SH ") {
            out.push_str(".PP\n");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn paragraphs(roff: &mut Roff, text: &[&str]) {
    for (i, paragraph) in text.iter().enumerate() {
        if i > 0 {
            roff.control("PP", []);
        }
        roff.text([roman(*paragraph)]);
    }
}

fn description() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["DESCRIPTION"]);
    paragraphs(
        &mut roff,
        &[
            "slammer protects a mail host from SMTP dictionary attacks and relay probes. A TC \
             egress classifier reads the replies the local MTA sends (source port 25 by \
             default) and reports each rejection, such as 550 User unknown or 554 Relay access \
             denied, to the daemon. The daemon classifies the replies with its rules, counts \
             offenses per client address in a sliding window and, at the threshold, blocks the \
             address for a time. An XDP program on the ingress of each protected interface \
             drops every packet of a blocked address before the kernel allocates anything for it.",
            "slammer run is the daemon; the other commands talk to it over its control socket \
             (block, unblock, list, stats, reload) or work alone (check-config, test-pattern, \
             detach, completions, man). Durations are written 30s, 10m, 4h, 7d or 1h30m.",
            "The eBPF programs and maps are pinned under the pin directory, so blocks stay \
             enforced while the daemon is stopped or restarting: a restarted daemon adopts them \
             with their remaining time. slammer detach removes the pins, which turns \
             enforcement off.",
            &format!(
                "Prometheus metrics are served at http://{DEFAULT_METRICS}/metrics by default. \
                 Under systemd (slammer.service), systemctl reload slammer sends SIGHUP."
            ),
        ],
    );
    roff
}

fn trailer() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["FILES"]);
    let files: [(&str, &str); 4] = [
        (
            DEFAULT_CONFIG,
            "The configuration, read by slammer run if it exists (--config names another, which \
             must exist). Command-line flags override it.",
        ),
        (DEFAULT_SOCKET, "The control socket, mode 0600."),
        (
            DEFAULT_STATE_DIR,
            "State that outlives a reboot (the blocks with their expiry, the block history) and \
             actions.log, one line per block and unblock.",
        ),
        (DEFAULT_PIN_DIR, "Pinned maps and links, on bpffs."),
    ];
    for (path, what) in files {
        roff.control("TP", [])
            .text([italic(path)])
            .text([roman(what)]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", [])
        .text([bold("SLAMMER_SOCKET")])
        .text([roman(
            "The control socket of the client commands (--socket).",
        )]);
    roff.control("TP", []).text([bold("RUST_LOG")]).text([roman(
        "The daemon's log filter; overrides the log_level setting.",
    )]);
    roff.control("SH", ["SIGNALS"]);
    roff.control("TP", []).text([bold("SIGHUP")]).text([roman(
        "Re-read the configuration (like slammer reload) and reopen actions.log after \
             rotation.",
    )]);
    roff.control("TP", [])
        .text([bold("SIGTERM, SIGINT")])
        .text([roman(
            "Stop the daemon. The gate keeps enforcing the blocks in the pinned maps.",
        )]);
    roff.control("SH", ["EXIT STATUS"]);
    roff.control("TP", [])
        .text([bold("0")])
        .text([roman("Success.")]);
    roff.control("TP", []).text([bold("1")]).text([roman(
        "A failure, such as a daemon that cannot be reached or cannot attach.",
    )]);
    roff.control("TP", []).text([bold("2")]).text([roman(
        "Bad input: an invalid address, prefix, duration or configuration, or an allowlisted \
         address; nothing was changed.",
    )]);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "systemctl(1), ip-route(8), tc(8), bpftool(8), postconf(5)",
    )]);
    roff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_every_subcommand_with_its_options() {
        let page = page();
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
        assert_eq!(page.matches(".ds Aq \\(aq").count(), 1, "one preamble");
        assert!(page.contains(".TH SLAMMER 8"), "{page}");
        for sub in [
            "run",
            "block",
            "unblock",
            "list",
            "stats",
            "check-config",
            "detach",
        ] {
            assert!(
                page.contains(&format!(".SS \"slammer {sub}\"")),
                "no {sub}:\n{page}"
            );
        }
        assert!(page.contains("threshold"), "run's options");
        assert!(page.contains(".SH \"EXIT STATUS\""), "{page}");
        assert!(!page.contains("slammer help"), "{page}");
        assert!(!page.contains(".SH SYNOPSIS\n.SH"), "{page}");
    }
}
