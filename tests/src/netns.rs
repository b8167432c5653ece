//! Network namespaces, the two-namespace test topology, and running code inside a namespace.

use std::{
    fs::File,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{
    command::{COMMAND_TIMEOUT, describe, output_within, run_ok},
    poll::wait_until,
    require_root,
    scratch::Scratch,
    unique_id,
};

/// Runs `f` on a fresh thread that first joined the network namespace `/run/netns/<ns>`.
/// `setns` only affects the calling thread, and sockets keep the namespace they were made in, so
/// sockets created by `f` can be returned and used from any thread.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: `file` is an open namespace file descriptor; setns only changes this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert!(rc == 0, "setns({path}): {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Netns {
        run_ok(Command::new("ip").args(["netns", "add", name]));
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `ip -n <name> <args>` and panics if it fails.
    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`). Note that this
    /// remounts /sys, hiding /sys/fs/bpf: the daemon is started with `nsenter` instead.
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` inside the namespace; see [`in_netns`].
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "del", &self.name]);
        let out = output_within(&mut cmd, COMMAND_TIMEOUT);
        if !out.status.success() {
            eprintln!(
                "warning: {} failed: {}",
                describe(&cmd),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Two namespaces joined by a veth pair:
///
/// ```text
///   mx (protected host)                          cl (clients)
///   <x>m  10.231.N.1/24  fd31:N::1/64   <==>   <x>c  10.231.N.2, .3/24  fd31:N::2, ::3/64
///                                                    (+ extra: 10.231.N.10.., fd31:N::10..)
/// ```
/// The daemon runs in `mx` on `mx_if`. `N` differs between the tests of one process. Fields drop
/// in order: namespaces first, the scratch directory (logs) last.
pub struct Topology {
    pub id: String,
    pub n: u8,
    pub mx_if: String,
    pub cl_if: String,
    pub mx: Netns,
    pub cl: Netns,
    pub dir: Scratch,
    /// How many extra client addresses per family ([`Topology::with_extra_clients`]).
    extra_clients: u8,
}

/// Most extra client addresses per family: `10.231.N.10..=25` and `fd31:N::10..=1f` (the
/// addresses are written alike in both families, so the IPv6 ones count in hex).
pub const MAX_EXTRA_CLIENTS: u8 = 16;

impl Topology {
    #[expect(
        clippy::new_without_default,
        reason = "creating namespaces is not a default value"
    )]
    pub fn new() -> Topology {
        Topology::with_extra_clients(0)
    }

    /// Like [`Topology::new`], plus `count` more client addresses per family on the cl side, in
    /// the same /24 and /64: `10.231.N.10`, `.11`, ... and `fd31:N::10`, `::11`, ... (see
    /// [`Topology::extra_clients`]). For tests that need many sources of one prefix.
    pub fn with_extra_clients(count: u8) -> Topology {
        assert!(
            count <= MAX_EXTRA_CLIENTS,
            "at most {MAX_EXTRA_CLIENTS} extra client addresses per family, not {count}"
        );
        require_root();
        let id = loop {
            let id = unique_id();
            if !PathBuf::from(format!("/run/netns/slt{id}-mx")).exists() {
                break id;
            }
        };
        let n = u8::from_str_radix(&id[4..6], 16).expect("hex id") % 250 + 1;
        let dir = Scratch::new(&id);
        let cl = Netns::create(&format!("slt{id}-cl"));
        let mx = Netns::create(&format!("slt{id}-mx"));
        let (mx_if, cl_if) = (format!("slt{id}m"), format!("slt{id}c"));
        for ns in [&mx, &cl] {
            run_ok(ns.exec("sysctl").args([
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]));
        }
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &mx_if,
            "netns",
            mx.name(),
            "type",
            "veth",
            "peer",
            "name",
            &cl_if,
            "netns",
            cl.name(),
        ]));
        let topo = Topology {
            id,
            n,
            mx_if,
            cl_if,
            mx,
            cl,
            dir,
            extra_clients: count,
        };
        let (mx_if, cl_if) = (topo.mx_if.as_str(), topo.cl_if.as_str());
        topo.mx
            .ip(&["addr", "add", &format!("{}/24", topo.mx4()), "dev", mx_if]);
        topo.mx.ip(&[
            "addr",
            "add",
            &format!("{}/64", topo.mx6()),
            "dev",
            mx_if,
            "nodad",
        ]);
        for addr in topo.client_addrs() {
            let (len, nodad) = if addr.is_ipv4() {
                ("24", None)
            } else {
                ("64", Some("nodad"))
            };
            let cidr = format!("{addr}/{len}");
            let mut args = vec!["addr", "add", &cidr, "dev", cl_if];
            args.extend(nodad);
            topo.cl.ip(&args);
        }
        topo.mx.ip(&["link", "set", mx_if, "up"]);
        topo.cl.ip(&["link", "set", cl_if, "up"]);
        topo.check_connectivity();
        topo
    }

    /// The protected host's IPv4 address, 10.231.N.1.
    pub fn mx4(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 231, self.n, 1))
    }

    /// A client IPv4 address, 10.231.N.`host` (2 or 3).
    pub fn cl4(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 231, self.n, host))
    }

    /// The protected host's IPv6 address, `fd31:N::1`.
    pub fn mx6(&self) -> IpAddr {
        self.v6(1)
    }

    /// A client IPv6 address, `fd31:N::<host>` (2 or 3).
    pub fn cl6(&self, host: u8) -> IpAddr {
        self.v6(host.into())
    }

    /// The extra client addresses of one family, in order: `10.231.N.10`, `.11`, ... or
    /// `fd31:N::10`, `::11`, ... (empty unless made by [`Topology::with_extra_clients`]).
    pub fn extra_clients(&self, v6: bool) -> Vec<IpAddr> {
        (0..self.extra_clients)
            .map(|i| {
                if v6 {
                    self.v6(0x10 + u16::from(i))
                } else {
                    IpAddr::V4(Ipv4Addr::new(10, 231, self.n, 10 + i))
                }
            })
            .collect()
    }

    /// Every client address of the cl side: `.2`, `.3`, `::2`, `::3` and the extra ones.
    pub fn client_addrs(&self) -> Vec<IpAddr> {
        let mut addrs = vec![self.cl4(2), self.cl4(3), self.cl6(2), self.cl6(3)];
        addrs.extend(self.extra_clients(false));
        addrs.extend(self.extra_clients(true));
        addrs
    }

    fn v6(&self, host: u16) -> IpAddr {
        let base: Ipv6Addr = format!("fd31:{}::", self.n)
            .parse()
            .expect("valid fd31:N:: prefix");
        let mut seg = base.segments();
        seg[7] = host;
        IpAddr::V6(Ipv6Addr::from(seg))
    }

    /// The mx address of the same family as `client`.
    pub fn mx_for(&self, client: IpAddr) -> IpAddr {
        if client.is_ipv4() {
            self.mx4()
        } else {
            self.mx6()
        }
    }

    /// A dual-stack TCP listener on `[::]:port` in mx (nobody accepts: the kernel completes the
    /// handshake, which is all the gate tests need).
    pub fn listen_mx(&self, port: u16) -> TcpListener {
        self.mx.run(|| {
            let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).expect("socket");
            s.set_only_v6(false).expect("IPV6_V6ONLY=0");
            s.set_reuse_address(true).expect("SO_REUSEADDR");
            s.bind(&SockAddr::from(SocketAddr::from((
                Ipv6Addr::UNSPECIFIED,
                port,
            ))))
            .unwrap_or_else(|e| panic!("bind [::]:{port} in mx: {e}"));
            s.listen(128).expect("listen");
            s.into()
        })
    }

    /// Connects from client address `src` (in cl) to `port` on mx, with a connect timeout.
    pub fn connect(&self, src: IpAddr, port: u16, timeout: Duration) -> io::Result<TcpStream> {
        let dst = SocketAddr::new(self.mx_for(src), port);
        self.cl.run(|| connect_from(src, dst, timeout))
    }

    /// Polls [`Topology::connect`] (short attempts) until it succeeds, for at most `within`.
    /// Returns how long it took.
    pub fn wait_connects(&self, src: IpAddr, port: u16, within: Duration) -> Duration {
        let start = Instant::now();
        let mut last_err = None;
        let ok = crate::poll::poll_until(within, || {
            match self.connect(src, port, Duration::from_millis(300)) {
                Ok(_) => Some(()),
                Err(e) => {
                    last_err = Some(e);
                    None
                }
            }
        });
        assert!(
            ok.is_some(),
            "{src} could not connect to port {port} within {within:?} (last error: {last_err:?})"
        );
        start.elapsed()
    }

    /// Panics unless a connection from `src` to `port` times out (its SYN was dropped).
    pub fn assert_dropped(&self, src: IpAddr, port: u16, timeout: Duration) {
        match self.connect(src, port, timeout) {
            Ok(_) => panic!("{src} connected to port {port} but it should be blocked"),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => panic!("{src} -> port {port}: expected a timeout (dropped SYN), got: {e}"),
        }
    }

    /// A block reaches the data path within `within`: an attempt from `src` to `port` times out
    /// after `timeout` (one that still gets through is retried: it may have raced the map update).
    pub fn assert_dropped_soon(&self, src: IpAddr, port: u16, timeout: Duration, within: Duration) {
        crate::poll::wait_until(&format!("{src} to be dropped"), within, || {
            match self.connect(src, port, timeout) {
                Ok(_) => None,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => Some(()),
                Err(e) => {
                    panic!("{src} -> port {port}: expected a timeout (dropped SYN), got: {e}")
                }
            }
        });
    }

    /// Adds `addr` (typically a client address of another topology) to the cl side too, as a
    /// `/32` or `/128` on cl's veth, with a host route to it in mx over mx's veth so that mx
    /// answers it; then waits until it reaches mx. [`Topology::connect`] works from it like from
    /// the own client addresses (to the mx address of its family). For tests where one client
    /// talks to the mx hosts of several topologies (fleet mode): blocks are per address.
    pub fn add_client_addr(&self, addr: IpAddr) {
        let (host, nodad, family) = if addr.is_ipv4() {
            (format!("{addr}/32"), None, "-4")
        } else {
            (format!("{addr}/128"), Some("nodad"), "-6")
        };
        let mut args = vec!["addr", "add", &host, "dev", &self.cl_if];
        args.extend(nodad);
        self.cl.ip(&args);
        self.mx
            .ip(&[family, "route", "add", &host, "dev", &self.mx_if]);
        let listener = self.listen_mx(0);
        let port = listener.local_addr().expect("local_addr").port();
        wait_until(
            &format!("{addr} (added to slt{}) to reach mx", self.id),
            Duration::from_secs(5),
            || self.connect(addr, port, Duration::from_millis(200)).ok(),
        );
    }

    /// Every client address reaches mx before the test starts (catches a broken topology early).
    /// First waits until IPv6 is ready on both ends (link-local address present): until then the
    /// kernel has not joined all solicited-node groups and the first neighbour solicitation can be
    /// lost, which costs a 1 s retransmission.
    fn check_connectivity(&self) {
        for (ns, dev) in [(&self.mx, &self.mx_if), (&self.cl, &self.cl_if)] {
            wait_until(
                &format!("an IPv6 link-local address on {dev}"),
                Duration::from_secs(5),
                || {
                    let out = run_ok(Command::new("ip").args([
                        "-n",
                        ns.name(),
                        "-6",
                        "addr",
                        "show",
                        "dev",
                        dev,
                        "scope",
                        "link",
                    ]));
                    (out.contains("inet6") && !out.contains("tentative")).then_some(())
                },
            );
        }
        let listener = self.listen_mx(0);
        let port = listener.local_addr().expect("local_addr").port();
        for src in self.client_addrs() {
            wait_until(
                &format!("{src} to reach mx (topology setup)"),
                Duration::from_secs(5),
                || self.connect(src, port, Duration::from_millis(200)).ok(),
            );
        }
    }
}

/// Joins namespaces `a` and `b` with a veth pair (`a_if` in `a`, `b_if` in `b`; names of at
/// most 15 bytes), gives each end its address (`ADDR/LEN`) and brings both up. The pair goes
/// away with either namespace.
pub fn link_namespaces(a: &Netns, a_if: &str, a_cidr: &str, b: &Netns, b_if: &str, b_cidr: &str) {
    run_ok(Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]));
    for (ns, dev, cidr) in [(a, a_if, a_cidr), (b, b_if, b_cidr)] {
        if cidr.contains(':') {
            ns.ip(&["addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            ns.ip(&["addr", "add", cidr, "dev", dev]);
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
}

/// A TCP connection bound to `src` (call it inside the right namespace).
pub fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    s.connect_timeout(&SockAddr::from(dst), timeout)?;
    Ok(s.into())
}
