//! The crash harness: which example runs, aborting it at every crash point
//! in turn, and killing it at random moments.

use super::orders::{assert_grown_in_place, check, orders_command};
use super::place::Place;
use super::seckill::{check_seckill, seckill_command};
use super::*;

/// Example `name`, built for the profile the tests run in.
pub(super) fn example_binary(name: &'static str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let profile_dir = built_once(&BUILT, &["--example", "orders", "--example", "seckill"]);
    profile_dir.join("examples").join(name)
}

/// The command line tool (`sagalog`), built for the profile the tests
/// run in.
pub(super) fn cli_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    built_once(&BUILT, &["-p", "sagalog-cli", "--bin", "sagalog"]).join("sagalog")
}

/// Runs `cargo build --quiet TARGETS` once per `built`, for the profile
/// the tests run in; the profile's target directory.
fn built_once(built: &std::sync::OnceLock<()>, targets: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf();
    built.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet"]).args(targets);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building {targets:?} failed");
    });
    profile_dir
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
    fn run(self, place: &Place, crash: Option<(&str, u64)>) -> Output {
        self.command(place, crash, 0)
            .output()
            .expect("the example starts")
    }

    fn name(self) -> &'static str {
        match self {
            Workload::Orders => "orders",
            Workload::OrdersIndexedEarly => "orders (1 ms index lag)",
            Workload::Seckill => "seckill",
        }
    }

    fn command(self, place: &Place, crash: Option<(&str, u64)>, bulk: usize) -> Command {
        match self {
            Workload::Orders => orders_command(place, crash, bulk),
            Workload::OrdersIndexedEarly => {
                let mut command = orders_command(place, crash, bulk);
                command.args(["--index-lag-ms", "1"]);
                command
            }
            Workload::Seckill => seckill_command(place, crash, bulk),
        }
    }

    fn check(self, place: &Place, stdout: &str, label: &str) {
        match self {
            Workload::Orders | Workload::OrdersIndexedEarly => check(place, stdout, label),
            Workload::Seckill => check_seckill(place, stdout, label),
        }
    }
}

/// Which store a crash test's runs keep their log and books in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Store {
    /// sled, in a directory.
    Sled,
    /// The test PostgreSQL (tests/common/pg.rs), a fresh schema per place.
    Postgres,
}

impl Store {
    /// A fresh place; `None` when the store is PostgreSQL and there is
    /// none (the test says so and does not run).
    fn place(self) -> Option<Place> {
        match self {
            Store::Sled => Some(Place::sled()),
            Store::Postgres => Place::postgres(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Store::Sled => "",
            Store::Postgres => ", on PostgreSQL",
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
pub(super) fn survives_every(workload: Workload, point: CrashPoint, store: Store) {
    let Some(points) = every_crash_point_of(workload, point, store) else {
        return;
    };
    let (flag, marker) = point.flag_and_marker();
    println!(
        "crash points covered: {points} ({}{}, --{flag})",
        workload.name(),
        store.name()
    );
    assert!(
        points >= 10,
        "the workload should have many {marker} points"
    );
}

/// Aborts the example at the Nth point, N = 1, 2, ... until a run completes;
/// after each abort, reruns it and checks everything. Returns how many crash
/// points were covered, or `None` when the store is not there.
fn every_crash_point_of(workload: Workload, point: CrashPoint, store: Store) -> Option<u64> {
    let (flag, marker) = point.flag_and_marker();
    for n in 1..=500u64 {
        let place = store.place()?;
        let crashed = workload.run(&place, Some((flag, n)));
        if crashed.status.success() {
            // N is past the last such point: the run completed without a crash.
            let label = format!("--{flag} {n} (no crash)");
            let stdout = String::from_utf8_lossy(&crashed.stdout);
            workload.check(&place, &stdout, &label);
            let orders = matches!(workload, Workload::Orders | Workload::OrdersIndexedEarly);
            if orders && store == Store::Sled {
                assert_grown_in_place(place.dir(), &stdout);
            }
            return Some(n - 1);
        }
        assert!(
            String::from_utf8_lossy(&crashed.stderr).contains(&format!("{marker} #{n}")),
            "--{flag} {n} failed without the planned abort: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        let rerun = workload.run(&place, None);
        assert!(
            rerun.status.success(),
            "rerun after --{flag} {n} failed: {}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        let label = format!("--{flag} {n}");
        workload.check(&place, &String::from_utf8_lossy(&rerun.stdout), &label);
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

pub(super) fn kill_loop(workload: Workload, default_cycles: u64, bulk: usize, store: Store) {
    let Some(place) = store.place() else {
        return;
    };
    let cycles: u64 = std::env::var("SAGALOG_KILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cycles);
    let seed: u64 = std::env::var("SAGALOG_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5a6a_1061);
    let mut rng = Rng(seed | 1);
    let (mut killed, mut finished_early) = (0, 0);
    for _ in 0..cycles {
        let mut child = workload
            .command(&place, None, bulk)
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
                    let kept = place.keep();
                    panic!("a cycle failed on its own: {status}\n{stderr}\ndata kept in {kept}");
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
        .command(&place, None, bulk)
        .output()
        .expect("the final run starts");
    assert!(
        last.status.success(),
        "the final clean run failed: {}",
        String::from_utf8_lossy(&last.stderr)
    );
    workload.check(
        &place,
        &String::from_utf8_lossy(&last.stdout),
        "after the kill loop",
    );
    println!(
        "kill loop ({}{}): {cycles} cycles ({killed} SIGKILLed mid-run, {finished_early} finished first), {bulk} bulk + the scenarios, seed {seed:#x}: no violation",
        workload.name(),
        store.name()
    );
}
