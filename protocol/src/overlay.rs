//! Which members a node connects to, when a full mesh is too many connections: a bounded
//! *active* set it dials (outbound), drawn from a larger *passive* sample of the signed member
//! list, both refreshed over time (HyParView's two views, without its view exchange).
//!
//! # Why no view exchange
//!
//! HyParView learns its views from peers (`Join`, `ForwardJoin`, `Shuffle`): a Byzantine member
//! answering those with its accomplices fills an honest node's views with them, and isolates it
//! (an eclipse). Cairn does not need peers to learn who exists, since the membership is signed
//! and every node holds it. So the choice here takes **no input from any peer**: the active
//! and passive sets are drawn by the node's own random generator (seeded by its driver from the
//! operating system) over the members in force, and change only by this node's own clock, by
//! its own failed dials, and by the membership.
//!
//! What a Byzantine member can still do, and why it does not isolate an honest node:
//! - It can be drawn. Each outbound slot is a uniform draw, so with `f` of `n` members
//!   Byzantine, all `k` slots are Byzantine with probability about `(f/n)^k` (0.0014 for
//!   `k = 6`, `f/n = 1/3`), and rotation ([`OverlayConfig::rotate_ms`]) redraws one slot at a
//!   time, so no such state lasts.
//! - It can dial an honest node. Inbound connections from members in force are all accepted by
//!   default ([`OverlayConfig::inbound_max`] is [`MEMBERS_MAX`]): a cap would let Byzantine
//!   members take every inbound slot of every honest node first, and then each honest node's
//!   dials to honest peers would be refused, leaving it only the Byzantine ones. Uncapped, an
//!   honest node's own dials always succeed, and Byzantine dialers cost it one more connection
//!   each (its anti-entropy, and at most one message per event), bounded by the membership.
//!   They never displace its outbound choices.
//! - It can accept a dial and then withhold events or announce and not deliver: the broadcast
//!   repairs around it (grafts, anti-entropy with every connected peer), and an outbound peer
//!   that never becomes connected is replaced after [`OverlayConfig::dial_timeout_ms`].
//!
//! The honest nodes' outbound edges alone form a random graph of out-degree about
//! `k · (1 − f/n)`, connected with high probability (`tests/tests/sim.rs` checks it for the
//! sizes simulated), and the diameter of such a graph grows like `log n`.
//!
//! A cluster of at most `outbound + 1` members is a full mesh: every node dials every other.

use std::collections::{BTreeMap, BTreeSet};

use cairn_crypto::PublicKey;

use crate::limits::MEMBERS_MAX;

/// The overlay's settings. They affect liveness and cost only, never validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayConfig {
    /// Members this node dials and keeps connected (the active view's own part). A cluster of
    /// at most `outbound + 1` members is a full mesh.
    pub outbound: usize,
    /// Members kept as candidates for an outbound slot that frees up (the passive view).
    pub passive: usize,
    /// Inbound connections accepted beyond the peers this node dials itself. By default every
    /// member's ([`MEMBERS_MAX`]); see the module docs for why a lower cap helps an eclipse.
    pub inbound_max: usize,
    /// Milliseconds between rotations: one outbound slot is redrawn, and one passive entry.
    pub rotate_ms: u64,
    /// Milliseconds an outbound peer may stay unconnected before its slot is redrawn (and the
    /// peer left out of draws for a `rotate_ms`).
    pub dial_timeout_ms: u64,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        Self {
            outbound: 6,
            passive: 30,
            inbound_max: MEMBERS_MAX,
            rotate_ms: 60_000,
            dial_timeout_ms: 10_000,
        }
    }
}

/// One outbound slot.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// When the slot was drawn, or last seen connected: the dial timeout counts from here.
    since_ms: u64,
}

/// A node's overlay. See the module docs.
#[derive(Clone, Debug)]
pub struct Overlay {
    me: PublicKey,
    config: OverlayConfig,
    rng: SplitMix64,
    outbound: BTreeMap<PublicKey, Slot>,
    passive: Vec<PublicKey>,
    /// Peers whose dial timed out, left out of draws until the time given.
    resting: BTreeMap<PublicKey, u64>,
    next_rotate_ms: u64,
}

/// What an [`Overlay::update`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverlayChange {
    /// Newly chosen outbound peers: dial them.
    pub dial: Vec<PublicKey>,
    /// Outbound peers dropped: close the connection if this node dialed it and the peer does not
    /// dial back (the driver's call).
    pub drop: Vec<PublicKey>,
}

