//! The saga statuses: one vocabulary for sagas and TCC transactions.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where a saga is in its life. See DESIGN.md, "Statuses", for the full table.
///
/// The status is derived from the log by `fold`; it is never stored as a
/// second source of truth (the active index keeps a copy only to make
/// listing cheap, written in the same atomic batch as the record that
/// changed it).
///
/// In JSON it is its [`name`](SagaStatus::name), e.g. `"COMPENSATING"`.
/// (The log's binary encoding numbers the variants and ignores names.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum SagaStatus {
    /// The start record is durable; no step has been attempted yet.
    Created,
    /// Forward steps are being run.
    Running,
    /// TCC: the commit decision is durable; confirms are running.
    Committing,
    /// Terminal: every step succeeded.
    Committed,
    /// TCC: a try failed for good (or an operator cancelled); cancels are running.
    RollingBack,
    /// Terminal, TCC: every tried branch was cancelled.
    RolledBack,
    /// A step failed for good; completed and in-doubt steps are being
    /// compensated in reverse order.
    Compensating,
    /// Terminal: every step that started has been compensated.
    Compensated,
    /// Terminal: given up without full compensation (an operator abandoned it).
    Failed,
    /// Waiting for an operator: a compensation kept failing, or the saga's
    /// log cannot be read (then it is "parked", with the reason).
    Suspended,
}

impl SagaStatus {
    /// Every status, in declaration order.
    pub const ALL: [SagaStatus; 10] = [
        SagaStatus::Created,
        SagaStatus::Running,
        SagaStatus::Committing,
        SagaStatus::Committed,
        SagaStatus::RollingBack,
        SagaStatus::RolledBack,
        SagaStatus::Compensating,
        SagaStatus::Compensated,
        SagaStatus::Failed,
        SagaStatus::Suspended,
    ];

    /// True when the saga will never change again on its own or by an operator.
    pub fn is_terminal(self) -> bool {
        match self {
            SagaStatus::Committed
            | SagaStatus::RolledBack
            | SagaStatus::Compensated
            | SagaStatus::Failed => true,
            SagaStatus::Created
            | SagaStatus::Running
            | SagaStatus::Committing
            | SagaStatus::RollingBack
            | SagaStatus::Compensating
            | SagaStatus::Suspended => false,
        }
    }

    /// The stable upper-case name used in output (`COMMITTED`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SagaStatus::Created => "CREATED",
            SagaStatus::Running => "RUNNING",
            SagaStatus::Committing => "COMMITTING",
            SagaStatus::Committed => "COMMITTED",
            SagaStatus::RollingBack => "ROLLING_BACK",
            SagaStatus::RolledBack => "ROLLED_BACK",
            SagaStatus::Compensating => "COMPENSATING",
            SagaStatus::Compensated => "COMPENSATED",
            SagaStatus::Failed => "FAILED",
            SagaStatus::Suspended => "SUSPENDED",
        }
    }
}

impl fmt::Display for SagaStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
