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

use sagalog::tools::VerifyReport;
use sagalog::{
    HistoryEntry, ManualItem, SagaId, SagaListing, SagaView, Stats, SweepReport, UnixMillis,
};
use sagalog::{Record, WaitPurpose};
use serde_json::{json, Value};

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

/// Step `i`'s name from the plan, or `#i` if the plan has no such step.
fn step_name(steps: &[String], i: u32) -> String {
    steps
        .get(i as usize)
        .cloned()
        .unwrap_or_else(|| format!("#{i}"))
}

/// The words for a saga's calls: a saga's steps have an action and a
/// compensation; a TCC transaction's branches a try, a confirm and a
/// cancel (a compensation once the transaction committed).
#[derive(Clone, Copy)]
struct Words {
    forward: &'static str,
    backward: &'static str,
}

impl Words {
    const SAGA: Words = Words {
        forward: "action",
        backward: "compensation",
    };

    /// The words for each record of `history`, in order.
    fn of_history(tcc: bool, history: &[HistoryEntry]) -> Vec<Words> {
        let mut committed = false;
        history
            .iter()
            .map(|e| {
                if let Ok((_, Record::Decided(d))) = &e.record {
                    committed = d.decision == sagalog::Decision::Commit;
                }
                match (tcc, committed) {
                    (false, _) => Words::SAGA,
                    (true, false) => Words {
                        forward: "try",
                        backward: "cancel",
                    },
                    (true, true) => Words {
                        forward: "try",
                        backward: "compensation",
                    },
                }
            })
            .collect()
    }
}

/// One record in words, with step names from the saga's plan.
fn describe(record: &Record, steps: &[String], words: Words) -> String {
    let step = |i: u32| step_name(steps, i);
    let (forward, backward) = (words.forward, words.backward);
    match record {
        Record::SagaStarted(s) => {
            let key = s
                .idempotency_key
                .as_ref()
                .map(|k| format!(", key {}", k.as_str()))
                .unwrap_or_default();
            let parent = s
                .parent
                .map(|p| format!(", sub-saga of {} step #{}", p.saga, p.step))
                .unwrap_or_default();
            let kind = if s.plan.is_tcc() {
                "TCC (try / confirm / cancel)".to_string()
            } else {
                format!("strategy {}", s.plan.strategy.name())
            };
            format!(
                "started {} v{}, {kind}{key}{parent}",
                s.saga_type, s.version
            )
        }
        Record::StepStarted(c) => {
            format!("{} {forward}, attempt {}: intent", step(c.step), c.attempt)
        }
        Record::StepSucceeded(r) => format!(
            "{} {forward}, attempt {}: succeeded",
            step(r.call.step),
            r.call.attempt
        ),
        Record::StepFailed(f) => format!(
            "{} {forward}, attempt {}: failed ({:?}): {}",
            step(f.call.step),
            f.call.attempt,
            f.failure.class,
            f.failure.message
        ),
        Record::CompensationStarted(c) => {
            format!("{} {backward}, attempt {}: intent", step(c.step), c.attempt)
        }
        Record::CompensationSucceeded(c) => format!(
            "{} {backward}, attempt {}: succeeded",
            step(c.step),
            c.attempt
        ),
        Record::CompensationFailed(f) => format!(
            "{} {backward}, attempt {}: failed ({:?}): {}",
            step(f.call.step),
            f.call.attempt,
            f.failure.class,
            f.failure.message
        ),
        Record::SagaSuspended(s) => format!("suspended: {}", s.reason),
        Record::SagaFinished(f) => format!("finished {}", f.status),
        Record::TimerSet(t) => format!(
            "asleep until {}: {}",
            time(t.due),
            purpose(&t.purpose, steps)
        ),
        Record::OperatorAction(a) => {
            let command = match a.command {
                sagalog::OperatorCommand::MarkCompensated { step: s } => {
                    format!("mark_compensated {}", step(s))
                }
                other => other.name().to_string(),
            };
            format!("operator {}: {command} ({})", a.actor, a.reason)
        }
        Record::Decided(d) => format!("decided: {:?}", d.decision).to_lowercase(),
        Record::ConfirmStarted(c) => {
            format!("{} confirm, attempt {}: intent", step(c.step), c.attempt)
        }
        Record::ConfirmSucceeded(c) => {
            format!("{} confirm, attempt {}: succeeded", step(c.step), c.attempt)
        }
        Record::ConfirmFailed(f) => format!(
            "{} confirm, attempt {}: failed ({:?}): {}",
            step(f.call.step),
            f.call.attempt,
            f.failure.class,
            f.failure.message
        ),
        other => format!(
            "{} (a record kind this tool does not know)",
            other.kind_name()
        ),
    }
}

