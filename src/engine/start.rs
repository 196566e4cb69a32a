//! Starting a saga: options, the idempotency claim, and the start record
//! written with the first intents.

use super::calls;
use super::staged::Staged;
use super::{Engine, SagaRun};
use crate::definition::{ErasedSaga, SagaRef};
use crate::error::Error;
use crate::ids::{IdempotencyKey, SagaId, SagaType, UnixMillis};
use crate::log::codec;
use crate::log::record::{CallRef, LogEntry, ParentLink, Record, SagaPlan, SagaStarted};
use crate::log::store::{input_fingerprint, Claim, KeyClaim};
use crate::log::writer::AppendError;
use crate::policy::CompensationStrategy;
use crate::state::{decide_live, NextAction, SagaState};
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Options for [`Engine::start`].
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    idempotency_key: Option<IdempotencyKey>,
    strategy: Option<CompensationStrategy>,
    attach_on_conflict: bool,
}

impl StartOptions {
    /// No options: a new saga every time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the start idempotent: if a saga with this key exists and was
    /// started with the same saga type and input, `start` returns it instead
    /// of creating another. With another type or input, `start` fails with
    /// [`Error::IdempotencyConflict`] (as a payment API answers a reused key
    /// with another body), unless [`StartOptions::attach_on_conflict`].
    pub fn idempotency_key(mut self, key: impl Into<IdempotencyKey>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// With an idempotency key that already belongs to a saga started with
    /// another type or input, returns that saga (`existing: true`) instead
    /// of failing with [`Error::IdempotencyConflict`].
    pub fn attach_on_conflict(mut self) -> Self {
        self.attach_on_conflict = true;
        self
    }

    /// Uses `strategy` for this saga instead of the definition's default
    /// (steps with their own strategy keep it).
    pub fn strategy(mut self, strategy: CompensationStrategy) -> Self {
        self.strategy = Some(strategy);
        self
    }
}

/// How a start treats an idempotency key that belongs to a saga already.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conflict {
    /// This start's fingerprint (`input_fingerprint`).
    pub fingerprint: u64,
    /// Return the existing saga even if it was started with another input.
    pub attach: bool,
}

impl Conflict {
    /// The answer to a start whose `key` is claimed by `claim`.
    pub(crate) fn resolve(&self, key: &IdempotencyKey, claim: KeyClaim) -> Result<Started, Error> {
        let same = claim.fingerprint.is_none_or(|f| f == self.fingerprint);
        if same || self.attach {
            return Ok(Started {
                saga_id: claim.saga,
                existing: true,
            });
        }
        Err(Error::IdempotencyConflict {
            key: key.clone(),
            saga: claim.saga,
        })
    }
}

/// What [`Engine::start`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// The saga's id.
    pub saga_id: SagaId,
    /// True when the idempotency key already belonged to this saga, so
    /// nothing new was started.
    pub existing: bool,
}

impl Engine {
    /// Starts a saga of type `saga` with `input`.
    ///
    /// Waits for a free slot among `max_running_sagas`, then returns once
    /// the start record (with the first step's intent) is durable; the steps
    /// run in the background (wait with [`Engine::outcome`]). With an idempotency key
    /// that already belongs to a saga, starts nothing and returns that saga
    /// with `existing: true` if it was started with the same type and input,
    /// and fails with [`Error::IdempotencyConflict`] otherwise (see
    /// [`StartOptions::idempotency_key`]).
    ///
    /// Cancellation-safe: a caller that stops waiting (drops the future)
    /// after the start record was sent does not strand the saga; it is
    /// written and runs as if the caller had waited.
    pub async fn start<I: Serialize>(
        &self,
        saga: &SagaRef<I>,
        input: &I,
        options: StartOptions,
    ) -> Result<Started, Error> {
        if self.inner.admin_only {
            return Err(Error::AdminOnly);
        }
        let definition = self
            .inner
            .registry
            .get(saga.saga_type())
            .cloned()
            .ok_or_else(|| Error::UnknownSagaType(saga.saga_type().clone()))?;
        let input_bytes = codec::encode_value(input).map_err(|e| Error::encode("input", e))?;
        let on_conflict = Conflict {
            fingerprint: input_fingerprint(saga.saga_type().as_str(), &input_bytes),
            attach: options.attach_on_conflict,
        };
        if let Some(key) = &options.idempotency_key {
            if let Some(claim) = self.inner.store.key_claim(key).await? {
                return on_conflict.resolve(key, claim);
            }
        }
        // Backpressure: a new saga waits for a free slot before it is
        // written, so a caller that starts faster than sagas finish waits
        // here instead of piling up sagas in memory.
        let closed = || Error::ShuttingDown { saga: None };
        let permit = tokio::select! {
            permit = self.inner.permits.clone().acquire_owned() => permit,
            _ = self.inner.stopping.cancelled() => return Err(closed()),
        }
        .map_err(|_| closed())?;
        let mut plan = definition.plan();
        if let Some(strategy) = options.strategy {
            let problems = strategy.problems("strategy");
            if !problems.is_empty() {
                return Err(Error::InvalidOptions(problems.join("; ")));
            }
            plan.strategy = strategy;
        }
        let new = NewSaga {
            saga_type: saga.saga_type().clone(),
            definition,
            plan,
            input: input_bytes,
            key: options.idempotency_key.map(|key| (key, on_conflict)),
            parent: None,
        };
        // On a task of its own: once the start record is sent, the saga
        // must get its loop even if the caller stops waiting (a timeout, a
        // dropped request); otherwise a durable start would sit `Running`
        // with nothing driving it until the next open.
        let engine = self.background();
        self.detached(
            async move { engine.start_encoded(new, Some(permit)).await },
            closed,
        )
        .await
    }

