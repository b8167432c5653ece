//! Calls into the integration tests' harness (`tests` crate), whose guards panic on failure as
//! privileged tests do, turned into errors so that a part fails cleanly and the others still run.

use std::panic::{self, AssertUnwindSafe};

use anyhow::{Result, anyhow};

/// Runs `f`; a panic becomes an error `what: <panic message>`. The guards `f` made before it
/// panicked have been dropped (cleaned up) by then.
pub fn call<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        anyhow!("{what}: {message}")
    })
}
