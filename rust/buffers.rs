//! Large zeroed buffers, backed by transparent huge pages where the kernel offers them.
//!
//! A buffer the size of the table is written once, soon after it is allocated, so the kernel's first
//! touch of every page is a real share of the time: at 10M rows a score allocates about 1 GB, a
//! quarter of a million 4 KiB page faults. Linux kernels commonly give huge pages only to memory
//! that asks for them (`transparent_hugepage=madvise`); asking costs one call, and turns each 512
//! faults into one.

use std::alloc::{alloc_zeroed, handle_alloc_error, Layout};

/// The huge page size asked for (x86-64 and most aarch64 kernels).
const HUGE_PAGE: usize = 2 << 20;

/// Types whose all-zero bit pattern is a valid value.
///
/// # Safety
/// Every field of an implementing type must be valid when all its bytes are zero.
pub unsafe trait Zeroable: Copy {}

// SAFETY: zero bytes are 0, 0.0 and false.
unsafe impl Zeroable for f64 {}
unsafe impl Zeroable for f32 {}
unsafe impl Zeroable for i64 {}
unsafe impl Zeroable for u64 {}
unsafe impl Zeroable for u32 {}
unsafe impl Zeroable for bool {}

/// `n` zeros. Buffers of a few huge pages or more come straight from the allocator's zeroed pages,
/// advised to be huge, before anything touches them.
pub fn zeroed<T: Zeroable>(n: usize) -> Vec<T> {
    let layout = Layout::array::<T>(n).expect("a buffer larger than the address space");
    if layout.size() < 4 * HUGE_PAGE {
        // SAFETY: T is Zeroable.
        return vec![unsafe { std::mem::zeroed::<T>() }; n];
    }
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { alloc_zeroed(layout) }.cast::<T>();
    if ptr.is_null() {
        handle_alloc_error(layout);
    }
    advise_huge_pages(ptr.cast(), layout.size());
    // SAFETY: allocated by the global allocator with the layout of `n` values of T, all of them
    // initialised (zero bytes are valid T values).
    unsafe { Vec::from_raw_parts(ptr, n, n) }
}

/// Asks for huge pages over the whole huge pages inside `[start, start + bytes)`; only advice, so a
/// kernel that refuses changes nothing but the speed.
#[cfg(target_os = "linux")]
fn advise_huge_pages(start: *mut u8, bytes: usize) {
    let first = (start as usize).next_multiple_of(HUGE_PAGE);
    let end = (start as usize + bytes) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        // SAFETY: the range lies inside an allocation this process owns; the advice does not
        // change its contents.
        unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: *mut u8, _bytes: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_buffers_are_zeros_and_writable() {
        for n in [0usize, 1, 1000, 3 << 20] {
            let mut values = zeroed::<f64>(n);
            assert_eq!(values.len(), n);
            assert!(values.iter().all(|&v| v == 0.0));
            if let Some(last) = values.last_mut() {
                *last = 1.5;
            }
            assert_eq!(values.iter().sum::<f64>(), if n > 0 { 1.5 } else { 0.0 });
        }
        assert!(zeroed::<bool>(10 << 20).iter().all(|&b| !b));
    }
}
