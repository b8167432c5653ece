//! `contrib/slammer.toml`, the example configuration `cargo xtask install` puts in
//! `/etc/slammer`, must stay valid and true: it parses and validates the way `slammer run
//! --config` reads it, it holds every key the config file knows, its values are the defaults,
//! and its commented-out rules, log source and hooks work once uncommented (the rules being
//! exactly the built-in ones).

use std::path::{Path, PathBuf};

use slammer::{
    config::{ConfigSource, FileConfig, Settings},
    hooks::HooksConfig,
    rules::{RuleSet, RuleSpec},
};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/slammer.toml")
}

fn example() -> String {
    let path = example_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn parses_and_validates_as_slammer_run_reads_it() {
    let path = example_path();
    FileConfig::parse(&path, &example()).unwrap_or_else(|e| panic!("{e}"));
    let source = ConfigSource {
        path,
        required: true,
        flags: FileConfig::default(),
        extra_allow: Vec::new(),
    };
    let settings = source.load().unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(
        settings,
        Settings::default(),
        "contrib/slammer.toml should write out the defaults: update it with the new default"
    );
}

/// The keys the config file accepts, from serde's "unknown field ..., expected one of ..."
/// message, so a key added to `FileConfig` shows up here without a list to maintain.
fn known_keys() -> Vec<String> {
    let err = FileConfig::parse(Path::new("probe.toml"), "no_such_key_at_all = 1\n")
        .expect_err("an unknown key is refused")
        .to_string();
    let (_, expected) = err
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("serde's message changed: {err}"));
    let keys: Vec<String> = expected
        .split(',')
        .filter_map(|k| {
            let k = k.trim().trim_matches('`');
            (!k.is_empty()).then(|| k.lines().next().unwrap_or(k).trim_matches('`').to_owned())
        })
        .collect();
    assert!(
        keys.len() > 20,
        "too few keys parsed from {err:?}: {keys:?}"
    );
    keys
}

#[test]
fn holds_every_key() {
    let text = example();
    let keys = known_keys();
    for key in &keys {
        let present = text.lines().any(|line| {
            let line = line.trim_start_matches('#').trim_start();
            line.starts_with(&format!("{key} ="))
                || line == format!("[{key}]")
                || line == format!("[[{key}]]")
        });
        assert!(
            present,
            "contrib/slammer.toml does not mention `{key}`; every key has an entry there"
        );
    }
}

/// The lines of the commented-out block that starts with the line `# <header>`, uncommented
/// (`# ` removed once; doubly commented lines stay comments).
fn uncommented_block(text: &str, header: &str) -> String {
    let start = format!("# {header}");
    let mut lines = text.lines().skip_while(|l| *l != start).peekable();
    assert!(
        lines.peek().is_some(),
        "no `{start}` line in contrib/slammer.toml"
    );
    let mut block = String::new();
    for line in lines.take_while(|l| l.starts_with('#')) {
        block.push_str(
            line.strip_prefix("# ")
                .unwrap_or(line.trim_start_matches('#')),
        );
        block.push('\n');
    }
    block
}

#[test]
fn commented_rules_are_the_built_in_ones() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rules {
        rules: Vec<RuleSpec>,
    }
    let block = uncommented_block(&example(), "[[rules]]");
    let rules: Rules = toml::from_str(&block).unwrap_or_else(|e| panic!("{e}\n{block}"));
    assert_eq!(
        rules.rules,
        RuleSet::default_specs(),
        "the commented [[rules]] in contrib/slammer.toml must be the built-in rules exactly"
    );
    // And the file with them uncommented is a valid configuration.
    let text = example().replace(&commented(&block), &block);
    let parsed = FileConfig::parse(Path::new("uncommented.toml"), &text).unwrap();
    assert_eq!(parsed.rules, Some(RuleSet::default_specs()));
}

#[test]
fn commented_hooks_are_valid() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Hooks {
        hooks: HooksConfig,
    }
    let block = uncommented_block(&example(), "[hooks]");
    let hooks: Hooks = toml::from_str(&block).unwrap_or_else(|e| panic!("{e}\n{block}"));
    assert!(hooks.hooks.on_block.is_some() && hooks.hooks.on_unblock.is_some());
    hooks.hooks.validate().unwrap();
}

#[test]
fn commented_log_source_is_valid() {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Logs {
        logs: Vec<slammer::logsource::LogSpec>,
    }
    let block = uncommented_block(&example(), "[[logs]]");
    let logs: Logs = toml::from_str(&block).unwrap_or_else(|e| panic!("{e}\n{block}"));
    assert_eq!(logs.logs.len(), 1, "{block}");
    logs.logs[0].validate().unwrap();
}

/// `block` commented back, line by line, as the example writes it.
fn commented(block: &str) -> String {
    block
        .lines()
        .map(|l| {
            if l.is_empty() {
                "#\n".to_owned()
            } else {
                format!("# {l}\n")
            }
        })
        .collect()
}
