//! Published ed25519 test vectors (`testdata/ed25519-speccheck`, `testdata/wycheproof`) pinned on
//! every verification path: `verify_strict`, and `verify_many` serial and parallel.

use std::path::PathBuf;

use cairn_crypto::verify::{Check, VERIFY_CHUNK_MIN};
use cairn_crypto::{PublicKey, Signature, verify_many, verify_strict};

/// The thread counts every parallel check runs with.
const THREAD_COUNTS: [usize; 4] = [1, 2, 3, 4];

fn testdata(relative: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "testdata", relative].iter().collect();
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// One vector, decoded. `key` and `signature` are `None` when the hex has the wrong length for
/// the type, which the API cannot even express: such an input is rejected before any call.
struct Vector {
    key: Option<PublicKey>,
    message: Vec<u8>,
    signature: Option<Signature>,
}

impl Vector {
    fn from_hex(key_hex: &str, message_hex: &str, signature_hex: &str) -> Self {
        let decode = |text: &str| hex::decode(text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
        Self {
            key: decode(key_hex).try_into().ok().map(PublicKey),
            message: decode(message_hex),
            signature: decode(signature_hex).try_into().ok().map(Signature),
        }
    }

    fn check(&self) -> Option<Check<'_>> {
        Some(Check { key: self.key.as_ref()?, message: &self.message, signature: self.signature.as_ref()? })
    }
}

/// The verdict of `verify_strict` on hex inputs: false for a key that is not 32 bytes or a
/// signature that is not 64, as no call can be made with them.
fn verdict(key_hex: &str, message_hex: &str, signature_hex: &str) -> bool {
    let vector = Vector::from_hex(key_hex, message_hex, signature_hex);
    vector.check().is_some_and(|c| verify_strict(c.key, c.message, c.signature))
}

/// The verdicts of `verify_many` on `vectors`, in order; wrong-length inputs are rejected
/// without entering the batch, as in `verdict`.
fn verdicts_many(vectors: &[Vector], n_threads: usize) -> Vec<bool> {
    let checks: Vec<Check<'_>> = vectors.iter().filter_map(Vector::check).collect();
    let mut batch = verify_many(&checks, n_threads).into_iter();
    let verdicts = vectors.iter().map(|v| v.check().is_some() && batch.next().unwrap()).collect();
    assert!(batch.next().is_none());
    verdicts
}

/// `items` shuffled by a seeded Fisher-Yates over xorshift64, so a failure replays exactly.
fn shuffled<T>(mut items: Vec<T>, mut seed: u64) -> Vec<T> {
    for idx in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(idx, (seed % (idx as u64 + 1)) as usize);
    }
    items
}

/// The speccheck cases from `cases.txt`, as hex (message, key, signature).
fn speccheck_cases() -> Vec<[String; 3]> {
    let text = testdata("ed25519-speccheck/cases.txt");
    let mut lines = text.lines();
    let n_cases: usize = lines.next().unwrap().parse().unwrap();
    let fields: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(fields.len(), 3 * n_cases, "the count line says {n_cases} cases");
    fields
        .chunks(3)
        .map(|case| {
            let field = |idx: usize, name: &str| {
                let value = case[idx].strip_prefix(name).unwrap_or_else(|| panic!("{:?}", case[idx]));
                value.to_owned()
            };
            [field(0, "msg="), field(1, "pbk="), field(2, "sig=")]
        })
        .collect()
}

/// Cairn's verdict on each speccheck case (index = case number): only case 3 is accepted.
///
/// 0-2 have a small-order key or `R` (rejected by `verify_strict`, accepted by cofactorless
/// `verify`); 3 has mixed-order key and `R` and satisfies the cofactorless equation; 4-5 hold
/// only cofactored; 6-7 have `s >= L`; 8-9 a non-canonical `R`; 10-11 a non-canonical key.
/// This is the "Dalek strict" row of speccheck's published results. Other functions give other
/// vectors (`testdata/ed25519-speccheck/README.md`), which is why Cairn has no batch path.
const SPECCHECK_EXPECTED: [bool; 12] =
    [false, false, false, true, false, false, false, false, false, false, false, false];

#[test]
fn speccheck_verdicts_are_pinned_on_every_path() {
    let cases = speccheck_cases();
    assert_eq!(cases.len(), SPECCHECK_EXPECTED.len());

    let single: Vec<bool> = cases.iter().map(|[m, k, s]| verdict(k, m, s)).collect();
    assert_eq!(single, SPECCHECK_EXPECTED, "verify_strict");

    let vectors: Vec<Vector> = cases.iter().map(|[m, k, s]| Vector::from_hex(k, m, s)).collect();
    assert!(vectors.iter().all(|v| v.check().is_some()), "every speccheck case has the right lengths");
    for n_threads in THREAD_COUNTS {
        assert_eq!(
            verdicts_many(&vectors, n_threads),
            SPECCHECK_EXPECTED,
            "verify_many, {n_threads} threads"
        );
    }

    // 12 checks are too few for threads; 40 shuffled copies make every thread count above
    // spawn its threads, with each case landing in several chunks.
    let n_copies = 40;
    let tagged: Vec<(usize, Vector)> = (0..n_copies)
        .flat_map(|_| cases.iter().enumerate())
        .map(|(case_idx, [m, k, s])| (case_idx, Vector::from_hex(k, m, s)))
        .collect();
    let (case_idxs, vectors): (Vec<usize>, Vec<Vector>) =
        shuffled(tagged, 0x5eed_5eed_5eed_5eed).into_iter().unzip();
    assert!(vectors.len() / VERIFY_CHUNK_MIN >= *THREAD_COUNTS.iter().max().unwrap());
    let expected: Vec<bool> = case_idxs.iter().map(|&case_idx| SPECCHECK_EXPECTED[case_idx]).collect();
    assert_eq!(expected.iter().filter(|&&v| v).count(), n_copies);
    for n_threads in THREAD_COUNTS {
        assert_eq!(
            verdicts_many(&vectors, n_threads),
            expected,
            "verify_many, {n_copies} copies, {n_threads} threads"
        );
    }
}

