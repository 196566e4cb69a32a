//! Compensation strategies, retry and in-doubt policies: pure data and pure
//! arithmetic, written into the log with each saga so that `decide` never
//! depends on code that may have changed since the saga started.

use serde::{Deserialize, Serialize};

/// How a saga's failures are compensated. Chosen per saga definition and
/// recorded in the saga's start record.
///
/// Only `Immediate` exists so far; `Scheduled`, `Manual` and
/// `RetryThenCompensate` are added by the strategies issue as new variants
/// (appended, so the existing encoding stays valid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompensationStrategy {
    /// Compensate completed and in-doubt steps in reverse order as soon as a
    /// forward step has failed for good.
    Immediate,
}

impl CompensationStrategy {
    /// The stable name used in output (`immediate`, ...).
    pub fn name(self) -> &'static str {
        match self {
            CompensationStrategy::Immediate => "immediate",
        }
    }
}

/// What recovery does with a step whose intent is in the log but whose result
/// is not (the process died during the call, so it may or may not have taken
/// effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InDoubtPolicy {
    /// Call the action again with a new attempt number and the same
    /// idempotency key. The default: actions must be idempotent anyway.
    Rerun,
    /// Stop going forward and compensate, starting with the in-doubt step.
    Compensate,
}

/// When and how often a failed call is tried again.
///
/// The wait before attempt `n + 1` is `initial_interval_ms * coefficient^(n-1)`,
/// capped at `max_interval_ms`. It is computed from the failure record's
/// timestamp, so a crash during the wait resumes the same wait and never
/// resets the attempt count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts allowed, first call included. At least 1.
    pub max_attempts: u32,
    /// Wait after the first failure, in milliseconds.
    pub initial_interval_ms: u64,
    /// Factor applied to the wait after each further failure. At least 1.0.
    pub backoff_coefficient: f64,
    /// Upper bound of any single wait, in milliseconds.
    pub max_interval_ms: u64,
}

impl RetryPolicy {
    /// The default for forward steps: 3 attempts, 100 ms doubling to at most 10 s.
    pub const fn forward_default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval_ms: 100,
            backoff_coefficient: 2.0,
            max_interval_ms: 10_000,
        }
    }

    /// The default for compensations: 10 attempts, 100 ms doubling to at most
    /// 30 s; after that the saga is suspended for an operator.
    pub const fn compensation_default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            initial_interval_ms: 100,
            backoff_coefficient: 2.0,
            max_interval_ms: 30_000,
        }
    }

    /// A policy that never retries: one attempt.
    pub const fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_interval_ms: 0,
            backoff_coefficient: 1.0,
            max_interval_ms: 0,
        }
    }

    /// Milliseconds to wait after failed attempt `attempt` (1-based) before
    /// the next one. Total and saturating: never panics, never overflows.
    pub fn delay_after(&self, attempt: u32) -> u64 {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let coefficient = if self.backoff_coefficient.is_finite() && self.backoff_coefficient >= 1.0
        {
            self.backoff_coefficient
        } else {
            1.0
        };
        let raw = self.initial_interval_ms as f64 * coefficient.powi(exponent);
        let capped = raw.min(self.max_interval_ms as f64);
        if capped.is_finite() && capped > 0.0 {
            capped as u64
        } else {
            0
        }
    }

    /// Problems that make this policy unusable, described for a person.
    pub(crate) fn problems(&self, what: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_attempts == 0 {
            problems.push(format!("{what}: max_attempts is 0; it must be at least 1"));
        }
        if !(self.backoff_coefficient.is_finite() && self.backoff_coefficient >= 1.0) {
            problems.push(format!(
                "{what}: backoff_coefficient is {}; it must be a finite number >= 1.0",
                self.backoff_coefficient
            ));
        }
        if self.max_interval_ms < self.initial_interval_ms {
            problems.push(format!(
                "{what}: max_interval_ms ({}) is below initial_interval_ms ({})",
                self.max_interval_ms, self.initial_interval_ms
            ));
        }
        problems
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::forward_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_interval_ms: 100,
            backoff_coefficient: 2.0,
            max_interval_ms: 500,
        };
        assert_eq!(policy.delay_after(1), 100);
        assert_eq!(policy.delay_after(2), 200);
        assert_eq!(policy.delay_after(3), 400);
        assert_eq!(policy.delay_after(4), 500);
        assert_eq!(policy.delay_after(u32::MAX), 500);
    }

    #[test]
    fn nonsense_coefficient_is_reported_and_treated_as_one() {
        let policy = RetryPolicy {
            backoff_coefficient: f64::NAN,
            ..RetryPolicy::forward_default()
        };
        assert_eq!(policy.problems("retry").len(), 1);
        assert_eq!(policy.delay_after(5), 100);
    }
}
