//! The pin dir: a bpffs folder holding the maps, locked by the daemon that uses it.

use std::{
    fs::{self, File},
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pin dir {path} is not on a bpf filesystem (mount one: mount -t bpf bpf {mount})")]
    NotBpffs { path: PathBuf, mount: PathBuf },
    #[error("pin dir {path} is in use by another slammer daemon")]
    Busy { path: PathBuf },
    #[error("cannot prepare pin dir {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A locked pin dir. The lock (an `flock` on the folder) is released when this is dropped or
/// the process dies, so a crashed daemon never leaves it stuck.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    _lock: File,
}

impl PinDir {
    /// Creates `path` if needed (mounting bpffs at /sys/fs/bpf when that is where it goes and
    /// nothing is mounted there yet) and locks it.
    pub fn lock(path: &Path) -> Result<Self, PinError> {
        let io_err = |source| PinError::Io {
            path: path.to_owned(),
            source,
        };
        let parent = path.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) && parent == Path::new("/sys/fs/bpf") {
            mount_bpffs(parent).map_err(io_err)?;
        }
        if !is_bpffs(parent) {
            return Err(PinError::NotBpffs {
                path: path.to_owned(),
                mount: parent.to_owned(),
            });
        }
        fs::create_dir_all(path).map_err(io_err)?;
        let lock = File::open(path).map_err(io_err)?;
        // SAFETY: valid fd for the lifetime of the call.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Err(PinError::Busy {
                    path: path.to_owned(),
                });
            }
            return Err(io_err(err));
        }
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-buffer.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and buffer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut buf) };
    #[expect(
        clippy::useless_conversion,
        reason = "f_type's width differs between libcs"
    )]
    let magic = i64::from(buf.f_type);
    rc == 0 && magic == BPF_FS_MAGIC
}

fn mount_bpffs(at: &Path) -> io::Result<()> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
