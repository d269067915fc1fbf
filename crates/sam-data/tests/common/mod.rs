//! Helpers of the allocator tests.
#![allow(clippy::unwrap_used, dead_code)]

/// Resident memory of this process in MiB (`VmRSS`).
#[cfg(target_os = "linux")]
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

/// A buffer whose every page is written, so it is resident.
pub fn touched(mib: usize) -> Vec<u8> {
    let mut v = vec![0u8; mib << 20];
    for b in v.iter_mut().step_by(4096) {
        *b = 1;
    }
    v
}
