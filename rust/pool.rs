//! The engine's own rayon pool: sized by `SHFCAS_NUM_THREADS`, rebuilt after `fork`.
//!
//! A forked child inherits the parent's memory but none of its threads, so a pool built before the
//! fork would wait forever for workers that do not exist. The pool is therefore keyed by process id
//! and rebuilt on first use in a new process (data loaders and `datasets.map(num_proc=...)` fork).
//!
//! The lookup takes no lock: a fork copies a lock in whatever state another thread of the parent
//! left it, and a child that then waits on it waits forever. The pool of the current process is
//! published through one atomic pointer instead, and a published pool is never freed, so a reader
//! never needs to hold anything.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use rayon::{ThreadPool, ThreadPoolBuilder};

pub const THREADS_ENV: &str = "SHFCAS_NUM_THREADS";

/// A pool and the process whose threads run it.
struct ProcessPool {
    pid: u32,
    pool: ThreadPool,
}

/// The last published pool; leaked on purpose (it lives as long as the process, and a pool
/// inherited through `fork` must never be dropped: its workers exist only in the parent).
static POOL: AtomicPtr<ProcessPool> = AtomicPtr::new(ptr::null_mut());

/// Why the pool could not be started.
#[derive(Debug)]
pub enum PoolError {
    /// `SHFCAS_NUM_THREADS` is not a positive integer: the user's setting is wrong.
    BadSetting(String),
    /// The operating system refused the worker threads.
    Start(String),
}

/// Threads requested by `SHFCAS_NUM_THREADS`, or all cores when unset.
pub fn requested_threads() -> Result<usize, PoolError> {
    match std::env::var(THREADS_ENV) {
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(PoolError::BadSetting(format!(
                "{THREADS_ENV}={text:?} is not a positive integer; set it to the number of worker threads, or unset it to use every core"
            ))),
        },
        Err(std::env::VarError::NotPresent) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Err(err) => Err(PoolError::BadSetting(format!("{THREADS_ENV} is unreadable: {err}"))),
    }
}

/// The pool of this process, built on first use.
pub fn pool() -> Result<&'static ThreadPool, PoolError> {
    let pid = std::process::id();
    let mut seen = POOL.load(Ordering::Acquire);
    loop {
        // SAFETY: a published pointer comes from `Box::into_raw` and is never freed.
        if let Some(published) = unsafe { seen.as_ref() } {
            if published.pid == pid {
                return Ok(&published.pool);
            }
        }
        // None yet, or the parent's: publish ours unless another thread of this process is faster.
        let threads = requested_threads()?;
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("shfcas-{i}"))
            .build()
            .map_err(|err| PoolError::Start(format!("cannot start {threads} worker threads: {err}")))?;
        let ours = Box::into_raw(Box::new(ProcessPool { pid, pool }));
        match POOL.compare_exchange(seen, ours, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: just published, never freed.
            Ok(_) => return Ok(unsafe { &(*ours).pool }),
            Err(current) => {
                // SAFETY: `ours` was never published; its workers belong to this process.
                drop(unsafe { Box::from_raw(ours) });
                seen = current;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_racing_to_start_the_pool_share_one() {
        let pools: Vec<usize> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| pool().map(|p| p as *const ThreadPool as usize).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(pools.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(pool().unwrap() as *const ThreadPool as usize, pools[0]);
    }
}
