//! Cairn's test support: the deterministic cluster simulator ([`sim`]), used by
//! `tests/tests/sim.rs` and the `cairn-soak` binary; and the adversary ([`adversary`]), a
//! Byzantine peer on the real wire, used by `tests/tests/adversary.rs` and the
//! `cairn-adversary` binary.
//!
//! The simulator drives the sans-I/O protocol core alone, with virtual time and a seeded
//! network; no process, socket or clock is involved, so a failing seed replays exactly.
//!
//! [`fuzz`] holds the bodies of the fuzz targets, run by `fuzz/` (cargo-fuzz) and, bounded, by
//! `tests/tests/fuzz.rs`.

#![forbid(unsafe_code)]

pub mod adversary;
pub mod fuzz;
pub mod sim;
