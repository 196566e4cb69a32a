//! `GET /metrics`: the operator's numbers in Prometheus's text format,
//! read from the indexes and the writer's counters when scraped.

use crate::engine::Stats;
use crate::log::writer::WriterStats;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// The exposition text for `stats` and `writer`.
pub(super) fn render(stats: &Stats, writer: &WriterStats) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "sagalog_delay_queue_depth",
        "Sagas asleep on a durable timer.",
        stats.delay_queue_depth,
    );
    gauge(
        "sagalog_manual_queue_depth",
        "Sagas waiting for an operator (suspended or parked).",
        stats.manual_queue_depth,
    );
    gauge(
        "sagalog_parked",
        "Sagas that cannot run until a cause is fixed.",
        stats.parked,
    );
    if let Some((_, started)) = stats.oldest_in_flight {
        gauge(
            "sagalog_oldest_in_flight_started_seconds",
            "When the oldest saga not finished started (Unix time).",
            started.0 / 1000,
        );
    }
    let _ = writeln!(
        out,
        "# HELP sagalog_sagas Sagas by status, from the indexes.\n# TYPE sagalog_sagas gauge"
    );
    for (status, count) in &stats.by_status {
        let _ = writeln!(out, "sagalog_sagas{{status=\"{}\"}} {count}", status.name());
    }
    let mut counter = |name: &str, help: &str, value: &std::sync::atomic::AtomicU64| {
        let value = value.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        "sagalog_log_appends_total",
        "Appends acknowledged as durable.",
        &writer.appends,
    );
    counter(
        "sagalog_log_flushes_total",
        "Group commits (one atomic write and one flush each).",
        &writer.flushes,
    );
    counter(
        "sagalog_log_value_bytes_total",
        "Bytes of log values written.",
        &writer.log_value_bytes,
    );
    out
}
