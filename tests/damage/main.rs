//! Damage to sled's files at rest: after each kind, opening either finds
//! every acknowledged write or refuses with a typed error; never silence
//! about lost writes, a panic or a hang.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod detection;
mod fixture;
mod repair;

use sagalog::store::{KvLogStore, SagaAppend};
use sagalog::tools::{repair, RepairOutcome};
use sagalog::tools::{WitnessMark as Mark, WITNESS_FILE as WITNESS};
use sagalog::SledOptions;
use sagalog::{SagaId, SledStore, StoreError};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
