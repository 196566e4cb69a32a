//! Time: the engine's clock, and the persistent delay queue with the loop
//! that wakes sagas whose timers fall due.
//!
//! Every durable timer (retry backoff, scheduled compensation,
//! compensation backoff) lives in the store's timers keyspace, ordered by
//! due time; the store is the queue. [`DelayQueue`] is its in-memory front,
//! and [`run`] is the loop that refills it from the store and hands each due
//! timer to the engine.

mod clock;
mod queue;
mod runner;

pub(crate) use clock::Clock;
pub(crate) use queue::{DelayQueue, WINDOW};
pub(crate) use runner::run;
