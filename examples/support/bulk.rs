//! The bulk workload of the examples: many sagas, a few at a time, counted
//! by how they ended. The crash tests kill the process while it runs.

use sagalog::{Error, SagaStatus};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Runs `run_one(k)` for k = 0..total, `concurrency` at a time, and counts
/// the sagas that ended committed and those that ended `undone`. Any other
/// end, or an error, stops the workload with an error.
pub async fn run<F, Fut>(
    total: usize,
    concurrency: usize,
    undone: SagaStatus,
    run_one: F,
) -> Result<(usize, usize), Error>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<SagaStatus, Error>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, run_one) = (next.clone(), run_one.clone());
        workers.push(tokio::spawn(async move {
            let mut counts = (0, 0);
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    return Ok::<_, Error>(counts);
                }
                match run_one(k).await? {
                    SagaStatus::Committed => counts.0 += 1,
                    status if status == undone => counts.1 += 1,
                    other => {
                        return Err(Error::InvalidOptions(format!(
                            "bulk saga {k} ended {other}"
                        )))
                    }
                }
            }
        }));
    }
    let mut counts = (0, 0);
    for worker in workers {
        let (committed, undone) = worker
            .await
            .map_err(|e| Error::InvalidOptions(format!("bulk worker failed: {e}")))??;
        counts.0 += committed;
        counts.1 += undone;
    }
    Ok(counts)
}