    /// Writes the start record of saga `new`, whose input is encoded
    /// already, and runs it. Without a `permit` the loop runs without one (a
    /// sub-saga: its parent holds one, and waiting for a second could
    /// deadlock).
    // Long on purpose: the steps of a start in the order they must happen
    // (decode, stage, claim, write, spawn), each short.
    pub(super) async fn start_encoded(
        &self,
        new: NewSaga,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Started, Error> {
        let NewSaga {
            saga_type,
            definition,
            plan,
            input: input_bytes,
            key,
            parent,
        } = new;
        let (idempotency_key, on_conflict) = key.unzip();
        let erased_input = definition
            .decode_input(&input_bytes)
            .map_err(|e| Error::Encode {
                what: "input",
                reason: format!("it does not decode back to itself: {e}"),
            })?;
        let id = SagaId::new();
        let entry = LogEntry {
            seq: 0,
            at: self.inner.clock.now(),
            record: Record::SagaStarted(Box::new(SagaStarted {
                saga_type: saga_type.clone(),
                version: definition.version(),
                input: input_bytes,
                plan,
                idempotency_key: idempotency_key.clone(),
                parent,
            })),
        };
        let frame = codec::encode_record(entry.at, &entry.record)
            .map_err(|e| Error::encode("record", e))?;
        let at = entry.at;
        let mut state = SagaState::from_start_owned(entry)
            .map_err(|error| Error::Illegal { saga: id, error })?;
        let mut staged = Staged::new(id, None);
        staged.stage_frame(frame);
        let pending_calls = stage_first_intents(&mut state, &mut staged, at)?;
        let Some(mut append) = staged.take(&state)? else {
            return Err(Error::Encode {
                what: "start record",
                reason: "nothing was staged".into(),
            });
        };
        append.claim = idempotency_key
            .clone()
            .zip(on_conflict)
            .map(|(key, c)| Claim {
                key,
                fingerprint: c.fingerprint,
            });
        if self.inner.stopping.is_cancelled() {
            return Err(Error::shutting_down(id));
        }
        match self.inner.writer.append(append).await {
            Ok(append) => staged.written(append, self.inner.local_store),
            Err(AppendError::KeyTaken(owner)) => {
                return match (idempotency_key, on_conflict) {
                    (Some(key), Some(on_conflict)) => on_conflict.resolve(&key, owner),
                    _ => Ok(Started {
                        saga_id: owner.saga,
                        existing: true,
                    }),
                }
            }
            Err(AppendError::Store(e @ crate::log::store::StoreError::Ambiguous(_))) => {
                // The start may be in the log: whoever reads it next must
                // find it running. Claimed now; the reload runs it, or
                // lets it go if the log holds nothing.
                if self.claim(id) {
                    self.reload(id);
                }
                return Err(Error::Store(e));
            }
            Err(AppendError::Store(e)) => return Err(Error::Store(e)),
            Err(AppendError::Conflict) => return Err(Error::Store(conflict(id))),
            Err(AppendError::Closed) => return Err(Error::shutting_down(id)),
        }
        tracing::info!(saga_id = %id, %saga_type, "saga started");
        metrics::counter!(crate::metrics::SAGAS_STARTED, "saga_type" => saga_type.shared())
            .increment(1);
        // A fresh id: nobody else can own it.
        self.claim(id);
        self.spawn_owned_with(
            SagaRun {
                id,
                definition,
                input: erased_input,
                state,
                pending_calls,
                open: staged.into_open(),
            },
            permit,
        );
        Ok(Started {
            saga_id: id,
            existing: false,
        })
    }
}

/// A saga about to be written: what [`Engine::start`] and a sub-saga step
/// hand to `start_encoded`.
pub(crate) struct NewSaga {
    /// Its registered type.
    pub(crate) saga_type: SagaType,
    /// Its definition.
    pub(crate) definition: Arc<dyn ErasedSaga>,
    /// The plan its start record carries.
    pub(crate) plan: SagaPlan,
    /// Its encoded input.
    pub(crate) input: Vec<u8>,
    /// Its idempotency key, with what to do if the key is taken.
    pub(crate) key: Option<(IdempotencyKey, Conflict)>,
    /// The parent's step, for a sub-saga.
    pub(crate) parent: Option<ParentLink>,
}

/// Stages the intents of a fresh saga's first decisions, which are its
/// first steps, so that they are written with the start record: one flush
/// instead of two. Returns the calls to make once they are durable.
fn stage_first_intents(
    state: &mut SagaState,
    staged: &mut Staged,
    at: UnixMillis,
) -> Result<Vec<(CallRef, calls::CallKind)>, Error> {
    let mut pending_calls: Vec<(CallRef, calls::CallKind)> = Vec::new();
    loop {
        let live: Vec<_> = pending_calls.iter().map(|(call, _)| call.step).collect();
        let NextAction::RunStep { step, attempt } = decide_live(state, at, &live) else {
            return Ok(pending_calls);
        };
        let call = CallRef { step, attempt };
        staged.push(state, at, Record::StepStarted(call))?;
        pending_calls.push((call, calls::CallKind::Forward));
    }
}

/// The error of an append the store refused because the log already holds
/// records at its sequence numbers: some other writer appended to the saga.
pub(super) fn conflict(saga: SagaId) -> crate::log::store::StoreError {
    crate::log::store::StoreError::Conflict { saga }
}
