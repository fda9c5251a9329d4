//! Cairn's test support: the deterministic cluster simulator ([`sim`]), used by
//! `tests/tests/sim.rs` and the `cairn-soak` binary.
//!
//! The simulator drives the sans-I/O protocol core alone, with virtual time and a seeded
//! network; no process, socket or clock is involved, so a failing seed replays exactly.

#![forbid(unsafe_code)]

pub mod sim;
