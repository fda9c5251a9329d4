//! The bounded fuzz run of CI: every target of `cairn_tests::fuzz` over its seed corpus
//! (`fuzz/corpus/<target>/`), every regression file (`tests/fuzz-regressions/<target>/`: inputs
//! that once failed), and [`MUTANTS_PER_TARGET`] inputs from the seeded mutator. No cargo-fuzz,
//! no nightly, no clock: the same inputs on every run. The long runs use cargo-fuzz; see
//! `docs/FUZZING.md`.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};

use cairn_tests::fuzz::{TARGETS, Target, mutate};
use cairn_tests::sim::Rng;

/// Mutated inputs per target: enough to cover the decoders' error paths, few enough that the
/// whole file runs in a few seconds in the test profile.
const MUTANTS_PER_TARGET: usize = 5000;

/// The mutator's seed; each target draws from its own stream.
const SEED: u64 = 0x00ca_124f_0220;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace root").to_owned()
}

/// The files of `dir` in name order, with their bytes; none if it does not exist.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// Runs `target` on `input`; on a panic, names the input (`what`) and re-raises it.
fn run(name: &str, target: Target, input: &[u8], what: &dyn Fn() -> String) {
    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(input))) {
        eprintln!("fuzz target `{name}` failed on {}", what());
        resume_unwind(panic);
    }
}

fn target(name: &str) -> Target {
    TARGETS.iter().find(|(n, _)| *n == name).expect("a target of that name").1
}

fn fuzz(name: &str) {
    let target = target(name);
    let seeds = files(&root().join("fuzz/corpus").join(name));
    assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ has no seeds");
    let regressions = files(&root().join("tests/fuzz-regressions").join(name));
    for (path, bytes) in seeds.iter().chain(&regressions) {
        run(name, target, bytes, &|| path.display().to_string());
    }
    let mut rng = Rng::new(SEED ^ name.bytes().fold(0u64, |h, b| h.rotate_left(8) ^ u64::from(b)));
    let mut last = seeds[0].1.clone();
    for i in 0..MUTANTS_PER_TARGET {
        // Every other mutant builds on the one before, so edits stack up.
        let base = if i % 2 == 1 { last } else { seeds[rng.index(seeds.len())].1.clone() };
        let other = &seeds[rng.index(seeds.len())].1;
        let input = mutate(&mut rng, &base, other);
        run(name, target, &input, &|| {
            let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{name}-mutant-{i}"));
            std::fs::write(&path, &input).unwrap();
            format!("mutant {i}, written to {} (copy it to tests/fuzz-regressions/{name}/)", path.display())
        });
        last = input;
    }
}

#[test]
fn every_target_has_a_fuzz_binary_and_seeds() {
    for (name, _) in TARGETS {
        let source = root().join("fuzz/fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(text.contains(&format!("cairn_tests::fuzz::{name}(data)")), "{}", source.display());
        let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml lacks the bin {name}");
    }
}

#[test]
fn event() {
    fuzz("event");
}

#[test]
fn evidence() {
    fuzz("evidence");
}

#[test]
fn message() {
    fuzz("message");
}

#[test]
fn genesis() {
    fuzz("genesis");
}

#[test]
fn config() {
    fuzz("config");
}

#[test]
fn api_body() {
    fuzz("api_body");
}
