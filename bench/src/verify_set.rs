//! The benchmarks' common baseline: raw signature checks per second on a fixed set of
//! signatures, measured in the same run as the figure it divides (`cairn-bench`,
//! `cairn-daemon-bench`). One definition, so both benches divide by the same thing.

use std::hint::black_box;
use std::time::Instant;

use cairn_crypto::verify::{Check, verify_many, verify_strict};
use cairn_crypto::{PublicKey, SecretKey, Signature};

/// 32-byte messages (as event ids are), each signed by a distinct key.
pub struct VerifySet {
    keys: Vec<PublicKey>,
    messages: Vec<[u8; 32]>,
    sigs: Vec<Signature>,
}

impl VerifySet {
    /// `n_sigs` signatures, the same on every run.
    pub fn new(n_sigs: usize) -> Self {
        let mut set = Self { keys: Vec::new(), messages: Vec::new(), sigs: Vec::new() };
        for i in 0..n_sigs {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seed[8] = 0x5e;
            let key = SecretKey::from_seed(&seed);
            let message = cairn_crypto::hash(cairn_crypto::Domain::Event, &seed);
            set.sigs.push(key.sign(&message));
            set.keys.push(key.public());
            set.messages.push(message);
        }
        set
    }

    /// The number of signatures.
    pub fn len(&self) -> usize {
        self.sigs.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.sigs.is_empty()
    }

    /// Verifies every signature once on `threads` threads (1: `verify_strict` in a loop; more:
    /// one `verify_many` batch); returns signatures per second.
    ///
    /// # Panics
    ///
    /// If a signature does not verify (they are all made valid by [`VerifySet::new`]).
    pub fn run(&self, threads: usize) -> f64 {
        let checks: Vec<Check<'_>> = (0..self.len())
            .map(|i| Check { key: &self.keys[i], message: &self.messages[i], signature: &self.sigs[i] })
            .collect();
        let start = Instant::now();
        let ok = if threads == 1 {
            checks.iter().filter(|c| black_box(verify_strict(c.key, c.message, c.signature))).count()
        } else {
            black_box(verify_many(&checks, threads)).into_iter().filter(|v| *v).count()
        };
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(ok, self.len(), "every benchmark signature verifies");
        self.len() as f64 / secs
    }
}
