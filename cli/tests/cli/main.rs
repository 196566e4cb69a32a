//! Every `sagalog` command, run as a process on a database the orders
//! example produced: the example is aborted right after the durable append
//! that leaves one order suspended in the manual queue and one asleep on a
//! ten-minute scheduled compensation (three more are finished).
//!
//! Golden files: `tests/golden/*.txt`, with saga ids and times replaced by
//! placeholders. `UPDATE_GOLDEN=1 cargo test -p sagalog-cli` rewrites them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod actions;
mod harness;
mod live;
mod maintenance;
mod postgres;
mod reading;
mod refusals;

use sagalog::testing::log_key;
use sagalog::{SagaId, SledStore};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
