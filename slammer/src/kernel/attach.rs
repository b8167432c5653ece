//! Loading the two programs and attaching them to an interface through pinned links.
//!
//! Each attachment is a `bpf_link` pinned in the pin dir (`link_xdp_<iface>`, `link_tc_<iface>`),
//! so it outlives the daemon: enforcement goes on while the daemon is stopped, restarted or
//! upgraded. A starting daemon finds the pinned link and swaps its own program into it with one
//! `bpf_link_update`, so there is no moment without a gate.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use slammer_common::names;

use super::KernelError;

/// How the gate ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateMode {
    /// In the driver, before an skb exists: the cheap path.
    Driver,
    /// Generic XDP, for drivers without native support.
    Skb,
    /// The pinned link of a previous daemon, now running this daemon's program.
    Kept,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("interface {iface} does not exist")]
    NoSuchInterface { iface: String },
    #[error("cannot attach the XDP gate to {iface}")]
    Gate {
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot attach the egress classifier to {iface}")]
    Classifier {
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot pin the link of {iface} at {path}")]
    Pin {
        iface: String,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

pub(super) fn load_programs(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    let program = |source| KernelError::Program {
        program: names::GATE_PROGRAM,
        source,
    };
    gate(ebpf).load().map_err(program)?;
    let program = |source| KernelError::Program {
        program: names::REPLIES_PROGRAM,
        source,
    };
    classifier(ebpf).load().map_err(program)
}

pub(super) fn gate(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(names::GATE_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the XDP gate")
}

pub(super) fn classifier(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    ebpf.program_mut(names::REPLIES_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the egress classifier")
}

pub fn xdp_link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_xdp_{iface}"))
}

pub fn tc_link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link_tc_{iface}"))
}

/// An attachment that is not a pinnable link (netlink XDP or clsact on old kernels): it ends
/// with the daemon.
pub enum Unpinned {
    Xdp(aya::programs::xdp::XdpLink),
    Tc(aya::programs::tc::SchedClassifierLink),
}

/// Pins `link` at `path`; from then on it outlives the daemon.
fn pin_link(link: FdLink, path: &Path, iface: &str) -> Result<(), AttachError> {
    link.pin(path).map(drop).map_err(|source| AttachError::Pin {
        iface: iface.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// Opens the pinned link at `path`, if one is there.
fn pinned(path: &Path) -> Option<FdLink> {
    PinnedLink::from_pin(path).ok().map(FdLink::from)
}

/// Attaches both programs to `iface`; returns the gate's mode and any attachment that could not
/// be pinned (keep it alive as long as the daemon runs).
pub(super) fn attach(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    iface: &str,
) -> Result<(GateMode, Vec<Unpinned>), AttachError> {
    if crate::netinfo::if_index(iface).is_none() {
        return Err(AttachError::NoSuchInterface {
            iface: iface.to_owned(),
        });
    }
    let mut unpinned = Vec::new();
    let mode = attach_gate(ebpf, pin_dir, iface, &mut unpinned)?;
    attach_classifier(ebpf, pin_dir, iface, &mut unpinned)?;
    Ok((mode, unpinned))
}

fn attach_gate(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    iface: &str,
    unpinned: &mut Vec<Unpinned>,
) -> Result<GateMode, AttachError> {
    let pin = xdp_link_pin(pin_dir, iface);
    if let Some(old) = pinned(&pin) {
        let swapped = aya::programs::xdp::XdpLink::try_from(old)
            .map_err(|e| e.to_string())
            .and_then(|link| gate(ebpf).attach_to_link(link).map_err(|e| e.to_string()));
        match swapped {
            Ok(id) => {
                // Dropping our handle closes an fd; the pin keeps the link and the program.
                let _ = gate(ebpf).take_link(id);
                return Ok(GateMode::Kept);
            }
            Err(err) => {
                log::warn!("{iface}: pinned XDP link unusable ({err}); attaching anew");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let gate_err = |source| AttachError::Gate {
        iface: iface.to_owned(),
        source,
    };
    let (id, mode, xdp_mode) = match gate(ebpf).attach(iface, XdpMode::Driver) {
        Ok(id) => (id, GateMode::Driver, XdpMode::Driver),
        Err(err) => {
            log::info!("{iface}: native XDP unavailable ({err}), using generic (skb) mode");
            let id = gate(ebpf).attach(iface, XdpMode::Skb).map_err(gate_err)?;
            (id, GateMode::Skb, XdpMode::Skb)
        }
    };
    let link = gate(ebpf).take_link(id).map_err(gate_err)?;
    match FdLink::try_from(link) {
        Ok(fd_link) => {
            pin_link(fd_link, &pin, iface)?;
        }
        Err(err) => {
            log::warn!(
                "{iface}: the XDP attachment is not a bpf_link ({err}); it ends with the daemon"
            );
            // The conversion consumed the link; attach again and keep it owned.
            let id = gate(ebpf).attach(iface, xdp_mode).map_err(gate_err)?;
            unpinned.push(Unpinned::Xdp(gate(ebpf).take_link(id).map_err(gate_err)?));
        }
    }
    Ok(mode)
}

fn attach_classifier(
    ebpf: &mut Ebpf,
    pin_dir: &Path,
    iface: &str,
    unpinned: &mut Vec<Unpinned>,
) -> Result<(), AttachError> {
    let pin = tc_link_pin(pin_dir, iface);
    let tc_err = |source| AttachError::Classifier {
        iface: iface.to_owned(),
        source,
    };
    if let Some(old) = pinned(&pin) {
        let swapped = aya::programs::tc::SchedClassifierLink::try_from(old)
            .map_err(|e| e.to_string())
            .and_then(|link| {
                classifier(ebpf)
                    .attach_to_link(link)
                    .map_err(|e| e.to_string())
            });
        match swapped {
            Ok(id) => {
                let _ = classifier(ebpf).take_link(id);
                return Ok(());
            }
            Err(err) => {
                log::warn!("{iface}: pinned TC link unusable ({err}); attaching anew");
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    // TCX on kernels that have it (aya picks it from 6.6 on): a pinnable link.
    match classifier(ebpf).attach(iface, TcAttachType::Egress) {
        Ok(id) => {
            let link = classifier(ebpf).take_link(id).map_err(tc_err)?;
            match FdLink::try_from(link) {
                Ok(fd_link) => pin_link(fd_link, &pin, iface)?,
                Err(err) => log::warn!("{iface}: TC attachment is not a bpf_link ({err})"),
            }
        }
        Err(err) => {
            log::info!("{iface}: TCX attach failed ({err}), falling back to clsact");
            if let Err(e) = tc::qdisc_add_clsact(iface) {
                log::debug!("{iface}: clsact qdisc: {e} (may exist already)");
            }
            let id = classifier(ebpf)
                .attach_with_options(
                    iface,
                    TcAttachType::Egress,
                    TcAttachOptions::Netlink(NlOptions::default()),
                )
                .map_err(tc_err)?;
            unpinned.push(Unpinned::Tc(
                classifier(ebpf).take_link(id).map_err(tc_err)?,
            ));
        }
    }
    Ok(())
}
