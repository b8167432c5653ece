//! Which replies are offenses.
//!
//! A rule is a name, a label, a set of reply codes and a pattern on the reply text (as
//! [`crate::reply_text::reply_text`] gives it, without the code). The first rule whose codes hold
//! the reply's code and whose pattern matches its text wins.

use std::{
    collections::{BTreeSet, HashSet},
    ops::RangeInclusive,
};

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Codes a rule may name: SMTP replies are 2xx to 5xx.
const CODES: RangeInclusive<u16> = 200..=599;

/// Unknown recipients, as the common MTAs word them.
const USER_UNKNOWN: &str = concat!(
    "(?i)",
    // RFC 3463 X.1.1 "bad destination mailbox address" (Postfix, Sendmail; Exchange's 5.1.10).
    // The verdict is in the code, so an address long enough to push the words out of the
    // copied bytes, or one with a quoted '>', cannot hide it. Postfix says 5.1.0 for senders.
    r"^5\.1\.10?\b",
    // Otherwise the words, and only where a recipient verdict starts: at the start of the text,
    // after an optional enhanced code and echoed address. Anywhere would count sender-side
    // replies: Postfix "5.1.0 <a>: Sender address rejected: User unknown in ... table", Exim
    // "Verification failed for <a> Unrouteable address Sender verify failed".
    r"|^(?:callout verification failed: (?:[0-9]{3}[ -])*)?",
    r"(?:[0-9]\.[0-9]{1,3}\.[0-9]{1,3} )?",
    r"(?:(?:<.*>|\S+@\S+)(?::|\.\.\.)? ?|\S+\.\.\. ?)?",
    r"(?:recipient address rejected: |requested action not taken: |sorry, )?",
    r"(?:user unknown|unknown user|recipient unknown|unknown recipient|mailbox unknown",
    r"|no such (?:user|recipient|mailbox)|user not found|recipient not found|mailbox not found",
    r"|invalid recipient|unrouteable address|resolver\.adr\.recip(?:ient)?notfound",
    r"|no mailbox here by that name",
    // Not "mailbox unavailable invalid DNS MX or A/AAAA resource record": that is about the
    // sender's domain.
    r"|mailbox unavailable(?:$| ?[.,;(\[]))",
);

/// Relay denial, as the common MTAs word it.
const RELAY_DENIED: &str = concat!(
    "(?i)",
    r"\brelay(?:ing)?(?: access)?(?: is)? (?:denied|not (?:permitted|allowed)|prohibited)",
    r"|\bunable to relay|\bnot (?:permitted|allowed) to relay|\bdo(?:es)? not relay",
    // Postfix and Sendmail echo the address before the verdict; a 5.7.1/4.7.1 reply cut ("…")
    // inside that address hides its verdict, and only a prober sends such an address.
    r"|^[45]\.7\.1 <[^>]*…$",
);

/// One rule as the configuration file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Short and unique; names the rule in logs and output.
    pub name: String,
    /// The name for people.
    pub label: String,
    /// Reply codes (200..=599) the rule looks at; the kernel reports only codes some rule names.
    pub codes: Vec<u16>,
    /// A `regex` crate pattern on the reply text without its code; `(?i)` for any case.
    pub pattern: String,
}

/// Why a list of [`RuleSpec`]s was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// `position` counts from 1, as people count rules in a file.
    #[error("rule #{position} has an empty name")]
    EmptyName { position: usize },
    #[error("rule {name:?} is defined more than once")]
    DuplicateName { name: String },
    #[error("rule {name:?} lists no reply codes")]
    NoCodes { name: String },
    #[error("rule {name:?}: reply code {code} is outside 200..=599")]
    CodeOutOfRange { name: String, code: u16 },
    #[error("rule {name:?}: invalid pattern {pattern:?}")]
    InvalidPattern {
        name: String,
        pattern: String,
        #[source]
        source: regex::Error,
    },
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    name: String,
    label: String,
    codes: Vec<u16>,
    regex: Regex,
}

