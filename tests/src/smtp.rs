//! A small SMTP client: one command per write, or PIPELINING (many commands in one write, then
//! all replies). Replies are read whole, including multi-line ones (`250-...` then `250 ...`).

use std::{
    fmt,
    io::{self, BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use crate::netns::{connect_from, in_netns};

/// How long a reply may take before the test fails.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// One SMTP reply: its code and every line (without CRLF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The text of all lines after the code and separator, joined by newlines.
    pub fn text(&self) -> String {
        self.lines
            .iter()
            .map(|l| l.get(4..).unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines.join(" | "))
    }
}

/// A client session. The connection is made inside a namespace, from a chosen source address.
pub struct Smtp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    /// The server's greeting.
    pub banner: Reply,
}

impl Smtp {
    /// Connects from `src` to `dst` inside namespace `ns` and reads the banner (expects 220).
    pub fn connect(ns: &str, src: IpAddr, dst: SocketAddr) -> Smtp {
        let stream = in_netns(ns, || connect_from(src, dst, Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("SMTP connect {src} -> {dst}: {e}"));
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("SO_RCVTIMEO");
        stream
            .set_write_timeout(Some(REPLY_TIMEOUT))
            .expect("SO_SNDTIMEO");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let reader = BufReader::new(stream.try_clone().expect("dup socket"));
        let mut smtp = Smtp {
            stream,
            reader,
            banner: Reply {
                code: 0,
                lines: Vec::new(),
            },
        };
        smtp.banner = smtp
            .read_reply()
            .unwrap_or_else(|e| panic!("reading the banner from {dst}: {e}"));
        assert_eq!(
            smtp.banner.code, 220,
            "unexpected banner from {dst}: {}",
            smtp.banner
        );
        smtp
    }

    /// Sends one command line and returns its reply.
    pub fn cmd(&mut self, line: &str) -> Reply {
        self.write(&format!("{line}\r\n"));
        self.read_reply()
            .unwrap_or_else(|e| panic!("reading the reply to {line:?}: {e}"))
    }

    /// Like [`Smtp::cmd`], but waits at most `timeout` for the reply and returns the error (a
    /// reset, a closed connection, a timeout) instead of panicking: for sessions that may have
    /// been cut.
    pub fn try_cmd(&mut self, line: &str, timeout: Duration) -> io::Result<Reply> {
        self.stream.set_read_timeout(Some(timeout))?;
        let reply = self
            .stream
            .write_all(format!("{line}\r\n").as_bytes())
            .and_then(|()| self.read_reply());
        let _ = self.stream.set_read_timeout(Some(REPLY_TIMEOUT));
        reply
    }

    /// Sends one command line without reading a reply; the error of a session already cut.
    pub fn try_send(&mut self, line: &str) -> io::Result<()> {
        self.stream.write_all(format!("{line}\r\n").as_bytes())
    }

    /// Reads a reply, waiting at most `timeout`.
    pub fn read_reply_within(&mut self, timeout: Duration) -> io::Result<Reply> {
        self.stream.set_read_timeout(Some(timeout))?;
        let reply = self.read_reply();
        let _ = self.stream.set_read_timeout(Some(REPLY_TIMEOUT));
        reply
    }

    /// Sends one command and panics unless the reply has the `expected` code.
    pub fn expect(&mut self, line: &str, expected: u16) -> Reply {
        let reply = self.cmd(line);
        assert_eq!(reply.code, expected, "{line:?} got {reply}");
        reply
    }

    /// PIPELINING: writes all `lines` in one write, then reads one reply per line.
    pub fn pipeline(&mut self, lines: &[String]) -> Vec<Reply> {
        let batch: String = lines.iter().flat_map(|l| [l.as_str(), "\r\n"]).collect();
        self.write(&batch);
        lines
            .iter()
            .map(|l| {
                self.read_reply()
                    .unwrap_or_else(|e| panic!("reading the pipelined reply to {l:?}: {e}"))
            })
            .collect()
    }

    /// EHLO, panicking unless it is accepted; returns the reply (lists the extensions).
    pub fn ehlo(&mut self, name: &str) -> Reply {
        self.expect(&format!("EHLO {name}"), 250)
    }

    /// MAIL, RCPT, DATA, the body (dot-stuffed), `.`: panics unless each step is accepted;
    /// returns the final reply (`250 2.0.0 Ok: queued as ...`).
    pub fn send_mail(&mut self, from: &str, to: &str, body: &str) -> Reply {
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        self.expect(&format!("RCPT TO:<{to}>"), 250);
        self.expect("DATA", 354);
        let mut data = String::new();
        for line in body.lines() {
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        self.write(&data);
        let reply = self
            .read_reply()
            .unwrap_or_else(|e| panic!("reading the reply to the end of DATA: {e}"));
        assert_eq!(
            reply.code, 250,
            "mail from <{from}> to <{to}> was not accepted: {reply}"
        );
        reply
    }

    /// QUIT (the reply is read but not checked).
    pub fn quit(mut self) {
        let _ = self.stream.write_all(b"QUIT\r\n");
        let _ = self.read_reply();
    }

    fn write(&mut self, data: &str) {
        self.stream
            .write_all(data.as_bytes())
            .unwrap_or_else(|e| panic!("SMTP write: {e}"));
    }

    /// Reads lines until the last line of a reply (`NNN ` or a bare `NNN`).
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {lines:?}"),
                ));
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an SMTP reply line: {line:?}"),
                )
            })?;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Ok(Reply { code, lines });
            }
        }
    }
}
