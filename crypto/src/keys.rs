//! Node keys: ed25519 public keys with a text form, secret keys and their key files.
//!
//! A public key is kept as its 32 raw bytes: it comes off the wire, and whether those bytes are
//! a usable key is decided by verification, never by decoding. The text form is 64 lowercase
//! hex digits; it is what operators copy into the genesis file.

use std::fmt;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::Signer as _;

/// Length of a public key in bytes.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Length of a signature in bytes.
pub const SIGNATURE_BYTES: usize = 64;
/// The first line of a key file.
const KEY_FILE_HEADER: &str = "# cairn node secret key (ed25519 seed, hex); keep it private: mode 0600";

/// An ed25519 public key as 32 raw bytes (RFC 8032 encoding).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; PUBLIC_KEY_BYTES]);

/// An ed25519 signature as 64 raw bytes (`R ‖ s`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature(pub [u8; SIGNATURE_BYTES]);

/// A node's secret key. It never prints its bytes.
pub struct SecretKey {
    signing: ed25519_dalek::SigningKey,
}

/// A public key's text form could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not 64 hex digits.
    #[error("a public key is 64 hex digits, got {0:?}")]
    BadText(String),
}

/// A key file could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file system refused.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Group or others may read the file, so the key may have leaked.
    #[error(
        "key file {path} is readable by group or others (mode {mode:04o}); run `chmod 600 {path}` \
         and, if others may have read it, make a new key"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The contents are not a key file.
    #[error("key file {path} is malformed: {reason}; expected a comment line and 64 hex digits")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The file already exists; keys are never overwritten.
    #[error("key file {path} already exists; refusing to overwrite a key")]
    Exists {
        /// The key file.
        path: PathBuf,
    },
}

impl PublicKey {
    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        &self.0
    }

    /// A short form for logs: the first 8 hex digits.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let mut bytes = [0u8; PUBLIC_KEY_BYTES];
        match hex::decode_to_slice(text, &mut bytes) {
            Ok(()) if text.bytes().all(|b| !b.is_ascii_uppercase()) => Ok(Self(bytes)),
            _ => Err(KeyError::BadText(text.chars().take(80).collect())),
        }
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..8]))
    }
}

impl SecretKey {
    /// Makes a new key from the operating system's random source.
    ///
    /// # Panics
    ///
    /// If the operating system has no random source; a node cannot run without one.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).expect("the operating system's random source failed");
        Self::from_seed(&seed)
    }

    /// The key whose RFC 8032 seed is `seed`; used for test vectors and key files.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self { signing: ed25519_dalek::SigningKey::from_bytes(seed) }
    }

    /// The RFC 8032 seed, for building the node's TLS identity. Handle with care: whoever
    /// holds these bytes can sign as this node.
    pub fn seed_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key().to_bytes())
    }

    /// Signs `message` (deterministic, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.signing.sign(message).to_bytes())
    }

    /// Writes a new key file at `path`, created with mode 0600; an existing file is an error.
    pub fn write_file(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |source| KeyFileError::Io { path: path.to_owned(), source };
        if path.exists() {
            return Err(KeyFileError::Exists { path: path.to_owned() });
        }
        // Write a temporary file beside the target, then link it into place: a crash or a full
        // disk never leaves a half-written key at `path`, and linking fails if `path` appeared
        // meanwhile, so an existing key is never overwritten.
        let mut temp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        temp_name.push(format!(".tmp-{}", std::process::id()));
        let temp = path.with_file_name(temp_name);
        let result = (|| {
            let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp)?;
            let text = format!("{KEY_FILE_HEADER}\n{}\n", hex::encode(self.signing.to_bytes()));
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::hard_link(&temp, path)
        })();
        let _ = fs::remove_file(&temp);
        result.map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists { path: path.to_owned() }
            } else {
                io(source)
            }
        })?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }

    /// Reads a key file, refusing one that group or others can read.
    pub fn read_file(path: &Path) -> Result<Self, KeyFileError> {
        let io = |source| KeyFileError::Io { path: path.to_owned(), source };
        // The mode comes from the open file, so it is the mode of the bytes read below even if
        // the path is replaced in between.
        let mut file = fs::File::open(path).map_err(io)?;
        let mode = file.metadata().map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen { path: path.to_owned(), mode: mode & 0o7777 });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        let malformed = |reason| KeyFileError::Malformed { path: path.to_owned(), reason };
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines.next().ok_or_else(|| malformed("no key line"))?;
        if lines.next().is_some() {
            return Err(malformed("more than one key line"));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(line, &mut seed).map_err(|_| malformed("the key line is not 64 hex digits"))?;
        Ok(Self::from_seed(&seed))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().short())
    }
}