impl Rule {
    fn from_spec(spec: &RuleSpec) -> Result<Self, RuleError> {
        let name = || spec.name.clone();
        if spec.codes.is_empty() {
            return Err(RuleError::NoCodes { name: name() });
        }
        if let Some(&code) = spec.codes.iter().find(|c| !CODES.contains(c)) {
            return Err(RuleError::CodeOutOfRange { name: name(), code });
        }
        // Built as given: case-insensitivity is the pattern's choice (`(?i)`).
        let regex = Regex::new(&spec.pattern).map_err(|source| RuleError::InvalidPattern {
            name: name(),
            pattern: spec.pattern.clone(),
            source,
        })?;
        Ok(Self {
            name: name(),
            label: spec.label.clone(),
            codes: spec.codes.clone(),
            regex,
        })
    }

    /// The short name that logs, metrics and the control socket use.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name for people.
    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    #[must_use]
    pub fn codes(&self) -> &[u16] {
        &self.codes
    }

    #[must_use]
    pub fn pattern(&self) -> &str {
        self.regex.as_str()
    }

    /// Whether a reply with this code and text is this rule's offense.
    #[must_use]
    pub fn matches(&self, code: u16, text: &str) -> bool {
        self.codes.contains(&code) && self.regex.is_match(text)
    }
}

