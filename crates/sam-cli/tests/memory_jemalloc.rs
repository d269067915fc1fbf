//! The allocator tuning with jemalloc linked in, as the torch executables link it: its own
//! process, no test harness, the checks on the main thread.
#![allow(clippy::unwrap_used)]

use sam_cli::memory::{
    allocator, keeps_freed_memory, retain_freed_memory, Allocator, AllocatorTuning, DISABLE_ENV,
};

mod common;
use common::freed_block_is_kept_and_reused;

fn main() {
    // Not yet registered: this module cannot address it.
    assert_eq!(allocator(), Allocator::System);
    assert_eq!(keeps_freed_memory(), None);
    // What the executables do.
    sam_cli::use_linked_jemalloc!();
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
    freed_block_is_kept_and_reused();
}