impl Overlay {
    /// The overlay of `me`, drawing with `seed` (which must come from the node's own randomness:
    /// it is what makes the choices unpredictable to others).
    pub fn new(me: PublicKey, seed: u64, config: OverlayConfig) -> Self {
        Self {
            me,
            next_rotate_ms: config.rotate_ms,
            config,
            rng: SplitMix64(seed),
            outbound: BTreeMap::new(),
            passive: Vec::new(),
            resting: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &OverlayConfig {
        &self.config
    }

    /// Whether this node wants to be connected to `peer` (it is an outbound choice).
    pub fn wants(&self, peer: &PublicKey) -> bool {
        self.outbound.contains_key(peer)
    }

    /// The outbound peers.
    pub fn outbound(&self) -> impl Iterator<Item = &PublicKey> {
        self.outbound.keys()
    }

    /// The passive view.
    pub fn passive(&self) -> &[PublicKey] {
        &self.passive
    }

    /// Whether an inbound connection from `peer` is accepted while `n_inbound` other inbound
    /// connections (from peers this node does not dial) are up.
    pub fn accepts_inbound(&self, peer: &PublicKey, n_inbound: usize) -> bool {
        self.wants(peer) || n_inbound < self.config.inbound_max
    }

    /// When [`Overlay::update`] must run next at the latest.
    pub fn next_timeout(&self) -> u64 {
        let dial = self.outbound.values().map(|slot| slot.since_ms + self.config.dial_timeout_ms).min();
        dial.map_or(self.next_rotate_ms, |d| d.min(self.next_rotate_ms))
    }

    /// Brings the choice up to date with the members in force (`members`, in any order; this
    /// node's own key is skipped), which peers are connected now, and the time.
    pub fn update(
        &mut self,
        members: &[PublicKey],
        is_connected: impl Fn(&PublicKey) -> bool,
        now_ms: u64,
    ) -> OverlayChange {
        let mut change = OverlayChange::default();
        let others: BTreeSet<PublicKey> = members.iter().copied().filter(|key| *key != self.me).collect();
        self.resting.retain(|key, until| *until > now_ms && others.contains(key));
        self.passive.retain(|key| others.contains(key));

        // Slots of keys no longer in force, and slots whose peer stayed unconnected too long.
        let timeout = self.config.dial_timeout_ms;
        let mut dropped = Vec::new();
        for (key, slot) in &mut self.outbound {
            if !others.contains(key) {
                dropped.push(*key);
            } else if is_connected(key) {
                slot.since_ms = now_ms;
            } else if now_ms >= slot.since_ms + timeout {
                dropped.push(*key);
                self.resting.insert(*key, now_ms + self.config.rotate_ms);
            }
        }
        for key in &dropped {
            self.outbound.remove(key);
        }
        change.drop.extend(dropped);

        let full_mesh = others.len() <= self.config.outbound;
        if !full_mesh && now_ms >= self.next_rotate_ms {
            self.next_rotate_ms = now_ms + self.config.rotate_ms;
            // One outbound slot redrawn (its peer rests for a rotation, so the draw moves on).
            if self.outbound.len() >= self.config.outbound {
                let victim =
                    *self.outbound.keys().nth(self.rng.below(self.outbound.len())).expect("in range");
                self.outbound.remove(&victim);
                self.resting.insert(victim, now_ms + self.config.rotate_ms);
                change.drop.push(victim);
            }
            // One passive entry replaced.
            if !self.passive.is_empty() {
                let at = self.rng.below(self.passive.len());
                self.passive.swap_remove(at);
            }
        }

        // The passive view, topped up with uniform draws from the members not in it.
        let target_passive = self.config.passive.min(others.len());
        let mut candidates: Vec<PublicKey> =
            others.iter().filter(|k| !self.passive.contains(k)).copied().collect();
        while self.passive.len() < target_passive && !candidates.is_empty() {
            let key = candidates.remove(self.rng.below(candidates.len()));
            self.passive.push(key);
        }

        // Outbound slots, filled from the passive view first, then from every member, skipping
        // peers that rest (unless nothing else is left).
        let target = self.config.outbound.min(others.len());
        for allow_resting in [false, true] {
            while self.outbound.len() < target {
                let eligible = |key: &PublicKey| {
                    !self.outbound.contains_key(key) && (allow_resting || !self.resting.contains_key(key))
                };
                let mut candidates: Vec<PublicKey> = self.passive.iter().copied().filter(eligible).collect();
                if candidates.is_empty() {
                    candidates = others.iter().copied().filter(eligible).collect();
                }
                if candidates.is_empty() {
                    break;
                }
                let key = candidates[self.rng.below(candidates.len())];
                self.outbound.insert(key, Slot { since_ms: now_ms });
                change.dial.push(key);
            }
        }
        change.drop.retain(|key| !self.outbound.contains_key(key));
        change
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a small, fast generator with good statistical
/// quality for draws like these. Not for keys.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from `0..n` (`n > 0`), without modulo bias.
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u8) -> Vec<PublicKey> {
        (0..n).map(|i| PublicKey([i; 32])).collect()
    }

    #[test]
    fn a_small_cluster_is_a_full_mesh_and_never_rotates() {
        let members = keys(7);
        let mut overlay = Overlay::new(members[0], 1, OverlayConfig::default());
        let change = overlay.update(&members, |_| true, 0);
        assert_eq!(change.dial.len(), 6);
        assert!(members[1..].iter().all(|k| overlay.wants(k)));
        for t in 1..10 {
            let change = overlay.update(&members, |_| true, t * 60_000);
            assert_eq!(change, OverlayChange::default(), "nothing changes in a full mesh");
        }
    }

    #[test]
    fn a_large_cluster_dials_a_bounded_set_and_rotates_one_slot_at_a_time() {
        let members = keys(100);
        let config = OverlayConfig::default();
        let mut overlay = Overlay::new(members[0], 7, config.clone());
        overlay.update(&members, |_| true, 0);
        assert_eq!(overlay.outbound().count(), config.outbound);
        assert_eq!(overlay.passive().len(), config.passive);
        assert!(!overlay.wants(&members[0]), "never itself");
        let before: BTreeSet<PublicKey> = overlay.outbound().copied().collect();
        let change = overlay.update(&members, |_| true, config.rotate_ms);
        assert_eq!((change.dial.len(), change.drop.len()), (1, 1), "one slot redrawn");
        let after: BTreeSet<PublicKey> = overlay.outbound().copied().collect();
        assert_eq!(before.intersection(&after).count(), config.outbound - 1);
        assert!(!after.contains(&change.drop[0]), "the dropped peer rests");
    }

    #[test]
    fn a_peer_that_never_connects_is_replaced_and_rests() {
        let members = keys(50);
        let config = OverlayConfig::default();
        let mut overlay = Overlay::new(members[0], 3, config.clone());
        overlay.update(&members, |_| false, 0);
        let dead: Vec<PublicKey> = overlay.outbound().copied().collect();
        let change = overlay.update(&members, |_| false, config.dial_timeout_ms);
        assert_eq!(change.drop.len(), config.outbound, "every unconnected slot is redrawn");
        assert!(overlay.outbound().all(|k| !dead.contains(k)), "and not with the same peers");
        // A connected peer's slot is kept however long it lives.
        let live: BTreeSet<PublicKey> = overlay.outbound().copied().collect();
        let change = overlay.update(&members, |k| live.contains(k), config.dial_timeout_ms * 3);
        assert!(change.drop.is_empty());
    }

    #[test]
    fn a_member_out_of_force_leaves_the_overlay() {
        let members = keys(20);
        let mut overlay = Overlay::new(members[0], 11, OverlayConfig::default());
        overlay.update(&members, |_| true, 0);
        let gone = *overlay.outbound().next().expect("six chosen");
        let rest: Vec<PublicKey> = members.iter().copied().filter(|k| *k != gone).collect();
        let change = overlay.update(&rest, |_| true, 1);
        assert_eq!(change.drop, vec![gone]);
        assert!(!overlay.wants(&gone) && !overlay.passive().contains(&gone));
        assert_eq!(overlay.outbound().count(), 6);
    }

    #[test]
    fn inbound_beyond_the_cap_is_refused_unless_dialed_too() {
        let members = keys(40);
        let config = OverlayConfig { inbound_max: 12, ..OverlayConfig::default() };
        let mut overlay = Overlay::new(members[0], 5, config.clone());
        overlay.update(&members, |_| true, 0);
        let chosen = *overlay.outbound().next().expect("six chosen");
        let stranger = members.iter().find(|k| !overlay.wants(k) && **k != members[0]).expect("one");
        assert!(overlay.accepts_inbound(stranger, config.inbound_max - 1));
        assert!(!overlay.accepts_inbound(stranger, config.inbound_max));
        assert!(overlay.accepts_inbound(&chosen, config.inbound_max), "a peer it dials itself");
    }

    /// The draws are uniform: over many seeds each member is chosen about equally often, so no
    /// key (a Byzantine member's included) is favoured by the choice.
    #[test]
    fn draws_are_uniform_over_the_members() {
        let members = keys(30);
        let mut counts = [0u32; 30];
        let runs = 3_000;
        for seed in 0..runs {
            let mut overlay = Overlay::new(members[0], seed, OverlayConfig::default());
            overlay.update(&members, |_| true, 0);
            for key in overlay.outbound() {
                counts[key.0[0] as usize] += 1;
            }
        }
        assert_eq!(counts[0], 0);
        let expected = f64::from(runs as u32) * 6.0 / 29.0;
        for (i, &count) in counts.iter().enumerate().skip(1) {
            let ratio = f64::from(count) / expected;
            assert!((0.85..1.15).contains(&ratio), "member {i}: drawn {count} times, expected {expected:.0}");
        }
    }
}
