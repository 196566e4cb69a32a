//! The flags with which the crash tests abort an example at a chosen point,
//! shared by the orders and seckill examples.

use clap::Args;
use sagalog::{CallPoint, EngineConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where to abort the process, and the index lag to run with.
#[derive(Args, Clone, Debug)]
pub struct CrashFlags {
    /// Abort the process right after the N-th durable append of this run.
    #[arg(long)]
    pub crash_after: Option<u64>,
    /// Abort right before the N-th participant call of this run (its intent is durable).
    #[arg(long)]
    pub crash_before_call: Option<u64>,
    /// Abort right after the N-th participant call returns, before its result is durable.
    #[arg(long)]
    pub crash_after_call: Option<u64>,
    /// How long a saga may run before it gets an active-index entry
    /// (`EngineConfig::index_lag`); the crash tests also run with 1.
    #[arg(long, default_value_t = 500)]
    pub index_lag_ms: u64,
}

/// The flags with their counters. Appends, calls and returns are counted
/// separately and across every engine the run opens, so that a call that
/// never returns leaves no gap in the returns.
#[derive(Clone)]
pub struct CrashPlan {
    flags: CrashFlags,
    appends: Arc<AtomicU64>,
    calls: Arc<AtomicU64>,
    returns: Arc<AtomicU64>,
}

impl CrashPlan {
    /// A plan that counts from zero.
    pub fn new(flags: &CrashFlags) -> Self {
        CrashPlan {
            flags: flags.clone(),
            appends: Arc::default(),
            calls: Arc::default(),
            returns: Arc::default(),
        }
    }

    /// An engine configuration with the flags' index lag and the hooks
    /// that abort at the planned points.
    pub fn config(&self) -> EngineConfig {
        let mut config = EngineConfig {
            index_lag: Duration::from_millis(self.flags.index_lag_ms),
            ..EngineConfig::default()
        };
        if let Some(n) = self.flags.crash_after {
            let appends = self.appends.clone();
            config.after_durable_append = Some(Arc::new(move |_| {
                let count = appends.fetch_add(1, Ordering::SeqCst) + 1;
                if count == n {
                    eprintln!("--crash-after {n}: aborting right after durable append #{count}");
                    std::process::abort();
                }
            }));
        }
        let (before, after) = (self.flags.crash_before_call, self.flags.crash_after_call);
        if before.is_some() || after.is_some() {
            let (calls, returns) = (self.calls.clone(), self.returns.clone());
            config.around_call = Some(Arc::new(move |point, _| {
                let (counter, planned) = match point {
                    CallPoint::BeforeCall => (&calls, before),
                    CallPoint::AfterCall => (&returns, after),
                };
                let count = counter.fetch_add(1, Ordering::SeqCst) + 1;
                if planned == Some(count) {
                    eprintln!("--crash-{point:?} {count}: aborting at call #{count}");
                    std::process::abort();
                }
            }));
        }
        config
    }
}
