//! The saga types a service can run, and typed handles to them.

use super::erased::ErasedSaga;
use super::SagaDefinition;
use crate::ids::SagaType;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

/// A typed handle to a registered saga type: `Engine::start` takes it, so
/// the compiler checks the input type.
pub struct SagaRef<I> {
    saga_type: SagaType,
    _input: PhantomData<fn(I)>,
}

impl<I> SagaRef<I> {
    /// The saga type it refers to.
    pub fn saga_type(&self) -> &SagaType {
        &self.saga_type
    }
}

impl<I> Clone for SagaRef<I> {
    fn clone(&self) -> Self {
        SagaRef {
            saga_type: self.saga_type.clone(),
            _input: PhantomData,
        }
    }
}

impl<I> fmt::Debug for SagaRef<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SagaRef({})", self.saga_type)
    }
}

/// Two definitions were registered under one saga type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("saga type '{0}' is already registered; each type may be registered once")]
pub struct DuplicateSagaType(pub SagaType);

/// The saga definitions an engine can run. Register every type before
/// opening the engine: recovery needs the code of every saga in the log.
#[derive(Default)]
pub struct Registry {
    sagas: HashMap<SagaType, Arc<dyn ErasedSaga>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a definition and returns the typed handle used to start it.
    pub fn register<I>(
        &mut self,
        definition: SagaDefinition<I>,
    ) -> Result<SagaRef<I>, DuplicateSagaType>
    where
        I: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let saga_type = definition.saga_type.clone();
        if self.sagas.contains_key(&saga_type) {
            return Err(DuplicateSagaType(saga_type));
        }
        self.sagas.insert(saga_type.clone(), Arc::new(definition));
        Ok(SagaRef {
            saga_type,
            _input: PhantomData,
        })
    }

    /// The registered saga types, in order.
    pub(crate) fn types(&self) -> Vec<SagaType> {
        let mut types: Vec<SagaType> = self.sagas.keys().cloned().collect();
        types.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        types
    }

    pub(crate) fn get(&self, saga_type: &SagaType) -> Option<&Arc<dyn ErasedSaga>> {
        self.sagas.get(saga_type)
    }
}
