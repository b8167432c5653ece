//! The gate's blocklist maps behind [`BlockStore`].

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
};

use aya::maps::{Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use ipnet::IpNet;
use slammer_common::block::{BlockEntry, GateConfig, source};

use super::batch::{self, BatchError};
use crate::{
    addr::Target,
    blocklist::{BlockStore, DropCounters, ManyError, MapKind, StoreError},
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

fn batch_error(err: BatchError) -> ManyError {
    let source = if err.errno() == Some(libc::E2BIG) {
        StoreError::Full
    } else {
        StoreError::Syscall {
            call: err.call,
            source: err.source,
        }
    };
    ManyError {
        done: err.done,
        source,
    }
}

fn v4_key(target: &Target) -> [u8; 4] {
    match target {
        Target::Addr(IpAddr::V4(a)) => a.octets(),
        other => unreachable!("{other} is not an IPv4 address"),
    }
}

fn v6_key(target: &Target) -> [u8; 16] {
    match target {
        Target::Addr(IpAddr::V6(a)) => a.octets(),
        other => unreachable!("{other} is not an IPv6 address"),
    }
}

/// Puts `entries` (all of one address map) with one batch, or as many as needed.
fn put_batch<K: aya::Pod>(
    fd: BorrowedFd<'_>,
    entries: &[(Target, BlockEntry)],
    key: impl Fn(&Target) -> K,
) -> Result<(), ManyError> {
    let keys: Vec<K> = entries.iter().map(|(t, _)| key(t)).collect();
    let values: Vec<BlockEntry> = entries.iter().map(|(_, e)| *e).collect();
    batch::update(fd, &keys, &values).map_err(batch_error)
}

/// Deletes `targets` (all of one address map) in batches; a key already gone is skipped.
fn delete_batch<K: aya::Pod>(
    fd: BorrowedFd<'_>,
    targets: &[Target],
    key: impl Fn(&Target) -> K,
) -> Result<(), ManyError> {
    let keys: Vec<K> = targets.iter().map(key).collect();
    let mut start = 0;
    while start < keys.len() {
        match batch::delete(fd, &keys[start..]) {
            Ok(()) => return Ok(()),
            Err(err) if err.errno() == Some(libc::ENOENT) => start += err.done + 1,
            Err(err) => {
                let mut err = batch_error(err);
                err.done += start;
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Every entry of the address maps (a batch read each) and of the prefix tries.
fn all_entries(
    v4: BorrowedFd<'_>,
    v6: BorrowedFd<'_>,
    prefix_v4: &LpmTrie<MapData, [u8; 4], BlockEntry>,
    prefix_v6: &LpmTrie<MapData, [u8; 16], BlockEntry>,
) -> std::io::Result<Vec<(Target, BlockEntry)>> {
    let mut all: Vec<(Target, BlockEntry)> = batch::lookup_all::<[u8; 4], BlockEntry>(v4)?
        .into_iter()
        .map(|(k, v)| (Target::Addr(IpAddr::V4(Ipv4Addr::from(k))), v))
        .collect();
    all.extend(
        batch::lookup_all::<[u8; 16], BlockEntry>(v6)?
            .into_iter()
            .map(|(k, v)| (Target::Addr(IpAddr::V6(Ipv6Addr::from(k))), v)),
    );
    all.extend(
        prefix_v4
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some((prefix_target(k.prefix_len(), IpAddr::from(k.data()))?, v))),
    );
    all.extend(
        prefix_v6
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(k, v)| Some((prefix_target(k.prefix_len(), IpAddr::from(k.data()))?, v))),
    );
    Ok(all)
}

impl KernelStore {
    /// Every entry in the maps, for adopting blocks left by a previous daemon.
    pub fn entries(&self) -> std::io::Result<Vec<(Target, BlockEntry)>> {
        all_entries(
            self.v4.map().fd().as_fd(),
            self.v6.map().fd().as_fd(),
            &self.prefix_v4,
            &self.prefix_v6,
        )
    }

    /// A second handle on the blocklist maps, to read them without holding the daemon's lock.
    pub fn reader(&self) -> std::io::Result<StoreReader> {
        let dup = |map: &MapData| map.fd().as_fd().try_clone_to_owned();
        let trie = |map: &MapData| -> std::io::Result<MapData> {
            MapData::from_fd(dup(map)?).map_err(std::io::Error::other)
        };
        let trie_v4 = LpmTrie::try_from(Map::LpmTrie(trie(self.prefix_v4.map())?))
            .map_err(std::io::Error::other)?;
        let trie_v6 = LpmTrie::try_from(Map::LpmTrie(trie(self.prefix_v6.map())?))
            .map_err(std::io::Error::other)?;
        Ok(StoreReader {
            v4: dup(self.v4.map())?,
            v6: dup(self.v6.map())?,
            prefix_v4: trie_v4,
            prefix_v6: trie_v6,
        })
    }
}

/// Read-only handles on the blocklist maps ([`KernelStore::reader`]).
pub struct StoreReader {
    v4: OwnedFd,
    v6: OwnedFd,
    prefix_v4: LpmTrie<MapData, [u8; 4], BlockEntry>,
    prefix_v6: LpmTrie<MapData, [u8; 16], BlockEntry>,
}

impl StoreReader {
    /// The drop counters of every block, read in batches.
    pub fn drop_counters(&self) -> std::io::Result<DropCounters> {
        Ok(DropCounters::from_entries(all_entries(
            self.v4.as_fd(),
            self.v6.as_fd(),
            &self.prefix_v4,
            &self.prefix_v6,
        )?))
    }
}

impl KernelStore {
    /// Deletes the classifier's hold on `client` (see `slammer_common::hold`); a block of any
    /// other source in its place stays. Returns whether a hold was there.
    pub fn lift_hold(&mut self, client: IpAddr) -> Result<bool, StoreError> {
        let target = Target::Addr(client.to_canonical());
        if self.get(&target).is_none_or(|e| e.source != source::HOLD) {
            return Ok(false);
        }
        self.delete(&target)?;
        Ok(true)
    }

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

    fn put_many(&mut self, entries: &[(Target, BlockEntry)]) -> Result<(), ManyError> {
        match entries.first().map(|(t, _)| MapKind::of(t)) {
            None => Ok(()),
            Some(MapKind::AddrV4) => put_batch(self.v4.map().fd().as_fd(), entries, v4_key),
            Some(MapKind::AddrV6) => put_batch(self.v6.map().fd().as_fd(), entries, v6_key),
            // Prefixes are few (the tries have no batch operations): one at a time.
            Some(MapKind::PrefixV4 | MapKind::PrefixV6) => {
                for (done, (target, entry)) in entries.iter().enumerate() {
                    self.put(target, entry)
                        .map_err(|source| ManyError { done, source })?;
                }
                Ok(())
            }
        }
    }

    fn delete_many(&mut self, targets: &[Target]) -> Result<(), ManyError> {
        match targets.first().map(MapKind::of) {
            None => Ok(()),
            Some(MapKind::AddrV4) => delete_batch(self.v4.map().fd().as_fd(), targets, v4_key),
            Some(MapKind::AddrV6) => delete_batch(self.v6.map().fd().as_fd(), targets, v6_key),
            Some(MapKind::PrefixV4 | MapKind::PrefixV6) => {
                for (done, target) in targets.iter().enumerate() {
                    self.delete(target)
                        .map_err(|source| ManyError { done, source })?;
                }
                Ok(())
            }
        }
    }
}
