//! The size limit counts encoded bytes, the same way on encode and decode;
//! an output that can never be stored settles in doubt at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or an example fails loudly

mod common;

use common::{open_mem, outcome_of};
use sagalog::tools::{MAX_OUTPUT, MAX_PAYLOAD};
use sagalog::{
    ErrorClass, MemStore, Registry, SagaDefinition, SagaStatus, StartOptions, StepError,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

fn numbers() -> Vec<u64> {
    (0..200_000).map(|n| n % 100).collect()
}

#[tokio::test]
async fn an_input_of_200000_small_numbers_starts_and_a_later_step_reads_it_as_an_output() {
    let mut registry = Registry::new();
    let saga = registry
        .register(
            SagaDefinition::<Vec<u64>>::builder("numbers")
                .step(
                    "copy",
                    |ctx| async move { Ok(ctx.input().clone()) },
                    |_| async { Ok(()) },
                )
                .step(
                    "check",
                    |ctx| async move {
                        let copied: Vec<u64> = ctx.output("copy")?;
                        match copied == numbers() {
                            true => Ok(()),
                            false => Err(StepError::permanent("the output changed")),
                        }
                    },
                    |_| async { Ok(()) },
                )
                .build()
                .unwrap(),
        )
        .unwrap();
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let encoded = sagalog::tools::encode_value(&numbers()).unwrap();
    assert!(encoded.len() < MAX_PAYLOAD / 4, "{} bytes", encoded.len());

    let started = engine
        .start(&saga, &numbers(), StartOptions::new())
        .await
        .unwrap();

    let outcome = outcome_of(&engine, started.saga_id).await;
    assert_eq!(outcome.status, SagaStatus::Committed, "{outcome:?}");
}

/// A saga whose only step returns `len` bytes, and how often it ran.
async fn run_with_output(len: usize) -> (sagalog::Outcome, u32) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let mut registry = Registry::new();
    let saga = registry
        .register(
            SagaDefinition::<()>::builder("big")
                .step(
                    "produce",
                    move |_| {
                        let counted = counted.clone();
                        async move {
                            counted.fetch_add(1, Ordering::SeqCst);
                            Ok(vec![7u8; len])
                        }
                    },
                    |_| async { Ok(()) },
                )
                .build()
                .unwrap(),
        )
        .unwrap();
    let engine = open_mem(&Arc::new(MemStore::new()), registry).await;
    let started = engine.start(&saga, &(), StartOptions::new()).await.unwrap();
    let outcome = outcome_of(&engine, started.saga_id).await;
    (outcome, calls.load(Ordering::SeqCst))
}

#[tokio::test]
async fn an_output_that_fits_the_value_limit_but_not_its_record_settles_in_doubt_at_once() {
    // Under MAX_PAYLOAD encoded (a 5-byte length prefix), over MAX_OUTPUT.
    let (outcome, calls) = run_with_output(MAX_PAYLOAD - 8).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(calls, 1, "not run again");
    let (step, failure) = outcome.failure.expect("it says why");
    assert_eq!(step.as_str(), "produce");
    assert_eq!(failure.class, ErrorClass::InDoubt);
    assert!(
        failure.message.contains("not run again"),
        "{}",
        failure.message
    );
}

#[tokio::test]
async fn an_output_over_the_limit_is_not_retried_and_says_why() {
    let (outcome, calls) = run_with_output(2 * MAX_PAYLOAD).await;

    assert_eq!(outcome.status, SagaStatus::Compensated);
    assert_eq!(calls, 1, "not run again");
    let (_, failure) = outcome.failure.expect("it says why");
    assert_eq!(failure.class, ErrorClass::InDoubt);
    assert!(failure.message.contains("over the"), "{}", failure.message);
}

#[tokio::test]
async fn an_output_at_the_limit_is_stored() {
    // MAX_OUTPUT encoded bytes: the bytes and a 5-byte length prefix.
    let (outcome, calls) = run_with_output(MAX_OUTPUT - 5).await;

    assert_eq!(outcome.status, SagaStatus::Committed, "{outcome:?}");
    assert_eq!(calls, 1);
}
