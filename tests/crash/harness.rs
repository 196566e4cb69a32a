//! The crash harness: which example runs, aborting it at every crash point
//! in turn, and killing it at random moments.

use super::orders::{assert_grown_in_place, check, orders_command, run_orders};
use super::seckill::{check_seckill, seckill_command};
use super::*;

pub(super) fn example_binary(name: &'static str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "--example",
            "orders",
            "--example",
            "seckill",
        ]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building the examples failed");
    });
    profile_dir.join("examples").join(name)
}

/// Which example a crash test runs.
#[derive(Clone, Copy)]
pub(super) enum Workload {
    Orders,
    /// The orders workload with a 1 ms index lag: nearly every saga gets
    /// its active-index entry from a move of the watermark while it runs,
    /// so the crash points fall around those moves.
    OrdersIndexedEarly,
    Seckill,
}

impl Workload {
    fn run(self, dir: &Path, crash: Option<(&str, u64)>) -> Output {
        match self {
            Workload::Orders => run_orders(dir, crash),
            Workload::OrdersIndexedEarly => orders_command(dir, crash, 0)
                .args(["--index-lag-ms", "1"])
                .output()
                .expect("the orders example starts"),
            Workload::Seckill => seckill_command(dir, crash, 0)
                .output()
                .expect("the seckill example starts"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Orders => "orders",
            Workload::OrdersIndexedEarly => "orders (1 ms index lag)",
            Workload::Seckill => "seckill",
        }
    }

    fn command(self, dir: &Path, bulk: usize) -> Command {
        match self {
            Workload::Orders => orders_command(dir, None, bulk),
            Workload::OrdersIndexedEarly => {
                let mut command = orders_command(dir, None, bulk);
                command.args(["--index-lag-ms", "1"]);
                command
            }
            Workload::Seckill => seckill_command(dir, None, bulk),
        }
    }

    fn check(self, dir: &Path, stdout: &str, label: &str) {
        match self {
            Workload::Orders | Workload::OrdersIndexedEarly => check(dir, stdout, label),
            Workload::Seckill => check_seckill(dir, stdout, label),
        }
    }
}

/// Where the example aborts itself, counted from the start of the run.
#[derive(Clone, Copy)]
pub(super) enum CrashPoint {
    /// Right after the Nth durable append.
    AfterAppend,
    /// Right before the Nth participant call, its intent durable.
    BeforeCall,
    /// Right after the Nth participant call, its result not yet durable.
    AfterCall,
}

impl CrashPoint {
    /// The example's flag and the word its abort message counts.
    fn flag_and_marker(self) -> (&'static str, &'static str) {
        match self {
            CrashPoint::AfterAppend => ("crash-after", "append"),
            CrashPoint::BeforeCall => ("crash-before-call", "call"),
            CrashPoint::AfterCall => ("crash-after-call", "call"),
        }
    }
}

/// Aborts the workload at each crash point of the kind in turn, reruns it
/// and checks it; asserts that the workload has many such points.
pub(super) fn survives_every(workload: Workload, point: CrashPoint) {
    let points = every_crash_point_of(workload, point);
    let (flag, marker) = point.flag_and_marker();
    println!(
        "crash points covered: {points} ({}, --{flag})",
        workload.name()
    );
    assert!(
        points >= 10,
        "the workload should have many {marker} points"
    );
}

/// Aborts the example at the Nth point, N = 1, 2, ... until a run completes;
/// after each abort, reruns it and checks everything. Returns how many crash
/// points were covered.
fn every_crash_point_of(workload: Workload, point: CrashPoint) -> u64 {
    let (flag, marker) = point.flag_and_marker();
    for n in 1..=500u64 {
        let dir = tempfile::tempdir().unwrap();
        let crashed = workload.run(dir.path(), Some((flag, n)));
        if crashed.status.success() {
            // N is past the last such point: the run completed without a crash.
            let label = format!("--{flag} {n} (no crash)");
            let stdout = String::from_utf8_lossy(&crashed.stdout);
            workload.check(dir.path(), &stdout, &label);
            if matches!(workload, Workload::Orders | Workload::OrdersIndexedEarly) {
                assert_grown_in_place(dir.path(), &stdout);
            }
            return n - 1;
        }
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains(&format!("{marker} #{n}")),
            "--{flag} {n} failed without the planned abort: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        let rerun = workload.run(dir.path(), None);
        assert!(
            rerun.status.success(),
            "rerun after --{flag} {n} failed: {}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        let label = format!("--{flag} {n}");
        workload.check(dir.path(), &String::from_utf8_lossy(&rerun.stdout), &label);
    }
    panic!("the workload never completed within 500 {marker}s");
}

/// A tiny seedable generator for kill times (xorshift64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

pub(super) fn kill_loop(workload: Workload, default_cycles: u64, bulk: usize) {
    let cycles: u64 = std::env::var("SAGALOG_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cycles);
    let seed: u64 = std::env::var("SAGALOG_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5a6a_1061);
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let (mut killed, mut finished_early) = (0, 0);
    for _ in 0..cycles {
        let mut child = workload
            .command(dir.path(), bulk)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the orders example starts");
        // Wall-clock kill times are fault injection, not a speed assumption:
        // any moment is a valid moment to die.
        std::thread::sleep(std::time::Duration::from_millis(20 + rng.below(400)));
        match child.try_wait().expect("child status") {
            Some(status) => {
                if !status.success() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                    }
                    let kept = dir.keep();
                    panic!(
                        "a cycle failed on its own: {status}\n{stderr}\ndata kept in {}",
                        kept.display()
                    );
                }
                finished_early += 1;
            }
            None => {
                child.kill().expect("SIGKILL the child");
                let _ = child.wait();
                killed += 1;
            }
        }
    }
    let last = workload
        .command(dir.path(), bulk)
        .output()
        .expect("the final run starts");
    assert!(
        last.status.success(),
        "the final clean run failed: {}",
        String::from_utf8_lossy(&last.stderr)
    );
    workload.check(
        dir.path(),
        &String::from_utf8_lossy(&last.stdout),
        "after the kill loop",
    );
    println!(
        "kill loop ({}): {cycles} cycles ({killed} SIGKILLed mid-run, {finished_early} finished first), {bulk} bulk + the scenarios, seed {seed:#x}: no violation",
        workload.name()
    );
}
