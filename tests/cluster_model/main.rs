//! Several nodes over one in-memory log on tokio's paused clock: kills,
//! stalls past the lease, graceful leaves and one key started on two nodes,
//! first as fixed scenarios, then as seeded random runs. Every run ends with
//! the cluster settled and its invariants checked (`model.rs`): every call
//! had a durable intent, no fenced token started a call, no saga's log
//! interleaves two writers, one saga per key, each saga's end agrees with
//! its calls, each sub-saga's end agrees with its parent's (they often end
//! up on different nodes), and `verify` is clean.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly

mod model;

use model::{run, runtime, Figures, Model, Op, TTL};
use std::time::Duration;

/// Runs `ops` and fails with every violation found.
fn checked(ops: &[Op]) -> Figures {
    runtime().block_on(run(ops)).unwrap_or_else(|problems| {
        panic!("{} violations:\n{}", problems.len(), problems.join("\n"))
    })
}

/// Settles `model` and checks it, failing with every violation found.
async fn settled(model: &mut Model) -> Figures {
    let checked = match model.settle().await {
        Ok(()) => model.check().await,
        Err(problems) => Err(problems),
    };
    checked.unwrap_or_else(|problems| panic!("{}", problems.join("\n")))
}

fn starts(node: usize, keys: std::ops::Range<u8>) -> Vec<Op> {
    keys.map(|key| Op::Start { node, key }).collect()
}

#[test]
fn a_node_killed_mid_run_loses_its_sagas_to_the_survivors() {
    let mut ops = starts(0, 0..8);
    ops.extend([
        Op::Advance { ms: 50 },
        Op::Kill { node: 0 },
        Op::Advance { ms: 3_000 },
    ]);

    let figures = checked(&ops);

    assert_eq!(figures.sagas, 16, "eight orders, each with its payment");
    assert!(
        figures.moved > 0,
        "some saga moved to a survivor: {figures:?}"
    );
}

#[test]
fn a_node_stalled_past_its_lease_is_fenced_and_writes_nothing_more() {
    let mut ops = starts(0, 0..8);
    ops.extend([
        Op::Advance { ms: 50 },
        Op::Stall { node: 0, leases: 3 },
        Op::Advance { ms: 3_999 },
        Op::Advance { ms: 3_999 },
    ]);

    let figures = checked(&ops);

    assert!(
        figures.fenced_writers >= 1,
        "the stalled node was fenced: {figures:?}"
    );
    assert!(figures.moved > 0, "its sagas moved: {figures:?}");
}

#[test]
fn a_key_started_on_two_nodes_at_once_gives_one_saga() {
    let ops: Vec<Op> = (0..6)
        .map(|key| Op::StartTwice {
            a: 0,
            b: 1 + usize::from(key) % 2,
            key,
        })
        .collect();

    let figures = checked(&ops);

    assert_eq!(figures.sagas, 12, "six orders, each with its payment");
}

#[test]
fn a_graceful_leave_hands_sagas_over_before_the_lease_expires() {
    runtime().block_on(async {
        let mut model = Model::new().await;
        for key in 0..6 {
            model.apply(Op::Start { node: 0, key }).await;
        }
        model.apply(Op::Advance { ms: 30 }).await;
        model.apply(Op::Leave { node: 0 }).await;
        model.apply(Op::Advance { ms: 1_500 }).await;

        let cluster = model.cluster();
        let unfinished = sagalog::store::KvLogStore::scan_active(cluster.log()).unwrap();
        for (saga, _) in &unfinished {
            let owner = cluster.owner(*saga);
            assert!(
                owner.as_deref().is_some_and(|o| o != "n0"),
                "saga {saga} is owned by {owner:?} {} ms after n0 left, before its lease of {} ms ran out",
                1_500,
                TTL.as_millis()
            );
        }
        settled(&mut model).await;
    });
}

/// Starts key 1 on n0 (it fails once and sleeps on a backoff there),
/// runs `meanwhile`, then has n1, which does not run it, cancel it; the
/// model settles and checks. The figures and the saga's end.
fn cancelled_through_another_node(meanwhile: &[Op]) -> (Figures, Option<sagalog::SagaStatus>) {
    runtime().block_on(async {
        let mut model = Model::new().await;
        model.apply(Op::Start { node: 0, key: 1 }).await;
        model.apply(Op::Advance { ms: 500 }).await;
        for op in meanwhile {
            model.apply(*op).await;
        }
        model.apply(Op::Cancel { node: 1, key: 1 }).await;
        model.apply(Op::Advance { ms: 3_999 }).await;
        model.apply(Op::Advance { ms: 3_999 }).await;
        let figures = settled(&mut model).await;
        (figures, model.status_of(1))
    })
}

#[test]
fn an_action_through_a_node_that_does_not_run_the_saga_is_carried_out_by_its_owner() {
    let (figures, status) = cancelled_through_another_node(&[]);

    assert_eq!(figures.queued_applied, 1, "{figures:?}");
    assert_eq!(status, Some(sagalog::SagaStatus::Compensated));
}

#[test]
fn an_action_queued_for_a_node_that_stalls_is_carried_out_once_by_its_adopter() {
    let (figures, status) = cancelled_through_another_node(&[Op::Stall { node: 0, leases: 4 }]);

    assert_eq!(figures.queued_applied, 1, "{figures:?}");
    assert!(figures.fenced_writers >= 1, "n0 was fenced: {figures:?}");
    assert_eq!(status, Some(sagalog::SagaStatus::Compensated));
}

#[test]
fn a_node_that_stops_while_its_queued_action_waits_stops_at_once_and_the_action_is_still_carried_out(
) {
    runtime().block_on(async {
        let mut model = Model::new().await;
        model.apply(Op::Start { node: 0, key: 1 }).await;
        model.apply(Op::Advance { ms: 500 }).await;
        // The owner cannot read the queue for a while.
        model.apply(Op::Stall { node: 0, leases: 2 }).await;
        model.apply(Op::Cancel { node: 1, key: 1 }).await;
        model.apply(Op::Advance { ms: 100 }).await;

        let stopped = model.shut_down_within(1, Duration::from_millis(500)).await;

        assert!(
            stopped,
            "n1 stopped without waiting for n0 to carry out its action"
        );
        let figures = settled(&mut model).await;
        assert_eq!(figures.queued_applied, 1, "{figures:?}");
        assert_eq!(model.status_of(1), Some(sagalog::SagaStatus::Compensated));
    });
}

#[test]
fn random_kills_stalls_and_hand_overs_keep_every_invariant() {
    let seeds: u64 = std::env::var("SAGALOG_MODEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let first: u64 = std::env::var("SAGALOG_MODEL_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut total = Figures::default();
    for seed in first..first + seeds {
        let ops = Op::random(seed, 40);
        let figures = runtime().block_on(run(&ops)).unwrap_or_else(|problems| {
            panic!(
                "seed {seed}: {} violations:\n{}\nops: {ops:?}",
                problems.len(),
                problems.join("\n")
            )
        });
        total += figures;
    }
    assert!(
        total.moved > 0 && total.fenced_writers > 0 && total.split > 0,
        "the seeds moved sagas, fenced writers and split sub-sagas from their parents: {total:?}"
    );
    println!(
        "cluster model: {seeds} seeds on {} nodes, {} sagas, {} calls, {} sagas moved between nodes, {} fenced tokens had written, {} sub-sagas finished by another process than their parent, {} cancels queued for the owner and carried out by it; no violation",
        model::NODES,
        total.sagas,
        total.calls,
        total.moved,
        total.fenced_writers,
        total.split,
        total.queued_applied
    );
}
