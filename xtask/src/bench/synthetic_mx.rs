//! A synthetic mail host and its clients, to feed the egress classifier far more rejections a
//! second than a real Postfix can send on two cores.
//!
//! The server listens on port 25 in the mail host's namespace and answers each `RCPT TO:<a>`
//! line with Postfix's rejection of an unknown virtual mailbox, `550 5.1.1 <a>: Recipient
//! address rejected: User unknown in virtual mailbox table`, all the replies to what one read
//! returned in one write: a pipelined batch, as Postfix answers one. It can also append, per
//! rejection, the line Postfix logs for it (`NOQUEUE: reject: RCPT from unknown[ADDR]: ...`) to
//! a file, one write per line as Postfix's `postlogd` does, for fail2ban to read.
//!
//! The clients hold one connection per source address and send a batch of RCPTs on a
//! connection only after reading every reply to the previous one, so the server's send queue is
//! empty at each write and each batch leaves as one segment (no coalescing beyond the
//! classifier's 2,048-byte scan window: 20 replies are at most 2,020 bytes). Two client threads
//! share the connections and pace themselves to an offered rate.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs::File,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use tests::{in_netns, netns::connect_from};

use super::{cpu, sys};

pub const DOMAIN: &str = "example.test";
const REJECTION: &str = "Recipient address rejected: User unknown in virtual mailbox table";
const CLIENT_THREADS: usize = 2;
/// Connections one client thread keeps a request outstanding on at once.
const MAX_OUTSTANDING: usize = 64;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The server. Stops on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<Result<()>>>,
    /// Rejection lines written so far.
    lines: Arc<AtomicU64>,
    log: Arc<Mutex<Option<File>>>,
}

impl Server {
    /// Listens on `[::]:25` in namespace `ns` and serves from a thread of its own.
    pub fn start(ns: &str) -> Result<Self> {
        let listener = in_netns(ns, || {
            TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 25)))
        })
        .with_context(|| format!("listening on port 25 in {ns}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let lines = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(None));
        let serve = Serve {
            listener,
            stop: Arc::clone(&stop),
            lines: Arc::clone(&lines),
            log: Arc::clone(&log),
            conns: HashMap::new(),
            clock: LogClock::default(),
        };
        let thread = thread::Builder::new()
            .name("synthetic-mx".into())
            .spawn(move || serve.run())?;
        Ok(Self {
            stop,
            thread: Some(thread),
            lines,
            log,
        })
    }

    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// From now on, log each rejection to `file` (or stop logging).
    pub fn set_log(&self, file: Option<File>) {
        *self.log.lock().expect("log lock") = file;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(err)) => eprintln!("bench: the synthetic mail host failed: {err:#}"),
                Err(_) => eprintln!("bench: the synthetic mail host panicked"),
            }
        }
    }
}

struct Conn {
    stream: TcpStream,
    peer: IpAddr,
    /// Bytes of an incomplete line.
    pending: Vec<u8>,
    /// The smtpd process id its log lines carry.
    smtpd_pid: u32,
}

struct Serve {
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    lines: Arc<AtomicU64>,
    log: Arc<Mutex<Option<File>>>,
    conns: HashMap<RawFd, Conn>,
    clock: LogClock,
}

