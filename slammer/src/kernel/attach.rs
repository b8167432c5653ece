//! Loading the two programs and attaching them to an interface.

use aya::{
    Ebpf,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
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

fn gate(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(names::GATE_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the XDP gate")
}

fn classifier(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    ebpf.program_mut(names::REPLIES_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .expect("the embedded object has the egress classifier")
}

pub(super) fn attach(ebpf: &mut Ebpf, iface: &str) -> Result<GateMode, AttachError> {
    if crate::netinfo::if_index(iface).is_none() {
        return Err(AttachError::NoSuchInterface {
            iface: iface.to_owned(),
        });
    }
    let mode = match gate(ebpf).attach(iface, XdpMode::Driver) {
        Ok(_) => GateMode::Driver,
        Err(err) => {
            log::info!("{iface}: native XDP unavailable ({err}), using generic (skb) mode");
            gate(ebpf)
                .attach(iface, XdpMode::Skb)
                .map_err(|source| AttachError::Gate {
                    iface: iface.to_owned(),
                    source,
                })?;
            GateMode::Skb
        }
    };
    // TCX on kernels that have it (aya picks it from 6.6 on), else clsact.
    if let Err(err) = classifier(ebpf).attach(iface, TcAttachType::Egress) {
        log::info!("{iface}: TCX attach failed ({err}), falling back to clsact");
        if let Err(e) = tc::qdisc_add_clsact(iface) {
            log::debug!("{iface}: clsact qdisc: {e} (may exist already)");
        }
        classifier(ebpf)
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .map_err(|source| AttachError::Classifier {
                iface: iface.to_owned(),
                source,
            })?;
    }
    Ok(mode)
}
