//! Cairn's benchmarks, kept out of the product crates: `cairn-bench` (the protocol core:
//! signature checks, ingest, reconciliation) and `cairn-daemon-bench` (real `cairnd` processes:
//! writes, replication, catch-up, idle anti-entropy). Every rate is reported as a ratio against a
//! baseline measured in the same run on the same machine.
//!
//! The library holds what both binaries share: the signature-check baseline ([`VerifySet`]).
//! Each binary includes its own modules (`src/protocol/`, `src/daemon/`); the deterministic
//! figures of `cairn-bench sync` are also pinned as assertions by `tests/sync_figures.rs`.

#![forbid(unsafe_code)]

pub mod verify_set;

pub use verify_set::VerifySet;
