//! Scraping the daemon's Prometheus endpoint: one plain HTTP/1.0 GET, made from inside the
//! daemon's namespace (its listener lives there), and lookups in the text exposition format.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::netns::in_netns;

/// Connect, write and read deadline of one scrape.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP response.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub status: u16,
    /// The status line and the headers.
    pub head: String,
    pub body: String,
}

impl Scrape {
    /// The value of one series, written exactly as exposed, e.g.
    /// `slammer_blocks_total{source="manual"}` or `slammer_blocked_addresses`.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, rest) = l.split_at(l.find([' ', '{']).unwrap_or(l.len()));
                let (labels, value) = match rest.strip_prefix('{') {
                    Some(r) => {
                        let (labels, value) = r.split_once('}')?;
                        (format!("{{{labels}}}"), value)
                    }
                    None => (String::new(), rest),
                };
                (format!("{name}{labels}") == series)
                    .then(|| value.split_whitespace().next()?.parse().ok())?
            })
    }

    /// Like [`Scrape::value`], but panics (showing the body) if the series is missing.
    pub fn get(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("the metrics have no series {series}:\n{}", self.body))
    }

    /// A counter or gauge that must hold a whole number; panics otherwise (or if it is missing).
    pub fn count(&self, series: &str) -> u64 {
        let v = self.get(series);
        assert!(
            v >= 0.0 && v.fract() == 0.0 && v < 9.0e15,
            "{series} is {v}, not a count"
        );
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked above: a whole, non-negative number below 2^53"
        )]
        let n = v as u64;
        n
    }

    /// The names of every series (metric names without labels), deduplicated, in order.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for line in self.body.lines().filter(|l| !l.starts_with('#')) {
            let name = &line[..line.find([' ', '{']).unwrap_or(line.len())];
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

/// `GET path` from `addr`, made inside namespace `ns`; panics if the server does not answer
/// with a well-formed HTTP response within [`SCRAPE_TIMEOUT`].
pub fn get(ns: &str, addr: SocketAddr, path: &str) -> Scrape {
    let raw = in_netns(ns, || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)?;
        s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
        s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
        write!(
            s,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: slammer-tests\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        Ok(raw)
    })
    .unwrap_or_else(|e| panic!("GET http://{addr}{path} in namespace {ns}: {e}"));
    let text = String::from_utf8(raw)
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: the response is not UTF-8: {e}"));
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET http://{addr}{path}: no end of headers in {text:?}"));
    let status = head
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET http://{addr}{path}: bad status line in {head:?}"));
    Scrape {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}
