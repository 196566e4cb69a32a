//! Rendering: every command's result as an aligned table, or as JSON.

/// `println!` that exits quietly (status 0) when stdout is closed, as when
/// the output is piped into `head`, instead of panicking on the broken pipe.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: could not write the output: {e}");
            std::process::exit(1);
        }
    }};
}

use sagalog::api::{ActionDone, BulkReport, DelayQueue, ManualQueue, SagaPage};
use sagalog::tools::VerifyReport;
use sagalog::{SagaDetail, Stats, SweepReport, UnixMillis};
use serde_json::Value;

/// Where results go, and in which form.
pub struct Output {
    pub json: bool,
}

/// A time as RFC 3339 in UTC with milliseconds; `-` for "never".
pub fn time(at: UnixMillis) -> String {
    if at.0 == 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.0);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Rows as columns padded to their widest cell (the last one unpadded).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn print_json(value: Value) {
    say!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    );
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A time and how far it is from now, e.g. "2026-12-02T12:04:05.000Z (in
/// 2.1 s)" or "(3 min ago)".
pub fn time_from_now(at: UnixMillis, now: UnixMillis) -> String {
    format!("{} ({})", time(at), relative(at, now))
}

/// "in 2.1 s" or "3 min ago".
fn relative(at: UnixMillis, now: UnixMillis) -> String {
    let (ms, ahead) = match at.0.checked_sub(now.0) {
        Some(ahead) => (ahead, true),
        None => (now.0 - at.0, false),
    };
    let secs = ms as f64 / 1000.0;
    let span = match secs {
        s if s < 60.0 => format!("{s:.1} s"),
        s if s < 3600.0 => format!("{:.0} min", s / 60.0),
        s if s < 86_400.0 => format!("{:.1} h", s / 3600.0),
        s => format!("{:.1} d", s / 86_400.0),
    };
    match ahead {
        true => format!("in {span}"),
        false => format!("{span} ago"),
    }
}

