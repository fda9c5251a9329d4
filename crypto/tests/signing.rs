//! Signing and strict verification: round trips, single-bit tampering, the RFC 8032 vector, and
//! the property that `verify_many` gives `verify_strict`'s verdict on every input and thread count.

use cairn_crypto::verify::{Check, KeyCache, VERIFY_CHUNK_MIN, VERIFY_THREADS_MAX, verify_many_with};
use cairn_crypto::{PublicKey, SecretKey, Signature, verify_many, verify_strict};

fn from_hex<const N: usize>(text: &str) -> [u8; N] {
    hex::decode(text).unwrap().try_into().unwrap()
}

#[test]
fn sign_then_verify_accepts() {
    for byte in 0u8..8 {
        let key = SecretKey::from_seed(&[byte; 32]);
        for message in [&b""[..], b"a", b"cairn event id, 32 bytes long..", &[0u8; 1000]] {
            let signature = key.sign(message);
            assert!(verify_strict(&key.public(), message, &signature), "seed {byte}, {message:?}");
            // Signing is deterministic (RFC 8032).
            assert_eq!(key.sign(message), signature);
        }
    }
}

#[test]
fn any_flipped_bit_rejects() {
    let key = SecretKey::from_seed(&[42; 32]);
    let public = key.public();
    let message = *b"an event id is 32 bytes of hash!";
    let signature = key.sign(&message);
    assert!(verify_strict(&public, &message, &signature));

    for bit_idx in 0..message.len() * 8 {
        let mut tampered = message;
        tampered[bit_idx / 8] ^= 1 << (bit_idx % 8);
        assert!(!verify_strict(&public, &tampered, &signature), "message bit {bit_idx}");
    }
    for bit_idx in 0..signature.0.len() * 8 {
        let mut tampered = signature;
        tampered.0[bit_idx / 8] ^= 1 << (bit_idx % 8);
        assert!(!verify_strict(&public, &message, &tampered), "signature bit {bit_idx}");
    }
    for bit_idx in 0..public.0.len() * 8 {
        let mut tampered = public;
        tampered.0[bit_idx / 8] ^= 1 << (bit_idx % 8);
        assert!(!verify_strict(&tampered, &message, &signature), "key bit {bit_idx}");
    }
    let other = SecretKey::from_seed(&[43; 32]).public();
    assert!(!verify_strict(&other, &message, &signature), "another key");
}

#[test]
fn rfc8032_test_1_reproduces() {
    // RFC 8032 section 7.1, TEST 1: the empty message.
    let seed = from_hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let public = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let signature = concat!(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    );
    let key = SecretKey::from_seed(&seed);
    assert_eq!(key.public().to_string(), public);
    assert_eq!(key.public(), public.parse().unwrap());
    assert_eq!(hex::encode(key.sign(b"").0), signature);
    assert!(verify_strict(&public.parse().unwrap(), b"", &Signature(from_hex(signature))));
}

#[test]
fn verify_many_of_nothing_is_nothing() {
    for n_threads in [0, 1, 4, VERIFY_THREADS_MAX + 1, usize::MAX] {
        assert_eq!(verify_many(&[], n_threads), Vec::<bool>::new());
    }
}

/// xorshift64: deterministic, so a failure replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for byte in &mut out {
            *byte = self.next() as u8;
        }
        out
    }
}

