//! A recycling front for the module's allocator. A request allocates the same few small blocks
//! every time (its context, each stage's stream state, the bytes each host call hands in) and
//! frees them when it ends. Through wasi-libc's dlmalloc each of these costs a search of its
//! bins on `malloc` and coalescing on `free`, about 200 machine instructions per pair, on
//! every request. Here a freed block of up to 4 KiB goes on a short list for its size class
//! (powers of two from 16 bytes) and the next request of that class takes it back in a few
//! instructions.
//!
//! What stays on the lists is bounded ([`KEEP`] blocks per class, under 300 KiB in all); a
//! block beyond that goes back to the allocator below. Blocks of a class are always allocated
//! at the class's full size, so a block can serve any request of its class, and a `realloc`
//! within the class (a string or vector that grows a little) keeps its block.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// The smallest class: 16 bytes (2^4), room for the list's link on any target.
const MIN_SHIFT: u32 = 4;
/// Classes 16 B, 32 B, … 4 KiB.
const CLASSES: usize = 9;
/// The largest block recycled.
const MAX_SIZE: usize = 1 << (MIN_SHIFT as usize + CLASSES - 1);
/// The alignment every class block has; a layout that asks for more is passed through. 16 is
/// what `u128` asks for on wasm32 (ratelimit's per-request checks hold one), and a block
/// passed through costs a trip into `posix_memalign` on every request.
const BLOCK_ALIGN: usize = 16;
/// Freed blocks kept per class. A worker's requests reuse a handful; the rest of a burst's
/// blocks go back to the allocator below.
const KEEP: usize = 32;

/// The freed blocks of one class, linked through their first word.
#[derive(Clone, Copy)]
struct FreeList {
    head: *mut u8,
    len: usize,
}

/// `inner` with a recycling front for small blocks.
pub struct Recycling<A> {
    inner: A,
    lists: UnsafeCell<[FreeList; CLASSES]>,
}

// SAFETY: a wasm module without the threads proposal runs on one thread: the lists are never
// touched concurrently. (Native builds never install it; their tests use it from one thread.)
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
unsafe impl<A: Sync> Sync for Recycling<A> {}

impl<A> Recycling<A> {
    pub const fn new(inner: A) -> Self {
        Recycling { inner, lists: UnsafeCell::new([FreeList { head: ptr::null_mut(), len: 0 }; CLASSES]) }
    }
}

/// The class of a block of `size` bytes aligned to `align`, if it is recycled.
fn class_of(size: usize, align: usize) -> Option<usize> {
    if size > MAX_SIZE || align > BLOCK_ALIGN {
        return None;
    }
    let shift = size.max(1 << MIN_SHIFT).next_power_of_two().trailing_zeros();
    Some((shift - MIN_SHIFT) as usize)
}

/// The layout the allocator below gives a block of `class`.
fn class_layout(class: usize) -> Layout {
    // Class sizes are powers of two up to MAX_SIZE and BLOCK_ALIGN is a power of two: valid.
    Layout::from_size_align(1 << (MIN_SHIFT as usize + class), BLOCK_ALIGN).unwrap_or(Layout::new::<u8>())
}

impl<A: GlobalAlloc> Recycling<A> {
    /// The free list of `class`.
    ///
    /// # Safety
    /// No other reference to the lists may be live (one thread; no list call re-enters).
    #[allow(clippy::mut_from_ref)]
    unsafe fn list(&self, class: usize) -> Option<&mut FreeList> {
        // SAFETY: per the caller's contract this is the only live reference.
        unsafe { (*self.lists.get()).get_mut(class) }
    }
}