/// Adds how far from now each RFC 3339 time in `line` is.
fn with_relative(line: &str, now: UnixMillis) -> String {
    line.split(' ')
        .map(|word| {
            let bare = word.trim_end_matches([',', ';', ')']);
            match humantime::parse_rfc3339(bare)
                .ok()
                .and_then(UnixMillis::from_system_time)
            {
                Some(at) => word.replacen(bare, &format!("{bare} ({})", relative(at, now)), 1),
                None => word.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn to_json<T: serde::Serialize>(document: &T) {
    match serde_json::to_value(document) {
        Ok(value) => print_json(value),
        Err(e) => print_json(Value::String(format!("could not write the document: {e}"))),
    }
}

/// Who carries out an action the tool recorded, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    /// A running service, at once.
    Now,
    /// A stopped service's database: the service, when it starts.
    AtNextStart,
    /// A PostgreSQL log: the live node that runs the saga (the action was
    /// queued for it), or the one that adopts it.
    ByALiveNode,
}

impl Output {
    pub fn list(&self, page: &SagaPage) {
        if self.json {
            return to_json(page);
        }
        // On a log several nodes share, which node runs each saga.
        let owners = page.sagas.iter().any(|s| s.owner.is_some());
        let rows: Vec<Vec<String>> = page
            .sagas
            .iter()
            .map(|s| {
                let mut row = vec![
                    s.saga_id.to_string(),
                    s.saga_type.to_string(),
                    match &s.pending {
                        Some(pending) => format!("{} ({pending} pending)", s.status.name()),
                        None => s.status.name().to_string(),
                    },
                    time(s.started_at),
                    time(s.changed_at),
                    s.next_wake.map_or("-".into(), time),
                ];
                if owners {
                    row.push(s.owner.clone().unwrap_or_else(|| "-".into()));
                }
                row
            })
            .collect();
        let mut header = vec!["SAGA", "TYPE", "STATUS", "STARTED", "CHANGED", "WAKES"];
        if owners {
            header.push("OWNER");
        }
        say!("{}", table(&header, &rows));
        match page.next {
            Some(last) => say!(
                "({}; there may be more: add --after {last})",
                plural(page.sagas.len(), "saga", "sagas")
            ),
            None => say!("({})", plural(page.sagas.len(), "saga", "sagas")),
        }
    }

    pub fn show(&self, detail: &SagaDetail, now: UnixMillis) {
        if self.json {
            return to_json(detail);
        }
        let view = &detail.saga;
        let strategy = if view.tcc {
            "try / confirm / cancel (TCC)".to_string()
        } else {
            view.strategy.clone()
        };
        let mut summary = vec![
            ("saga", view.saga_id.to_string()),
            (
                "type",
                format!("{} (version {})", view.saga_type, view.version),
            ),
            ("status", view.status.name().to_string()),
            ("strategy", strategy),
            (
                "key",
                view.idempotency_key.clone().unwrap_or_else(|| "-".into()),
            ),
            ("started", time(view.started_at)),
            ("updated", time(view.updated_at)),
        ];
        if let Some(waiting) = &view.waiting {
            summary.push(("waiting", with_relative(waiting, now)));
        }
        if let Some((step, failure)) = &view.failure {
            summary.push((
                "failure",
                format!("{step}: {} ({:?})", failure.message, failure.class),
            ));
        }
        // A suspended saga's reason is already in its waiting line.
        if let Some(reason) = view.reason.as_ref().filter(|r| {
            !view
                .waiting
                .as_ref()
                .is_some_and(|w| w.contains(r.as_str()))
        }) {
            summary.push(("reason", reason.clone()));
        }
        for pending in &view.pending {
            summary.push((
                "pending",
                format!("{pending} (recorded; the service does it when it next runs)"),
            ));
        }
        if let Some(parent) = &view.parent {
            summary.push((
                "parent",
                format!("{} (runs as its step #{})", parent.saga, parent.step),
            ));
        }
        for (step, child) in &view.children {
            summary.push((
                "child",
                format!("{child} (step {step}; `sagalog show {child}`)"),
            ));
        }
        for (label, value) in summary {
            say!("{label:<9} {value}");
        }
        let steps: Vec<Vec<String>> = view
            .steps
            .iter()
            .map(|s| {
                let error = s
                    .last_error
                    .as_ref()
                    .map_or("-".into(), |e| e.message.clone());
                let mut row = vec![
                    s.name.to_string(),
                    s.state.clone(),
                    s.action_attempts.to_string(),
                ];
                if view.tcc {
                    row.push(s.confirm_attempts.to_string());
                }
                row.extend([s.compensation_attempts.to_string(), error]);
                row
            })
            .collect();
        let headers: &[&str] = if view.tcc {
            &[
                "BRANCH",
                "STATE",
                "TRIES",
                "CONFIRMS",
                "CANCELS",
                "LAST ERROR",
            ]
        } else {
            &["STEP", "STATE", "ACTION TRIES", "COMP TRIES", "LAST ERROR"]
        };
        say!("\n{}", table(headers, &steps));
        let timeline: Vec<Vec<String>> = detail
            .timeline
            .iter()
            .map(|e| {
                vec![
                    e.seq.to_string(),
                    e.at.map_or("?".into(), time),
                    match e.kind.as_str() {
                        "unreadable" => e.text.to_uppercase(),
                        _ => e.text.clone(),
                    },
                ]
            })
            .collect();
        say!("\n{}", table(&["SEQ", "TIME", "RECORD"], &timeline));
    }

    pub fn manual(&self, queue: &ManualQueue) {
        if self.json {
            return to_json(queue);
        }
        let items = &queue.manual_queue;
        let rows: Vec<Vec<String>> = items
            .iter()
            .map(|m| {
                vec![
                    m.saga_id.to_string(),
                    m.saga_type.to_string(),
                    time(m.since),
                    m.failed_step
                        .as_ref()
                        .map_or("-".into(), |(s, f)| format!("{s}: {}", f.message)),
                    if m.to_compensate.is_empty() {
                        "-".into()
                    } else {
                        m.to_compensate.join(", ")
                    },
                    match (m.parked, m.pending.is_empty()) {
                        (true, _) => format!("PARKED: {}", m.reason),
                        (false, true) => m.reason.clone(),
                        (false, false) => {
                            format!("{} (pending: {})", m.reason, m.pending.join("; "))
                        }
                    },
                ]
            })
            .collect();
        say!(
            "{}",
            table(
                &[
                    "SAGA",
                    "TYPE",
                    "SINCE",
                    "FAILED STEP",
                    "WOULD COMPENSATE",
                    "REASON"
                ],
                &rows
            )
        );
        say!("({} waiting)", items.len());
    }

    pub fn delay(&self, queue: &DelayQueue, now: UnixMillis) {
        if self.json {
            return to_json(queue);
        }
        let rows: Vec<Vec<String>> = queue
            .delay_queue
            .iter()
            .map(|d| {
                vec![
                    time_from_now(d.due, now),
                    d.saga_id.to_string(),
                    d.purpose
                        .as_ref()
                        .map_or("(unreadable purpose)".into(), |p| p.describe(&[])),
                ]
            })
            .collect();
        say!("{}", table(&["DUE", "SAGA", "WHY"], &rows));
        say!("({} asleep)", queue.delay_queue.len());
    }

    /// Actions done: at once on a running service (`live`), or recorded
    /// for the service's next start.
    pub fn acted(&self, done: &[ActionDone], carried: Carried) {
        if self.json {
            return to_json(&done);
        }
        let Some(last) = done.last() else { return };
        for d in done {
            say!(
                "{} on saga {} by {}",
                d.action.name(),
                d.saga.saga_id,
                d.actor
            );
        }
        let saga = &last.saga;
        let now = format!(
            "done: the saga is now {}{}",
            saga.status.name(),
            saga.waiting
                .as_ref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        );
        match carried {
            Carried::Now => say!("{now}"),
            Carried::AtNextStart => say!("recorded; the service carries it out at its next start"),
            Carried::ByALiveNode => say!(
                "{now}; the live node that runs it carries the action out, or the one that adopts it if none runs it (`sagalog list` shows its owner, `sagalog nodes` the nodes)"
            ),
        }
    }

    pub fn bulk(&self, report: &BulkReport) {
        if self.json {
            return to_json(report);
        }
        let rows: Vec<Vec<String>> = report
            .sagas
            .iter()
            .map(|item| {
                let result = match (&item.error, item.applied) {
                    (Some(error), _) => format!("refused: {error}"),
                    (None, true) => "applied".to_string(),
                    (None, false) => "would apply".to_string(),
                };
                vec![item.saga_id.to_string(), item.status.name().into(), result]
            })
            .collect();
        say!("{}", table(&["SAGA", "STATUS", "RESULT"], &rows));
        let applied = report.sagas.iter().filter(|i| i.applied).count();
        match report.dry_run {
            true => say!(
                "dry run: {} would get {}; run again without --dry-run to apply",
                plural(report.sagas.len(), "saga", "sagas"),
                report.action.name()
            ),
            false => say!(
                "{} applied to {} of {}",
                report.action.name(),
                applied,
                plural(report.sagas.len(), "saga", "sagas")
            ),
        }
    }

    pub fn stats(&self, stats: &Stats) {
        if self.json {
            return to_json(stats);
        }
        let rows: Vec<Vec<String>> = stats
            .by_status
            .iter()
            .map(|(s, n)| vec![s.name().to_string(), n.to_string()])
            .collect();
        say!("{}", table(&["STATUS", "SAGAS"], &rows));
        match stats.oldest_in_flight {
            Some((id, at)) => say!("\noldest in flight   {id} (started {})", time(at)),
            None => say!("\noldest in flight   -"),
        }
        say!("delay queue depth  {}", stats.delay_queue_depth);
        say!("manual queue depth {}", stats.manual_queue_depth);
        say!("parked             {}", stats.parked);
    }

    /// The nodes of a shared log, and the sagas in flight no node owns.
    pub fn nodes(&self, nodes: &[sagalog::NodeStatus], unowned: u64) {
        if self.json {
            return to_json(&serde_json::json!({ "nodes": nodes, "unowned_in_flight": unowned }));
        }
        if nodes.is_empty() {
            say!("no node has joined this log yet");
        } else {
            // A span of `ms` from now, in the words `relative` uses.
            let from_now = |ms: i64| {
                let now = UnixMillis(1 << 62);
                relative(UnixMillis(now.0.saturating_add_signed(ms)), now)
            };
            let lease = |n: &sagalog::NodeStatus| match n.state.as_str() {
                "live" if n.expires_in_ms >= 0 => format!("expires {}", from_now(n.expires_in_ms)),
                "live" => format!("expired {}", from_now(n.expires_in_ms)),
                _ => "-".into(),
            };
            let rows: Vec<Vec<String>> = nodes
                .iter()
                .map(|n| {
                    let state = match &n.fenced_by {
                        Some(by) => format!("{} (by {by})", n.state),
                        None => n.state.clone(),
                    };
                    vec![
                        n.node_id.clone(),
                        state,
                        n.token.to_string(),
                        lease(n),
                        from_now(-n.renewed_ms_ago),
                        n.in_flight.to_string(),
                        n.saga_types.join(","),
                    ]
                })
                .collect();
            say!(
                "{}",
                table(
                    &[
                        "NODE",
                        "STATE",
                        "TOKEN",
                        "LEASE",
                        "RENEWED",
                        "IN FLIGHT",
                        "TYPES"
                    ],
                    &rows
                )
            );
        }
        let waiting: u64 = nodes
            .iter()
            .filter(|n| n.state != "live")
            .map(|n| n.in_flight)
            .sum::<u64>()
            + unowned;
        if waiting > 0 {
            let sagas = if waiting == 1 { "saga" } else { "sagas" };
            say!("{waiting} {sagas} in flight wait for a live node to adopt them ({unowned} handed over, the rest of dead or departed nodes)");
        }
    }

    pub fn verify(&self, report: &VerifyReport) {
        let hex = |key: &[u8]| key.iter().map(|b| format!("{b:02x}")).collect::<String>();
        if self.json {
            return to_json(report);
        }
        say!(
            "checked {} keys: {} log values ({} records), {} index entries",
            report.keys,
            report.log_values,
            report.records,
            report.index_entries
        );
        if report.is_clean() {
            say!("no damaged value found");
            return;
        }
        let rows: Vec<Vec<String>> = report
            .problems
            .iter()
            .map(|p| {
                vec![
                    hex(&p.key),
                    p.saga.map_or("-".into(), |s| s.to_string()),
                    p.what.to_string(),
                    p.error.clone(),
                ]
            })
            .collect();
        say!("{}", table(&["KEY (HEX)", "SAGA", "WHAT", "ERROR"], &rows));
        say!(
            "{} damaged: the sagas named are parked by the service until repaired (see DESIGN.md, Recovery)",
            report.problems.len()
        );
    }

    pub fn sweep(&self, report: &SweepReport, before: u64, after: u64) {
        /// `sweep --json`: the report with the database's size around it.
        #[derive(serde::Serialize)]
        struct Swept<'a> {
            #[serde(flatten)]
            report: &'a SweepReport,
            bytes_on_disk_before: u64,
            bytes_on_disk_after: u64,
        }
        if self.json {
            return to_json(&Swept {
                report,
                bytes_on_disk_before: before,
                bytes_on_disk_after: after,
            });
        }
        say!(
            "removed {} of {} finished sagas old enough ({} keys; {} skipped)",
            report.removed,
            report.eligible,
            report.keys_removed,
            report.skipped
        );
        say!("disk size before {before} bytes, after {after} bytes");
        say!("sled reuses the freed space for new writes; `sagalog compact` returns it to the filesystem");
    }

    pub fn compacted(&self, compacted: &sagalog::Compacted) {
        if self.json {
            return to_json(compacted);
        }
        say!(
            "copied {} keys; disk size before {} bytes, after {} bytes",
            compacted.keys,
            compacted.bytes_before,
            compacted.bytes_after
        );
    }

    pub fn repaired(&self, report: &sagalog::tools::RepairReport) {
        use sagalog::tools::RepairOutcome;
        let salvage = match &report.outcome {
            RepairOutcome::Healthy => None,
            RepairOutcome::Salvaged(salvage) => Some(salvage),
            // An outcome newer than this tool: say only what it reports below.
            _ => None,
        };
        if self.json {
            return to_json(report);
        }
        if report.witness_rebuilt {
            say!("rebuilt the witness file from sled's group mark (the damaged one is kept beside it)");
        }
        for path in &report.set_aside {
            say!("set aside {}", path.display());
        }
        let Some(salvage) = salvage else {
            say!("the database opens and every value reads: nothing more to do");
            return;
        };
        say!("the database still does not open whole: {}", salvage.reason);
        say!(
            "copied {} readable keys into {} (the original is untouched)",
            salvage.keys,
            salvage.into.display()
        );
        for problem in &salvage.problems {
            say!("  {problem}");
        }
        if !salvage.incomplete.is_empty() {
            say!("sagas not copied whole (they are parked when the copy opens):");
            for id in &salvage.incomplete {
                say!("  {id}");
            }
        }
        say!(
            "next: check the report, then stop the service, move the original away and the copy into its place"
        );
    }
}
