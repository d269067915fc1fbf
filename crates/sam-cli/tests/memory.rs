//! The allocator and its tuning are process-wide, so they have their own test binary without the
//! test harness: one process, and the checks run on the main thread, where the tensors of our
//! executables are allocated (glibc gives other threads arenas of their own).
//! This one runs with the C library's allocator; `memory_jemalloc.rs` links jemalloc, as the
//! torch executables do.
#![allow(clippy::unwrap_used)]

use sam_cli::memory::{
    allocator, keeps_freed_memory, retain_freed_memory, Allocator, AllocatorTuning, DISABLE_ENV,
};

mod common;
use common::{freed_block_is_kept_and_reused, rss_mib, touched};

fn main() {
    assert_eq!(allocator(), Allocator::System);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    freed_large_buffers_stay_for_reuse_and_threads_still_get_large_blocks();
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    assert_eq!(retain_freed_memory(), AllocatorTuning::Unsupported);
    println!("memory: ok ({})", allocator());
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn freed_large_buffers_stay_for_reuse_and_threads_still_get_large_blocks() {
    let owned = [
        "MALLOC_MMAP_MAX_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_TOP_PAD_",
    ];
    if owned.iter().any(|k| std::env::var_os(k).is_some())
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        // glibc read the user's settings at start-up; the tuning must leave them alone.
        assert_eq!(retain_freed_memory(), AllocatorTuning::SkippedByEnvironment);
        return;
    }
    assert_eq!(keeps_freed_memory(), None);
    // Without tuning (glibc's default), a freed 256 MiB block goes back to the system.
    let before = rss_mib();
    drop(touched(256));
    assert!(
        rss_mib() < before + 64.0,
        "glibc's default should unmap a freed 256 MiB block"
    );

    std::env::set_var(DISABLE_ENV, "0");
    assert_eq!(retain_freed_memory(), AllocatorTuning::SkippedByEnvironment);
    std::env::remove_var(DISABLE_ENV);
    assert_eq!(retain_freed_memory(), AllocatorTuning::Applied);

    // With it, a freed block stays resident and is reused; blocks larger than a thread arena's
    // heap (64 MiB) still work from other threads.
    freed_block_is_kept_and_reused();
}
