//! The driver's side of the overlay (`cairn_protocol::Overlay`) and of the address records:
//! which members this node dials, and where.
//!
//! The choice itself is sans-I/O, in `protocol/src/overlay.rs`: drawn by this node's own
//! randomness (seeded here from the operating system) over the members in force, never from
//! what a peer says, so a Byzantine member cannot steer it. This module only feeds it (the
//! members in force that have a known address, which are connected, the time) and applies
//! what it decides to the transport ([`Transport::set_outbound`]: dial the outbound peers,
//! close with code 10 a connection this node dialed to a peer it dropped; inbound past
//! `inbound_max` is refused by the transport with code 11).
//!
//! Addresses: at start the node signs its own address record ([`own_record`]) with the address
//! peers should dial, and the replica sends it to every peer; a member's record taken from a
//! peer (`NodeEvent::Addresses`) tells the transport where to dial it ([`Topology::learn`]). A
//! record is signed by the member it names, so it is authoritative: it replaces a configured
//! address of the same key (the configured `peers` are seeds, good until the member says
//! otherwise). A peer can only relay a record, never make this node dial a member elsewhere.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_crypto::{PublicKey, SecretKey};
use cairn_protocol::{AddrRecord, Overlay, OverlayConfig};
use tracing::{debug, info};

use crate::transport::Transport;

/// The overlay as the driver runs it.
pub(crate) struct Topology {
    overlay: Overlay,
    /// Something the choice depends on changed since the last update: a connection came or
    /// went, an address was learned, the membership changed.
    dirty: bool,
    /// When the overlay asked to be updated next (ms on the driver's clock).
    due_ms: u64,
}

impl Topology {
    /// The overlay of `me`, drawing with `seed`, which must come from [`seed`].
    pub(crate) fn new(me: PublicKey, seed: u64, config: OverlayConfig) -> Self {
        Self { overlay: Overlay::new(me, seed, config), dirty: true, due_ms: 0 }
    }

    /// The choice must be brought up to date at the next turn.
    pub(crate) fn mark(&mut self) {
        self.dirty = true;
    }

    /// When the driver must call [`Topology::update`] next without any input.
    pub(crate) fn next_timeout(&self) -> u64 {
        self.due_ms
    }

    /// Whether [`Topology::update`] has anything to do at `now_ms`.
    pub(crate) fn is_due(&self, now_ms: u64) -> bool {
        self.dirty || now_ms >= self.due_ms
    }

    /// Whether `peer` is one of this node's outbound choices.
    pub(crate) fn is_outbound(&self, peer: &PublicKey) -> bool {
        self.overlay.wants(peer)
    }

    /// Brings the choice up to date: `members` are the members in force that may be dialed
    /// (not this node, not refused, with a known address), `is_connected` says which are
    /// connected. The transport dials the outbound set and closes connections it dialed to
    /// peers dropped from it. The caller checks [`Topology::is_due`] first, which spares it
    /// listing the members when nothing changed.
    pub(crate) fn update(
        &mut self,
        members: &[PublicKey],
        is_connected: impl Fn(&PublicKey) -> bool,
        now_ms: u64,
        transport: &Transport,
    ) {
        self.dirty = false;
        let change = self.overlay.update(members, is_connected, now_ms);
        self.due_ms = self.overlay.next_timeout().max(now_ms + 1);
        if change.dial.is_empty() && change.drop.is_empty() {
            return;
        }
        let outbound: BTreeSet<PublicKey> = self.overlay.outbound().copied().collect();
        let closed = transport.set_outbound(&outbound);
        let short = |keys: &[PublicKey]| keys.iter().map(PublicKey::short).collect::<Vec<_>>();
        debug!(dial = ?short(&change.dial), drop = ?short(&change.drop), closed = ?short(&closed),
            outbound = outbound.len(), members = members.len(), "overlay changed");
    }

    /// Takes a member's addresses from its signed record: the transport dials it at the first
    /// from the next dial on. Returns whether the address is new or changed.
    pub(crate) fn learn(&mut self, key: PublicKey, addrs: &[SocketAddr], transport: &Transport) -> bool {
        let Some(address) = addrs.first() else { return false };
        let changed = transport.learn_address(key, *address);
        if changed {
            self.mark();
        }
        changed
    }
}

/// A seed for the overlay from the operating system's randomness: it is what makes this node's
/// choice unpredictable to every other member.
pub fn seed() -> anyhow::Result<u64> {
    let mut seed = [0u8; 8];
    getrandom::getrandom(&mut seed).map_err(|error| {
        anyhow::anyhow!("no randomness from the operating system for the overlay: {error}")
    })?;
    Ok(u64::from_le_bytes(seed))
}

/// The address this node asks peers to dial: `advertise` if configured, else the address the
/// transport is bound to unless it is unspecified (`0.0.0.0`, `::`), which no peer can dial.
pub(crate) fn advertised(advertise: Option<SocketAddr>, bound: SocketAddr) -> Option<SocketAddr> {
    advertise.or_else(|| (!bound.ip().is_unspecified()).then_some(bound))
}

/// This node's signed address record for `address`, with the wall-clock milliseconds as its
/// seq, so that a restart's record supersedes the one peers hold from before.
pub(crate) fn own_record(cluster_id: &[u8; 32], key: &SecretKey, address: SocketAddr) -> AddrRecord {
    let seq = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
    AddrRecord::new(cluster_id, key, seq, &[address])
}

/// Logs what the node publishes at start.
pub(crate) fn log_own_address(address: Option<SocketAddr>, bound: SocketAddr) {
    match address {
        Some(address) => {
            info!(%address, "publishing this node's signed address record: peers learn to dial it here")
        }
        None => info!(listen = %bound,
            "no address record published: the listen address is unspecified and `advertise` is not set, so peers \
             reach this node only at an address configured in their `peers`, or when it dials them"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_the_setting_else_a_specified_listen_address() {
        let set: SocketAddr = "192.0.2.7:7710".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7710".parse().unwrap();
        let any6: SocketAddr = "[::]:7710".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:7711".parse().unwrap();
        assert_eq!(advertised(Some(set), any), Some(set));
        assert_eq!(advertised(Some(set), lo), Some(set));
        assert_eq!(advertised(None, lo), Some(lo));
        assert_eq!(advertised(None, any), None);
        assert_eq!(advertised(None, any6), None);
    }

    #[test]
    fn a_record_verifies_and_a_later_one_has_a_higher_seq() {
        let key = SecretKey::from_seed(&[3; 32]);
        let address: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let first = own_record(&[9; 32], &key, address);
        assert_eq!(first.verify(&[9; 32]), Ok(vec![address]));
        assert!(first.seq > 1_600_000_000_000, "wall-clock milliseconds: {}", first.seq);
        let mut later = own_record(&[9; 32], &key, address);
        // Two records within one millisecond share a seq; a restart is much later than that.
        while later.seq == first.seq {
            later = own_record(&[9; 32], &key, address);
        }
        assert!(later.seq > first.seq);
    }
}
