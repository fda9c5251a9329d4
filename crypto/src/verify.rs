//! Strict ed25519 verification: one signature, or many in parallel with the same verdicts.
//!
//! Cairn has one signature-validity rule: ed25519-dalek's `verify_strict`. It rejects
//! non-canonical `s`, small-order public keys and small-order `R`, and compares the encoding of
//! the recomputed `R` with the signature's bytes. Every code path calls it, so the verdict on
//! any input is the same on every path.
//!
//! There is deliberately no batch path. Batch verification checks one random linear combination
//! of the signature equations; with a torsion component in `R` its verdict depends on the random
//! coefficients, and its cofactored form accepts signatures `verify_strict` rejects (speccheck
//! cases 3 and 11 show both). Making a batch agree exactly would need a prime-order check of
//! every `R`, which costs about as much as the verification it would save.

use crate::keys::{PublicKey, Signature};

/// Most threads [`verify_many`] uses; more would only add scheduling overhead on the machines
/// Cairn targets.
pub const VERIFY_THREADS_MAX: usize = 64;

/// Below this many signatures per thread, spawning threads costs more than it saves; it is
/// also how many checks a thread takes at a time from the shared counter.
pub const VERIFY_CHUNK_MIN: usize = 16;

/// `verify_strict(key, message, signature)`: true if and only if ed25519-dalek's
/// `VerifyingKey::verify_strict` accepts. Keys that are not valid point encodings are rejected.
pub fn verify_strict(key: &PublicKey, message: &[u8], signature: &Signature) -> bool {
    let Ok(verifying) = ed25519_dalek::VerifyingKey::from_bytes(key.as_bytes()) else {
        return false;
    };
    let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
    verifying.verify_strict(message, &signature).is_ok()
}

/// Whether `key` can ever verify a signature under [`verify_strict`]: a valid point encoding of
/// a key that is not of small order. A key that fails this could never sign an event, so a
/// membership change that would admit it is refused.
pub fn is_usable_key(key: &PublicKey) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(key.as_bytes()).is_ok_and(|k| !k.is_weak())
}

/// One signature check for [`verify_many`].
#[derive(Clone, Copy, Debug)]
pub struct Check<'a> {
    /// The claimed signer.
    pub key: &'a PublicKey,
    /// The signed bytes.
    pub message: &'a [u8],
    /// The signature.
    pub signature: &'a Signature,
}

/// Public keys decoded once, for many checks of their signatures: a check by a key in the
/// cache skips decoding the key (about a tenth of a check's cost), with the verdict
/// [`verify_strict`] gives. A cluster's members sign every event, so a node keeps their keys
/// here.
#[derive(Clone, Debug, Default)]
pub struct KeyCache {
    /// Sorted by key; keys that are not valid point encodings are left out (their checks
    /// decode them and fail, as `verify_strict` does).
    keys: Vec<(PublicKey, ed25519_dalek::VerifyingKey)>,
}

impl KeyCache {
    /// The cache of `keys`.
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a PublicKey>) -> Self {
        let mut keys: Vec<(PublicKey, ed25519_dalek::VerifyingKey)> = keys
            .into_iter()
            .filter_map(|key| Some((*key, ed25519_dalek::VerifyingKey::from_bytes(key.as_bytes()).ok()?)))
            .collect();
        keys.sort_unstable_by_key(|a| a.0);
        keys.dedup_by(|a, b| a.0 == b.0);
        Self { keys }
    }

    /// [`verify_strict`]'s verdict on `check`, with the key decoded already if it is cached.
    pub fn verify(&self, check: &Check<'_>) -> bool {
        match self.keys.binary_search_by(|(key, _)| key.cmp(check.key)) {
            Ok(at) => {
                let signature = ed25519_dalek::Signature::from_bytes(&check.signature.0);
                self.keys[at].1.verify_strict(check.message, &signature).is_ok()
            }
            Err(_) => verify_strict(check.key, check.message, check.signature),
        }
    }
}

/// Verifies every check with [`verify_strict`] on up to `n_threads` threads; `result[i]` is the
/// verdict of `checks[i]`. The verdicts do not depend on `n_threads`.
pub fn verify_many(checks: &[Check<'_>], n_threads: usize) -> Vec<bool> {
    verify_many_with(&KeyCache::default(), checks, n_threads)
}

/// [`verify_many`], with the keys in `cache` decoded once: the same verdicts.
///
/// The threads take the checks [`VERIFY_CHUNK_MIN`] at a time from a shared counter rather
/// than a fixed share each: on cores shared with other work (the daemon's service loop, its
/// store, a peer on the same host), a thread that is descheduled no longer holds back the
/// whole batch while the others sit idle.
pub fn verify_many_with(cache: &KeyCache, checks: &[Check<'_>], n_threads: usize) -> Vec<bool> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let n_threads = n_threads.clamp(1, VERIFY_THREADS_MAX).min(checks.len().div_ceil(VERIFY_CHUNK_MIN));
    if n_threads <= 1 {
        return checks.iter().map(|c| cache.verify(c)).collect();
    }
    let verdicts: Vec<AtomicBool> = checks.iter().map(|_| AtomicBool::new(false)).collect();
    let next = AtomicUsize::new(0);
    let work = || {
        loop {
            let start = next.fetch_add(VERIFY_CHUNK_MIN, Ordering::Relaxed);
            if start >= checks.len() {
                break;
            }
            let end = (start + VERIFY_CHUNK_MIN).min(checks.len());
            for (check, verdict) in checks[start..end].iter().zip(&verdicts[start..end]) {
                verdict.store(cache.verify(check), Ordering::Relaxed);
            }
        }
    };
    std::thread::scope(|scope| {
        // This thread works too: one spawn fewer per batch.
        for _ in 1..n_threads {
            scope.spawn(work);
        }
        work();
    });
    // The scope joined every thread, so every store is visible here.
    verdicts.into_iter().map(AtomicBool::into_inner).collect()
}
