//! The global allocator of the binary (and of the bare hyper proxy it is
//! benchmarked against, so both run on the same allocator). The one module
//! allowed `unsafe`: a global allocator is an unsafe trait.
#![allow(unsafe_code)]

/// mimalloc, asked for alignment only when a type needs more than the 16 bytes
/// every block has. The `mimalloc` crate calls `mi_malloc_aligned` for every
/// allocation, which takes mimalloc's over-allocating path for any block over
/// 1 KiB that is not a power of two (a boxed future, a read buffer): about
/// 1,150 instructions per proxied request under callgrind.
pub struct MiMalloc;

/// What mimalloc guarantees of every block (`MI_MAX_ALIGN_SIZE`).
const MI_MIN_ALIGN: usize = 16;

// SAFETY: each method forwards to the mimalloc function with the same contract;
// the unaligned ones only for layouts whose alignment every block meets.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        if layout.align() <= MI_MIN_ALIGN {
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            unsafe { mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        if layout.align() <= MI_MIN_ALIGN {
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            unsafe { mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        if layout.align() <= MI_MIN_ALIGN {
            unsafe { mi_realloc(ptr.cast(), new).cast() }
        } else {
            unsafe { mi_realloc_aligned(ptr.cast(), new, layout.align()).cast() }
        }
    }
}
