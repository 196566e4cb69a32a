//! The write-ahead log: the record vocabulary, its byte format, the store
//! it lives in, and the group-commit writer.
//!
//! Ask "is it bytes?" and the answer is here: `record` says what can be
//! written, `codec` how it becomes bytes, `store` where the bytes go, and
//! `writer` how many appends share one flush.

pub mod codec;
pub mod record;
pub mod repair;
pub mod store;
pub mod verify;
pub mod witness;
pub mod writer;
