//! Node keys at their boundaries: key files on disk (mode, no overwrite, round trip, malformed
//! contents) and the text form of public keys.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_crypto::{KeyError, KeyFileError, PublicKey, SecretKey};

/// A fresh directory under the system temp dir, removed on drop. The name holds the process id
/// and a counter, so parallel tests and concurrent test runs never share one.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("cairn-crypto-{label}-{}-{n}", std::process::id()));
        fs::create_dir(&path).unwrap_or_else(|err| panic!("creating {}: {err}", path.display()));
        Self { path }
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Cleanup failing must not hide the test's own verdict.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A fixed key, so failures replay exactly.
fn test_key(byte: u8) -> SecretKey {
    SecretKey::from_seed(&[byte; 32])
}

/// Writes `contents` to a new file at `path` with `mode`, bypassing `SecretKey::write_file`.
fn write_raw(path: &Path, contents: &str, mode: u32) {
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    // `mode` at creation is filtered by the umask; set it exactly.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn write_file_creates_mode_0600_and_reads_back() {
    let dir = TempDir::new("round-trip");
    let path = dir.join("node.key");
    let key = test_key(7);
    key.write_file(&path).unwrap();
    assert_eq!(mode_of(&path), 0o600);

    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with('#'), "the file opens with a comment line: {text:?}");
    assert_eq!(text.lines().count(), 2, "{text:?}");

    let read = SecretKey::read_file(&path).unwrap();
    assert_eq!(read.public(), key.public());
    assert_eq!(read.sign(b"cairn").0, key.sign(b"cairn").0);
}

#[test]
fn write_file_refuses_to_overwrite() {
    let dir = TempDir::new("overwrite");
    let path = dir.join("node.key");
    let first = test_key(1);
    first.write_file(&path).unwrap();
    let before = fs::read(&path).unwrap();

    let err = test_key(2).write_file(&path).unwrap_err();
    assert!(matches!(&err, KeyFileError::Exists { path: p } if p == &path), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert_eq!(fs::read(&path).unwrap(), before, "the existing key file is untouched");
    assert_eq!(SecretKey::read_file(&path).unwrap().public(), first.public());

    // Any existing file counts, not only key files.
    let other = dir.join("notes.txt");
    write_raw(&other, "not a key\n", 0o644);
    let err = first.write_file(&other).unwrap_err();
    assert!(matches!(err, KeyFileError::Exists { .. }), "{err:?}");
    assert_eq!(fs::read_to_string(&other).unwrap(), "not a key\n");
}

#[test]
fn read_file_checks_the_mode() {
    // (mode, whether read_file accepts it). Any bit for group or others refuses the file.
    let cases: [(u32, bool); 9] = [
        (0o600, true),
        (0o400, true),
        (0o700, true),
        (0o640, false),
        (0o604, false),
        (0o644, false),
        (0o660, false),
        (0o610, false),
        (0o601, false),
    ];
    let dir = TempDir::new("mode");
    let key = test_key(3);
    for (mode, accepted) in cases {
        let path = dir.join(&format!("node-{mode:o}.key"));
        key.write_file(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        match SecretKey::read_file(&path) {
            Ok(read) => {
                assert!(accepted, "mode {mode:04o} was accepted");
                assert_eq!(read.public(), key.public());
            }
            Err(err @ KeyFileError::TooOpen { .. }) => {
                assert!(!accepted, "mode {mode:04o} was refused: {err}");
                let KeyFileError::TooOpen { path: reported, mode: reported_mode } = &err else {
                    unreachable!()
                };
                assert_eq!(reported, &path);
                assert_eq!(*reported_mode, mode);
                let message = err.to_string();
                assert!(message.contains(&path.display().to_string()), "names the file: {message}");
                assert!(message.contains("chmod 600"), "says what to do: {message}");
                assert!(message.contains(&format!("{mode:04o}")), "shows the mode: {message}");
            }
            Err(err) => panic!("mode {mode:04o}: unexpected error {err:?}"),
        }
    }
}

#[test]
fn read_file_rejects_malformed_contents() {
    let seed_hex = "11".repeat(32);
    let header = "# cairn node secret key";
    // (contents, the reason read_file gives).
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "no key line"),
        (format!("{header}\n"), "no key line"),
        (format!("{header}\n\n   \n# {seed_hex}\n"), "no key line"),
        (format!("{header}\n{seed_hex}\n{seed_hex}\n"), "more than one key line"),
        (format!("{seed_hex}\n{}\n", "22".repeat(32)), "more than one key line"),
        (format!("{header}\n{}zz\n", "11".repeat(31)), "the key line is not 64 hex digits"),
        (format!("{header}\n0x{}\n", "11".repeat(31)), "the key line is not 64 hex digits"),
        (format!("{header}\n{}\n", "11".repeat(31)), "the key line is not 64 hex digits"),
        (format!("{header}\n{}\n", "11".repeat(33)), "the key line is not 64 hex digits"),
        (format!("{header}\n{}1\n", "11".repeat(31)), "the key line is not 64 hex digits"),
        (format!("{header}\n{} {}\n", "11".repeat(16), "11".repeat(16)), "the key line is not 64 hex digits"),
    ];
    let dir = TempDir::new("malformed");
    for (case_idx, (contents, expected_reason)) in cases.iter().enumerate() {
        let path = dir.join(&format!("case-{case_idx}.key"));
        write_raw(&path, contents, 0o600);
        match SecretKey::read_file(&path) {
            Err(err @ KeyFileError::Malformed { .. }) => {
                let KeyFileError::Malformed { path: reported, reason } = &err else { unreachable!() };
                assert_eq!(reported, &path);
                assert_eq!(reason, expected_reason, "case {case_idx}: {contents:?}");
                let message = err.to_string();
                assert!(message.contains(&path.display().to_string()), "{message}");
                // The key line may be a secret with a typo: the error must not echo it.
                assert!(!message.contains("1111"), "the error leaks the key line: {message}");
            }
            other => panic!("case {case_idx} {contents:?}: expected Malformed, got {other:?}"),
        }
    }
}

