//! The allocator tuning with jemalloc linked in, as the torch executables link it: its own
//! process, no test harness, the checks on the main thread.
#![allow(clippy::unwrap_used)]

use sam_data::memory::{
    allocator, keeps_freed_memory, retain_freed_memory, Allocator, AllocatorTuning, DISABLE_ENV,
};

mod common;
use common::{rss_mib, touched};

fn main() {
    // Not yet registered: this module cannot address it.
    assert_eq!(allocator(), Allocator::System);
    assert_eq!(keeps_freed_memory(), None);
    // What the executables do.
    // SAFETY: both entry points are those of the jemalloc linked in by tikv-jemalloc-sys.
    unsafe {
        sam_data::memory::use_jemalloc(sam_data::memory::Jemalloc {
            mallctl: tikv_jemalloc_sys::mallctl,
            malloc: tikv_jemalloc_sys::malloc,
        });
    }
    // Its `malloc` is the one the global symbol table gives every library of the process.
    assert_eq!(allocator(), Allocator::Jemalloc);
    jemalloc_keeps_freed_memory_once_tuned();
    println!("memory_jemalloc: ok ({})", allocator());
}

fn jemalloc_keeps_freed_memory_once_tuned() {
    if std::env::var_os("MALLOC_CONF").is_some() {
        // jemalloc read the user's settings at start-up; the tuning must leave them alone.
        assert_eq!(retain_freed_memory(), AllocatorTuning::SkippedByEnvironment);
        return;
    }
    // jemalloc's default: unused pages decay back to the system (after 10 s).
    assert_eq!(keeps_freed_memory(), Some(false));
    std::env::set_var(DISABLE_ENV, "0");
    assert_eq!(retain_freed_memory(), AllocatorTuning::SkippedByEnvironment);
    assert_eq!(keeps_freed_memory(), Some(false));
    std::env::remove_var(DISABLE_ENV);
    assert_eq!(retain_freed_memory(), AllocatorTuning::Applied);
    assert_eq!(keeps_freed_memory(), Some(true));
    // A freed block stays resident and the next one of its size reuses it.
    let before = rss_mib();
    drop(touched(256));
    let kept = rss_mib();
    assert!(
        kept > before + 200.0,
        "freed memory was returned: {before:.0} -> {kept:.0} MiB"
    );
    let again = touched(256);
    assert!(
        rss_mib() < kept + 64.0,
        "a second 256 MiB buffer grew the process: {kept:.0} -> {:.0} MiB",
        rss_mib()
    );
    drop(again);
    // Other threads (other arenas, created after the tuning) allocate and free large blocks.
    let sums: Vec<usize> = (0..2)
        .map(|_| std::thread::spawn(|| touched(200).iter().map(|&b| b as usize).sum::<usize>()))
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(sums, vec![200 * 256; 2]);
}
