//! The allocator of the process, and its tuning for programs that churn through large buffers.
//!
//! Image tensors here are tens to hundreds of MiB (a 2048² f32 plane is 16 MiB, a 64-channel
//! 1024² feature map 256 MiB, a vit_b global-attention bias 800 MiB), and a training step makes
//! thousands of small ones besides (autocast casts, oneDNN descriptors). Two things matter:
//!
//! - **Large blocks.** glibc serves every block above 32 MiB with a fresh `mmap` and unmaps it
//!   on `free`, so each new tensor pays a page fault and a zeroing of every 4 KiB page, again
//!   and again for buffers of the same size. On a 2-core VM a vit_b encoder forward at 1024²
//!   spent about a third of its time in these faults.
//! - **Small blocks.** glibc consolidates its fast bins whenever a block of 1 KiB or more is
//!   requested after small frees; in a bf16 training step of a small model that alone took
//!   about 14 % of the time.
//!
//! The executables that run libtorch (sam-train, sam-eval, sam-infer) link jemalloc
//! (`tikv-jemalloc-sys`, registered with [`use_linked_jemalloc!`](crate::use_linked_jemalloc)), which then serves every allocation of the
//! process: Rust's, and C and C++ code's too (libtorch, oneDNN), because the executable's
//! `malloc`, `free`, `posix_memalign`, ... take precedence over the C library's. sam-augment,
//! pure Rust, keeps glibc, which is faster for its 16 MiB image planes. [`allocator`] checks
//! which allocator is in charge and [`retain_freed_memory`] tunes that one; linking this crate
//! changes no allocator by itself.
//!
//! [`retain_freed_memory`] then makes the allocator keep freed memory for reuse instead of
//! returning it to the system: with jemalloc, no decay of unused pages
//! (`dirty_decay_ms`/`muzzy_decay_ms` = -1 for every arena); with glibc, large blocks from the
//! heap and no trimming (`M_MMAP_MAX = 0`, `M_TRIM_THRESHOLD` and `M_TOP_PAD` raised). Peak
//! memory stays what the program needs at its peak plus fragmentation; memory is not handed
//! back to the system before exit. Every executable of the workspace calls it first thing in
//! `main`. (With glibc it helps the main thread only: other threads get arenas of their own,
//! whose heaps cannot hold blocks above 64 MiB.)

/// Environment variable that turns the tuning off (`SAM_MALLOC_TUNING=0`), e.g. to compare.
pub const DISABLE_ENV: &str = "SAM_MALLOC_TUNING";

/// What [`retain_freed_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorTuning {
    /// The allocator now keeps freed memory for reuse.
    Applied,
    /// Left alone: turned off with `SAM_MALLOC_TUNING=0`, or the user configured the allocator
    /// (jemalloc: `MALLOC_CONF`; glibc: `MALLOC_MMAP_MAX_`, `MALLOC_MMAP_THRESHOLD_`,
    /// `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_` or the same names in `GLIBC_TUNABLES`), whose
    /// settings then take precedence.
    SkippedByEnvironment,
    /// Neither jemalloc nor glibc: nothing to do.
    Unsupported,
    /// The allocator refused a setting (should not happen).
    Failed,
}

/// The allocator that serves the process's `malloc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// jemalloc, linked into the executable (`tikv-jemalloc-sys`).
    Jemalloc,
    /// The C library's.
    System,
}

impl std::fmt::Display for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Allocator::Jemalloc => "jemalloc",
            Allocator::System => "the C library's malloc",
        })
    }
}

/// Which allocator serves `malloc` for the whole process: the one the dynamic linker hands to
/// every shared library (libtorch included), not just the one Rust code calls.
pub fn allocator() -> Allocator {
    if jemalloc_mallctl().is_some() {
        Allocator::Jemalloc
    } else {
        Allocator::System
    }
}

/// jemalloc's `mallctl(name, oldp, oldlenp, newp, newlen)`.
pub type Mallctl = unsafe extern "C" fn(
    *const std::ffi::c_char,
    *mut std::ffi::c_void,
    *mut usize,
    *mut std::ffi::c_void,
    usize,
) -> std::ffi::c_int;

/// The entry points of a jemalloc linked into the executable, handed to [`use_jemalloc`]:
/// `tikv_jemalloc_sys::mallctl` and `tikv_jemalloc_sys::malloc`.
#[derive(Debug, Clone, Copy)]
pub struct Jemalloc {
    /// `mallctl`, to read and change its settings.
    pub mallctl: Mallctl,
    /// Its `malloc`, to check that it is the process's.
    pub malloc: unsafe extern "C" fn(usize) -> *mut std::ffi::c_void,
}

static JEMALLOC: std::sync::OnceLock<Jemalloc> = std::sync::OnceLock::new();

/// Tells this module that the executable links jemalloc (the torch executables do, with
/// `tikv-jemalloc-sys`'s `override_allocator_on_supported_platforms`), so that [`allocator`]
/// and [`retain_freed_memory`] address it. Call it first in `main`; later calls are ignored.
///
/// # Safety
/// `jemalloc.mallctl` must be the `mallctl` of the jemalloc whose `malloc` is
/// `jemalloc.malloc` (as `tikv_jemalloc_sys::{mallctl, malloc}` are): this module calls it
/// with jemalloc's documented arguments.
pub unsafe fn use_jemalloc(jemalloc: Jemalloc) {
    let _ = JEMALLOC.set(jemalloc);
}

