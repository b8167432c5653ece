//! Ring-buffer records from the egress classifier, decoded into plain values.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use slammer_common::event::{ReplyEvent, TEXT_LEN, family, kind};

use crate::{addr::canonical, reply_text::reply_text};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A reply whose code is in the reported set.
    Reply(Reply),
    /// The server said `220` to STARTTLS: the rest of this session is encrypted.
    TlsStarted {
        client: IpAddr,
        client_port: u16,
        server_port: u16,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// When it left the host, boot-clock nanoseconds.
    pub at_ns: u64,
    pub client: IpAddr,
    pub client_port: u16,
    pub server_port: u16,
    /// TCP sequence number of its first byte.
    pub seq: u32,
    pub code: u16,
    /// The reply's text without codes, sanitised.
    pub text: String,
    /// The classifier held the client at this reply (see `slammer_common::hold`): the daemon
    /// confirms the hold with a block or lifts it.
    pub held: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record of {len} bytes, expected {expected}")]
    Size { len: usize, expected: usize },
    #[error("unknown address family {family}")]
    Family { family: u8 },
    #[error("unknown event kind {kind}")]
    Kind { kind: u8 },
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
    let expected = size_of::<ReplyEvent>();
    if record.len() < expected {
        return Err(DecodeError::Size {
            len: record.len(),
            expected,
        });
    }
    // SAFETY: `ReplyEvent` is plain old data and `record` holds at least one; the read is
    // unaligned-safe.
    let ev: ReplyEvent = unsafe { record.as_ptr().cast::<ReplyEvent>().read_unaligned() };
    let client = match ev.family {
        family::V4 => {
            let [a, b, c, d, ..] = ev.client_addr;
            IpAddr::V4(Ipv4Addr::new(a, b, c, d))
        }
        family::V6 => canonical(IpAddr::V6(Ipv6Addr::from(ev.client_addr))),
        other => return Err(DecodeError::Family { family: other }),
    };
    match ev.kind {
        kind::REJECTION => {
            let len = usize::from(ev.text_len).min(TEXT_LEN);
            Ok(Event::Reply(Reply {
                at_ns: ev.ts_ns,
                client,
                client_port: ev.client_port,
                server_port: ev.server_port,
                seq: ev.seq,
                code: ev.code,
                text: reply_text(&ev.text[..len], ev.code),
                held: ev.held != 0,
            }))
        }
        kind::TLS_STARTED => Ok(Event::TlsStarted {
            client,
            client_port: ev.client_port,
            server_port: ev.server_port,
        }),
        other => Err(DecodeError::Kind { kind: other }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fam: u8, addr: &[u8], text: &[u8]) -> Vec<u8> {
        let mut ev = ReplyEvent {
            ts_ns: 42,
            client_addr: [0; 16],
            seq: 7,
            client_port: 40000,
            server_port: 25,
            code: 550,
            text_len: u16::try_from(text.len()).unwrap(),
            kind: kind::REJECTION,
            family: fam,
            held: 1,
            _pad: 0,
            text: [0; TEXT_LEN],
        };
        ev.client_addr[..addr.len()].copy_from_slice(addr);
        ev.text[..text.len()].copy_from_slice(text);
        // SAFETY: plain old data viewed as bytes.
        unsafe { std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<ReplyEvent>()) }
            .to_vec()
    }

    #[test]
    fn decodes_v4_and_mapped_v6() {
        let Event::Reply(r) =
            decode(&record(4, &[192, 0, 2, 7], b"550 5.1.1 User unknown\r\n")).unwrap()
        else {
            panic!("not a reply")
        };
        assert_eq!(r.client, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!((r.code, r.seq, r.at_ns, r.client_port), (550, 7, 42, 40000));
        assert!(r.held);
        assert_eq!(r.text, "5.1.1 User unknown");
        let mapped: Ipv6Addr = "::ffff:192.0.2.7".parse().unwrap();
        let Event::Reply(r) = decode(&record(6, &mapped.octets(), b"550 x\r\n")).unwrap() else {
            panic!("not a reply")
        };
        assert_eq!(r.client, "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rejects_malformed_records() {
        assert!(matches!(decode(&[0; 10]), Err(DecodeError::Size { .. })));
        assert_eq!(
            decode(&record(9, &[1], b"")),
            Err(DecodeError::Family { family: 9 })
        );
    }
}
