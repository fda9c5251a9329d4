//! Members' address records: where a member says it can be dialed, signed with its key.
//!
//! A node learns the addresses of members it was not configured with from these records,
//! exchanged in `Addrs` messages (`docs/PROTOCOL.md` §11). The record is signed by the member it
//! names, so a peer can only relay it, never redirect a member to an address of its choosing;
//! and who may connect is still decided by the signed membership, whatever a record says (the
//! transport's mutual TLS checks the key it reaches). For one member the record with the
//! highest `seq` wins, so a member that moves publishes a record with a higher seq (the daemon
//! uses the wall-clock milliseconds at its start).

use std::net::SocketAddr;

use cairn_crypto::{Domain, Hasher, PublicKey, SecretKey, Signature, verify_strict};

use crate::limits::{ADDR_TEXT_BYTES_MAX, ADDRS_PER_RECORD_MAX};

/// A member's signed list of addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrRecord {
    /// The member.
    pub key: PublicKey,
    /// Higher replaces lower for the same member.
    pub seq: u64,
    /// Socket addresses in their canonical text form (`192.0.2.1:7000`, `[2001:db8::1]:7000`),
    /// at most [`ADDRS_PER_RECORD_MAX`], each at most [`ADDR_TEXT_BYTES_MAX`] bytes.
    pub addrs: Vec<String>,
    /// `Ed25519(key, AddrRecord::message(cluster, key, seq, addrs))`.
    pub signature: Signature,
}

/// Why a record is not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// An address is not the canonical text of a socket address.
    #[error("an address is not a socket address in canonical form")]
    BadAddress,
    /// No address at all.
    #[error("the record lists no address")]
    Empty,
    /// The signature does not verify under the record's key.
    #[error("the signature does not verify")]
    BadSignature,
}

impl AddrRecord {
    /// What the member signs:
    /// `SHA-256("cairn/address/v1" ‖ cluster id ‖ key ‖ u64(seq) ‖ u64(n) ‖ n × (u64(len) ‖ text))`.
    pub fn message(cluster: &[u8; 32], key: &PublicKey, seq: u64, addrs: &[String]) -> [u8; 32] {
        let mut hasher = Hasher::new(Domain::Address);
        hasher.update(cluster).update(&key.0).update(&seq.to_le_bytes());
        hasher.update(&(addrs.len() as u64).to_le_bytes());
        for addr in addrs {
            hasher.update(&(addr.len() as u64).to_le_bytes()).update(addr.as_bytes());
        }
        hasher.finish()
    }

    /// `secret`'s record of `addrs` (at most [`ADDRS_PER_RECORD_MAX`] are kept).
    pub fn new(cluster: &[u8; 32], secret: &SecretKey, seq: u64, addrs: &[SocketAddr]) -> Self {
        let key = secret.public();
        let addrs: Vec<String> = addrs.iter().take(ADDRS_PER_RECORD_MAX).map(ToString::to_string).collect();
        let signature = secret.sign(&Self::message(cluster, &key, seq, &addrs));
        Self { key, seq, addrs, signature }
    }

    /// The addresses, parsed; checks that each is canonical and the signature verifies
    /// (strictly) under the record's key.
    pub fn verify(&self, cluster: &[u8; 32]) -> Result<Vec<SocketAddr>, AddrError> {
        if self.addrs.is_empty() {
            return Err(AddrError::Empty);
        }
        let mut parsed = Vec::with_capacity(self.addrs.len());
        for text in &self.addrs {
            let addr: SocketAddr = text.parse().map_err(|_| AddrError::BadAddress)?;
            if addr.to_string() != *text || text.len() > ADDR_TEXT_BYTES_MAX {
                return Err(AddrError::BadAddress);
            }
            parsed.push(addr);
        }
        if !verify_strict(
            &self.key,
            &Self::message(cluster, &self.key, self.seq, &self.addrs),
            &self.signature,
        ) {
            return Err(AddrError::BadSignature);
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_verifies_under_its_key_and_nothing_else() {
        let cluster = [7u8; 32];
        let secret = SecretKey::from_seed(&[1; 32]);
        let addrs: Vec<SocketAddr> =
            vec!["192.0.2.1:7000".parse().unwrap(), "[2001:db8::1]:7001".parse().unwrap()];
        let record = AddrRecord::new(&cluster, &secret, 5, &addrs);
        assert_eq!(record.verify(&cluster), Ok(addrs.clone()));
        assert_eq!(record.verify(&[8; 32]), Err(AddrError::BadSignature), "another cluster's");

        let mut moved = record.clone();
        moved.addrs[0] = "198.51.100.9:7000".into();
        assert_eq!(moved.verify(&cluster), Err(AddrError::BadSignature), "an address changed by a relay");
        let mut later = record.clone();
        later.seq = 6;
        assert_eq!(later.verify(&cluster), Err(AddrError::BadSignature), "a seq changed by a relay");
        let mut other = record.clone();
        other.key = SecretKey::from_seed(&[2; 32]).public();
        assert_eq!(other.verify(&cluster), Err(AddrError::BadSignature), "claimed for another key");

        for bad in
            ["192.0.2.1", "192.0.2.01:7000", "[2001:DB8::1]:7001", "host.example:7000", " 192.0.2.1:7000"]
        {
            let mut record = AddrRecord::new(&cluster, &secret, 5, &addrs);
            record.addrs = vec![bad.into()];
            record.signature = secret.sign(&AddrRecord::message(&cluster, &record.key, 5, &record.addrs));
            assert_eq!(record.verify(&cluster), Err(AddrError::BadAddress), "{bad:?}");
        }
        let empty = AddrRecord::new(&cluster, &secret, 5, &[]);
        assert_eq!(empty.verify(&cluster), Err(AddrError::Empty));
    }
}
