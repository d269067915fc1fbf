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

/// After the tuning: a freed 256 MiB block stays resident, the next one of its size reuses it,
/// and other threads still allocate and free 200 MiB blocks.
pub fn freed_block_is_kept_and_reused() {
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
    let sums: Vec<usize> = (0..2)
        .map(|_| std::thread::spawn(|| touched(200).iter().map(|&b| b as usize).sum::<usize>()))
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(sums, vec![200 * 256; 2]);
}
