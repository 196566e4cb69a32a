//! Identifiers: every name that crosses a module boundary has its own type.
//!
//! A bare `String` or `u64` says nothing about what it holds; these newtypes
//! say it, and keep a step name from being passed where a saga type belongs.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Identity of one saga instance: a UUIDv7, so ids sort by creation time and
/// the log (keyed by id, then sequence) keeps one saga's records together.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SagaId(uuid::Uuid);

/// The UUIDv7 counter state shared by every id this process makes, so that
/// two ids made by one process are strictly increasing.
static ID_CONTEXT: std::sync::Mutex<uuid::ContextV7> =
    std::sync::Mutex::new(uuid::ContextV7::new());

impl SagaId {
    /// A new, time-ordered id. Two ids made by one process are strictly increasing.
    ///
    /// Never panics: a system clock before 1970 counts as 1970 (uuid's own
    /// `now_v7` panics there). Opening a store or an engine refuses such a
    /// clock ([`crate::StoreError::ClockBeforeEpoch`]).
    pub fn new() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let at = uuid::Timestamp::from_unix(&ID_CONTEXT, since.as_secs(), since.subsec_nanos());
        SagaId(uuid::Uuid::new_v7(at))
    }

    /// Appends the id as it displays (a lowercase hyphenated UUID, 36
    /// characters) to `out`, without going through `fmt`.
    pub(crate) fn push_to(self, out: &mut String) {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        out.push_str(self.0.hyphenated().encode_lower(&mut buf));
    }

    /// The id's 16 bytes in big-endian order, as used in store keys.
    pub fn to_bytes(self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// Rebuilds an id from the 16 bytes written by [`SagaId::to_bytes`].
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        SagaId(uuid::Uuid::from_bytes(bytes))
    }

    /// The smallest id whose UUIDv7 timestamp is `at`: every id made at or
    /// after `at` sorts at or above it. Not itself a valid UUIDv7; used as
    /// a bound (the index watermark).
    pub fn first_at(at: UnixMillis) -> Self {
        let mut bytes = [0u8; 16];
        // UUIDv7: the first 48 bits are the Unix time in milliseconds.
        bytes[..6].copy_from_slice(&at.0.min((1 << 48) - 1).to_be_bytes()[2..]);
        SagaId::from_bytes(bytes)
    }

    /// Parses the hyphenated text form printed by `Display`.
    ///
    /// Returns `None` when `text` is not a UUID.
    pub fn parse(text: &str) -> Option<Self> {
        uuid::Uuid::parse_str(text).ok().map(SagaId)
    }
}

impl Default for SagaId {
    fn default() -> Self {
        Self::new()
    }
}

/// A hash map keyed by ids on the hot path (saga ids, task ids): foldhash,
/// seeded once per process, is cheaper than std's SipHash, and these keys
/// are not chosen by callers. Build one with `default()`.
pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The set counterpart of [`IdMap`].
pub(crate) type IdSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SagaId({})", self.0.hyphenated())
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Cloning one shares the text instead of copying it (names are
        /// cloned into every record, index entry and call context).
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(std::sync::Arc<str>);

        // Written as a plain string, exactly as the `String` it wrapped
        // before, so the log's bytes do not depend on how a name is held.
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(|name| $name(name.into()))
            }
        }

        impl $name {
            /// Wraps a name. Validation (non-empty, length) happens where the
            /// name is used, so that every problem is reported together.
            pub fn new(name: impl Into<String>) -> Self {
                $name(name.into().into())
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                $name(name.into())
            }
        }

        impl From<String> for $name {
            fn from(name: String) -> Self {
                $name(name.into())
            }
        }
    };
}

name_type!(
    /// The name under which a saga definition is registered (e.g. `"order"`).
    /// Recovery finds a saga's code by this name, so it must stay stable
    /// across deployments.
    SagaType
);

impl SagaType {
    /// The shared text itself, for a metrics label, which takes it without
    /// copying.
    pub(crate) fn shared(&self) -> std::sync::Arc<str> {
        self.0.clone()
    }
}

name_type!(
    /// The name of one step inside a saga definition (e.g. `"charge"`).
    StepName
);

name_type!(
    /// A caller-chosen key that makes `start` idempotent: a second start with
    /// the same key returns the saga the first one created.
    IdempotencyKey
);

/// Milliseconds since the Unix epoch, as written in every log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// This instant plus `millis`, saturating instead of overflowing.
    pub fn plus_millis(self, millis: u64) -> Self {
        UnixMillis(self.0.saturating_add(millis))
    }

    /// This instant minus `d`, saturating at the epoch.
    pub fn minus(self, d: std::time::Duration) -> Self {
        UnixMillis(self.0.saturating_sub(millis(d)))
    }

    /// `t` as milliseconds since the epoch; `None` if `t` is before 1970.
    pub fn from_system_time(t: std::time::SystemTime) -> Option<Self> {
        let since = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(UnixMillis(millis(since)))
    }

    /// The system clock now (the epoch if the clock reads before 1970).
    pub fn now() -> Self {
        Self::from_system_time(std::time::SystemTime::now()).unwrap_or(UnixMillis(0))
    }

    /// The system clock now, or [`crate::StoreError::ClockBeforeEpoch`] if
    /// it reads before 1970: the log's times and ids would be wrong.
    pub fn checked_now() -> Result<Self, crate::StoreError> {
        Self::checked(std::time::SystemTime::now())
    }

    /// `t` as milliseconds since the epoch, or
    /// [`crate::StoreError::ClockBeforeEpoch`] if it is before 1970.
    pub fn checked(t: std::time::SystemTime) -> Result<Self, crate::StoreError> {
        Self::from_system_time(t).ok_or_else(|| crate::StoreError::ClockBeforeEpoch {
            behind: std::time::UNIX_EPOCH.duration_since(t).unwrap_or_default(),
        })
    }
}

/// `d` in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-12-01T22:08:47.123Z`.
impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.0);
        write!(f, "{}", humantime::format_rfc3339_millis(at))
    }
}

/// Index of a step in its saga's plan, counting from 0.
pub type StepIndex = u32;

/// Attempt number of one call, counting from 1.
pub type Attempt = u32;

#[cfg(test)]
mod clock_tests {
    use super::*;

    #[test]
    fn a_clock_before_1970_is_a_typed_error_that_says_to_set_it() {
        let before = std::time::UNIX_EPOCH - std::time::Duration::from_secs(5);

        let error = UnixMillis::checked(before).unwrap_err();

        assert!(matches!(
            error,
            crate::StoreError::ClockBeforeEpoch { behind } if behind == std::time::Duration::from_secs(5)
        ));
        assert!(error.to_string().contains("set the clock"), "{error}");
    }

    #[test]
    fn ids_made_one_after_another_increase() {
        let ids: Vec<SagaId> = (0..1000).map(|_| SagaId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