impl Serve {
    fn run(mut self) -> Result<()> {
        cpu::renice_this_thread()?;
        // SAFETY: epoll_create1 has no preconditions; the fd is owned below.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: a fresh fd that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        watch(epoll.as_raw_fd(), self.listener.as_raw_fd())?;
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut buf = vec![0u8; 64 * 1024];
        while !self.stop.load(Ordering::Relaxed) {
            // SAFETY: `events` is a valid buffer of that many entries; 50 ms bounds how long a
            // stop request goes unseen.
            let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), 256, 50) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("epoll_wait");
            }
            for event in &events[..usize::try_from(n).unwrap_or(0)] {
                let fd = RawFd::try_from(event.u64).unwrap_or(-1);
                if fd == self.listener.as_raw_fd() {
                    self.accept(epoll.as_raw_fd())?;
                } else {
                    self.serve(fd, &mut buf);
                }
            }
        }
        Ok(())
    }

    fn accept(&mut self, epoll: RawFd) -> Result<()> {
        loop {
            match self.listener.accept() {
                Ok((mut stream, peer)) => {
                    stream.set_nodelay(true)?;
                    stream.write_all(b"220 mx.example.test ESMTP\r\n")?;
                    stream.set_nonblocking(true)?;
                    watch(epoll, stream.as_raw_fd())?;
                    let smtpd_pid = 20_000 + u32::try_from(self.conns.len()).unwrap_or(0);
                    self.conns.insert(
                        stream.as_raw_fd(),
                        Conn {
                            stream,
                            peer: peer.ip().to_canonical(),
                            pending: Vec::new(),
                            smtpd_pid,
                        },
                    );
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) => return Err(err).context("accept"),
            }
        }
    }

    /// Reads what arrived on `fd` and answers every complete RCPT line; a connection that
    /// fails or closes is dropped (closing it removes it from the epoll set).
    fn serve(&mut self, fd: RawFd, buf: &mut [u8]) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        let mut open = true;
        loop {
            match conn.stream.read(buf) {
                Ok(0) => {
                    open = false;
                    break;
                }
                Ok(n) => conn.pending.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    open = false;
                    break;
                }
            }
        }
        let mut replies = String::new();
        let mut rejected = 0;
        let mut log = self.log.lock().expect("log lock");
        while let Some(end) = conn.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = conn.pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(rcpt) = line
                .strip_prefix("RCPT TO:<")
                .and_then(|rest| rest.split_once('>'))
                .map(|(rcpt, _)| rcpt)
            else {
                continue;
            };
            let _ = write!(replies, "550 5.1.1 <{rcpt}>: {REJECTION}\r\n");
            rejected += 1;
            if let Some(file) = log.as_mut() {
                let line = format!(
                    "{} mx postfix/smtpd[{}]: NOQUEUE: reject: RCPT from unknown[{}]: 550 5.1.1 \
                     <{rcpt}>: {REJECTION}; from=<spam@flood.example> to=<{rcpt}> proto=ESMTP \
                     helo=<flood.example>\n",
                    self.clock.now(),
                    conn.smtpd_pid,
                    conn.peer
                );
                // One write per line, as postlogd writes them.
                let _ = file.write_all(line.as_bytes());
            }
        }
        drop(log);
        // Counted before they leave, so a client that has read them all sees them counted.
        self.lines.fetch_add(rejected, Ordering::Relaxed);
        if !replies.is_empty() && write_fully(&mut conn.stream, replies.as_bytes()).is_err() {
            open = false;
        }
        if !open {
            self.conns.remove(&fd);
        }
    }
}

/// Writes all of `data` to a non-blocking socket (the protocol keeps its send queue empty, so
/// this hardly ever waits).
fn write_fully(stream: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !data.is_empty() {
        match stream.write(data) {
            Ok(n) => data = &data[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_micros(50));
            }
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn watch(epoll: RawFd, fd: RawFd) -> Result<()> {
    let mut event = libc::epoll_event {
        events: u32::try_from(libc::EPOLLIN).unwrap_or(1),
        u64: u64::try_from(fd).unwrap_or(0),
    };
    // SAFETY: both fds are open; `event` is valid for the call.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &raw mut event) } != 0 {
        return Err(io::Error::last_os_error()).context("epoll_ctl");
    }
    Ok(())
}

/// Syslog's local time stamp (`Nov 28 14:40:55`), formatted once a second.
#[derive(Default)]
struct LogClock {
    second: u64,
    text: String,
}

impl LogClock {
    fn now(&mut self) -> &str {
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = syslog_time(second);
        }
        &self.text
    }
}

