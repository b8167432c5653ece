//! Settings of `slammer run`: built-in defaults, then the TOML config file, then command-line
//! flags, validated into one [`Settings`] before anything touches the kernel.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::{duration, rules::RuleSpec};

pub const DEFAULT_CONFIG: &str = "/etc/slammer/slammer.toml";
pub const DEFAULT_SOCKET: &str = "/run/slammer/slammer.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/slammer";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/slammer";
pub const DEFAULT_METRICS: &str = "127.0.0.1:9477";

/// Everything `slammer run` needs, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Interfaces to protect; empty means the interface of the default route.
    pub interfaces: Vec<String>,
    pub smtp_ports: BTreeSet<u16>,
    pub threshold: u32,
    pub window: Duration,
    pub ttl: Duration,
    /// Never blocked, in addition to loopback and the host's own addresses.
    pub allow: Vec<IpNet>,
    /// Entries per blocklist map.
    pub capacity: u32,
    /// Clients the offense tracker remembers at most.
    pub max_clients: usize,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub metrics: SocketAddr,
    /// Reply rules; `None` means the built-in ones.
    pub rules: Option<Vec<RuleSpec>>,
    /// `observe`: decide and count, drop nothing.
    pub mode: Mode,
    /// A repeat offender's TTL is multiplied by this per earlier block...
    pub escalation_factor: f64,
    /// ...up to this.
    pub escalation_cap: Duration,
    /// Block history is forgotten this long after an address's last block.
    pub history_retention: Duration,
    /// Threshold multiplier for clients whose message was accepted recently (1 disables).
    pub known_good_multiplier: u32,
    /// How long an accepted message makes its sender known-good.
    pub known_good_memory: Duration,
    /// Distinct offending addresses of one prefix that get the prefix blocked (0 disables).
    pub spread_min_addresses: u32,
    pub spread_v4_prefix: u8,
    pub spread_v6_prefix: u8,
    /// TTL of a prefix block; `None` means the same as `ttl`.
    pub spread_ttl: Option<Duration>,
    /// Commands run when blocks are applied and removed.
    pub hooks: crate::hooks::HooksConfig,
    /// The MTA's logs, read for rejections inside TLS sessions.
    pub logs: Vec<crate::logsource::LogSpec>,
    /// Redis URL of the fleet (`redis://...` or `rediss://...`); `None` runs alone.
    pub fleet: Option<String>,
    /// This node's name in the fleet; `None` means the host name.
    pub fleet_node: Option<String>,
    /// Prefix of the fleet's Redis keys and channel.
    pub fleet_prefix: String,
    /// Longest wait for one Redis command.
    pub fleet_timeout: Duration,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or `env_logger` syntax);
    /// `RUST_LOG` wins when set.
    pub log_level: String,
}

/// Whether blocks are enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    /// Everything runs and is listed and counted, but the gate drops nothing: for trials.
    Observe,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            smtp_ports: BTreeSet::from([25]),
            threshold: 10,
            window: Duration::from_mins(10),
            ttl: Duration::from_hours(4),
            allow: Vec::new(),
            capacity: 1 << 20,
            max_clients: 100_000,
            socket: DEFAULT_SOCKET.into(),
            state_dir: DEFAULT_STATE_DIR.into(),
            pin_dir: DEFAULT_PIN_DIR.into(),
            metrics: DEFAULT_METRICS.parse().expect("literal"),
            rules: None,
            mode: Mode::Enforce,
            escalation_factor: 2.0,
            escalation_cap: Duration::from_hours(168),
            history_retention: Duration::from_hours(720),
            known_good_multiplier: 5,
            known_good_memory: Duration::from_hours(168),
            spread_min_addresses: 4,
            spread_v4_prefix: 24,
            spread_v6_prefix: 64,
            spread_ttl: None,
            hooks: crate::hooks::HooksConfig::default(),
            logs: Vec::new(),
            fleet: None,
            fleet_node: None,
            fleet_prefix: "slammer".to_owned(),
            fleet_timeout: Duration::from_millis(500),
            log_level: "info".to_owned(),
        }
    }
}