fn purpose(purpose: &WaitPurpose, steps: &[String]) -> String {
    let names: Vec<&str> = steps.iter().map(String::as_str).collect();
    purpose.describe(&names)
}

impl Output {
    /// `keys` holds each saga's idempotency key (JSON only: reading them
    /// costs a log read per saga).
    pub fn list(&self, sagas: &[SagaListing], keys: &[Option<String>]) {
        if self.json {
            let rows: Vec<Value> = sagas
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    json!({
                        "saga_id": s.saga_id.to_string(),
                        "idempotency_key": keys.get(i).cloned().flatten(),
                        "saga_type": s.saga_type.as_str(),
                        "status": s.status.name(),
                        "started_at": s.started_at.0,
                        "changed_at": s.changed_at.0,
                        "next_wake": s.next_wake.map(|t| t.0),
                        "parked": s.parked,
                        "pending": s.pending,
                    })
                })
                .collect();
            return print_json(json!({ "sagas": rows }));
        }
        let rows: Vec<Vec<String>> = sagas
            .iter()
            .map(|s| {
                vec![
                    s.saga_id.to_string(),
                    s.saga_type.to_string(),
                    match &s.pending {
                        Some(pending) => format!("{} ({pending} pending)", s.status.name()),
                        None => s.status.name().to_string(),
                    },
                    time(s.started_at),
                    time(s.changed_at),
                    s.next_wake.map_or("-".into(), time),
                ]
            })
            .collect();
        say!(
            "{}",
            table(
                &["SAGA", "TYPE", "STATUS", "STARTED", "CHANGED", "WAKES"],
                &rows
            )
        );
        say!("({})", plural(sagas.len(), "saga", "sagas"));
    }

    pub fn show(&self, view: &SagaView, history: &[HistoryEntry]) {
        let names: Vec<String> = view.steps.iter().map(|s| s.name.to_string()).collect();
        let words = Words::of_history(view.tcc, history);
        let word = |i: usize| words.get(i).copied().unwrap_or(Words::SAGA);
        let strategy = if view.tcc {
            "try / confirm / cancel (TCC)".to_string()
        } else {
            view.strategy.to_string()
        };
        if self.json {
            let steps: Vec<Value> = view
                .steps
                .iter()
                .map(|s| {
                    if view.tcc {
                        json!({
                            "name": s.name.as_str(),
                            "summary": s.tcc_summary(),
                            "try": format!("{:?}", s.action),
                            "try_attempts": s.action_attempts,
                            "confirm": format!("{:?}", s.confirm),
                            "confirm_attempts": s.confirm_attempts,
                            "cancel": format!("{:?}", s.compensation),
                            "cancel_attempts": s.compensation_attempts,
                            "last_error": s.last_error.as_ref().map(|e| e.message.clone()),
                        })
                    } else {
                        json!({
                            "name": s.name.as_str(),
                            "summary": s.summary(),
                            "action": format!("{:?}", s.action),
                            "action_attempts": s.action_attempts,
                            "compensation": format!("{:?}", s.compensation),
                            "compensation_attempts": s.compensation_attempts,
                            "last_error": s.last_error.as_ref().map(|e| e.message.clone()),
                        })
                    }
                })
                .collect();
            let timeline: Vec<Value> = history
                .iter()
                .enumerate()
                .map(|(i, e)| match &e.record {
                    Ok((at, record)) => json!({
                        "seq": e.seq,
                        "at": at.0,
                        "kind": record.kind_name(),
                        "text": describe(record, &names, word(i)),
                    }),
                    Err(error) => json!({"seq": e.seq, "unreadable": error.to_string()}),
                })
                .collect();
            return print_json(json!({
                "saga_id": view.saga_id.to_string(),
                "saga_type": view.saga_type.as_str(),
                "version": view.version,
                "status": view.status.name(),
                "strategy": strategy,
                "tcc": view.tcc,
                "idempotency_key": view.idempotency_key,
                "started_at": view.started_at.0,
                "updated_at": view.updated_at.0,
                "failure": view.failure.as_ref().map(|(step, f)| json!({
                    "step": step.as_str(), "class": format!("{:?}", f.class), "message": f.message,
                })),
                "reason": view.reason,
                "pending": view.pending,
                "parent": view.parent.map(|p| json!({"saga_id": p.saga.to_string(), "step": p.step})),
                "children": view.children.iter().map(|(step, id)| json!({"step": step.as_str(), "saga_id": id.to_string()})).collect::<Vec<_>>(),
                "steps": steps,
                "timeline": timeline,
            }));
        }
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
        if let Some((step, failure)) = &view.failure {
            summary.push((
                "failure",
                format!("{step}: {} ({:?})", failure.message, failure.class),
            ));
        }
        if let Some(reason) = &view.reason {
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
                if view.tcc {
                    vec![
                        s.name.to_string(),
                        s.tcc_summary().to_string(),
                        s.action_attempts.to_string(),
                        s.confirm_attempts.to_string(),
                        s.compensation_attempts.to_string(),
                        error,
                    ]
                } else {
                    vec![
                        s.name.to_string(),
                        s.summary().to_string(),
                        s.action_attempts.to_string(),
                        s.compensation_attempts.to_string(),
                        error,
                    ]
                }
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
        let timeline: Vec<Vec<String>> = history
            .iter()
            .enumerate()
            .map(|(i, e)| match &e.record {
                Ok((at, record)) => vec![
                    e.seq.to_string(),
                    time(*at),
                    describe(record, &names, word(i)),
                ],
                Err(error) => vec![
                    e.seq.to_string(),
                    "?".into(),
                    format!("UNREADABLE: {error}"),
                ],
            })
            .collect();
        say!("\n{}", table(&["SEQ", "TIME", "RECORD"], &timeline));
    }

    pub fn manual(&self, items: &[ManualItem]) {
        if self.json {
            let rows: Vec<Value> = items
                .iter()
                .map(|m| {
                    json!({
                        "saga_id": m.saga_id.to_string(),
                        "saga_type": m.saga_type.as_str(),
                        "since": m.since.0,
                        "parked": m.parked,
                        "failed_step": m.failed_step.as_ref().map(|(s, _)| s.as_str()),
                        "error": m.failed_step.as_ref().map(|(_, f)| f.message.clone()),
                        "to_compensate": m.to_compensate,
                        "reason": m.reason,
                        "pending": m.pending,
                    })
                })
                .collect();
            return print_json(json!({ "manual_queue": rows }));
        }
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

    pub fn recorded(&self, saga: SagaId, actions: &[String], actor: &str) {
        if self.json {
            return print_json(json!({
                "saga_id": saga.to_string(),
                "recorded": actions,
                "actor": actor,
            }));
        }
        for action in actions {
            say!("recorded {action} on saga {saga} by {actor}");
        }
        say!("the service carries it out at its next start");
    }

    pub fn stats(&self, stats: &Stats) {
        if self.json {
            let by_status: serde_json::Map<String, Value> = stats
                .by_status
                .iter()
                .map(|(s, n)| (s.name().to_string(), json!(n)))
                .collect();
            return print_json(json!({
                "by_status": by_status,
                "oldest_in_flight": stats.oldest_in_flight.map(|(id, at)| json!({
                    "saga_id": id.to_string(), "started_at": at.0,
                })),
                "delay_queue_depth": stats.delay_queue_depth,
                "manual_queue_depth": stats.manual_queue_depth,
                "parked": stats.parked,
            }));
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

    pub fn verify(&self, report: &VerifyReport) {
        let hex = |key: &[u8]| key.iter().map(|b| format!("{b:02x}")).collect::<String>();
        if self.json {
            let problems: Vec<Value> = report
                .problems
                .iter()
                .map(|p| {
                    json!({
                        "key": hex(&p.key),
                        "saga_id": p.saga.map(|s| s.to_string()),
                        "what": p.what,
                        "error": p.error,
                    })
                })
                .collect();
            return print_json(json!({
                "keys": report.keys,
                "log_values": report.log_values,
                "records": report.records,
                "index_entries": report.index_entries,
                "corrupt": problems,
            }));
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
        if self.json {
            return print_json(json!({
                "eligible": report.eligible,
                "removed": report.removed,
                "keys_removed": report.keys_removed,
                "skipped": report.skipped,
                "bytes_on_disk_before": before,
                "bytes_on_disk_after": after,
            }));
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
            return print_json(json!({
                "keys": compacted.keys,
                "bytes_on_disk_before": compacted.bytes_before,
                "bytes_on_disk_after": compacted.bytes_after,
            }));
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
            return print_json(json!({
                "witness_rebuilt": report.witness_rebuilt,
                "set_aside": report.set_aside.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "outcome": if salvage.is_some() { "salvaged" } else { "healthy" },
                "salvaged_into": salvage.map(|s| s.into.display().to_string()),
                "keys_copied": salvage.map(|s| s.keys),
                "reason": salvage.map(|s| s.reason.clone()),
                "incomplete_sagas": salvage.map(|s| s.incomplete.iter().map(|id| id.to_string()).collect::<Vec<_>>()),
                "problems": salvage.map(|s| s.problems.clone()),
            }));
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