/// Registers with [`use_jemalloc`] the jemalloc that `tikv-jemalloc-sys` links into the calling
/// executable: `sam_cli::use_linked_jemalloc!();` first in `main`. The calling crate depends on
/// `tikv-jemalloc-sys` with `override_allocator_on_supported_platforms`, as the torch
/// executables do.
#[macro_export]
macro_rules! use_linked_jemalloc {
    () => {
        // SAFETY: `mallctl` and `malloc` both come from the one jemalloc tikv-jemalloc-sys links.
        unsafe {
            $crate::memory::use_jemalloc($crate::memory::Jemalloc {
                mallctl: ::tikv_jemalloc_sys::mallctl,
                malloc: ::tikv_jemalloc_sys::malloc,
            })
        }
    };
}

/// The registered jemalloc's `mallctl` when that jemalloc serves the process's `malloc`: the
/// `malloc` the dynamic linker hands to every library (libtorch included) is its own.
fn jemalloc_mallctl() -> Option<Mallctl> {
    let jemalloc = JEMALLOC.get()?;
    #[cfg(target_os = "linux")]
    {
        use std::ffi::c_void;
        extern "C" {
            fn dlsym(handle: *mut c_void, symbol: *const std::ffi::c_char) -> *mut c_void;
        }
        // SAFETY: RTLD_DEFAULT (null) with a NUL-terminated name is dlsym's documented lookup
        // in the global scope; the result is only compared.
        let global = unsafe { dlsym(std::ptr::null_mut(), c"malloc".as_ptr()) };
        (global == jemalloc.malloc as *mut c_void).then_some(jemalloc.mallctl)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = jemalloc;
        None
    }
}

/// Keeps freed memory in the process for reuse (jemalloc: no decay of unused pages; glibc:
/// large blocks from the heap, no trimming). Call it once at the start of `main`, before
/// threads are spawned. See the [module documentation](self) for why.
pub fn retain_freed_memory() -> AllocatorTuning {
    if std::env::var(DISABLE_ENV).is_ok_and(|v| v.trim() == "0") {
        return AllocatorTuning::SkippedByEnvironment;
    }
    match jemalloc_mallctl() {
        Some(mallctl) => {
            if std::env::var_os("MALLOC_CONF").is_some() {
                return AllocatorTuning::SkippedByEnvironment;
            }
            apply_jemalloc(mallctl)
        }
        None => {
            const OWN: [&str; 4] = ["MMAP_MAX", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD"];
            let user_set = OWN
                .iter()
                .any(|name| std::env::var_os(format!("MALLOC_{name}_")).is_some())
                || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| {
                    OWN.iter()
                        .any(|name| t.contains(&format!("malloc.{}", name.to_ascii_lowercase())))
                });
            if user_set {
                return AllocatorTuning::SkippedByEnvironment;
            }
            apply()
        }
    }
}

fn apply_jemalloc(mallctl: Mallctl) -> AllocatorTuning {
    use std::ffi::{c_void, CString};
    // `mallctl(name, NULL, NULL, &value, sizeof value)`: 0 on success, an errno otherwise.
    let set = |name: &str, mut value: isize| -> i32 {
        let Ok(name) = CString::new(name) else {
            return -1;
        };
        // SAFETY: a NUL-terminated name, no old value requested, and a pointer to an ssize_t
        // with its size, as mallctl's decay settings take.
        unsafe {
            mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (&mut value as *mut isize).cast::<c_void>(),
                std::mem::size_of::<isize>(),
            )
        }
    };
    // The default of arenas created later ...
    for name in ["arenas.dirty_decay_ms", "arenas.muzzy_decay_ms"] {
        if set(name, -1) != 0 {
            return AllocatorTuning::Failed;
        }
    }
    // ... and every arena that exists now (an index not yet in use answers EFAULT: it will
    // start from the default above).
    let Some(narenas) = mallctl_read::<u32>(mallctl, c"arenas.narenas") else {
        return AllocatorTuning::Failed;
    };
    const EFAULT: i32 = 14;
    for i in 0..narenas {
        for kind in ["dirty", "muzzy"] {
            let rc = set(&format!("arena.{i}.{kind}_decay_ms"), -1);
            if rc != 0 && rc != EFAULT {
                return AllocatorTuning::Failed;
            }
        }
    }
    AllocatorTuning::Applied
}

/// Whether jemalloc keeps freed memory: its default for new arenas and arena 0 both have
/// decay turned off. `None` when jemalloc does not serve the process (glibc's settings cannot
/// be read back).
pub fn keeps_freed_memory() -> Option<bool> {
    let mallctl = jemalloc_mallctl()?;
    let names = [
        c"arenas.dirty_decay_ms",
        c"arenas.muzzy_decay_ms",
        c"arena.0.dirty_decay_ms",
        c"arena.0.muzzy_decay_ms",
    ];
    let mut off = true;
    for name in names {
        off &= mallctl_read::<isize>(mallctl, name)? == -1;
    }
    Some(off)
}

/// Reads jemalloc setting `name`, of C type `T` (`unsigned`, `ssize_t`, ...); `None` on an error.
fn mallctl_read<T: Copy + Default>(mallctl: Mallctl, name: &std::ffi::CStr) -> Option<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>();
    // SAFETY: `mallctl` is jemalloc's (the contract of `use_jemalloc`); it writes at most `len`
    // bytes, the size of `value`, and reads nothing.
    let rc = unsafe {
        mallctl(
            name.as_ptr(),
            (&mut value as *mut T).cast::<std::ffi::c_void>(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0).then_some(value)
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
