//! The engine's own rayon pool: sized by `SHFCAS_NUM_THREADS`, rebuilt after `fork`.
//!
//! A forked child inherits the parent's memory but none of its threads, so a pool built before the
//! fork would wait forever for workers that do not exist. The pool is therefore keyed by process id
//! and rebuilt on first use in a new process (data loaders and `datasets.map(num_proc=...)` fork).

use std::sync::{Arc, Mutex};

use rayon::{ThreadPool, ThreadPoolBuilder};

pub const THREADS_ENV: &str = "SHFCAS_NUM_THREADS";

static POOL: Mutex<Option<(u32, Arc<ThreadPool>)>> = Mutex::new(None);

/// Threads requested by `SHFCAS_NUM_THREADS`, or all cores when unset.
pub fn requested_threads() -> Result<usize, String> {
    match std::env::var(THREADS_ENV) {
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{THREADS_ENV}={text:?} is not a positive integer")),
        },
        Err(std::env::VarError::NotPresent) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Err(err) => Err(format!("{THREADS_ENV} is unreadable: {err}")),
    }
}

/// The pool of this process, built on first use.
pub fn pool() -> Result<Arc<ThreadPool>, String> {
    let pid = std::process::id();
    let mut slot = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((owner, pool)) = slot.as_ref() {
        if *owner == pid {
            return Ok(Arc::clone(pool));
        }
    }
    if let Some((_, inherited)) = slot.take() {
        // Its workers live only in the parent: dropping it would signal threads that are not here.
        std::mem::forget(inherited);
    }
    let threads = requested_threads()?;
    let pool = ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("shfcas-{i}"))
        .build()
        .map_err(|err| format!("cannot start {threads} worker threads: {err}"))?;
    let pool = Arc::new(pool);
    *slot = Some((pid, Arc::clone(&pool)));
    Ok(pool)
}
