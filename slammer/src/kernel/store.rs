//! The gate's blocklist maps behind [`BlockStore`].

use std::net::IpAddr;

use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, lpm_trie::Key};
use ipnet::IpNet;
use slammer_common::block::{BlockEntry, GateConfig};

use crate::{
    addr::Target,
    blocklist::{BlockStore, StoreError},
};

pub struct KernelStore {
    pub(super) v4: HashMap<MapData, [u8; 4], BlockEntry>,
    pub(super) v6: HashMap<MapData, [u8; 16], BlockEntry>,
    pub(super) prefix_v4: LpmTrie<MapData, [u8; 4], BlockEntry>,
    pub(super) prefix_v6: LpmTrie<MapData, [u8; 16], BlockEntry>,
    pub(super) config: Array<MapData, GateConfig>,
}

fn store_error(call: &'static str, err: MapError) -> StoreError {
    match err {
        MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG) => {
            StoreError::Full
        }
        MapError::SyscallError(e) => StoreError::Syscall {
            call,
            source: e.io_error,
        },
        other => StoreError::Syscall {
            call,
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// The target of a trie key; `None` for a key no daemon would have written.
fn prefix_target(prefix_len: u32, addr: IpAddr) -> Option<Target> {
    let len = u8::try_from(prefix_len).ok()?;
    Target::new_prefix(IpNet::new(addr, len).ok()?).ok()
}

fn prefix_len(net: &IpNet) -> u32 {
    u32::from(net.prefix_len())
}

impl KernelStore {
    /// Every entry in the maps, for adopting blocks left by a previous daemon.
    pub fn entries(&self) -> Vec<(Target, BlockEntry)> {
        let mut all = Vec::new();
        all.extend(
            self.v4
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (Target::Addr(IpAddr::from(k)), v)),
        );
        all.extend(
            self.v6
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (Target::Addr(IpAddr::from(k)), v)),
        );
        all.extend(
            self.prefix_v4
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(k, v)| {
                    Some((prefix_target(k.prefix_len(), IpAddr::from(k.data()))?, v))
                }),
        );
        all.extend(
            self.prefix_v6
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(k, v)| {
                    Some((prefix_target(k.prefix_len(), IpAddr::from(k.data()))?, v))
                }),
        );
        all
    }
}

impl KernelStore {
    /// Observe mode: the gate counts matches instead of dropping them.
    pub fn set_observe(&mut self, observe: bool) -> Result<(), StoreError> {
        self.update_config(|c| c.observe = u32::from(observe))
    }

    fn update_config(&mut self, change: impl FnOnce(&mut GateConfig)) -> Result<(), StoreError> {
        let mut config = self.config.get(&0, 0).unwrap_or_default();
        change(&mut config);
        self.config
            .set(0, config, 0)
            .map_err(|e| store_error("bpf_map_update_elem", e))
    }
}

impl BlockStore for KernelStore {
    fn put(&mut self, target: &Target, entry: &BlockEntry) -> Result<(), StoreError> {
        let res = match target {
            Target::Addr(IpAddr::V4(a)) => self.v4.insert(a.octets(), entry, 0),
            Target::Addr(IpAddr::V6(a)) => self.v6.insert(a.octets(), entry, 0),
            Target::Prefix(net @ IpNet::V4(n)) => {
                self.prefix_v4
                    .insert(&Key::new(prefix_len(net), n.addr().octets()), entry, 0)
            }
            Target::Prefix(net @ IpNet::V6(n)) => {
                self.prefix_v6
                    .insert(&Key::new(prefix_len(net), n.addr().octets()), entry, 0)
            }
        };
        res.map_err(|e| store_error("bpf_map_update_elem", e))
    }

    fn get(&self, target: &Target) -> Option<BlockEntry> {
        match target {
            Target::Addr(IpAddr::V4(a)) => self.v4.get(&a.octets(), 0),
            Target::Addr(IpAddr::V6(a)) => self.v6.get(&a.octets(), 0),
            Target::Prefix(net @ IpNet::V4(n)) => self
                .prefix_v4
                .get(&Key::new(prefix_len(net), n.addr().octets()), 0),
            Target::Prefix(net @ IpNet::V6(n)) => self
                .prefix_v6
                .get(&Key::new(prefix_len(net), n.addr().octets()), 0),
        }
        .ok()
    }

    fn delete(&mut self, target: &Target) -> Result<(), StoreError> {
        let res = match target {
            Target::Addr(IpAddr::V4(a)) => self.v4.remove(&a.octets()),
            Target::Addr(IpAddr::V6(a)) => self.v6.remove(&a.octets()),
            Target::Prefix(net @ IpNet::V4(n)) => self
                .prefix_v4
                .remove(&Key::new(prefix_len(net), n.addr().octets())),
            Target::Prefix(net @ IpNet::V6(n)) => self
                .prefix_v6
                .remove(&Key::new(prefix_len(net), n.addr().octets())),
        };
        match res {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(e) => Err(store_error("bpf_map_delete_elem", e)),
        }
    }

    fn set_prefix_counts(&mut self, v4: u32, v6: u32) -> Result<(), StoreError> {
        self.update_config(|c| {
            c.v4_prefixes = v4;
            c.v6_prefixes = v6;
        })
    }
}