/// The config file as written; every key optional, unknown keys refused. Command-line flags
/// are gathered into one of these too and applied over the file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub interfaces: Option<Vec<String>>,
    pub smtp_ports: Option<Vec<u16>>,
    pub threshold: Option<u32>,
    #[serde(deserialize_with = "some_duration")]
    pub window: Option<Duration>,
    #[serde(deserialize_with = "some_duration")]
    pub ttl: Option<Duration>,
    pub allow: Option<Vec<IpNet>>,
    pub capacity: Option<u32>,
    pub max_clients: Option<usize>,
    pub socket: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub rules: Option<Vec<RuleSpec>>,
    pub mode: Option<Mode>,
    pub escalation_factor: Option<f64>,
    #[serde(deserialize_with = "some_duration")]
    pub escalation_cap: Option<Duration>,
    #[serde(deserialize_with = "some_duration")]
    pub history_retention: Option<Duration>,
    pub known_good_multiplier: Option<u32>,
    #[serde(deserialize_with = "some_duration")]
    pub known_good_memory: Option<Duration>,
    pub spread_min_addresses: Option<u32>,
    pub spread_v4_prefix: Option<u8>,
    pub spread_v6_prefix: Option<u8>,
    #[serde(deserialize_with = "some_duration")]
    pub spread_ttl: Option<Duration>,
    pub hooks: Option<crate::hooks::HooksConfig>,
    pub logs: Option<Vec<crate::logsource::LogSpec>>,
    pub fleet: Option<String>,
    pub fleet_node: Option<String>,
    pub fleet_prefix: Option<String>,
    #[serde(deserialize_with = "some_duration")]
    pub fleet_timeout: Option<Duration>,
    pub log_level: Option<String>,
}

fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    duration::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {key} = {value}: {why}")]
    Invalid {
        key: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("invalid reply rules")]
    Rules(#[source] crate::rules::RuleError),
    #[error("invalid hooks")]
    Hooks(#[source] crate::hooks::HookError),
    #[error("invalid log source")]
    Logs(#[source] crate::logsource::LogSpecError),
    #[error("in {path} (or the command line)")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },
}

/// Where settings come from, kept by the daemon so a reload rebuilds them the same way.
#[derive(Clone, Debug)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// Named explicitly (`--config`), so it must exist.
    pub required: bool,
    /// The command-line flags, applied over the file.
    pub flags: FileConfig,
    /// `--allow` flags, added to the file's allowlist.
    pub extra_allow: Vec<IpNet>,
}

impl ConfigSource {
    /// Defaults, then the file, then the flags; validated.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        FileConfig::load(&self.path, self.required)?.apply(&mut settings);
        self.flags.clone().apply(&mut settings);
        settings.allow.extend(self.extra_allow.iter().copied());
        settings.validate().map_err(|source| ConfigError::InFile {
            path: self.path.clone(),
            source: Box::new(source),
        })?;
        Ok(settings)
    }
}

impl FileConfig {
    /// Reads `path`. A missing file is an error only when `required` (it was named explicitly).
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Applies the file over `settings`.
    pub fn apply(self, s: &mut Settings) {
        macro_rules! take {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { s.$field = v; } )* };
        }
        take!(
            interfaces,
            threshold,
            window,
            ttl,
            allow,
            capacity,
            max_clients,
            socket
        );
        take!(
            state_dir,
            pin_dir,
            metrics,
            mode,
            logs,
            fleet_prefix,
            fleet_timeout
        );
        if self.fleet.is_some() {
            s.fleet = self.fleet;
        }
        if self.fleet_node.is_some() {
            s.fleet_node = self.fleet_node;
        }
        take!(escalation_factor, escalation_cap, history_retention);
        take!(known_good_multiplier, known_good_memory);
        take!(
            spread_min_addresses,
            spread_v4_prefix,
            spread_v6_prefix,
            hooks,
            log_level
        );
        if self.spread_ttl.is_some() {
            s.spread_ttl = self.spread_ttl;
        }
        if let Some(ports) = self.smtp_ports {
            s.smtp_ports = ports.into_iter().collect();
        }
        if self.rules.is_some() {
            s.rules = self.rules;
        }
    }
}

