//! Running the example and the `sagalog` binary, the shared fixture
//! database, and the golden files.

use super::*;

/// The orders example, built by cargo first (tests do not build examples).
pub(super) fn orders_binary() -> PathBuf {
    example_binary("orders")
}

/// Example `name`, built by cargo first.
pub(super) fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "sagalog", "--example", name]);
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    assert!(build.status().expect("cargo runs").success());
    profile_dir.join("examples").join(name)
}

/// Runs the orders example on `dir` with `args`; gives up after a minute.
pub(super) fn run_orders(dir: &Path, args: &[&str]) -> Output {
    let child = Command::new(orders_binary())
        .arg("--data-dir")
        .arg(dir)
        .args(["--json", "--scheduled-delay-ms", "600000"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the orders example starts");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let watchdog = std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return;
            }
        }
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let output = child.wait_with_output().expect("the orders example runs");
    let _ = watchdog.join();
    output
}

pub(super) fn sagalog(db: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagalog"))
        .arg("--db")
        .arg(db.join("log"))
        .args(args)
        .output()
        .expect("sagalog runs")
}

pub(super) fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "sagalog failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(super) fn json(db: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&stdout(&sagalog(db, &all))).expect("sagalog prints JSON")
}

/// The fixture, produced once: the first crash point at which the manual
/// queue and the delay queue each hold one order.
pub(super) fn fixture() -> &'static Path {
    static FIXTURE: OnceLock<PathBuf> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = tempfile::tempdir().expect("temp dir").keep();
        for n in 1..60 {
            let dir = root.join(format!("crash-after-{n}"));
            run_orders(&dir, &["--crash-after", &n.to_string()]);
            let stats = json(&dir, &["stats"]);
            if stats["manual_queue_depth"] == 1 && stats["delay_queue_depth"] == 1 {
                return dir;
            }
        }
        panic!("no crash point left one order suspended and one asleep");
    })
}

/// A private copy of the fixture, for a test that changes it.
pub(super) fn copy_of_fixture() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(fixture(), dir.path());
    dir
}

/// The ids of the sagas `list` shows, in its order.
pub(super) fn listed(db: &Path) -> Vec<String> {
    let list = json(db, &["list"]);
    let sagas = list["sagas"].as_array().unwrap();
    sagas
        .iter()
        .map(|s| s["saga_id"].as_str().unwrap().to_string())
        .collect()
}

/// (manual saga, sleeping saga, finished sagas) of a fixture copy.
pub(super) fn roles(db: &Path) -> (String, String, Vec<String>) {
    let list = json(db, &["list"]);
    let sagas = list["sagas"].as_array().unwrap();
    let with = |status: &str| -> Vec<String> {
        sagas
            .iter()
            .filter(|s| s["status"] == status)
            .map(|s| s["saga_id"].as_str().unwrap().to_string())
            .collect()
    };
    let finished = [with("COMMITTED"), with("COMPENSATED")].concat();
    (
        with("SUSPENDED")[0].clone(),
        with("COMPENSATING")[0].clone(),
        finished,
    )
}

/// Replaces saga ids with `<saga-N>` (in order of appearance) and RFC 3339
/// times with `<time>`, keeping the column padding.
pub(super) fn normalize(text: &str) -> String {
    let mut ids: Vec<String> = Vec::new();
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let is_hex = |c: char| c.is_ascii_hexdigit() && !c.is_ascii_uppercase();
    while i < chars.len() {
        let rest: String = chars[i..chars.len().min(i + 36)].iter().collect();
        if rest.len() == 36
            && SagaId::parse(&rest).is_some()
            && rest.chars().all(|c| is_hex(c) || c == '-')
        {
            let n = match ids.iter().position(|id| *id == rest) {
                Some(n) => n,
                None => {
                    ids.push(rest.clone());
                    ids.len() - 1
                }
            };
            let placeholder = format!("<saga-{}>", n + 1);
            out.push_str(&format!("{placeholder:<36}"));
            i += 36;
            continue;
        }
        let time: String = chars[i..chars.len().min(i + 24)].iter().collect();
        let shaped = time.len() == 24
            && time.chars().enumerate().all(|(k, c)| match k {
                4 | 7 => c == '-',
                10 => c == 'T',
                13 | 16 => c == ':',
                19 => c == '.',
                23 => c == 'Z',
                _ => c.is_ascii_digit(),
            });
        if shaped {
            out.push_str(&format!("{:<24}", "<time>"));
            i += 24;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out.lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden file {}", path.display()));
    assert_eq!(
        actual,
        expected.trim_end(),
        "output differs from {}; rerun with UPDATE_GOLDEN=1 if the change is intended",
        path.display()
    );
}

/// Each file under `dir` with its bytes, in path order.
pub(super) fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                files.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// A tiny seedable generator for kill times (xorshift64).
pub(super) fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}