/// One Wycheproof test: its id, what it expects, and its inputs as hex (key, message, signature).
struct WycheproofTest {
    tc_id: u64,
    comment: String,
    flags: String,
    result: String,
    hex: [String; 3],
}

fn wycheproof_tests() -> (u64, Vec<WycheproofTest>) {
    let json: serde_json::Value = serde_json::from_str(&testdata("wycheproof/ed25519_test.json")).unwrap();
    assert_eq!(json["algorithm"], "EDDSA");
    let n_tests_declared = json["numberOfTests"].as_u64().unwrap();
    let string = |value: &serde_json::Value| value.as_str().unwrap_or_else(|| panic!("{value}")).to_owned();
    let mut tests = Vec::new();
    for group in json["testGroups"].as_array().unwrap() {
        assert_eq!(group["publicKey"]["curve"], "edwards25519");
        let key_hex = string(&group["publicKey"]["pk"]);
        for test in group["tests"].as_array().unwrap() {
            tests.push(WycheproofTest {
                tc_id: test["tcId"].as_u64().unwrap(),
                comment: string(&test["comment"]),
                flags: test["flags"].to_string(),
                result: string(&test["result"]),
                hex: [key_hex.clone(), string(&test["msg"]), string(&test["sig"])],
            });
        }
    }
    (n_tests_declared, tests)
}

/// The verdict Wycheproof expects. The file has no "acceptable" test today; if one appears, this
/// panics so that its verdict gets pinned here by hand, with a reason.
fn wycheproof_expected(test: &WycheproofTest) -> bool {
    match test.result.as_str() {
        "valid" => true,
        "invalid" => false,
        other => panic!("tcId {}: result {other:?} needs a verdict pinned in this test", test.tc_id),
    }
}

#[test]
fn wycheproof_counts() {
    let (n_tests_declared, tests) = wycheproof_tests();
    let n_valid = tests.iter().filter(|t| t.result == "valid").count();
    let n_invalid = tests.iter().filter(|t| t.result == "invalid").count();
    assert_eq!(tests.len() as u64, n_tests_declared, "numberOfTests");
    assert_eq!((tests.len(), n_valid, n_invalid), (151, 88, 63));
    // Wrong-length signatures: truncated, with garbage appended, empty.
    let n_wrong_length = tests.iter().filter(|t| t.hex[2].len() != 128).count();
    assert_eq!(n_wrong_length, 12);
    assert!(tests.iter().all(|t| t.hex[0].len() == 64), "every key is 32 bytes");
}

#[test]
fn wycheproof_verdicts_on_every_path() {
    let (_, tests) = wycheproof_tests();
    let expected: Vec<bool> = tests.iter().map(wycheproof_expected).collect();
    assert!(expected.iter().any(|&v| v) && expected.iter().any(|&v| !v));
    let describe = |idx: usize| {
        let test = &tests[idx];
        format!(
            "tcId {} ({}, {} {}) expected {}",
            test.tc_id, test.result, test.comment, test.flags, expected[idx]
        )
    };

    let single: Vec<bool> = tests.iter().map(|t| verdict(&t.hex[0], &t.hex[1], &t.hex[2])).collect();
    let wrong: Vec<String> =
        (0..tests.len()).filter(|&idx| single[idx] != expected[idx]).map(describe).collect();
    assert!(wrong.is_empty(), "verify_strict disagrees with Wycheproof on:\n{}", wrong.join("\n"));

    let vectors: Vec<Vector> =
        tests.iter().map(|t| Vector::from_hex(&t.hex[0], &t.hex[1], &t.hex[2])).collect();
    let n_checks = vectors.iter().filter(|v| v.check().is_some()).count();
    assert!(n_checks / VERIFY_CHUNK_MIN >= *THREAD_COUNTS.iter().max().unwrap(), "the parallel path runs");
    for n_threads in THREAD_COUNTS {
        let many = verdicts_many(&vectors, n_threads);
        let wrong: Vec<String> =
            (0..tests.len()).filter(|&idx| many[idx] != expected[idx]).map(describe).collect();
        assert!(
            wrong.is_empty(),
            "verify_many({n_threads}) disagrees with Wycheproof on:\n{}",
            wrong.join("\n")
        );
    }
}
