//! Empty library target: `slammer`'s build script depends on this crate so cargo rebuilds the
//! embedded programs when they change; the programs themselves are the `slammer` binary target.
#![no_std]
