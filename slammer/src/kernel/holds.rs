//! The daemon's handles on the classifier's holds (see `slammer_common::hold`): its settings,
//! the per-client counts it keeps, and whether records wake the daemon.

use std::{net::IpAddr, time::Duration};

use aya::maps::{Array, HashMap, MapData};
use slammer_common::{
    event::family,
    hold::{self, ClientCount, ClientKey, HoldConfig, wakeups},
    names,
};

use super::KernelError;

/// How long a hold lasts when the daemon never answers it (it is down), unless blocks last less.
/// A running daemon replaces or lifts a hold within a wake-up; a stopped one leaves the kernel
/// blocking the slammers it counted, for this long each.
pub const HOLD_TTL: Duration = Duration::from_mins(1);

/// Settings and per-client counts of holds.
pub struct Holds {
    pub(super) config: Array<MapData, HoldConfig>,
    pub(super) counts: HashMap<MapData, ClientKey, ClientCount>,
    /// The window last configured.
    pub(super) window_ns: u64,
}

/// Whether a ring-buffer record wakes the daemon; owned by the daemon's event reader.
pub struct Wakeups {
    pub(super) map: Array<MapData, u32>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn write_error(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> KernelError {
    move |source| KernelError::MapWrite { map, source }
}

/// A client as the classifier keys it.
pub fn client_key(client: IpAddr) -> ClientKey {
    let (addr, fam) = match client.to_canonical() {
        IpAddr::V4(a) => {
            let mut addr = [0; 16];
            addr[..4].copy_from_slice(&a.octets());
            (addr, family::V4)
        }
        IpAddr::V6(a) => (a.octets(), family::V6),
    };
    ClientKey {
        addr,
        family: fam,
        _pad: [0; 3],
    }
}

impl Holds {
    /// Holds at `threshold` counted replies within `window` (0 turns holds off), for
    /// [`HOLD_TTL`] or the blocks' `ttl` if that is shorter.
    pub fn configure(
        &mut self,
        threshold: u32,
        window: Duration,
        ttl: Duration,
    ) -> Result<(), KernelError> {
        let config = HoldConfig {
            window_ns: nanos(window),
            hold_ns: nanos(ttl.min(HOLD_TTL)),
            threshold,
            _pad: 0,
        };
        self.config
            .set(0, config, 0)
            .map_err(write_error(names::HOLD_CONFIG))?;
        self.window_ns = config.window_ns;
        Ok(())
    }

    /// Replaces the classifier's count of `client` with the daemon's.
    pub fn set_count(&mut self, client: IpAddr, count: ClientCount) -> Result<(), KernelError> {
        self.counts
            .insert(client_key(client), count, 0)
            .map_err(write_error(names::CLIENT_COUNTS))
    }

    /// Raises the classifier's count of `client` to the daemon's `count`, which holds offenses
    /// the classifier cannot see (from the MTA's log); a higher count of its own stays.
    pub fn raise_count(&mut self, client: IpAddr, count: ClientCount) -> Result<(), KernelError> {
        if self.count(client).is_some_and(|own| {
            own.count >= count.count && hold::continues(&own, count.last_ns, self.window_ns)
        }) {
            return Ok(());
        }
        self.set_count(client, count)
    }

    /// Forgets `client`: its next counted reply starts a new count.
    pub fn forget(&mut self, client: IpAddr) {
        // Absent already is fine; anything else leaves the count to restart after a window.
        let _ = self.counts.remove(&client_key(client));
    }

    /// The classifier's count of `client`, if it has one.
    pub fn count(&self, client: IpAddr) -> Option<ClientCount> {
        self.counts.get(&client_key(client), 0).ok()
    }
}

impl Wakeups {
    /// `true`: the daemon drains on its own clock and only holds wake it.
    pub fn set_batching(&mut self, batching: bool) -> Result<(), KernelError> {
        let value = if batching {
            wakeups::HOLDS_ONLY
        } else {
            wakeups::EACH
        };
        self.map
            .set(0, value, 0)
            .map_err(write_error(names::EVENT_WAKEUPS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_clients_as_the_classifier_does() {
        let v4 = client_key("192.0.2.7".parse().unwrap());
        assert_eq!((v4.family, &v4.addr[..5]), (4, &[192, 0, 2, 7, 0][..]));
        let mapped = client_key("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(mapped, v4, "an IPv4-mapped client is the IPv4 one");
        let v6 = client_key("2001:db8::1".parse().unwrap());
        assert_eq!((v6.family, v6.addr[15]), (6, 1));
    }
}
