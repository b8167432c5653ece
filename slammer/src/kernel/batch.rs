//! Batched map operations (`BPF_MAP_UPDATE_BATCH`, `BPF_MAP_DELETE_BATCH`,
//! `BPF_MAP_LOOKUP_BATCH`), which aya 0.14 does not wrap: one syscall moves thousands of entries,
//! where the one-entry calls cost a syscall each (restoring or listing a million blocks).
//!
//! The kernel applies a batch in order and stops at the first entry that fails, reporting how many
//! it applied; [`BatchError::done`] carries that count so callers can skip or retry the failed one.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries per lookup call: large enough that a million entries take a few hundred calls.
const LOOKUP_CHUNK: u32 = 8192;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}
const _: () = assert!(size_of::<BatchAttr>() == 56);

/// A batch that stopped early: the first `done` entries were applied, entry `done` failed.
#[derive(Debug, thiserror::Error)]
#[error("{call} stopped after {done} entries")]
pub struct BatchError {
    pub call: &'static str,
    pub done: usize,
    #[source]
    pub source: io::Error,
}

impl BatchError {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; every pointer in it refers
    // to a buffer of the size `count` and the map's key and value sizes require.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn map_fd(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("file descriptors are not negative")
}

fn count(len: usize) -> u32 {
    u32::try_from(len).expect("batches are cut to u32 sizes")
}

/// Inserts or replaces `keys[i]` with `values[i]`, in order. `K` and `V` must be the map's key
/// and value types.
pub fn update<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut done = 0;
    // The count is a u32; cut absurdly large slices rather than overflow it.
    for (keys, values) in keys.chunks(1 << 20).zip(values.chunks(1 << 20)) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: count(keys.len()),
            map_fd: map_fd(fd),
            ..BatchAttr::default()
        };
        let res = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        let applied = attr.count as usize;
        if let Err(source) = res {
            return Err(BatchError {
                call: "BPF_MAP_UPDATE_BATCH",
                done: done + applied,
                source,
            });
        }
        done += applied;
    }
    Ok(())
}

/// Deletes `keys`, in order. A key that is not in the map stops the batch with `ENOENT`.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> Result<(), BatchError> {
    let mut done = 0;
    for keys in keys.chunks(1 << 20) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count: count(keys.len()),
            map_fd: map_fd(fd),
            ..BatchAttr::default()
        };
        let res = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let applied = attr.count as usize;
        if let Err(source) = res {
            return Err(BatchError {
                call: "BPF_MAP_DELETE_BATCH",
                done: done + applied,
                source,
            });
        }
        done += applied;
    }
    Ok(())
}

/// Every entry of a hash map, read a few thousand per call. Entries added or removed meanwhile
/// may or may not be seen, as with any walk of a live map.
pub fn lookup_all<K: Pod, V: Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut all = Vec::new();
    let mut chunk = LOOKUP_CHUNK as usize;
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    // The position token is opaque (a bucket index for hash maps); 8 bytes hold it.
    let mut position = [0u64; 2];
    let mut next = [0u64; 2];
    let mut first = true;
    loop {
        keys.resize_with(chunk, MaybeUninit::uninit);
        values.resize_with(chunk, MaybeUninit::uninit);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { position.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: count(chunk),
            map_fd: map_fd(fd),
            ..BatchAttr::default()
        };
        let res = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let filled = (attr.count as usize).min(chunk);
        let finished = match res {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            // One bucket holds more entries than fit: retry the same position with more room.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && filled == 0 => {
                chunk *= 2;
                continue;
            }
            Err(e) => return Err(e),
        };
        for (k, v) in keys.iter().zip(&values).take(filled) {
            // SAFETY: the kernel filled the first `filled` slots, and Pod types are valid for
            // any bytes.
            all.push(unsafe { (k.assume_init(), v.assume_init()) });
        }
        if finished {
            return Ok(all);
        }
        position = next;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layout_matches_the_kernel() {
        // offsetof(union bpf_attr, batch.count) is 32 and map_fd follows it.
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(std::mem::offset_of!(BatchAttr, elem_flags), 40);
    }
}