// SAFETY: every block handed out is either the inner allocator's own answer for the caller's
// layout, or a block of the layout's class (at least as large, BLOCK_ALIGN-aligned, and the
// layout asks for no more alignment) that was allocated from the inner allocator at the
// class's layout and is not in use: it was freed by its owner before it went on a list.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Recycling<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout.size(), layout.align()) else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: single-threaded, and nothing below re-enters this allocator.
        if let Some(list) = unsafe { self.list(class) } {
            if !list.head.is_null() {
                let block = list.head;
                // SAFETY: a listed block is ours, at least 16 bytes, holding its successor.
                list.head = unsafe { block.cast::<*mut u8>().read_unaligned() };
                list.len -= 1;
                return block;
            }
        }
        // SAFETY: a valid, non-zero-sized layout.
        unsafe { self.inner.alloc(class_layout(class)) }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout.size(), layout.align()) else {
            // SAFETY: the caller's contract: `block` came from `alloc(layout)`, i.e. from inner.
            return unsafe { self.inner.dealloc(block, layout) };
        };
        // SAFETY: single-threaded, and nothing below re-enters this allocator.
        match unsafe { self.list(class) } {
            Some(list) if list.len < KEEP => {
                // SAFETY: the block is the caller's no more and at least 16 bytes long.
                unsafe { block.cast::<*mut u8>().write_unaligned(list.head) };
                list.head = block;
                list.len += 1;
            }
            // SAFETY: blocks of a class come from inner at the class's layout.
            _ => unsafe { self.inner.dealloc(block, class_layout(class)) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout.size(), layout.align()).is_none() {
            // SAFETY: the caller's contract, passed on.
            return unsafe { self.inner.alloc_zeroed(layout) };
        }
        // SAFETY: the caller's contract; a block of the class has at least `layout.size()` bytes.
        unsafe {
            let block = self.alloc(layout);
            if !block.is_null() {
                ptr::write_bytes(block, 0, layout.size());
            }
            block
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_class = class_of(layout.size(), layout.align());
        let new_class = class_of(new_size, layout.align());
        match (old_class, new_class) {
            // The block already has room: a class's blocks are the class's full size.
            (Some(old), Some(new)) if old == new => block,
            // SAFETY: the caller's contract, passed on: inner's block, inner's answer.
            (None, None) => unsafe { self.inner.realloc(block, layout, new_size) },
            _ => {
                let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
                    return ptr::null_mut();
                };
                // SAFETY: a valid layout; the old block holds `layout.size()` bytes and the
                // new one at least `new_size`; the old block is the caller's to give up.
                unsafe {
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::cell::Cell;

    /// System's allocator, counting what reaches it.
    #[derive(Default)]
    struct Counting {
        allocs: Cell<usize>,
        frees: Cell<usize>,
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.allocs.set(self.allocs.get() + 1);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
            self.frees.set(self.frees.get() + 1);
            unsafe { System.dealloc(block, layout) }
        }
    }

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn classes_are_powers_of_two_from_16_bytes_to_4_kib() {
        assert_eq!(class_of(1, 1), Some(0));
        assert_eq!(class_of(16, 8), Some(0));
        assert_eq!(class_of(17, 1), Some(1));
        assert_eq!(class_of(4096, 8), Some(CLASSES - 1));
        assert_eq!(class_of(4097, 1), None);
        assert_eq!(class_of(16, 16), Some(0), "a u128's alignment");
        assert_eq!(class_of(16, 32), None, "more alignment than a class block has");
        for class in 0..CLASSES {
            assert_eq!(class_of(class_layout(class).size(), BLOCK_ALIGN), Some(class));
        }
    }

    #[test]
    fn a_freed_block_serves_the_next_request_of_its_class() {
        let heap = Recycling::new(Counting::default());
        unsafe {
            let first = heap.alloc(layout(100, 8));
            first.write_bytes(0xAB, 100);
            heap.dealloc(first, layout(100, 8));
            let second = heap.alloc(layout(120, 4));
            assert_eq!(second, first, "same class (128 B): the block comes back");
            let other = heap.alloc(layout(100, 8));
            assert_ne!(other, second, "a block in use is not handed out twice");
            assert_eq!(heap.inner.allocs.get(), 2);
            heap.dealloc(second, layout(120, 4));
            heap.dealloc(other, layout(100, 8));
            assert_eq!(heap.inner.frees.get(), 0, "both kept for reuse");
        }
    }

    #[test]
    fn at_most_keep_blocks_per_class_are_held() {
        let heap = Recycling::new(Counting::default());
        unsafe {
            let blocks: Vec<_> = (0..KEEP + 5).map(|_| heap.alloc(layout(32, 8))).collect();
            for &block in &blocks {
                heap.dealloc(block, layout(32, 8));
            }
            assert_eq!(heap.inner.frees.get(), 5, "the blocks beyond KEEP went back");
            // Drain the lists so the test leaks nothing.
            let again: Vec<_> = (0..KEEP).map(|_| heap.alloc(layout(32, 8))).collect();
            assert_eq!(heap.inner.allocs.get(), KEEP + 5, "all KEEP served from the list");
            for block in again {
                System.dealloc(block, class_layout(class_of(32, 8).unwrap()));
            }
        }
    }

    #[test]
    fn large_and_over_aligned_blocks_pass_through() {
        let heap = Recycling::new(Counting::default());
        unsafe {
            for layout in [layout(5000, 8), layout(64, 64)] {
                let block = heap.alloc(layout);
                assert_eq!(block as usize % layout.align(), 0);
                heap.dealloc(block, layout);
            }
            assert_eq!((heap.inner.allocs.get(), heap.inner.frees.get()), (2, 2));
        }
    }

    #[test]
    fn realloc_keeps_the_block_within_its_class_and_moves_the_bytes_across_classes() {
        let heap = Recycling::new(Counting::default());
        unsafe {
            let block = heap.alloc(layout(20, 1));
            block.copy_from(b"twenty bytes of text".as_ptr(), 20);
            assert_eq!(heap.realloc(block, layout(20, 1), 32), block, "20 and 32 bytes share a class");
            let grown = heap.realloc(block, layout(32, 1), 6000);
            assert_eq!(std::slice::from_raw_parts(grown, 20), b"twenty bytes of text");
            let shrunk = heap.realloc(grown, layout(6000, 1), 30);
            assert_eq!(std::slice::from_raw_parts(shrunk, 20), b"twenty bytes of text");
            assert_eq!(shrunk, block, "back in the 32-byte class, whose block the grow freed");
            System.dealloc(shrunk, class_layout(1));
            assert_eq!(heap.inner.frees.get(), 1, "only the large block went back");
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_when_recycled() {
        let heap = Recycling::new(Counting::default());
        unsafe {
            let block = heap.alloc(layout(64, 8));
            block.write_bytes(0xFF, 64);
            heap.dealloc(block, layout(64, 8));
            let zeroed = heap.alloc_zeroed(layout(60, 8));
            assert_eq!(zeroed, block);
            assert!(std::slice::from_raw_parts(zeroed, 60).iter().all(|&byte| byte == 0));
            System.dealloc(zeroed, class_layout(2));
        }
    }
}
