//! Crash test: run the orders example (sagas, every strategy) and the
//! seckill example (TCC, parallel tries) in a child process, abort it right
//! after each durable append in turn (1, 2, 3, ... until a run completes),
//! and before and after each participant call, rerun it on the same data
//! directory, and check that
//! (a) every saga is terminal with the outcome its scenario implies,
//! (b) the ledger is conserved and nothing is left reserved or held, and
//! (c) every participant call has a durable intent record in the saga log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod failover;
mod harness;
mod orders;
mod place;
mod seckill;

use sagalog::store::KvLogStore;
use sagalog::tools::decode_records;
use sagalog::Record;
use sagalog::{SagaId, SledStore};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