/// The rules in order; the first match wins.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    /// The rules a fresh install uses.
    ///
    /// # Panics
    ///
    /// Never: the default specs are valid (tested).
    #[must_use]
    pub fn defaults() -> Self {
        Self::from_specs(&Self::default_specs()).expect("the default rules are valid")
    }

    /// The specs behind [`RuleSet::defaults`], for writing a starting configuration.
    #[must_use]
    pub fn default_specs() -> Vec<RuleSpec> {
        let spec = |name: &str, label: &str, codes: &[u16], pattern: &str| RuleSpec {
            name: name.to_owned(),
            label: label.to_owned(),
            codes: codes.to_vec(),
            pattern: pattern.to_owned(),
        };
        vec![
            spec(
                "user-unknown",
                "User unknown",
                &[550, 551, 553],
                USER_UNKNOWN,
            ),
            // 454: stock Postfix (defer_unauth_destination) denies relay with a 4xx.
            spec(
                "relay-denied",
                "Relay access denied",
                &[550, 551, 554, 454],
                RELAY_DENIED,
            ),
        ]
    }

    /// Validates the specs and compiles their patterns.
    ///
    /// # Errors
    ///
    /// [`RuleError`] names the first bad rule and value: empty or repeated name, no codes, a
    /// code outside 200..=599, or a pattern that does not compile.
    pub fn from_specs(specs: &[RuleSpec]) -> Result<Self, RuleError> {
        let mut names = HashSet::new();
        let mut rules = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            if spec.name.trim().is_empty() {
                return Err(RuleError::EmptyName { position: i + 1 });
            }
            if !names.insert(spec.name.as_str()) {
                return Err(RuleError::DuplicateName {
                    name: spec.name.clone(),
                });
            }
            rules.push(Rule::from_spec(spec)?);
        }
        Ok(Self { rules })
    }

    /// The first rule that makes this reply an offense.
    #[must_use]
    pub fn classify(&self, code: u16, text: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matches(code, text))
    }

    /// Every code some rule names: the kernel need only report these.
    #[must_use]
    pub fn codes(&self) -> BTreeSet<u16> {
        self.rules
            .iter()
            .flat_map(|r| r.codes.iter().copied())
            .collect()
    }

    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl Default for RuleSet {
    fn default() -> Self {
        Self::defaults()
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::reply_text::{parse_reply_line, reply_text};

    /// Every distinct reply in the shared corpus (`shared/smtp-replies/{postfix,exim4,sendmail,
    /// opensmtpd}.txt`, Debian bookworm MTAs), one real instance each (the numbers in `nouserN-…`
    /// and `victimN-…` vary), as the wire carried it, with the rule it must hit.
    const CORPUS: &[(&str, &str, Option<&str>)] = &[
        ("postfix", "220 mx.slx.test ESMTP\r\n", None),
        (
            "postfix",
            "250-mx.slx.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-VRFY\r\n250-ETRN\r\n250-STARTTLS\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n",
            None,
        ),
        ("postfix", "250 2.1.0 Ok\r\n", None),
        (
            "postfix",
            "550 5.1.1 <nouser1-4e23@mx.slx.test>: Recipient address rejected: User unknown in local recipient table\r\n",
            Some("user-unknown"),
        ),
        ("postfix", "250 2.1.5 Ok\r\n", None),
        (
            "postfix",
            "554 5.7.1 <victim1-4e23@relay1.example>: Relay access denied\r\n",
            Some("relay-denied"),
        ),
        (
            "postfix",
            "550 5.1.1 <nouser9-4e23>: Recipient address rejected: User unknown in local recipient table\r\n",
            Some("user-unknown"),
        ),
        (
            "postfix",
            "500 5.5.2 Error: command not recognized\r\n",
            None,
        ),
        ("postfix", "250 2.0.0 Ok\r\n", None),
        ("postfix", "221 2.0.0 Bye\r\n", None),
        ("postfix", "250 mx.slx.test\r\n", None),
        ("postfix", "501 5.1.7 Bad sender address syntax\r\n", None),
        ("postfix", "354 End data with <CR><LF>.<CR><LF>\r\n", None),
        ("postfix", "250 2.0.0 Ok: queued as D1E37C4718\r\n", None),
        ("postfix", "220 2.0.0 Ready to start TLS\r\n", None),
        (
            "postfix",
            "454 4.7.1 <victim1-9014@relay1.example>: Relay access denied\r\n",
            Some("relay-denied"),
        ),
        (
            "postfix",
            "421 4.7.0 mx.slx.test Error: too many errors\r\n",
            None,
        ),
        (
            "postfix",
            "550-5.1.1 <nouser1-c9bb@mx.slx.test>: Recipient address rejected: User unknown in local recipient table\r\n550 5.1.1 For assistance contact <postmaster@mx.slx.test>. Please provide the following information: client=10.203.0.66 server=mx.slx.test\r\n",
            Some("user-unknown"),
        ),
        (
            "postfix",
            "554-5.7.1 <victim1-c9bb@relay1.example>: Relay access denied\r\n554 5.7.1 For assistance contact <postmaster@mx.slx.test>. Please provide the following information: client=10.203.0.66 server=mx.slx.test\r\n",
            Some("relay-denied"),
        ),
        (
            "postfix",
            "550-5.1.1 <nouser9-c9bb>: Recipient address rejected: User unknown in local recipient table\r\n550 5.1.1 For assistance contact <postmaster@mx.slx.test>. Please provide the following information: client=10.203.0.66 server=mx.slx.test\r\n",
            Some("user-unknown"),
        ),
        (
            "postfix",
            "500-5.5.2 Error: command not recognized\r\n500 5.5.2 For assistance contact <postmaster@mx.slx.test>. Please provide the following information: client=10.203.0.66 server=mx.slx.test\r\n",
            None,
        ),
        (
            "exim4",
            "220 mx.slx.test ESMTP Exim 4.96 Sat, 28 Nov 2026 14:01:12 +0000\r\n",
            None,
        ),
        (
            "exim4",
            "250-mx.slx.test Hello atk.slx.test [10.203.0.66]\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-PIPECONNECT\r\n250-CHUNKING\r\n250-STARTTLS\r\n250-PRDR\r\n250 HELP\r\n",
            None,
        ),
        ("exim4", "250 OK\r\n", None),
        ("exim4", "550 Unrouteable address\r\n", Some("user-unknown")),
        ("exim4", "250 Accepted\r\n", None),
        ("exim4", "550 relay not permitted\r\n", Some("relay-denied")),
        (
            "exim4",
            "501 nouser9-cf44: recipient address must contain a domain\r\n",
            None,
        ),
        ("exim4", "500 unrecognized command\r\n", None),
        ("exim4", "250 Reset OK\r\n", None),
        ("exim4", "221 mx.slx.test closing connection\r\n", None),
        (
            "exim4",
            "250 mx.slx.test Hello atk.slx.test [10.203.0.66]\r\n",
            None,
        ),
        (
            "exim4",
            "501 <not an address>: \"@\" or \".\" expected after \"not\"\r\n",
            None,
        ),
        (
            "exim4",
            "354 Enter message, ending with \".\" on a line by itself\r\n",
            None,
        ),
        ("exim4", "250 OK id=1xXIzJ-0005WB-1P\r\n", None),
        ("exim4", "220 TLS go ahead\r\n", None),
        (
            "exim4",
            "550 Rejected for too many bad recipients\r\n",
            None,
        ),
        (
            "exim4",
            "250-mx.slx.test Hello atk.slx.test [fd42::66]\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-PIPECONNECT\r\n250-CHUNKING\r\n250-STARTTLS\r\n250-PRDR\r\n250 HELP\r\n",
            None,
        ),
        (
            "sendmail",
            "220 mx.slx.test ESMTP Sendmail 8.17.1.9/8.17.1.9/Debian-2+deb12u2; Sat, 28 Nov 2026 14:08:26 GMT; (No UCE/UBE) logging access from: atk.slx.test(OK)-atk.slx.test [10.203.0.66]\r\n",
            None,
        ),
        (
            "sendmail",
            "250-mx.slx.test Hello atk.slx.test [10.203.0.66], pleased to meet you\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-EXPN\r\n250-VERB\r\n250-8BITMIME\r\n250-SIZE\r\n250-DSN\r\n250-ETRN\r\n250-AUTH DIGEST-MD5 CRAM-MD5\r\n250-STARTTLS\r\n250-DELIVERBY\r\n250 HELP\r\n",
            None,
        ),
        (
            "sendmail",
            "250 2.1.0 <probe@atk.slx.test>... Sender ok\r\n",
            None,
        ),
        (
            "sendmail",
            "550 5.1.1 <nouser1-5cf9@mx.slx.test>... User unknown\r\n",
            Some("user-unknown"),
        ),
        (
            "sendmail",
            "250 2.1.5 <postmaster@mx.slx.test>... Recipient ok\r\n",
            None,
        ),
        (
            "sendmail",
            "550 5.7.1 <victim1-5cf9@relay1.example>... Relaying denied\r\n",
            Some("relay-denied"),
        ),
        (
            "sendmail",
            "550 5.1.1 nouser9-5cf9... User unknown\r\n",
            Some("user-unknown"),
        ),
        (
            "sendmail",
            "500 5.5.1 Command unrecognized: \"XYZZY\"\r\n",
            None,
        ),
        ("sendmail", "250 2.0.0 Reset state\r\n", None),
        (
            "sendmail",
            "221 2.0.0 mx.slx.test closing connection\r\n",
            None,
        ),
        (
            "sendmail",
            "250 mx.slx.test Hello atk.slx.test [10.203.0.66], pleased to meet you\r\n",
            None,
        ),
        (
            "sendmail",
            "553 5.5.4 <not an address>... Domain name required for sender address not.an.address\r\n",
            None,
        ),
        (
            "sendmail",
            "250 2.1.0 <nouser-sender-0908@mx.slx.test>... Sender ok\r\n",
            None,
        ),
        ("sendmail", "354 End data with <CR><LF>.<CR><LF>\r\n", None),
        (
            "sendmail",
            "250 2.0.0 6ASE8Qm8031097 Message accepted for delivery\r\n",
            None,
        ),
        ("sendmail", "220 2.0.0 Ready to start TLS\r\n", None),
        (
            "sendmail",
            "220 mx.slx.test ESMTP Sendmail 8.17.1.9/8.17.1.9/Debian-2+deb12u2; Sat, 28 Nov 2026 14:08:27 GMT; (No UCE/UBE) logging access from: atk.slx.test(OK)-atk.slx.test [IPv6:fd42:0:0:0:0:0:0:66]\r\n",
            None,
        ),
        (
            "sendmail",
            "250-mx.slx.test Hello atk.slx.test [IPv6:fd42:0:0:0:0:0:0:66], pleased to meet you\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n250-EXPN\r\n250-VERB\r\n250-8BITMIME\r\n250-SIZE\r\n250-DSN\r\n250-ETRN\r\n250-AUTH DIGEST-MD5 CRAM-MD5\r\n250-STARTTLS\r\n250-DELIVERBY\r\n250 HELP\r\n",
            None,
        ),
        ("opensmtpd", "220 mx.slx.test ESMTP OpenSMTPD\r\n", None),
        (
            "opensmtpd",
            "250-mx.slx.test Hello atk.slx.test [10.203.0.66], pleased to meet you\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n250-DSN\r\n250-STARTTLS\r\n250 HELP\r\n",
            None,
        ),
        ("opensmtpd", "250 2.0.0 Ok\r\n", None),
        (
            "opensmtpd",
            "550 Invalid recipient: <nouser1-afbc@mx.slx.test>\r\n",
            Some("user-unknown"),
        ),
        (
            "opensmtpd",
            "250 2.1.5 Destination address valid: Recipient ok\r\n",
            None,
        ),
        (
            "opensmtpd",
            "550 Invalid recipient: <victim1-afbc@relay1.example>\r\n",
            Some("user-unknown"),
        ),
        (
            "opensmtpd",
            "500 5.5.1 Invalid command: Command unrecognized\r\n",
            None,
        ),
        ("opensmtpd", "250 2.0.0 Reset state\r\n", None),
        ("opensmtpd", "221 2.0.0 Bye\r\n", None),
        (
            "opensmtpd",
            "250 mx.slx.test Hello atk.slx.test [10.203.0.66], pleased to meet you\r\n",
            None,
        ),
        (
            "opensmtpd",
            "500 5.5.1 Invalid command: Pipelining not supported\r\n",
            None,
        ),
        (
            "opensmtpd",
            "553 5.1.0 Sender address syntax error\r\n",
            None,
        ),
        (
            "opensmtpd",
            "354 Enter mail, end with \".\" on a line by itself\r\n",
            None,
        ),
        (
            "opensmtpd",
            "250 2.0.0 9776b3fd Message accepted for delivery\r\n",
            None,
        ),
        ("opensmtpd", "220 2.0.0 Ready to start TLS\r\n", None),
        (
            "opensmtpd",
            "250-mx.slx.test Hello atk.slx.test [fd42::66], pleased to meet you\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE 36700160\r\n250-DSN\r\n250-STARTTLS\r\n250 HELP\r\n",
            None,
        ),
    ];

    fn code_of(raw: &str) -> u16 {
        raw[..3].parse().unwrap()
    }

    fn hit(rules: &RuleSet, code: u16, text: &str) -> Option<String> {
        rules.classify(code, text).map(|r| r.name().to_owned())
    }

    #[test]
    fn every_corpus_reply() {
        let rules = RuleSet::defaults();
        for (mta, raw, want) in CORPUS {
            let code = code_of(raw);
            let text = reply_text(raw.as_bytes(), code);
            assert_eq!(
                hit(&rules, code, &text).as_deref(),
                *want,
                "{mta}: {raw:?} (text {text:?})"
            );
            // The same through the operator's test-pattern input.
            let (c, t) = parse_reply_line(raw).unwrap();
            assert_eq!((c, t.as_str()), (code, text.as_str()), "{mta}: {raw:?}");
        }
        for mta in ["postfix", "exim4", "sendmail", "opensmtpd"] {
            for rule in ["user-unknown", "relay-denied"] {
                // OpenSMTPD words relay denial as an unknown recipient.
                let any = CORPUS.iter().any(|(m, _, w)| *m == mta && *w == Some(rule));
                assert!(
                    any || (mta, rule) == ("opensmtpd", "relay-denied"),
                    "{mta} {rule}"
                );
            }
        }
    }

    /// Replies from the wider world (and the brief's must-not-count list) as `code text`.
    fn check(cases: &[&str], want: Option<&str>) {
        let rules = RuleSet::defaults();
        for line in cases {
            let (code, text) = parse_reply_line(line).unwrap();
            assert_eq!(hit(&rules, code, &text).as_deref(), want, "{line:?}");
        }
    }

    #[test]
    fn generic_unknown_recipients() {
        check(
            &[
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
                "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
                "550 5.1.1 User unknown",
                "550 5.1.1 <a@b>: Recipient address rejected: User unknown in virtual mailbox table",
                "550 5.1.1 The email account that you tried to reach does not exist.",
                "550 No such user",
                "550 No Such User Here",
                "550 <a@b>: No such user",
                "550 a@b... No such user",
                "550 User unknown.",
                "550 Unknown user",
                "550 unknown user account",
                "550 Recipient unknown",
                "550 Mailbox unknown. Either there is no mailbox associated with this name.",
                "550 User not found",
                "550 Recipient not found",
                "550 mailbox not found",
                "550 Requested action not taken: mailbox unavailable",
                "550 5.5.0 Requested action not taken: mailbox unavailable. (S2017062302)",
                "550 Mailbox unavailable",
                "550 Invalid recipient <a@b>",
                "550 sorry, no mailbox here by that name. (#5.1.1)",
                "550 <a@b> Unrouteable address",
                "550-Callout verification failed:\r\n550 550 5.1.1 <a@b>: Recipient address \
                 rejected: User unknown in local recipient table",
                "550-Callout verification failed:\r\n550 550 invalid recipient",
                "551 User unknown",
                "553 5.1.1 <a@b>... User unknown",
            ],
            Some("user-unknown"),
        );
    }

    #[test]
    fn generic_relay_denials() {
        check(
            &[
                "554 5.7.1 <v@r.example>: Relay access denied",
                "454 4.7.1 <v@r.example>: Relay access denied",
                "550 5.7.1 <v@r.example>... Relaying denied. Proper authentication required.",
                "550 relaying denied",
                "550 Relay not permitted",
                "550 5.7.1 Unable to relay",
                "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain",
                "550 Relaying not allowed",
                "550 relaying is not allowed",
                "550 Relay denied",
                "554 You are not permitted to relay through this server",
                "550 We do not relay",
                "551 relay access denied",
            ],
            Some("relay-denied"),
        );
    }

    #[test]
    fn not_offenses() {
        check(
            &[
                // Syntax errors.
                "501 5.1.7 Bad sender address syntax",
                "500 5.5.2 Error: command not recognized",
                "553 5.5.4 <not an address>... Domain name required for sender address x",
                "553 5.1.0 Sender address syntax error",
                "501 <not an address>: \"@\" or \".\" expected after \"not\"",
                "501 nouser9-cf44: recipient address must contain a domain",
                "504 5.5.2 <a>: Recipient address rejected: need fully-qualified address",
                // Greylisting and other 4xx.
                "450 4.2.0 <a@b>: Recipient address rejected: Greylisted, see http://x/",
                "451 4.7.1 Please try again later",
                "421 4.7.0 mx.slx.test Error: too many errors",
                "450 4.1.1 <a@b>: Recipient address rejected: User unknown in local recipient table",
                // Error limits.
                "550 Rejected for too many bad recipients",
                // The sender's problem, not a probe.
                "550 5.1.0 <a@b>: Sender address rejected: User unknown in local recipient table",
                "550 5.1.0 <a@b>: Sender address rejected: User unknown in virtual alias table",
                "550-Verification failed for <a@b>\r\n550-Unrouteable address\r\n550 Sender \
                 verify failed",
                "550 Requested action not taken: mailbox unavailable invalid DNS MX or A/AAAA \
                 resource record",
                "553 5.1.8 <a@b>... Domain of sender address a@b does not exist",
                // Other policy.
                "554 5.7.1 <c.example[192.0.2.1]>: Client host rejected: Access denied",
                "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using relays.example",
                "550 5.2.1 The email account that you tried to reach is disabled.",
                "552 5.2.2 Mailbox full",
                "554 5.7.1 <a@b>: Recipient address rejected: Access denied",
                // Good replies, also when they echo the client's words.
                "250 mx.slx.test Hello User unknown [10.203.0.66], pleased to meet you",
                "250-mx.slx.test Hello relay access denied [10.203.0.66]\r\n250 HELP",
                "250 2.1.0 <user-unknown@x>... Sender ok",
                "250 2.1.5 Ok",
                "252 2.0.0 nouser",
                "354 End data with <CR><LF>.<CR><LF>",
            ],
            None,
        );
    }

    #[test]
    fn long_addresses_cannot_hide_the_verdict() {
        let rules = RuleSet::defaults();
        // Postfix echoes the address (with an extension, any length) before its verdict, and
        // the kernel copies 256 bytes.
        let pad = "x".repeat(240);
        for (raw, want) in [
            (
                format!(
                    "550 5.1.1 <nouser+{pad}@mx>: Recipient address rejected: User unknown\r\n"
                ),
                "user-unknown",
            ),
            (
                format!("550 5.1.1 <\"nouser+>{pad}\"@mx>: Recipient address rejected: User\r\n"),
                "user-unknown",
            ),
            (
                format!("554 5.7.1 <v+{pad}@relay.example>: Relay access denied\r\n"),
                "relay-denied",
            ),
            (
                format!("454 4.7.1 <v+{pad}@relay.example>: Relay access denied\r\n"),
                "relay-denied",
            ),
            (
                format!("550 5.7.1 <v+{pad}@relay.example>... Relaying denied\r\n"),
                "relay-denied",
            ),
            // Whitespace collapses, so padding with it ends in the kernel's cut.
            (
                format!(
                    "454 4.7.1 <\"v{}\"@relay.example>: Relay access denied\r\n",
                    " ".repeat(300)
                ),
                "relay-denied",
            ),
        ] {
            let raw = &raw.as_bytes()[..256];
            let code = code_of(std::str::from_utf8(raw).unwrap());
            let text = reply_text(raw, code);
            assert_eq!(hit(&rules, code, &text).as_deref(), Some(want), "{text:?}");
        }
        // A policy reply cut after the echoed address is no relay denial.
        let text = format!(
            "5.7.1 <c.example[192.0.2.1]>: Client host rejected: {}…",
            "x".repeat(100)
        );
        assert_eq!(hit(&rules, 554, &text), None);
    }

    #[test]
    fn codes_outside_a_rule_never_count() {
        let rules = RuleSet::defaults();
        let codes = rules.codes();
        for code in 200..=599 {
            let text = "5.1.1 <a@b>: Recipient address rejected: User unknown; Relay access denied";
            assert_eq!(
                rules.classify(code, text).is_some(),
                codes.contains(&code),
                "{code}"
            );
        }
        assert_eq!(
            codes.into_iter().collect::<Vec<_>>(),
            [454, 550, 551, 553, 554]
        );
    }

    #[test]
    fn defaults() {
        let rules = RuleSet::defaults();
        let names: Vec<_> = rules.rules().iter().map(Rule::name).collect();
        assert_eq!(names, ["user-unknown", "relay-denied"]);
        let r = &rules.rules()[1];
        assert_eq!(r.label(), "Relay access denied");
        assert_eq!(r.codes(), [550, 551, 554, 454]);
        assert_eq!(r.pattern(), RELAY_DENIED);
        assert_eq!(rules.rules()[0].codes(), [550, 551, 553]);
        assert_eq!(rules.rules().len(), RuleSet::default().rules().len());
    }

    #[test]
    fn first_match_wins() {
        let spec = |name: &str, pattern: &str| RuleSpec {
            name: name.to_owned(),
            label: name.to_uppercase(),
            codes: vec![550],
            pattern: pattern.to_owned(),
        };
        let rules = RuleSet::from_specs(&[spec("a", "unknown"), spec("b", "(?i)user")]).unwrap();
        assert_eq!(hit(&rules, 550, "User unknown").as_deref(), Some("a"));
        assert_eq!(hit(&rules, 550, "User Unknown").as_deref(), Some("b"));
        // Patterns are built as given: case matters without (?i).
        assert_eq!(hit(&rules, 550, "UNKNOWN"), None);
        assert_eq!(hit(&rules, 554, "User unknown"), None);
        assert!(RuleSet::from_specs(&[]).unwrap().codes().is_empty());
    }

    #[test]
    fn bad_specs_are_named() {
        let good = RuleSet::default_specs();
        let with = |f: &dyn Fn(&mut Vec<RuleSpec>)| {
            let mut specs = good.clone();
            f(&mut specs);
            RuleSet::from_specs(&specs).unwrap_err()
        };

        let e = with(&|s| s[1].name = " ".to_owned());
        assert!(matches!(e, RuleError::EmptyName { position: 2 }), "{e:?}");
        assert_eq!(e.to_string(), "rule #2 has an empty name");

        let e = with(&|s| s[1].name = "user-unknown".to_owned());
        assert!(matches!(&e, RuleError::DuplicateName { name } if name == "user-unknown"));
        assert!(e.to_string().contains("\"user-unknown\""), "{e}");

        let e = with(&|s| s[0].codes.clear());
        assert!(matches!(&e, RuleError::NoCodes { name } if name == "user-unknown"));

        for code in [0, 199, 600, 1550] {
            let e = with(&|s| s[1].codes.push(code));
            assert!(
                matches!(&e, RuleError::CodeOutOfRange { name, code: c } if name == "relay-denied" && *c == code),
                "{e:?}"
            );
            assert!(e.to_string().contains(&code.to_string()), "{e}");
        }

        let e = with(&|s| s[1].pattern = "relay (denied".to_owned());
        let RuleError::InvalidPattern { name, pattern, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(
            (name.as_str(), pattern.as_str()),
            ("relay-denied", "relay (denied")
        );
        assert!(e.to_string().contains("\"relay (denied\""), "{e}");
        let source = e.source().unwrap().to_string();
        assert!(source.contains("unclosed group"), "{source}");
    }

    #[test]
    fn specs_from_toml() {
        #[derive(Debug, Deserialize, Serialize)]
        struct File {
            rule: Vec<RuleSpec>,
        }
        let file: File = toml::from_str(
            r#"
            [[rule]]
            name = "no-mailbox"
            label = "No mailbox"
            codes = [550]
            pattern = '(?i)^no mailbox'
            "#,
        )
        .unwrap();
        let rules = RuleSet::from_specs(&file.rule).unwrap();
        assert_eq!(
            hit(&rules, 550, "No mailbox here").as_deref(),
            Some("no-mailbox")
        );

        let e = toml::from_str::<File>(
            "[[rule]]\nname = \"x\"\nlabel = \"x\"\ncodes = [550]\npattern = \"x\"\nregex = \"y\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `regex`"), "{e}");

        // The defaults survive a round trip through a config file.
        let text = toml::to_string(&File {
            rule: RuleSet::default_specs(),
        })
        .unwrap();
        let back: File = toml::from_str(&text).unwrap();
        assert_eq!(back.rule, RuleSet::default_specs());
    }
}
