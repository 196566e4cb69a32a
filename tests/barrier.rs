//! The participant barrier's three guarantees (idempotency, empty rollback,
//! anti-hanging), alone and under concurrent calls, over a sled tree that
//! also holds the participant's business state.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

use sagalog::barrier::{Barrier, BarrierError, BarrierPhase, Guarded};
use sagalog::SagaId;
use sled::transaction::TransactionalTree;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A participant holding funds: `available` and `held`, in cents.
struct Funds {
    tree: sled::Tree,
    barrier: Barrier,
    _dir: tempfile::TempDir,
}

fn read(tx: &TransactionalTree, key: &str) -> Result<i64, String> {
    Ok(tx
        .get(key)
        .map_err(|e| e.to_string())?
        .map(|v| i64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
        .unwrap_or(0))
}

fn write(tx: &TransactionalTree, key: &str, value: i64) -> Result<(), String> {
    tx.insert(key, &value.to_be_bytes())
        .map_err(|e| e.to_string())?;
    Ok(())
}

impl Funds {
    fn new(available: i64) -> Funds {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
            .unwrap();
        let tree = db.open_tree("funds").unwrap();
        tree.insert("available", &available.to_be_bytes()).unwrap();
        Funds {
            barrier: Barrier::new(tree.clone()),
            tree,
            _dir: dir,
        }
    }

    fn get(&self, key: &str) -> i64 {
        self.tree
            .get(key)
            .unwrap()
            .map(|v| i64::from_be_bytes(v.as_ref().try_into().unwrap()))
            .unwrap_or(0)
    }

    /// Try: hold `cents`; refused when the balance is short.
    fn hold(&self, saga: SagaId, cents: i64) -> Result<Guarded<i64>, BarrierError<String>> {
        self.barrier.call(saga, "pay", BarrierPhase::Try, |tx| {
            let available = read(tx, "available")?;
            if available < cents {
                return Err(format!("balance {available} < {cents}"));
            }
            write(tx, "available", available - cents)?;
            write(tx, "held", read(tx, "held")? + cents)?;
            Ok(available - cents)
        })
    }

    /// Cancel: release the hold.
    fn release(&self, saga: SagaId, cents: i64) -> Result<Guarded<()>, BarrierError<String>> {
        self.barrier.call(saga, "pay", BarrierPhase::Cancel, |tx| {
            write(tx, "held", read(tx, "held")? - cents)?;
            write(tx, "available", read(tx, "available")? + cents)?;
            Ok(())
        })
    }
}

#[test]
fn repeated_try_runs_once_and_returns_the_first_output() {
    let funds = Funds::new(100);
    let saga = SagaId::new();

    let first = funds.hold(saga, 30).unwrap();
    let again = funds.hold(saga, 30).unwrap();

    assert_eq!(first, Guarded::Ran(70));
    assert_eq!(again, Guarded::Duplicate(70));
    assert_eq!((funds.get("available"), funds.get("held")), (70, 30));
}

#[test]
fn cancel_before_its_try_is_an_empty_rollback_that_touches_nothing() {
    let funds = Funds::new(100);

    let cancelled = funds.release(SagaId::new(), 30).unwrap();

    assert_eq!(cancelled, Guarded::EmptyRollback);
    assert_eq!((funds.get("available"), funds.get("held")), (100, 0));
}

#[test]
fn try_after_its_cancel_is_rejected_and_holds_nothing() {
    let funds = Funds::new(100);
    let saga = SagaId::new();
    funds.release(saga, 30).unwrap();

    let late = funds.hold(saga, 30).unwrap();
    let repeated = funds.hold(saga, 30).unwrap();

    assert_eq!((late, repeated), (Guarded::Rejected, Guarded::Rejected));
    assert_eq!((funds.get("available"), funds.get("held")), (100, 0));
}

#[test]
fn failed_business_step_writes_nothing_so_its_cancel_is_empty() {
    let funds = Funds::new(10);
    let saga = SagaId::new();

    let refused = funds.hold(saga, 30);
    let cancelled = funds.release(saga, 30).unwrap();

    assert!(matches!(refused, Err(BarrierError::Business(m)) if m.contains("balance 10 < 30")));
    assert_eq!(cancelled, Guarded::EmptyRollback);
    assert_eq!((funds.get("available"), funds.get("held")), (10, 0));
}

#[test]
fn concurrent_duplicate_tries_hold_the_funds_once() {
    let funds = Arc::new(Funds::new(1_000));
    let saga = SagaId::new();
    let ran = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (funds, ran) = (funds.clone(), ran.clone());
            std::thread::spawn(move || {
                if let Guarded::Ran(_) = funds.hold(saga, 100).unwrap() {
                    ran.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!((funds.get("available"), funds.get("held")), (900, 100));
}

#[test]
fn concurrent_try_and_cancel_never_leave_funds_held() {
    let funds = Arc::new(Funds::new(1_000_000));
    for _ in 0..100 {
        let saga = SagaId::new();
        let (a, b) = (funds.clone(), funds.clone());
        let tried = std::thread::spawn(move || a.hold(saga, 10).unwrap());
        let cancelled = std::thread::spawn(move || b.release(saga, 10).unwrap());
        let (tried, cancelled) = (tried.join().unwrap(), cancelled.join().unwrap());
        // Either the try came first and the cancel released it, or the
        // cancel came first (empty) and the late try was refused.
        match (&tried, &cancelled) {
            (Guarded::Ran(_), Guarded::Ran(())) | (Guarded::Rejected, Guarded::EmptyRollback) => {}
            other => panic!("impossible interleaving {other:?}"),
        }
    }
    assert_eq!((funds.get("available"), funds.get("held")), (1_000_000, 0));
}

#[test]
fn sweep_deletes_barrier_records_older_than_the_retention() {
    let funds = Funds::new(100);
    funds.hold(SagaId::new(), 10).unwrap();
    funds.release(SagaId::new(), 10).unwrap();

    let kept = funds
        .barrier
        .sweep(std::time::Duration::from_secs(3600))
        .unwrap();
    let removed = funds.barrier.sweep(std::time::Duration::ZERO).unwrap();

    assert_eq!(
        (kept, removed),
        (0, 3),
        "one try, one cancel and its try tombstone"
    );
    assert_eq!(funds.get("available"), 90, "business state untouched");
}
