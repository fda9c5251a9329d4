//! Cairn's cryptography: node keys and key files, strict ed25519 verification (single and
//! parallel, with identical verdicts), and domain-separated SHA-256.
//!
//! Every hash Cairn computes goes through [`hash::Domain`], so the complete list of domain
//! strings lives in one place. Every signature check goes through [`verify::verify_strict`],
//! [`verify::verify_many`] or [`verify::verify_many_with`], which give the same verdict as
//! ed25519-dalek's `verify_strict` on every input.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod hash;
pub mod keys;
pub mod verify;

pub use hash::{Domain, Hasher, hash};
pub use keys::{KeyError, KeyFileError, PublicKey, SecretKey, Signature};
pub use verify::{is_usable_key, verify_many, verify_strict};