/// The group order L, little-endian, as in an ed25519 scalar.
const ORDER_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// `s + L` for a canonical `s < L`: the same scalar mod L, in a non-canonical encoding that
/// `verify_strict` must reject. It fits in 32 bytes because `s + L < 2^254`.
fn add_order(signature: &Signature) -> Signature {
    let mut out = *signature;
    let mut carry = 0u16;
    for (byte, l) in out.0[32..].iter_mut().zip(ORDER_L) {
        let sum = u16::from(*byte) + u16::from(l) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    out
}

/// Speccheck's public keys and signatures (torsion components, non-canonical encodings), mixed
/// into the random inputs.
const SPECCHECK_KEYS: [&str; 5] = [
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
    "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
    "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
];

/// Speccheck case 3 (mixed-order key and `R`), which `verify_strict` accepts.
const SPECCHECK_CASE_3: (&str, &str, &str) = (
    "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
    "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
    concat!(
        "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f",
        "87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009"
    ),
);

/// One owned input for `verify_many`.
struct Input {
    key: PublicKey,
    message: Vec<u8>,
    signature: Signature,
}

fn random_inputs(rng: &mut Rng, n_inputs: usize) -> Vec<Input> {
    let signers: Vec<SecretKey> = (0..8).map(|_| SecretKey::from_seed(&rng.bytes())).collect();
    (0..n_inputs)
        .map(|_| {
            let signer = &signers[rng.below(signers.len())];
            let message = rng.bytes::<32>()[..rng.below(33)].to_vec();
            let signature = signer.sign(&message);
            let key = signer.public();
            match rng.below(8) {
                0 | 1 => Input { key, message, signature },
                2 => {
                    let mut signature = signature;
                    signature.0[rng.below(64)] ^= 1 << rng.below(8);
                    Input { key, message, signature }
                }
                3 => {
                    let mut message = message;
                    message.push(rng.bytes::<1>()[0]);
                    Input { key, message, signature }
                }
                4 => Input { key, message, signature: add_order(&signature) },
                5 => Input { key: PublicKey(rng.bytes()), message, signature: Signature(rng.bytes()) },
                6 => {
                    // A valid signature under another key, or random bytes, against a speccheck key.
                    let key = PublicKey(from_hex(SPECCHECK_KEYS[rng.below(SPECCHECK_KEYS.len())]));
                    let signature = if rng.below(2) == 0 { signature } else { Signature(rng.bytes()) };
                    Input { key, message, signature }
                }
                _ => {
                    let (message, key, signature) = SPECCHECK_CASE_3;
                    Input {
                        key: PublicKey(from_hex(key)),
                        message: hex::decode(message).unwrap(),
                        signature: Signature(from_hex(signature)),
                    }
                }
            }
        })
        .collect()
}

#[test]
fn verify_many_equals_verify_strict_on_random_inputs() {
    let mut rng = Rng(0x_c0ff_ee00_cafe_f00d);
    // Not a multiple of any thread count, so the last chunk is short.
    let inputs = random_inputs(&mut rng, 3001);
    let checks: Vec<Check<'_>> =
        inputs.iter().map(|i| Check { key: &i.key, message: &i.message, signature: &i.signature }).collect();
    let expected: Vec<bool> =
        inputs.iter().map(|i| verify_strict(&i.key, &i.message, &i.signature)).collect();

    // The property is only worth something if both verdicts are common.
    let n_accepted = expected.iter().filter(|&&v| v).count();
    assert!(n_accepted > 600 && n_accepted < 2400, "{n_accepted} of {} accepted", expected.len());
    // Enough checks that every thread count below really spawns that many threads.
    assert!(checks.len() / VERIFY_CHUNK_MIN >= 4);

    for n_threads in [0, 1, 2, 3, 4, VERIFY_THREADS_MAX, usize::MAX] {
        assert_eq!(verify_many(&checks, n_threads), expected, "n_threads = {n_threads}");
    }
    // Keys decoded once give the same verdicts: every key of the inputs cached (small-order
    // and undecodable ones included), or half of them.
    let all = KeyCache::new(inputs.iter().map(|i| &i.key));
    let half = KeyCache::new(inputs.iter().step_by(2).map(|i| &i.key));
    for cache in [&all, &half] {
        for n_threads in [1, 2, 3] {
            assert_eq!(verify_many_with(cache, &checks, n_threads), expected, "n_threads = {n_threads}");
        }
    }
    // Every length around the chunk boundaries, on the thread counts of the task.
    for n_checks in (0..=4 * VERIFY_CHUNK_MIN + 1).chain([97, 255, 256, 257]) {
        for n_threads in 1..=4 {
            assert_eq!(
                verify_many(&checks[..n_checks], n_threads),
                expected[..n_checks],
                "n_checks = {n_checks}, n_threads = {n_threads}"
            );
        }
    }
}
