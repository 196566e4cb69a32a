//! The metrics sagalog emits through the [`metrics`] facade. Nothing is
//! recorded until the embedding service installs a recorder (for example
//! `metrics-exporter-prometheus`; see `examples/metrics.rs`); without one,
//! each call is a no-op.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `sagalog_sagas_started_total` | counter | `saga_type` | sagas started (not idempotent repeats) |
//! | `sagalog_sagas_finished_total` | counter | `saga_type`, `status` | sagas that reached a terminal status |
//! | `sagalog_participant_call_seconds` | histogram | `phase`, `outcome` | participant call latency (`outcome` = `ok` / `error`) |
//! | `sagalog_retries_total` | counter | `phase` | calls that were a second or later attempt |
//! | `sagalog_compensations_total` | counter | | compensation calls made |
//! | `sagalog_manual_queue_depth` | gauge | | sagas suspended for an operator (set at open, then kept current) |
//! | `sagalog_delay_queue_depth` | gauge | | sagas asleep on a durable timer (likewise) |
//! | `sagalog_log_append_seconds` | histogram | | one group commit: atomic write plus flush |
//! | `sagalog_log_write_phase_seconds` | histogram | `phase` | one durable group commit's parts: `apply` (building the write, CPU), `flush` (the data handed to the device), `sync` (the `fdatasync` that makes it survive a power cut) |
//! | `sagalog_log_batch_appends` | histogram | | appends that shared one group commit |
//! | `sagalog_sagas_swept_total` | counter | | finished sagas deleted by retention |
//! | `sagalog_log_writable` | gauge | | 1 while the log takes writes, 0 once a write could not be made durable (see `Engine::writable`) |
//! | `sagalog_lease_held` | gauge | | on a shared log: 1 while this node holds its lease, 0 once it lost it (see `Engine::lease`) |
//! | `sagalog_sagas_adopted_total` | counter | | on a shared log: sagas this node took over from nodes that died or left |
//!
//! The queue gauges count what this engine wrote since it opened, starting
//! from the index at open; parked sagas are not in them.

/// Counter: sagas started.
pub const SAGAS_STARTED: &str = "sagalog_sagas_started_total";
/// Counter: sagas that reached a terminal status.
pub const SAGAS_FINISHED: &str = "sagalog_sagas_finished_total";
/// Histogram (seconds): participant call latency.
pub const CALL_SECONDS: &str = "sagalog_participant_call_seconds";
/// Counter: calls that were a retry (attempt 2 or later).
pub const RETRIES: &str = "sagalog_retries_total";
/// Counter: compensation calls.
pub const COMPENSATIONS: &str = "sagalog_compensations_total";
/// Gauge: sagas suspended for an operator.
pub const MANUAL_QUEUE_DEPTH: &str = "sagalog_manual_queue_depth";
/// Gauge: sagas asleep on a durable timer.
pub const DELAY_QUEUE_DEPTH: &str = "sagalog_delay_queue_depth";
/// Histogram (seconds): one group commit, write plus flush.
pub const APPEND_SECONDS: &str = "sagalog_log_append_seconds";
/// Histogram (seconds), label `phase` (`apply`, `flush`, `sync`): the
/// parts of one durable group commit (`log::store::WriteTimes`).
pub const WRITE_PHASE_SECONDS: &str = "sagalog_log_write_phase_seconds";
/// Histogram: appends per group commit.
pub const BATCH_APPENDS: &str = "sagalog_log_batch_appends";
/// Gauge: 1 while the log takes writes; 0 after a failed sync, or while
/// the database of a PostgreSQL log is unreachable (writes wait).
pub const LOG_WRITABLE: &str = "sagalog_log_writable";
/// Gauge: on a shared log, 1 while this node holds its lease; 0 once it
/// lost it (it then starts no call and writes nothing).
pub const LEASE_HELD: &str = "sagalog_lease_held";
/// Counter: sagas this node adopted from nodes that died or left.
pub const SAGAS_ADOPTED: &str = "sagalog_sagas_adopted_total";
/// Counter: finished sagas deleted by retention.
pub const SAGAS_SWEPT: &str = "sagalog_sagas_swept_total";

/// Registers every metric's description with the installed recorder, so
/// that exporters can print help text. Call it after installing one.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(SAGAS_STARTED, "Sagas started");
    describe_counter!(SAGAS_FINISHED, "Sagas that reached a terminal status");
    describe_histogram!(CALL_SECONDS, Unit::Seconds, "Participant call latency");
    describe_counter!(RETRIES, "Participant calls that were a retry");
    describe_counter!(COMPENSATIONS, "Compensation calls made");
    describe_gauge!(MANUAL_QUEUE_DEPTH, "Sagas suspended for an operator");
    describe_gauge!(DELAY_QUEUE_DEPTH, "Sagas asleep on a durable timer");
    describe_histogram!(
        APPEND_SECONDS,
        Unit::Seconds,
        "One group commit of the log: atomic write plus flush"
    );
    describe_histogram!(
        WRITE_PHASE_SECONDS,
        Unit::Seconds,
        "One durable group commit's parts: apply (CPU), flush (device write), sync (fdatasync)"
    );
    describe_histogram!(BATCH_APPENDS, "Appends that shared one group commit");
    describe_counter!(SAGAS_SWEPT, "Finished sagas deleted by retention");
    describe_gauge!(
        LEASE_HELD,
        "1 while this node holds its lease on a shared log"
    );
    describe_counter!(SAGAS_ADOPTED, "Sagas adopted from nodes that died or left");
}
