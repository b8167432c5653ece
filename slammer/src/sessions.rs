//! Freeing the MTA's slots: when a client is blocked, its SMTP sessions that are already open
//! would stall the server side until a timeout (the gate drops the client's packets), each
//! holding an smtpd process. They are destroyed through `sock_diag` (`SOCK_DESTROY`, what `ss -K`
//! does; needs `CONFIG_INET_DIAG_DESTROY`): the server sees the connection aborted at once.

use std::{
    collections::BTreeSet,
    io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE_WAIT: u32 = 8;
/// Sessions in these states hold an smtpd process.
const STATES: u32 = (1 << TCP_ESTABLISHED) | (1 << TCP_CLOSE_WAIT);

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagReq {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

#[repr(C)]
struct Request {
    header: NlMsgHdr,
    req: DiagReq,
}

#[derive(Debug, thiserror::Error)]
#[error("sock_diag {what} failed")]
pub struct SessionError {
    what: &'static str,
    #[source]
    source: io::Error,
}

struct Netlink(i32);

impl Drop for Netlink {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

impl Netlink {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let nl = Self(fd);
        // The kernel answers at once; a bound keeps a lost answer from stalling a block.
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: valid fd and option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                nl.0,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                u32::try_from(size_of::<libc::timeval>()).expect("small"),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(nl)
    }

    fn send(&self, kind: u16, flags: u16, seq: u32, req: DiagReq) -> io::Result<()> {
        let msg = Request {
            header: NlMsgHdr {
                len: u32::try_from(size_of::<Request>()).expect("small"),
                kind,
                flags,
                seq,
                pid: 0,
            },
            req,
        };
        // SAFETY: `msg` is a plain repr(C) value sent as bytes.
        let sent = unsafe { libc::send(self.0, (&raw const msg).cast(), size_of::<Request>(), 0) };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads netlink messages until `NLMSG_DONE` (dumps) or the first ack/error, calling `each`
    /// with every payload of type `SOCK_DIAG_BY_FAMILY`. Returns the error code of an ack, if any.
    fn receive(&self, mut each: impl FnMut(&DiagMsg)) -> io::Result<i32> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = usize::try_from(n).unwrap_or(0);
            let mut at = 0;
            while at + size_of::<NlMsgHdr>() <= n {
                // SAFETY: bounds checked above; read unaligned from the byte buffer.
                let h: NlMsgHdr =
                    unsafe { buf.as_ptr().add(at).cast::<NlMsgHdr>().read_unaligned() };
                let len = h.len as usize;
                if len < size_of::<NlMsgHdr>() || at + len > n {
                    return Ok(0);
                }
                let body = at + size_of::<NlMsgHdr>();
                match i32::from(h.kind) {
                    libc::NLMSG_DONE => return Ok(0),
                    libc::NLMSG_ERROR => {
                        // SAFETY: an error message starts with its (negative) errno.
                        let code = unsafe { buf.as_ptr().add(body).cast::<i32>().read_unaligned() };
                        return Ok(code);
                    }
                    _ if h.kind == SOCK_DIAG_BY_FAMILY
                        && body + size_of::<DiagMsg>() <= at + len =>
                    {
                        // SAFETY: bounds checked in the guard.
                        let msg =
                            unsafe { buf.as_ptr().add(body).cast::<DiagMsg>().read_unaligned() };
                        each(&msg);
                    }
                    _ => {}
                }
                at += (len + 3) & !3;
            }
        }
    }
}

fn peer(msg: &DiagMsg) -> Option<IpAddr> {
    match i32::from(msg.family) {
        libc::AF_INET => {
            let [a, b, c, d, ..] = msg.id.dst;
            Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
        }
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(msg.id.dst)).to_canonical()),
        _ => None,
    }
}

/// Destroys the established TCP sessions between the local `ports` and every peer
/// `doomed_peer` accepts, with one dump of the sessions however many targets it stands for;
/// returns how many were destroyed.
pub fn destroy_matching(
    doomed_peer: impl Fn(IpAddr) -> bool,
    ports: &BTreeSet<u16>,
) -> Result<usize, SessionError> {
    let err = |what| move |source| SessionError { what, source };
    let nl = Netlink::open().map_err(err("socket"))?;
    let mut doomed = Vec::new();
    for (seq, family) in [(1, libc::AF_INET), (2, libc::AF_INET6)] {
        let req = DiagReq {
            family: u8::try_from(family).expect("small"),
            protocol: u8::try_from(libc::IPPROTO_TCP).expect("small"),
            states: STATES,
            ..DiagReq::default()
        };
        let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_DUMP).expect("small");
        nl.send(SOCK_DIAG_BY_FAMILY, flags, seq, req)
            .map_err(err("dump"))?;
        nl.receive(|msg| {
            let local_port = u16::from_be_bytes(msg.id.sport);
            if ports.contains(&local_port) && peer(msg).is_some_and(&doomed_peer) {
                doomed.push(*msg);
            }
        })
        .map_err(err("dump"))?;
    }
    let mut destroyed = 0;
    for (seq, msg) in (10..).zip(doomed) {
        let req = DiagReq {
            family: msg.family,
            protocol: u8::try_from(libc::IPPROTO_TCP).expect("small"),
            states: u32::MAX,
            id: msg.id,
            ..DiagReq::default()
        };
        let flags = u16::try_from(libc::NLM_F_REQUEST | libc::NLM_F_ACK).expect("small");
        nl.send(SOCK_DESTROY, flags, seq, req)
            .map_err(err("destroy"))?;
        match nl.receive(|_| {}).map_err(err("destroy"))? {
            0 => destroyed += 1,
            code if -code == libc::ENOENT => {} // closed meanwhile
            code => {
                return Err(SessionError {
                    what: "destroy",
                    source: io::Error::from_raw_os_error(-code),
                });
            }
        }
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_layouts_match_the_kernel() {
        assert_eq!(size_of::<NlMsgHdr>(), 16);
        assert_eq!(size_of::<SockId>(), 48);
        assert_eq!(size_of::<DiagReq>(), 56);
        assert_eq!(size_of::<DiagMsg>(), 72);
    }
}
