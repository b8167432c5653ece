//! Everything that touches the kernel: loading the embedded programs, pinning their maps,
//! attaching them to interfaces, and typed access to the maps.

mod attach;
mod batch;
mod counters;
mod holds;
mod pins;
mod store;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, RingBuf},
};
use slammer_common::{hold, names, scan::MAX_CODE};

pub use self::{
    attach::{AttachError, GateMode, Unpinned},
    counters::{Counters, read_counters},
    holds::{HOLD_TTL, Holds, Wakeups},
    pins::{PinDir, PinError},
    store::{KernelStore, StoreReader},
};

/// The programs, built by `build.rs` and embedded so the binary is self-contained.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/slammer"));

/// Maps pinned under the pin dir, so blocks and counters outlive the daemon process.
const PINNED_MAPS: [&str; 10] = [
    names::BLOCK_V4,
    names::BLOCK_V6,
    names::PREFIX_V4,
    names::PREFIX_V6,
    names::GATE_CONFIG,
    names::GATE_COUNTERS,
    names::REPLY_COUNTERS,
    names::SMTP_PORTS,
    names::REPLY_CODES,
    names::GREETINGS,
];
const CAPACITY_MAPS: [&str; 4] = [
    names::BLOCK_V4,
    names::BLOCK_V6,
    names::PREFIX_V4,
    names::PREFIX_V6,
];

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("cannot replace the incompatible pinned map {path}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the embedded eBPF object is unreadable")]
    Object(#[source] aya_obj::ParseError),
    #[error("cannot load the eBPF programs (kernel too old, or missing CAP_BPF/CAP_NET_ADMIN?)")]
    Load(#[source] aya::EbpfError),
    #[error("cannot verify and load program {program}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {map} is missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error("map {map} has an unexpected type")]
    MapType {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot write map {map}")]
    MapWrite {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Attach(#[from] AttachError),
}

/// What to load: where to pin, how large the blocklist may grow.
pub struct LoadOptions<'a> {
    pub pin_dir: &'a Path,
    pub capacity: u32,
}

/// The loaded programs and their maps. The links and maps are pinned, so dropping this (or the
/// daemon dying) leaves enforcement in place; [`detach`] turns everything off.
pub struct Kernel {
    ebpf: Ebpf,
    pins: PinDir,
    smtp_ports: HashMap<MapData, u16, u8>,
    reply_codes: Array<MapData, u8>,
    /// Whether the blocklist maps were created now (nothing pinned, or incompatible pins).
    fresh_maps: bool,
    /// Attachments that could not be pinned; they end with this value.
    unpinned: Vec<Unpinned>,
}

impl Kernel {
    /// Loads the programs into the kernel, reusing maps already pinned in `pin_dir` (their
    /// blocks survive a daemon restart) and pinning new ones.
    pub fn load(options: &LoadOptions<'_>) -> Result<Self, KernelError> {
        let pins = PinDir::lock(options.pin_dir)?;
        let fresh_maps = replace_incompatible_pins(pins.path(), options.capacity)?;
        let paths: Vec<(&str, PathBuf)> = PINNED_MAPS
            .iter()
            .map(|&name| (name, pins.path().join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for name in CAPACITY_MAPS {
            loader.map_max_entries(name, options.capacity);
        }
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(PROGRAMS).map_err(KernelError::Load)?;
        attach::load_programs(&mut ebpf)?;
        let smtp_ports = take_map(&mut ebpf, names::SMTP_PORTS)?;
        let reply_codes = take_map(&mut ebpf, names::REPLY_CODES)?;
        Ok(Self {
            ebpf,
            pins,
            smtp_ports,
            reply_codes,
            fresh_maps,
            unpinned: Vec::new(),
        })
    }

    /// Whether the blocklist maps are new: nothing was pinned, or what was pinned did not fit
    /// this build (then the state file is the only record of the blocks).
    pub fn fresh_maps(&self) -> bool {
        self.fresh_maps
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.path()
    }

    /// The loaded XDP gate, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn gate(&self) -> &aya::programs::Xdp {
        self.ebpf
            .program(names::GATE_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the embedded object has the XDP gate")
    }

    /// The loaded egress classifier.
    pub fn classifier(&self) -> &aya::programs::SchedClassifier {
        self.ebpf
            .program(names::REPLIES_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("the embedded object has the egress classifier")
    }

    /// Attaches the gate to the ingress and the classifier to the egress of `iface`, through
    /// pinned links (taking over the links a previous daemon left).
    pub fn attach(&mut self, iface: &str) -> Result<GateMode, KernelError> {
        let (mode, unpinned) = attach::attach(&mut self.ebpf, self.pins.path(), iface)?;
        self.unpinned.extend(unpinned);
        Ok(mode)
    }

    /// The blocklist maps, for the daemon's [`crate::blocklist::Blocklist`].
    pub fn take_store(&mut self) -> Result<KernelStore, KernelError> {
        Ok(KernelStore {
            v4: take_map(&mut self.ebpf, names::BLOCK_V4)?,
            v6: take_map(&mut self.ebpf, names::BLOCK_V6)?,
            prefix_v4: take_map(&mut self.ebpf, names::PREFIX_V4)?,
            prefix_v6: take_map(&mut self.ebpf, names::PREFIX_V6)?,
            config: take_map(&mut self.ebpf, names::GATE_CONFIG)?,
        })
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        take_map(&mut self.ebpf, names::REPLY_EVENTS)
    }

    pub fn take_holds(&mut self) -> Result<Holds, KernelError> {
        Ok(Holds {
            config: take_map(&mut self.ebpf, names::HOLD_CONFIG)?,
            counts: take_map(&mut self.ebpf, names::CLIENT_COUNTS)?,
            window_ns: 0,
        })
    }

    pub fn take_wakeups(&mut self) -> Result<Wakeups, KernelError> {
        Ok(Wakeups {
            map: take_map(&mut self.ebpf, names::EVENT_WAKEUPS)?,
        })
    }

    pub fn take_counters(&mut self) -> Result<Counters, KernelError> {
        Ok(Counters {
            gate: take_map(&mut self.ebpf, names::GATE_COUNTERS)?,
            replies: take_map(&mut self.ebpf, names::REPLY_COUNTERS)?,
        })
    }

    /// Sets the server ports whose replies are inspected.
    pub fn set_smtp_ports(&mut self, ports: &BTreeSet<u16>) -> Result<(), KernelError> {
        let write = |source| KernelError::MapWrite {
            map: names::SMTP_PORTS,
            source,
        };
        let stale: Vec<u16> = self
            .smtp_ports
            .keys()
            .filter_map(Result::ok)
            .filter(|p| !ports.contains(p))
            .collect();
        for port in ports {
            self.smtp_ports.insert(port, 1, 0).map_err(write)?;
        }
        for port in stale {
            self.smtp_ports.remove(&port).map_err(write)?;
        }
        Ok(())
    }

    /// Sets the reply codes the classifier reports, and of those the ones it counts towards a
    /// hold (the codes rules name).
    pub fn set_reply_codes(
        &mut self,
        reported: &BTreeSet<u16>,
        counted: &BTreeSet<u16>,
    ) -> Result<(), KernelError> {
        for code in 0..MAX_CODE {
            let code16 = u16::try_from(code).ok();
            let action = if code16.is_some_and(|c| counted.contains(&c)) {
                hold::code::COUNT
            } else if code16.is_some_and(|c| reported.contains(&c)) {
                hold::code::REPORT
            } else {
                hold::code::IGNORE
            };
            self.reply_codes
                .set(code, action, 0)
                .map_err(|source| KernelError::MapWrite {
                    map: names::REPLY_CODES,
                    source,
                })?;
        }
        Ok(())
    }
}

/// Removes pinned maps whose type, key, value or size does not match this build, so the loader
/// creates them anew instead of handing the programs a map they would misread. Returns whether
/// the blocklist maps will be new.
fn replace_incompatible_pins(pin_dir: &Path, capacity: u32) -> Result<bool, KernelError> {
    let object = aya_obj::Object::parse(PROGRAMS).map_err(KernelError::Object)?;
    let mut fresh = false;
    for name in PINNED_MAPS {
        let path = pin_dir.join(name);
        let Some(def) = object.maps.get(name) else {
            continue;
        };
        let expected_entries = if CAPACITY_MAPS.contains(&name) {
            capacity
        } else {
            def.max_entries()
        };
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            fresh |= CAPACITY_MAPS.contains(&name);
            continue;
        };
        let fits = info.key_size() == def.key_size()
            && info.value_size() == def.value_size()
            && info.max_entries() == expected_entries
            && info.map_type().is_ok_and(|t| t as u32 == def.map_type());
        if !fits {
            log::warn!(
                "pinned map {} does not fit this build (key {}, value {}, entries {}; want {}, {}, {}): replacing it",
                path.display(),
                info.key_size(),
                info.value_size(),
                info.max_entries(),
                def.key_size(),
                def.value_size(),
                expected_entries
            );
            std::fs::remove_file(&path).map_err(|source| KernelError::Unpin {
                path: path.clone(),
                source,
            })?;
            fresh |= CAPACITY_MAPS.contains(&name);
        }
    }
    Ok(fresh)
}

#[derive(Debug, thiserror::Error)]
pub enum DetachError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Turns slammer off: removes the pinned links (detaching the programs) and the pinned maps
/// (dropping the blocks). Refused while a daemon holds the pin dir. Returns what was removed.
pub fn detach(pin_dir: &Path) -> Result<Vec<PathBuf>, DetachError> {
    if !pin_dir.exists() {
        return Ok(Vec::new());
    }
    let pins = PinDir::lock(pin_dir)?;
    let mut removed = Vec::new();
    let entries = std::fs::read_dir(pins.path()).map_err(|source| DetachError::Remove {
        path: pin_dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        std::fs::remove_file(&path).map_err(|source| DetachError::Remove {
            path: path.clone(),
            source,
        })?;
        removed.push(path);
    }
    drop(pins);
    std::fs::remove_dir(pin_dir).map_err(|source| DetachError::Remove {
        path: pin_dir.to_owned(),
        source,
    })?;
    removed.sort();
    Ok(removed)
}

fn take_map<T>(ebpf: &mut Ebpf, map: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let raw = ebpf.take_map(map).ok_or(KernelError::MissingMap { map })?;
    T::try_from(raw).map_err(|source| KernelError::MapType { map, source })
}