#[test]
fn read_file_tolerates_blank_lines_whitespace_and_crlf() {
    let key = test_key(0x11);
    let seed_hex = "11".repeat(32);
    let cases = [
        seed_hex.clone(),
        format!("\n\n  {seed_hex}  \n\n"),
        format!("# comment\r\n{seed_hex}\r\n"),
        format!("# one\n# two\n\t{seed_hex}\n# trailing comment\n"),
    ];
    let dir = TempDir::new("tolerant");
    for (case_idx, contents) in cases.iter().enumerate() {
        let path = dir.join(&format!("case-{case_idx}.key"));
        write_raw(&path, contents, 0o600);
        let read = SecretKey::read_file(&path).unwrap_or_else(|err| panic!("{contents:?}: {err}"));
        assert_eq!(read.public(), key.public(), "{contents:?}");
    }
}

#[test]
fn read_file_of_a_missing_file_is_an_io_error() {
    let dir = TempDir::new("missing");
    let path = dir.join("absent.key");
    let err = SecretKey::read_file(&path).unwrap_err();
    match &err {
        KeyFileError::Io { path: reported, source } => {
            assert_eq!(reported, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[test]
fn secret_key_debug_does_not_print_the_seed() {
    let key = test_key(0xab);
    let debug = format!("{key:?}");
    assert!(!debug.contains("abab"), "{debug}");
    assert!(debug.contains(&key.public().short()), "{debug}");
}

/// Parses `text` as a public key and compares with `expected`: the key's bytes, or the text
/// `KeyError::BadText` should carry.
fn check_text(text: &str, expected: Result<[u8; 32], &str>) {
    let parsed: Result<PublicKey, KeyError> = text.parse();
    match expected {
        Ok(bytes) => assert_eq!(parsed, Ok(PublicKey(bytes)), "{text:?}"),
        Err(reported) => assert_eq!(parsed, Err(KeyError::BadText(reported.to_owned())), "{text:?}"),
    }
}

#[test]
fn public_key_text_round_trips() {
    for byte in [0u8, 1, 0x5a, 0xff] {
        let key = test_key(byte).public();
        let text = key.to_string();
        assert_eq!(text.len(), 64);
        assert!(text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{text}");
        assert_eq!(text.parse::<PublicKey>(), Ok(key));
    }
    // The bytes need not be a valid curve point: the text form is only an encoding.
    check_text(&"ff".repeat(32), Ok([0xff; 32]));
    let mut counting = [0u8; 32];
    for (idx, byte) in counting.iter_mut().enumerate() {
        *byte = idx as u8 * 7;
    }
    check_text(&hex::encode(counting), Ok(counting));
    assert_eq!(PublicKey(counting).to_string(), hex::encode(counting));
}

#[test]
fn public_key_text_trims_surrounding_whitespace() {
    let hex = "0123456789abcdef".repeat(4);
    let bytes: [u8; 32] = hex::decode(&hex).unwrap().try_into().unwrap();
    check_text(&format!(" {hex}"), Ok(bytes));
    check_text(&format!("{hex}\n"), Ok(bytes));
    check_text(&format!("\t {hex} \r\n"), Ok(bytes));
}

#[test]
fn public_key_text_rejects_bad_text() {
    let hex = "0123456789abcdef".repeat(4);
    let upper = hex.to_uppercase();
    let one_upper = format!("{}F", &hex[..63]);
    let short = &hex[..62];
    let odd = &hex[..63];
    let long = format!("{hex}00");
    let non_hex = format!("{}g", &hex[..63]);
    let prefixed = format!("0x{}", &hex[..62]);
    let inner_space = format!("{} {}", &hex[..32], &hex[32..]);
    let cases: [&str; 10] =
        [&upper, &one_upper, short, odd, &long, &non_hex, &prefixed, &inner_space, "", "é"];
    for text in cases {
        check_text(text, Err(text));
    }
    // The error carries the trimmed text.
    check_text(&format!("  {short}\n"), Err(short));
    // A long input is cut to 80 characters in the error.
    let huge = "ab".repeat(1000);
    check_text(&huge, Err(&huge[..80]));
    assert!(KeyError::BadText(short.to_owned()).to_string().contains("64 hex digits"));
}
