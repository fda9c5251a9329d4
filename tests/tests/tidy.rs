//! Tidy checks of what people forget: module docs, the dependency allowlists of the pure
//! crates, and formatting.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace root").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_doc_comment() {
    let mut files = Vec::new();
    for krate in ["crypto", "protocol", "daemon", "tests", "bench"] {
        rust_files(&root().join(krate), &mut files);
    }
    assert!(files.len() > 10);
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !std::fs::read_to_string(f).unwrap().trim_start().starts_with("//!"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a `//!` doc line: {missing:#?}");
}

/// The dependency names listed in one `[section]` of a Cargo.toml.
fn dependencies(manifest: &str, section: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == section;
        } else if inside && let Some((name, _)) = line.split_once('=') {
            names.push(name.trim().split('.').next().unwrap().to_owned());
        }
    }
    names.sort();
    names
}

#[test]
fn the_pure_crates_depend_only_on_what_they_are_allowed() {
    let read = |krate: &str| std::fs::read_to_string(root().join(krate).join("Cargo.toml")).unwrap();
    // No tokio, no quinn, no storage, no serde in the sans-I/O core.
    assert_eq!(
        dependencies(&read("protocol"), "[dependencies]"),
        ["bincode", "cairn-crypto", "hex", "thiserror"]
    );
    assert_eq!(
        dependencies(&read("crypto"), "[dependencies]"),
        ["ed25519-dalek", "getrandom", "hex", "sha2", "thiserror"]
    );
}

#[test]
fn the_code_is_formatted() {
    let output = Command::new(env!("CARGO"))
        .args(["fmt", "--all", "--check"])
        .current_dir(root())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "run `cargo fmt --all`:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
