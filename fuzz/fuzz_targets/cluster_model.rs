//! Model-based target for several nodes over one log: the operations of
//! `tests/cluster_model/model.rs` (starts, one key started on two nodes,
//! time passing, kills, restarts, stalls past the lease, graceful leaves,
//! operator cancels), decoded three bytes each, run on tokio's paused
//! clock. After the operations the cluster settles and every invariant is
//! checked; a violation panics with its description.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../tests/cluster_model/model.rs"]
mod model;

fuzz_target!(|data: &[u8]| {
    let ops = model::Op::decode(data);
    if ops.is_empty() || ops.len() > 64 {
        return;
    }
    if let Err(problems) = model::runtime().block_on(model::run(&ops)) {
        panic!("{} violations:\n{}\nops: {ops:?}", problems.len(), problems.join("\n"));
    }
});
