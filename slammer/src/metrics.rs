//! Prometheus metrics on `--metrics ADDR`, path `/metrics`, every name prefixed `slammer_`.
//!
//! Counters are read when scraped (kernel per-CPU counters summed, the engine's own counts), so
//! a scrape costs a few map lookups and nothing is counted twice.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Everything a scrape reports, taken under the daemon's lock in one go.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub gate: BTreeMap<&'static str, u64>,
    pub replies: BTreeMap<&'static str, u64>,
    pub engine: crate::engine::EngineStats,
    pub tracked_clients: u64,
    pub known_good_clients: u64,
    pub log_lines: u64,
    pub log_unparseable: u64,
    pub log_errors: u64,
    /// `None` when not in a fleet.
    pub fleet: Option<crate::fleet::FleetStats>,
    pub blocked_addresses: u64,
    pub blocked_prefixes: u64,
}

/// Produces a [`Snapshot`] on demand.
pub type SnapshotFn = Arc<dyn Fn() -> Snapshot + Send + Sync>;

struct SlammerCollector(SnapshotFn);

impl fmt::Debug for SlammerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SlammerCollector")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn labelled(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, u64)>,
) -> fmt::Result {
    let mut family =
        e.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (value, n) in values {
        let labels = [(label.to_owned(), value)];
        ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for SlammerCollector {
    #[expect(clippy::too_many_lines, reason = "one statement per metric family")]
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let s = (self.0)();
        let st = &s.engine;
        counter(
            &mut e,
            "replies_inspected",
            "TCP segments from SMTP ports scanned by the egress classifier",
            s.replies["segments_inspected"],
        )?;
        counter(
            &mut e,
            "replies_seen",
            "SMTP replies seen leaving the host",
            s.replies["replies_seen"],
        )?;
        labelled(
            &mut e,
            "rejections_matched",
            "Replies whose code is in the reported set, by code",
            "code",
            st.replies_by_code.iter().map(|(c, n)| (c.to_string(), *n)),
        )?;
        labelled(
            &mut e,
            "offenses",
            "Replies that matched a rule, by rule",
            "pattern",
            st.offenses_by_rule.iter().map(|(r, n)| (r.clone(), *n)),
        )?;
        labelled(
            &mut e,
            "offenses_by_source",
            "Offenses by where they were seen: wire (egress classifier) or log (inside TLS)",
            "source",
            [
                ("wire".to_owned(), st.offenses_wire),
                ("log".to_owned(), st.offenses_log),
            ],
        )?;
        counter(
            &mut e,
            "allowlisted_offenses",
            "Offenses by allowlisted clients (never blocked)",
            st.allowlisted_offenses,
        )?;
        labelled(
            &mut e,
            "blocks",
            "Blocks applied, by source",
            "source",
            [
                ("auto".to_owned(), st.auto_blocks),
                ("manual".to_owned(), st.manual_blocks),
            ],
        )?;
        labelled(
            &mut e,
            "unblocks",
            "Blocks removed, by cause",
            "cause",
            [
                ("expired".to_owned(), st.unblocks_expired),
                ("manual".to_owned(), st.unblocks_manual),
            ],
        )?;
        counter(
            &mut e,
            "blocks_refused_full",
            "Blocks refused because the blocklist was full",
            st.blocks_refused_full,
        )?;
        labelled(
            &mut e,
            "holds",
            "Holds of the egress classifier (a client's threshold-th rejection, blocked before \
             the reply left), by what became of them",
            "outcome",
            [
                ("placed".to_owned(), s.replies["holds_placed"]),
                ("confirmed".to_owned(), st.holds_confirmed),
                ("lifted".to_owned(), st.holds_lifted),
            ],
        )?;
        counter(
            &mut e,
            "sessions_destroyed",
            "Open SMTP sessions of blocked clients ended at block time",
            st.sessions_destroyed,
        )?;
        counter(
            &mut e,
            "prefix_blocks",
            "Prefixes blocked because several of their addresses offended",
            st.prefix_blocks,
        )?;
        counter(
            &mut e,
            "dropped_packets",
            "Packets dropped by the XDP gate",
            s.gate["dropped_packets"],
        )?;
        counter(
            &mut e,
            "dropped_bytes",
            "Bytes dropped by the XDP gate",
            s.gate["dropped_bytes"],
        )?;
        counter(
            &mut e,
            "passed_packets",
            "Packets the XDP gate let through",
            s.gate["passed_packets"],
        )?;
        counter(
            &mut e,
            "observed_packets",
            "Packets of blocked sources passed because of observe mode",
            s.gate["observed_packets"],
        )?;
        counter(
            &mut e,
            "gate_parse_errors",
            "Frames whose headers ended early (passed)",
            s.gate["parse_errors"],
        )?;
        counter(
            &mut e,
            "ringbuf_drops",
            "Reply events lost because the ring buffer was full",
            s.replies["ringbuf_full"],
        )?;
        counter(
            &mut e,
            "tls_blind_sessions",
            "SMTP sessions that switched to TLS (replies not visible)",
            s.replies["tls_sessions"],
        )?;
        counter(
            &mut e,
            "truncated_scans",
            "Segments longer than the scan window",
            s.replies["truncated_scans"],
        )?;
        gauge(
            &mut e,
            "blocked_addresses",
            "Addresses blocked now",
            s.blocked_addresses,
        )?;
        gauge(
            &mut e,
            "blocked_prefixes",
            "Prefixes blocked now",
            s.blocked_prefixes,
        )?;
        counter(
            &mut e,
            "log_lines_read",
            "Lines read from the MTA's logs",
            s.log_lines,
        )?;
        counter(
            &mut e,
            "log_lines_unparseable",
            "Log lines not in the configured MTA's format",
            s.log_unparseable,
        )?;
        counter(
            &mut e,
            "log_read_errors",
            "Log read errors, missing files, journal restarts",
            s.log_errors,
        )?;
        if let Some(f) = &s.fleet {
            gauge(
                &mut e,
                "fleet_connected",
                "1 while connected and synced with the fleet's Redis",
                u64::from(f.connected),
            )?;
            gauge(
                &mut e,
                "fleet_lag_ms",
                "Delay of the last block or unblock received from the fleet",
                f.last_lag_ms,
            )?;
            gauge(
                &mut e,
                "fleet_queued",
                "Blocks and unblocks waiting for Redis",
                f.queued,
            )?;
            counter(
                &mut e,
                "fleet_published",
                "Blocks and unblocks announced to the fleet",
                f.published,
            )?;
            counter(
                &mut e,
                "fleet_received",
                "Blocks and unblocks received from other nodes",
                f.received,
            )?;
            counter(
                &mut e,
                "fleet_errors",
                "Failed Redis operations, timeouts, malformed messages",
                f.errors,
            )?;
            counter(
                &mut e,
                "fleet_dropped",
                "Changes not announced because the queue was full",
                f.dropped,
            )?;
            counter(
                &mut e,
                "fleet_reconnects",
                "Connections to Redis made again after a loss",
                f.reconnects,
            )?;
        }
        gauge(
            &mut e,
            "tracked_clients",
            "Clients the offense tracker holds",
            s.tracked_clients,
        )?;
        gauge(
            &mut e,
            "known_good_clients",
            "Senders with a message accepted recently (higher threshold)",
            s.known_good_clients,
        )?;
        let held = ConstGauge::new(Duration::from_micros(st.sweep_lock_max_us).as_secs_f64());
        held.encode(e.encode_descriptor(
            "sweep_lock_max_seconds",
            "Longest time one step of the sweeper held the daemon's lock (events wait meanwhile)",
            None,
            held.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The registry and the live metrics the daemon updates.
pub struct Metrics {
    registry: Registry,
    /// Seconds from a rejection leaving the host to the resulting block being in the map.
    pub block_latency: Histogram,
}

impl Metrics {
    pub fn new(snapshot: SnapshotFn) -> Self {
        let mut registry = Registry::with_prefix("slammer");
        registry.register_collector(Box::new(SlammerCollector(snapshot)));
        // 10 us .. ~5 s.
        let block_latency = Histogram::new(exponential_buckets(0.000_01, 2.5, 15));
        registry.register(
            "block_latency_seconds",
            "Time from the threshold-th rejection leaving the host to the block being in the map",
            block_latency.clone(),
        );
        Self {
            registry,
            block_latency,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped. A deliberately small HTTP/1.0
/// responder: one request per connection, no keep-alive.
pub async fn serve(listener: TcpListener, metrics: Arc<Mutex<Metrics>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read up to the end of the request head (or 4 KiB).
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(0) | Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let response = if head.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                let body = metrics
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .render();
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.0 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n".to_owned()
            };
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

/// Binds the metrics listener (before anything is attached, so a taken port fails early).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for metrics on {addr}: {e}"))
}