impl Settings {
    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, value: String, why| Err(ConfigError::Invalid { key, value, why });
        if self.threshold == 0 {
            return invalid("threshold", "0".into(), "must be at least 1");
        }
        if self.smtp_ports.is_empty() {
            return invalid("smtp_ports", "[]".into(), "needs at least one port");
        }
        if self.smtp_ports.contains(&0) {
            return invalid("smtp_ports", "0".into(), "port 0 is no port");
        }
        if self.capacity == 0 {
            return invalid("capacity", "0".into(), "must be at least 1");
        }
        if self.max_clients == 0 {
            return invalid("max_clients", "0".into(), "must be at least 1");
        }
        if let Some(n) = self.allow.iter().find(|n| n.prefix_len() == 0) {
            return invalid("allow", n.to_string(), "would never block anyone");
        }
        if !self.escalation_factor.is_finite() || !(1.0..=1000.0).contains(&self.escalation_factor)
        {
            return invalid(
                "escalation_factor",
                self.escalation_factor.to_string(),
                "must be between 1 (no escalation) and 1000",
            );
        }
        if !(8..=31).contains(&self.spread_v4_prefix) {
            return invalid(
                "spread_v4_prefix",
                self.spread_v4_prefix.to_string(),
                "must be 8 to 31",
            );
        }
        if !(16..=127).contains(&self.spread_v6_prefix) {
            return invalid(
                "spread_v6_prefix",
                self.spread_v6_prefix.to_string(),
                "must be 16 to 127",
            );
        }
        if self.spread_min_addresses == 1 {
            return invalid(
                "spread_min_addresses",
                "1".into(),
                "must be 0 (off) or at least 2",
            );
        }
        for spec in &self.logs {
            spec.validate().map_err(ConfigError::Logs)?;
        }
        if let Err(err) = self.hooks.clone().validate() {
            return Err(ConfigError::Hooks(err));
        }
        let plain_level = ["error", "warn", "info", "debug", "trace", "off"]
            .iter()
            .any(|l| self.log_level.eq_ignore_ascii_case(l));
        // `module=level` directives are env_logger's to judge.
        if !plain_level && !self.log_level.contains('=') {
            return invalid(
                "log_level",
                self.log_level.clone(),
                "use error, warn, info, debug or trace",
            );
        }
        if self.known_good_multiplier == 0 {
            return invalid(
                "known_good_multiplier",
                "0".into(),
                "must be at least 1 (1 disables it)",
            );
        }
        if let Some(specs) = &self.rules {
            crate::rules::RuleSet::from_specs(specs).map_err(ConfigError::Rules)?;
        }
        Ok(())
    }

    /// Settings a reload cannot change (they shape what is bound, loaded and attached).
    pub fn restart_only_changes(&self, new: &Self) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.interfaces != new.interfaces {
            changed.push("interfaces");
        }
        if self.socket != new.socket {
            changed.push("socket");
        }
        if self.state_dir != new.state_dir {
            changed.push("state_dir");
        }
        if self.pin_dir != new.pin_dir {
            changed.push("pin_dir");
        }
        if self.metrics != new.metrics {
            changed.push("metrics");
        }
        if self.capacity != new.capacity {
            changed.push("capacity");
        }
        if self.hooks != new.hooks {
            changed.push("hooks");
        }
        if self.logs != new.logs {
            changed.push("logs");
        }
        if (
            &self.fleet,
            &self.fleet_node,
            &self.fleet_prefix,
            self.fleet_timeout,
        ) != (
            &new.fleet,
            &new.fleet_node,
            &new.fleet_prefix,
            new.fleet_timeout,
        ) {
            changed.push("fleet");
        }
        if self.log_level != new.log_level {
            changed.push("log_level");
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn file_overrides_defaults() {
        let mut s = Settings::default();
        parse(
            "threshold = 5\nwindow = \"2m\"\nsmtp_ports = [25, 587]\nallow = [\"192.0.2.0/24\"]\n",
        )
        .unwrap()
        .apply(&mut s);
        assert_eq!(s.threshold, 5);
        assert_eq!(s.window, Duration::from_mins(2));
        assert_eq!(s.smtp_ports, BTreeSet::from([25, 587]));
        assert_eq!(s.allow.len(), 1);
        assert_eq!(s.ttl, Settings::default().ttl);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_key_value_and_line() {
        let err = parse("threshold = 5\ntreshold = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("treshold") && err.contains("line 2"), "{err}");
        let err = parse("\nttl = \"5parsecs\"\n").unwrap_err().to_string();
        assert!(err.contains("5parsecs") && err.contains("line 2"), "{err}");
        let err = parse("allow = [\"10.0.0.300/8\"]").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn validation_refuses_nonsense() {
        let s = Settings {
            threshold: 0,
            ..Settings::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("threshold"));
        let s = Settings {
            allow: vec!["0.0.0.0/0".parse().unwrap()],
            ..Settings::default()
        };
        assert!(s.validate().unwrap_err().to_string().contains("0.0.0.0/0"));
        assert!(Settings::default().validate().is_ok());
    }

    #[test]
    fn missing_optional_file_is_empty() {
        let f = FileConfig::load(Path::new("/nonexistent/slammer.toml"), false).unwrap();
        assert!(f.threshold.is_none());
        assert!(FileConfig::load(Path::new("/nonexistent/slammer.toml"), true).is_err());
    }
}
