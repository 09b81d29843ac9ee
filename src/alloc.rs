//! The binary's global allocator: the system's for ordinary blocks, and a small cache of
//! freed large blocks (whole mappings) that later large allocations reuse.
//!
//! Why: widening a big checkpoint allocates and frees tensors of hundreds of megabytes in
//! turn. Each fresh mapping costs a page fault and a kernel zeroing per 4 KiB page
//! (measured on this machine: 0.35 s per GiB, against 0.03 s to rewrite memory already
//! mapped). A freed large mapping is kept, and a later large request takes the cached one
//! that fits best, growing it with `mremap` (which moves page tables, not data) when none
//! is big enough, so pages are faulted about once per run instead of once per tensor. At
//! most `CACHE_BYTES` (2 GiB) sit unused in the cache; more is returned to the kernel.
//!
//! A large block is a private mapping whose first page holds its capacity; the caller gets
//! the address one page in (so alignments up to a page hold).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Blocks at least this large are whole mappings of their own.
const LARGE: usize = 1 << 20;
/// At most this many bytes of freed large blocks wait for reuse.
const CACHE_BYTES: usize = 2 << 30;
const SLOTS: usize = 32;
const PAGE: usize = 4096;

/// Freed mappings: (address of the header page, capacity after it), address 0 when empty.
static CACHE: Mutex<[(usize, usize); SLOTS]> = Mutex::new([(0, 0); SLOTS]);

pub struct ReusingAlloc;

/// Keeps the system allocator's freed small blocks (below `LARGE`, which this allocator
/// takes) in its heap instead of unmapping or trimming them: by default glibc maps and
/// unmaps blocks from 128 KiB on, and an f32 GPT-2 forward pass at 256 tokens page-faulted
/// 16k times (65 MB of 768-wide activations) on its 786 KB blocks; with this, ~100 times.
/// Call once at start-up (the binary does); glibc only, elsewhere nothing.
pub fn keep_small_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE && layout.align() <= PAGE
}

/// Resizes the mapping at `base` (capacity `cap`) to capacity `len`, keeping its pages.
unsafe fn resize(base: usize, cap: usize, len: usize) -> Option<usize> {
    let q = libc::mremap(
        base as *mut libc::c_void,
        cap + PAGE,
        len + PAGE,
        libc::MREMAP_MAYMOVE,
    );
    (q != libc::MAP_FAILED).then_some(q as usize)
}

/// A block of capacity >= `len`: a cached one (the smallest of at most twice the size,
/// measured best on a 1 GB widening: half the page faults of 1.25x and a lower peak; else
/// the largest smaller one,
/// grown) or a fresh zeroed mapping (never a much bigger cached block: shrinking it would
/// drop pages a later big request needs). Returns the data address
/// and how many of its first bytes may hold old contents.
unsafe fn take(len: usize) -> (*mut u8, usize) {
    let len = len.next_multiple_of(PAGE);
    let cached = {
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let full = (0..SLOTS).filter(|&i| c[i].0 != 0);
        let fit = full
            .clone()
            .filter(|&i| c[i].1 >= len && c[i].1 <= 2 * len)
            .min_by_key(|&i| c[i].1);
        let grow = full.filter(|&i| c[i].1 < len).max_by_key(|&i| c[i].1);
        fit.or(grow).map(|i| std::mem::take(&mut c[i]))
    };
    let (base, cap, dirty) = match cached {
        Some((base, cap)) if cap >= len && cap <= 2 * len => (base, cap, len),
        Some((base, cap)) => match resize(base, cap, len) {
            Some(q) => (q, len, cap.min(len)),
            None => {
                libc::munmap(base as *mut libc::c_void, cap + PAGE);
                return fresh(len);
            }
        },
        None => return fresh(len),
    };
    *(base as *mut usize) = cap;
    ((base + PAGE) as *mut u8, dirty)
}