fn syslog_time(unix_secs: u64) -> String {
    let t = libc::time_t::try_from(unix_secs).unwrap_or(0);
    // SAFETY: a zeroed tm is valid; localtime_r fills it from `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let mut buf = [0u8; 32];
    // SAFETY: valid pointers; strftime writes at most `buf.len()` bytes including the NUL.
    let n = unsafe {
        libc::localtime_r(&raw const t, &raw mut tm);
        libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%b %e %H:%M:%S".as_ptr(),
            &raw const tm,
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// What the clients are to send.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Rejections per second offered, all threads together; `None`: as fast as they can.
    pub rate: Option<f64>,
    /// RCPT lines per batch (one write each way).
    pub lines_per_batch: usize,
    /// Stop after this long...
    pub duration: Duration,
    /// ...or after this many lines (then round-robin gives every connection the same number).
    pub total: Option<u64>,
}

/// What they sent.
#[derive(Clone, Copy, Debug)]
pub struct Driven {
    /// Rejections received (one per RCPT sent).
    pub lines: u64,
    pub elapsed: Duration,
}

/// One connection per source address.
pub struct Clients {
    conns: Vec<TcpStream>,
    next_id: u64,
}

impl Clients {
    /// Connects from each of `sources` (in namespace `ns`) to `mx`:25 and reads the greetings.
    pub fn connect(ns: &str, sources: &[IpAddr], mx: IpAddr) -> Result<Self> {
        let dst = SocketAddr::new(mx, 25);
        let conns = in_netns(ns, || {
            sources
                .iter()
                .map(|&src| {
                    let stream = connect_from(src, dst, IO_TIMEOUT)
                        .with_context(|| format!("connecting from {src} to {dst}"))?;
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(IO_TIMEOUT))?;
                    stream.set_write_timeout(Some(IO_TIMEOUT))?;
                    Ok(stream)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let mut clients = Self { conns, next_id: 0 };
        for conn in &mut clients.conns {
            read_lines(conn, 1).context("reading the greeting")?;
        }
        Ok(clients)
    }

    /// Sends `load`, split between [`CLIENT_THREADS`] threads, each pacing itself.
    pub fn drive(&mut self, load: &Load) -> Result<Driven> {
        let threads = CLIENT_THREADS.min(self.conns.len()).max(1);
        let per_thread = self.conns.len().div_ceil(threads);
        let start = Instant::now();
        let first_id = self.next_id;
        let results: Vec<Result<u64>> = thread::scope(|s| {
            let handles: Vec<_> = self
                .conns
                .chunks_mut(per_thread)
                .enumerate()
                .map(|(i, conns)| {
                    #[expect(clippy::cast_precision_loss, reason = "a handful of threads")]
                    let share = conns.len() as f64 / (per_thread * threads) as f64;
                    let total = load.total.map(|t| {
                        #[expect(
                            clippy::cast_possible_truncation,
                            clippy::cast_sign_loss,
                            clippy::cast_precision_loss,
                            reason = "line counts are small"
                        )]
                        let mine = (t as f64 * share).round() as u64;
                        mine
                    });
                    let load = Load {
                        rate: load.rate.map(|r| r * share),
                        total,
                        ..*load
                    };
                    let ids = first_id + (i as u64) * 1_000_000_000;
                    s.spawn(move || pace(conns, &load, start, ids))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))
                })
                .collect()
        });
        let mut lines = 0;
        for result in results {
            lines += result?;
        }
        self.next_id += lines;
        Ok(Driven {
            lines,
            elapsed: start.elapsed(),
        })
    }
}

/// One client thread: batches on its connections in turn, as many at once as are due (at most
/// [`MAX_OUTSTANDING`]), each answered before the connection gets another.
fn pace(conns: &mut [TcpStream], load: &Load, start: Instant, first_id: u64) -> Result<u64> {
    cpu::renice_this_thread()?;
    let per_batch = load.lines_per_batch.max(1) as u64;
    let outstanding = MAX_OUTSTANDING.min(conns.len()).max(1);
    let mut sent = 0u64;
    let mut cursor = 0;
    let mut id = first_id;
    let mut batch = String::new();
    loop {
        if sys::interrupted() {
            bail!("interrupted");
        }
        let elapsed = start.elapsed();
        let left = match load.total {
            Some(total) => total.saturating_sub(sent),
            None if elapsed >= load.duration => 0,
            None => u64::MAX,
        };
        if left == 0 || elapsed >= load.duration + IO_TIMEOUT {
            return Ok(sent);
        }
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "line counts are small"
        )]
        let due = load
            .rate
            .map_or(u64::MAX, |r| (r * elapsed.as_secs_f64()) as u64);
        let batches = due.saturating_sub(sent).div_ceil(per_batch);
        let batches = usize::try_from(batches)
            .unwrap_or(usize::MAX)
            .min(outstanding)
            .min(usize::try_from(left.div_ceil(per_batch)).unwrap_or(usize::MAX));
        if batches == 0 {
            // Sleep until the next batch is due.
            #[expect(clippy::cast_precision_loss, reason = "line counts are small")]
            let next = Duration::from_secs_f64((sent + 1) as f64 / load.rate.unwrap_or(1.0));
            thread::sleep(next.saturating_sub(elapsed).min(Duration::from_millis(5)));
            continue;
        }
        let mut lines_in = Vec::with_capacity(batches);
        for k in 0..batches {
            let lines = per_batch.min(left - (k as u64) * per_batch);
            batch.clear();
            for _ in 0..lines {
                // At most 6 digits: 20 replies fit the classifier's scan window.
                let _ = write!(batch, "RCPT TO:<u{}@{DOMAIN}>\r\n", id % 1_000_000);
                id += 1;
            }
            let conn = &mut conns[(cursor + k) % conns.len()];
            conn.write_all(batch.as_bytes())
                .context("sending a batch")?;
            lines_in.push(lines);
        }
        for (k, &lines) in lines_in.iter().enumerate() {
            let conn = &mut conns[(cursor + k) % conns.len()];
            read_lines(conn, lines).context("reading the replies")?;
            sent += lines;
        }
        cursor = (cursor + batches) % conns.len();
    }
}

/// Reads until `lines` more line ends arrived.
fn read_lines(conn: &mut TcpStream, lines: u64) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    let mut seen = 0;
    while seen < lines {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        seen += bytecount(&buf[..n]);
    }
    Ok(())
}

/// Line ends in `bytes`.
fn bytecount(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| u64::from(b == b'\n')).sum()
}
