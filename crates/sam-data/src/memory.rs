//! Process-wide tuning of the C allocator for programs that churn through large buffers.
//!
//! Image tensors here are tens to hundreds of MiB (a 2048² f32 plane is 16 MiB, a 64-channel
//! 1024² feature map 256 MiB, a vit_b global-attention bias 800 MiB). glibc serves every block
//! above 32 MiB with a fresh `mmap` and unmaps it on `free`, so each new tensor pays a page fault
//! and a zeroing of every 4 KiB page, again and again for buffers of the same size. libtorch,
//! which allocates through `posix_memalign`, and our own `Vec`s are both affected: on the 2-core
//! development VM a vit_b encoder forward at 1024² spent about a third of its time in these
//! faults (13–15 s with glibc's defaults, 9 s with [`retain_freed_memory`]).
//!
//! [`retain_freed_memory`] makes glibc serve large blocks from the heap and keep freed memory
//! for reuse instead of returning it to the system. Peak memory stays what the program needs at
//! its peak (plus fragmentation, a few per cent in our measurements); memory is not handed back
//! to the system before exit. Every executable of the workspace calls it first thing in `main`.
//!
//! It helps the main thread, where our executables allocate their tensors: glibc gives other
//! threads arenas of their own, whose heaps cannot hold blocks above 64 MiB, so such blocks
//! requested by other threads are still mapped and unmapped each time.

/// Environment variable that turns the tuning off (`SAM_MALLOC_TUNING=0`), e.g. to compare.
pub const DISABLE_ENV: &str = "SAM_MALLOC_TUNING";

/// What [`retain_freed_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorTuning {
    /// glibc now keeps freed memory and serves large blocks from the heap.
    Applied,
    /// Left alone: turned off with `SAM_MALLOC_TUNING=0`, or the user set one of glibc's own
    /// settings that this tuning would override (`MALLOC_MMAP_MAX_`, `MALLOC_MMAP_THRESHOLD_`,
    /// `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`, or the same names in `GLIBC_TUNABLES`),
    /// which then take precedence.
    SkippedByEnvironment,
    /// Not a glibc target: nothing to do.
    Unsupported,
    /// glibc refused a setting (should not happen on a supported glibc).
    Failed,
}

/// Keeps freed memory in the process for reuse and serves large blocks from the heap (glibc's
/// `M_MMAP_MAX = 0`, `M_TRIM_THRESHOLD` and `M_TOP_PAD` raised). Call it once at the start of
/// `main`, before threads are spawned. See the [module documentation](self) for why.
pub fn retain_freed_memory() -> AllocatorTuning {
    const OWN: [&str; 4] = ["MMAP_MAX", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD"];
    let user_set = OWN
        .iter()
        .any(|name| std::env::var_os(format!("MALLOC_{name}_")).is_some())
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| {
            OWN.iter()
                .any(|name| t.contains(&format!("malloc.{}", name.to_ascii_lowercase())))
        });
    let disabled = std::env::var(DISABLE_ENV).is_ok_and(|v| v.trim() == "0");
    if user_set || disabled {
        return AllocatorTuning::SkippedByEnvironment;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> AllocatorTuning {
    // From glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_TOP_PAD: i32 = -2;
    const M_MMAP_MAX: i32 = -4;
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    let settings = [
        // no block is served by mmap: freed blocks stay in the heap for the next tensor
        (M_MMAP_MAX, 0),
        // never give the top of the heap back (i32::MAX bytes is glibc's largest setting)
        (M_TRIM_THRESHOLD, i32::MAX),
        // grow the heap in steps of 64 MiB, not one page beyond each request
        (M_TOP_PAD, 64 << 20),
    ];
    for (param, value) in settings {
        // SAFETY: mallopt only changes allocator parameters; the arguments are valid settings
        // of glibc's documented interface, and it is safe to call at any time.
        if unsafe { mallopt(param, value) } != 1 {
            return AllocatorTuning::Failed;
        }
    }
    AllocatorTuning::Applied
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> AllocatorTuning {
    AllocatorTuning::Unsupported
}
