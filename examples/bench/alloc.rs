//! The counting global allocator: allocations per saga do not move with
//! the machine's speed.

// With `--features bench-mimalloc`: the allocator choice a service makes
// for itself (docs/BENCHMARKS.md). The engine's tasks and sled's threads
// free each other's blocks; mimalloc's thread-local free lists take no lock
// for that, glibc's arenas do.
#[cfg(feature = "bench-mimalloc")]
#[global_allocator]
static ALLOCATOR: Counting<mimalloc::MiMalloc> = Counting(mimalloc::MiMalloc);
#[cfg(not(feature = "bench-mimalloc"))]
#[global_allocator]
static ALLOCATOR: Counting<std::alloc::System> = Counting(std::alloc::System);

/// Counts allocations and their bytes, then hands them to the allocator
/// it wraps. Allocations per saga do not depend on how fast this VM's CPU
/// is in a given hour, so they show a change in per-saga work that the
/// throughput noise would hide.
struct Counting<A>(A);

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ALLOCATED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the wrapped allocator, which
// upholds `GlobalAlloc`'s contract; the counters are only side effects.
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation(layout.size());
        // SAFETY: the caller's layout, passed on as `alloc` requires.
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation(layout.size());
        // SAFETY: as in `alloc`.
        unsafe { self.0.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        count_allocation(new);
        // SAFETY: `ptr` and `layout` come from this allocator, as the caller promises.
        unsafe { self.0.realloc(ptr, layout, new) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as in `realloc`.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

fn count_allocation(bytes: usize) {
    use std::sync::atomic::Ordering::Relaxed;
    ALLOCATIONS.fetch_add(1, Relaxed);
    ALLOCATED_BYTES.fetch_add(bytes as u64, Relaxed);
}

/// Allocations (reallocations included) and bytes asked for so far.
pub(crate) fn allocations() -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    (ALLOCATIONS.load(Relaxed), ALLOCATED_BYTES.load(Relaxed))
}