unsafe fn fresh(len: usize) -> (*mut u8, usize) {
    let q = libc::mmap(
        std::ptr::null_mut(),
        len + PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    if q == libc::MAP_FAILED {
        return (std::ptr::null_mut(), 0);
    }
    *(q as *mut usize) = len;
    ((q as usize + PAGE) as *mut u8, 0)
}

/// Keeps a freed block for reuse; while the cache holds too much, unmaps its smallest.
unsafe fn give(data: *mut u8) {
    let base = data as usize - PAGE;
    let cap = *(base as *const usize);
    let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    // Unmapped after the lock is released; no allocation while holding it.
    let mut evict = [(0usize, 0usize); SLOTS + 1];
    let mut n = 0;
    match c.iter_mut().find(|s| s.0 == 0) {
        Some(s) => *s = (base, cap),
        None => {
            evict[n] = (base, cap);
            n += 1;
        }
    }
    while c.iter().map(|s| s.1).sum::<usize>() > CACHE_BYTES {
        let i = (0..SLOTS)
            .filter(|&i| c[i].0 != 0)
            .min_by_key(|&i| c[i].1)
            .expect("over the limit means not empty");
        evict[n] = std::mem::take(&mut c[i]);
        n += 1;
    }
    drop(c);
    for &(b, len) in &evict[..n] {
        libc::munmap(b as *mut libc::c_void, len + PAGE);
    }
}

// SAFETY: small blocks are `System`'s; large ones are private mappings of at least the
// requested size, page-aligned, handed to one owner at a time (the cache is behind a
// mutex), their capacity in the page before the data.
unsafe impl GlobalAlloc for ReusingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            take(layout.size()).0
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_large(&layout) {
            let (p, dirty) = take(layout.size());
            if !p.is_null() {
                std::ptr::write_bytes(p, 0, dirty.min(layout.size()));
            }
            p
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) {
            give(ptr)
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align_unchecked(new_size, layout.align());
        match (is_large(&layout), is_large(&new)) {
            (false, false) => System.realloc(ptr, layout, new_size),
            (true, true) => {
                let base = ptr as usize - PAGE;
                let cap = *(base as *const usize);
                if new_size <= cap {
                    return ptr;
                }
                let len = new_size.next_multiple_of(PAGE);
                match resize(base, cap, len) {
                    Some(q) => {
                        *(q as *mut usize) = len;
                        (q + PAGE) as *mut u8
                    }
                    None => std::ptr::null_mut(),
                }
            }
            _ => {
                let q = self.alloc(new);
                if !q.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                q
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large blocks come back reused (same pages), zeroed when asked, and keep their
    /// contents when grown; small ones are the system's.
    #[test]
    fn large_blocks_are_reused_zeroed_and_grown() {
        let a = ReusingAlloc;
        let big = Layout::from_size_align(3 << 20, 8).unwrap();
        unsafe {
            let p = a.alloc(big);
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 7, big.size());
            a.dealloc(p, big);
            // Another thread's test may take the cached block first; either way the
            // zeroed block must read as zeros.
            let z = a.alloc_zeroed(big);
            assert!(std::slice::from_raw_parts(z, big.size())
                .iter()
                .all(|&b| b == 0));
            std::ptr::write_bytes(z, 9, big.size());
            let g = a.realloc(z, big, 5 << 20);
            assert!(!g.is_null());
            let grown = std::slice::from_raw_parts(g, 5 << 20);
            assert!(grown[..big.size()].iter().all(|&b| b == 9));
            a.dealloc(g, Layout::from_size_align(5 << 20, 8).unwrap());
            // A small block through a large one and back keeps its bytes.
            let small = Layout::from_size_align(100, 8).unwrap();
            let s = a.alloc(small);
            std::ptr::write_bytes(s, 3, 100);
            let s2 = a.realloc(s, small, 2 << 20);
            assert!(std::slice::from_raw_parts(s2, 100).iter().all(|&b| b == 3));
            let s3 = a.realloc(s2, Layout::from_size_align(2 << 20, 8).unwrap(), 50);
            assert!(std::slice::from_raw_parts(s3, 50).iter().all(|&b| b == 3));
            a.dealloc(s3, Layout::from_size_align(50, 8).unwrap());
        }
    }
}
