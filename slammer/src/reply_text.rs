//! Reply text as rules match it and people read it: the lines of one SMTP reply without their
//! codes, joined and made safe for logs, a terminal table and JSON.
//!
//! The text is attacker-influenced (servers echo addresses and HELO names), so nothing in it may
//! reach a terminal or a log line unfiltered.

/// Most characters of sanitized text kept; the kernel copies at most 256 bytes of a reply anyway.
pub const MAX_TEXT: usize = 200;

/// Marks text that was cut, here or by the kernel's copy limit.
const ELLIPSIS: char = '…';

/// Makes attacker-influenced text safe for logs, a terminal table and JSON.
///
/// Control characters (C0, DEL, C1), bidi controls and whitespace runs become one space; the
/// result is trimmed and keeps at most `max_chars` characters, with `…` appended when something
/// was cut (so it has at most `max_chars + 1` characters).
#[must_use]
pub fn sanitize(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars.saturating_mul(4)) + 3);
    let mut kept = 0;
    let mut gap = false;
    for c in s.chars() {
        if is_separator(c) {
            gap = true;
            continue;
        }
        // A space is only written before a visible character, so the text never ends in one.
        let space = gap && kept > 0;
        if kept + usize::from(space) + 1 > max_chars {
            out.push(ELLIPSIS);
            return out;
        }
        if space {
            out.push(' ');
            kept += 1;
        }
        gap = false;
        out.push(c);
        kept += 1;
    }
    out
}

/// Characters that must not reach a terminal or a log line as they are.
fn is_separator(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        // Bidi embeddings, overrides and isolates reorder what a terminal shows ("Trojan
        // Source"); the marks (LRM, RLM, ALM) are invisible and serve no purpose in a reply.
        || matches!(
            c,
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        )
}

/// The text of the reply that starts at the first byte of `raw`.
///
/// That is the texts of its lines (`NNN-text` continuation lines, then the final `NNN text` or
/// bare `NNN` line) joined by one space and sanitized to [`MAX_TEXT`].
///
/// Reading stops after the final line, at a line that does not carry `code`, or at the end of
/// `raw`. The kernel's copy may end inside the reply; such text ends in `…`, so a reader (and a
/// rule) can tell that the rest is missing.
#[must_use]
pub fn reply_text(raw: &[u8], code: u16) -> String {
    let (text, cut) = join_lines(raw, code);
    let mut out = sanitize(&String::from_utf8_lossy(&text), MAX_TEXT);
    if cut && !out.ends_with(ELLIPSIS) {
        out.push(ELLIPSIS);
    }
    out
}

/// A reply line typed by an operator (`550 5.1.1 <x@y>: ...`, trailing CRLF allowed, also
/// several lines of one reply) as the code and the text that [`reply_text`] would give for it.
///
/// `None` unless it starts with a code in 200..=599 followed by a space, `-` or the end.
#[must_use]
pub fn parse_reply_line(line: &str) -> Option<(u16, String)> {
    let line = line.trim();
    let digits = line.get(..3)?;
    // `u16::from_str` would also take "+55".
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = digits.parse().ok()?;
    if !(200..=599).contains(&code) || !matches!(line.as_bytes().get(3), None | Some(b' ' | b'-')) {
        return None;
    }
    // Typed input is complete: a missing final line is not a cut, so no `…`.
    let (text, _cut) = join_lines(line.as_bytes(), code);
    Some((code, sanitize(&String::from_utf8_lossy(&text), MAX_TEXT)))
}

