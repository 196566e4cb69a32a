//! Compensation strategies, retry and in-doubt policies: pure data and pure
//! arithmetic, written into the log with each saga so that `decide` never
//! depends on code that may have changed since the saga started.

use serde::{Deserialize, Serialize};

/// What happens once a forward step has failed for good (a permanent error,
/// or its retries are used up). Chosen per saga definition, overridable per
/// step and per start; recorded in the saga's start record.
///
/// Every strategy first retries retryable and unknown errors under the
/// step's retry policy; the strategy decides what happens after that.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CompensationStrategy {
    /// Compensate started steps in reverse order at once.
    Immediate,
    /// Compensate at `failure time + delay_ms`, never before. The wait is a
    /// durable timer: it survives restarts, and an item that fell due while
    /// the process was down runs right after recovery.
    Scheduled {
        /// Delay after the failure, in milliseconds.
        delay_ms: u64,
    },
    /// Compensate nothing automatically: suspend the saga into the manual
    /// queue, where an operator runs the compensation, marks steps
    /// compensated by hand, retries the failed step, or abandons the saga.
    Manual,
    /// The step's attempts follow `policy` instead of the saga's retry
    /// policy (`policy.max_attempts` in all, the first call included; a
    /// step's own retry policy still wins); once they are used up,
    /// compensate at once.
    RetryThenCompensate {
        /// The retry policy of the failed step.
        policy: RetryPolicy,
    },
}

impl CompensationStrategy {
    /// The stable name used in output (`immediate`, `scheduled`, `manual`,
    /// `retry_then_compensate`).
    pub fn name(self) -> &'static str {
        match self {
            CompensationStrategy::Immediate => "immediate",
            CompensationStrategy::Scheduled { .. } => "scheduled",
            CompensationStrategy::Manual => "manual",
            CompensationStrategy::RetryThenCompensate { .. } => "retry_then_compensate",
        }
    }

    pub(crate) fn problems(&self, what: &str) -> Vec<String> {
        match self {
            CompensationStrategy::RetryThenCompensate { policy } => policy.problems(what),
            CompensationStrategy::Immediate
            | CompensationStrategy::Scheduled { .. }
            | CompensationStrategy::Manual => Vec::new(),
        }
    }
}

/// What recovery does with a step whose intent is in the log but whose result
/// is not (the process died during the call, so it may or may not have taken
/// effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
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
/// capped at `max_interval_ms`, then shortened by up to `jitter` of itself
/// (a deterministic fraction derived from the saga and attempt, so that
/// `decide` stays pure). It is counted from the failure record's timestamp
/// and written into the log as a timer, so a crash during the wait resumes
/// the same wait and never resets the attempt count.
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
    /// Fraction (0.0 to 1.0) by which each wait may be shortened, to spread
    /// retries of many sagas. 0.0 by default.
    pub jitter: f64,
    /// Give up once the next attempt would start later than this many
    /// milliseconds after the first attempt started. `None`: no deadline.
    pub deadline_ms: Option<u64>,
}

impl RetryPolicy {
    /// The default for forward steps: 3 attempts, 100 ms doubling to at most 10 s.
    pub const fn forward_default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval_ms: 100,
            backoff_coefficient: 2.0,
            max_interval_ms: 10_000,
            jitter: 0.0,
            deadline_ms: None,
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
            jitter: 0.0,
            deadline_ms: None,
        }
    }

    /// A policy that never retries: one attempt.
    pub const fn no_retry() -> Self {
        RetryPolicy {
            max_attempts: 1,
            initial_interval_ms: 0,
            backoff_coefficient: 1.0,
            max_interval_ms: 0,
            jitter: 0.0,
            deadline_ms: None,
        }
    }

    /// Milliseconds to wait after failed attempt `attempt` (1-based) before
    /// the next one, without jitter. Total and saturating: never panics.
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

    /// The wait after failed attempt `attempt`, shortened by the jitter
    /// fraction chosen by `seed` (any number; equal seeds, equal waits).
    pub fn jittered_delay_after(&self, attempt: u32, seed: u64) -> u64 {
        let delay = self.delay_after(attempt);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if jitter == 0.0 || delay == 0 {
            return delay;
        }
        // splitmix64: a well-spread fraction in [0, 1) from the seed.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let fraction = (z >> 11) as f64 / (1u64 << 53) as f64;
        let shortened = delay as f64 * (1.0 - jitter * fraction);
        shortened.max(0.0) as u64
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
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            problems.push(format!(
                "{what}: jitter is {}; it must be between 0.0 and 1.0",
                self.jitter
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
            max_interval_ms: 500,
            ..RetryPolicy::forward_default()
        };
        assert_eq!(policy.delay_after(1), 100);
        assert_eq!(policy.delay_after(2), 200);
        assert_eq!(policy.delay_after(3), 400);
        assert_eq!(policy.delay_after(4), 500);
        assert_eq!(policy.delay_after(u32::MAX), 500);
    }

    #[test]
    fn jitter_only_shortens_and_is_repeatable() {
        let policy = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::forward_default()
        };
        for seed in 0..1000 {
            let wait = policy.jittered_delay_after(2, seed);
            assert!((100..=200).contains(&wait), "{wait}");
            assert_eq!(wait, policy.jittered_delay_after(2, seed));
        }
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
