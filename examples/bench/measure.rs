//! What the bench reads from the process and the disk: memory, CPU time,
//! directory sizes, percentiles, and the disk's synced-write rate.

use crate::*;

pub(crate) fn rss_mb(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// CPU time this process has used so far (every thread, user + system), in
/// seconds: from `/proc/self/stat`, whose clock ticks are USER_HZ (100 on
/// Linux). 0 where it cannot be read.
pub(crate) fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces): state is
    // field 3, utime 14 and stime 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// The machine's busy and total CPU seconds so far, over every core
/// (`/proc/stat`; zeros where it cannot be read).
pub(crate) fn host_cpu_secs() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    // idle and iowait are fields 4 and 5.
    let idle: u64 = ticks.iter().skip(3).take(2).sum();
    ((total - idle) as f64 / 100.0, total as f64 / 100.0)
}

/// Cores busy on the whole machine between two [`host_cpu_secs`] readings,
/// out of the cores it has.
pub(crate) fn host_cores_busy(before: (f64, f64), after: (f64, f64)) -> f64 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let total = after.1 - before.1;
    match total > 0.0 {
        true => ((after.0 - before.0) / total * cores * 100.0).round() / 100.0,
        false => 0.0,
    }
}

pub(crate) fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// The disk's raw rate of small synced writes: 64 bytes, then `fdatasync`.
pub(crate) fn raw_fsync_per_sec(dir: &Path) -> f64 {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let Ok(mut file) = std::fs::File::create(&path) else {
        return 0.0;
    };
    let n = 500;
    let began = Instant::now();
    for _ in 0..n {
        if file
            .write_all(&[0u8; 64])
            .and_then(|_| file.sync_data())
            .is_err()
        {
            return 0.0;
        }
    }
    let rate = n as f64 / began.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    rate
}