/// The raw texts of the reply's lines joined by spaces, and whether `raw` ended before the reply
/// did.
fn join_lines(raw: &[u8], code: u16) -> (Vec<u8>, bool) {
    let mut text = Vec::with_capacity(raw.len());
    if !(100..=999).contains(&code) {
        return (text, false);
    }
    let digits = code.to_string();
    let digits = digits.as_bytes();
    let mut rest = raw;
    while !rest.is_empty() {
        let (line, complete, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            // A buffer ending in CR ends with a whole line; only the LF was not copied.
            None => (rest, rest.ends_with(b"\r"), &[][..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(after) = line.strip_prefix(digits) else {
            // "55" at the end of the buffer is this reply's next line, cut short.
            let cut = !complete && digits.starts_with(line);
            return (text, cut);
        };
        let (last, body) = match after.split_first() {
            None => (true, after),
            Some((b' ', body)) => (true, body),
            Some((b'-', body)) => (false, body),
            // "5501" is not a line of this reply.
            Some(_) => return (text, false),
        };
        if !text.is_empty() {
            text.push(b' ');
        }
        text.extend_from_slice(body);
        if !complete {
            return (text, true);
        }
        if last {
            return (text, false);
        }
        rest = next;
    }
    // Out of bytes before the final line (or no bytes at all).
    let cut = !raw.is_empty();
    (text, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POSTFIX_FOOTER: &[u8] = b"550-5.1.1 <a@b>: Recipient address rejected: User unknown in \
        local recipient table\r\n550 5.1.1 For assistance contact <postmaster@mx>. ...\r\n\
        250 2.0.0 Ok\r\n";

    #[test]
    fn single_line() {
        assert_eq!(
            reply_text(b"550 Unrouteable address\r\n", 550),
            "Unrouteable address"
        );
        assert_eq!(reply_text(b"250 OK\r\n550 x\r\n", 250), "OK");
    }

    #[test]
    fn multi_line_reply_stops_after_final_line() {
        assert_eq!(
            reply_text(POSTFIX_FOOTER, 550),
            "5.1.1 <a@b>: Recipient address rejected: User unknown in local recipient table \
             5.1.1 For assistance contact <postmaster@mx>. ..."
        );
    }

    #[test]
    fn lf_only_lines() {
        assert_eq!(reply_text(b"554-a\n554 b\n250 c\n", 554), "a b");
    }

    #[test]
    fn bare_code_is_a_final_line() {
        assert_eq!(reply_text(b"550\r\n550 next reply\r\n", 550), "");
        assert_eq!(reply_text(b"550-first\r\n550\r\n250 x\r\n", 550), "first");
    }

    #[test]
    fn stops_at_a_line_of_another_code() {
        // Malformed (no final line) but complete: nothing was cut.
        assert_eq!(reply_text(b"550-a\r\n250 b\r\n", 550), "a");
        assert_eq!(reply_text(b"550-a\r\n5501 b\r\n", 550), "a");
        assert_eq!(reply_text(b"550-a\r\n\r\n550 b\r\n", 550), "a");
    }

    #[test]
    fn first_line_must_carry_the_code() {
        assert_eq!(reply_text(b"250 OK\r\n", 550), "");
        assert_eq!(reply_text(b"5501 x\r\n", 550), "");
        assert_eq!(reply_text(b"", 550), "");
        assert_eq!(reply_text(b"550 x\r\n", 55), "");
        assert_eq!(reply_text(b"550 x\r\n", 1550), "");
    }

    #[test]
    fn kernel_cut_is_marked() {
        assert_eq!(
            reply_text(b"550 5.1.1 <nouser1@mx.sl", 550),
            "5.1.1 <nouser1@mx.sl…"
        );
        assert_eq!(reply_text(b"550-a\r\n550 b", 550), "a b…");
        assert_eq!(reply_text(b"550-a\r\n", 550), "a…");
        assert_eq!(reply_text(b"550-a\r\n55", 550), "a…");
        assert_eq!(reply_text(b"550-a\r\n550", 550), "a…");
        assert_eq!(reply_text(b"550", 550), "…");
        // Only the LF is missing: the line is whole.
        assert_eq!(reply_text(b"550 a\r", 550), "a");
    }

    #[test]
    fn long_text_is_cut_once() {
        let long = format!("550 {}\r\n", "x".repeat(300));
        let text = reply_text(long.as_bytes(), 550);
        assert_eq!(text.chars().count(), MAX_TEXT + 1);
        assert!(text.ends_with("x…"));
        // Cut by the kernel and by the length limit: still one mark.
        let text = reply_text(&long.as_bytes()[..256], 550);
        assert_eq!(text, format!("{}…", "x".repeat(MAX_TEXT)));
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(
            reply_text(b"550 caf\xe9 \xff\r\n", 550),
            "caf\u{FFFD} \u{FFFD}"
        );
        // A multi-byte character cut by the kernel.
        assert_eq!(reply_text(b"550 caf\xc3", 550), "caf\u{FFFD}…");
    }

    #[test]
    fn attacker_bytes_are_neutralised() {
        let raw = b"550 5.1.1 <a\x1b[31m\tb\x7f\xc2\x9bc\xe2\x80\xaed@x>:\x00 User unknown\r\n";
        assert_eq!(reply_text(raw, 550), "5.1.1 <a [31m b c d@x>: User unknown");
    }

    #[test]
    fn sanitize_replaces_controls() {
        assert_eq!(
            sanitize("a\r\nb\tc\x7fd\u{85}e\u{9b}f\0g", 100),
            "a b c d e f g"
        );
        assert_eq!(sanitize("\x1b]0;title\x07x", 100), "]0;title x");
    }

    #[test]
    fn sanitize_replaces_bidi_controls() {
        for c in ('\u{202A}'..='\u{202E}').chain('\u{2066}'..='\u{2069}') {
            assert_eq!(
                sanitize(&format!("a{c}b"), 10),
                "a b",
                "U+{:04X}",
                u32::from(c)
            );
        }
        assert_eq!(sanitize("a\u{200F}b\u{200E}c\u{61C}d", 10), "a b c d");
    }

    #[test]
    fn sanitize_collapses_and_trims() {
        assert_eq!(sanitize("  a \r\n\t b \u{a0}\u{2028} c  ", 100), "a b c");
        assert_eq!(sanitize(" \t\r\n ", 100), "");
        assert_eq!(sanitize("", 100), "");
        // Other text is left alone.
        assert_eq!(sanitize("Grüße <ä@ö.de> “ok”", 100), "Grüße <ä@ö.de> “ok”");
    }

    #[test]
    fn sanitize_cuts_by_characters() {
        assert_eq!(sanitize("abcdef", 6), "abcdef");
        assert_eq!(sanitize("abcdefg", 6), "abcdef…");
        assert_eq!(sanitize("ééééééé", 3), "ééé…");
        // The cut never leaves a space before the mark; trailing whitespace is no cut.
        assert_eq!(sanitize("abc def", 4), "abc…");
        assert_eq!(sanitize("abc    ", 3), "abc");
        assert_eq!(sanitize("abc", 0), "…");
        assert_eq!(sanitize("", 0), "");
        let s = sanitize(&"ab ".repeat(500), MAX_TEXT);
        assert_eq!(s.chars().count(), MAX_TEXT + 1);
    }

    #[test]
    fn parse_operator_lines() {
        assert_eq!(
            parse_reply_line("550 5.1.1 <x@y>: Recipient address rejected: User unknown\r\n"),
            Some((
                550,
                "5.1.1 <x@y>: Recipient address rejected: User unknown".to_owned()
            ))
        );
        assert_eq!(
            parse_reply_line("454 4.7.1 <v@r.example>: Relay access denied"),
            Some((454, "4.7.1 <v@r.example>: Relay access denied".to_owned()))
        );
        assert_eq!(parse_reply_line("550"), Some((550, String::new())));
        assert_eq!(parse_reply_line("550-a"), Some((550, "a".to_owned())));
        assert_eq!(
            parse_reply_line("550-a\r\n550 b\r\n"),
            Some((550, "a b".to_owned()))
        );
        assert_eq!(
            parse_reply_line("  550  spaced\ttext "),
            Some((550, "spaced text".to_owned()))
        );
    }

    #[test]
    fn parse_refuses_non_replies() {
        for line in [
            "",
            "55",
            "abc def",
            "+55 x",
            "5501 x",
            "550x",
            "550:x",
            "199 x",
            "600 x",
            "000 x",
            "User unknown",
            "ü50 x",
        ] {
            assert_eq!(parse_reply_line(line), None, "{line:?}");
        }
        assert_eq!(parse_reply_line("200 x").map(|r| r.0), Some(200));
        assert_eq!(parse_reply_line("599 x").map(|r| r.0), Some(599));
    }
}
