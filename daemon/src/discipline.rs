//! The peer discipline, sans-I/O: counts each peer's invalid inputs (rejected events, bad
//! messages) and mutes a peer that sends too many: its connection is closed and whatever it
//! sends is ignored until the mute ends, twice as long after each offence. Time is passed in
//! as milliseconds; the driver acts on what it returns, and the simulator runs the same code.
//!
//! Call order: [`PeerDiscipline::strike`] for each invalid input; [`PeerDiscipline::is_muted`]
//! before handling a peer's input or connection; [`PeerDiscipline::expire`] after each input,
//! to reconnect peers whose mute ended; [`PeerDiscipline::poll_timeout`] for the next expiry.

use std::collections::BTreeMap;

use cairn_crypto::PublicKey;

/// A peer that sends more invalid events or messages than this within
/// [`INVALID_INPUTS_WINDOW_MS`] is disconnected and ignored for a while.
pub const INVALID_INPUTS_MAX: u32 = 100;
/// The window in which invalid inputs are counted.
pub const INVALID_INPUTS_WINDOW_MS: u64 = 10_000;
/// How long a misbehaving peer is first ignored; each new offence doubles it, up to
/// [`MUTE_MAX_MS`].
pub const MUTE_MIN_MS: u64 = 1_000;
/// The longest a misbehaving peer is ignored.
pub const MUTE_MAX_MS: u64 = 300_000;

/// Invalid inputs of one peer, and whether it is being ignored.
#[derive(Debug)]
struct Strikes {
    window_start_ms: u64,
    count: u32,
    next_mute_ms: u64,
    muted_until_ms: Option<u64>,
}

/// What a strike led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; nothing to do.
    Counted,
    /// The peer crossed the bound: disconnect it and ignore it for this long.
    Muted {
        /// How long, in milliseconds.
        for_ms: u64,
    },
}

/// The discipline of every peer. At most one entry per member key, so it is bounded by the
/// membership.
#[derive(Debug, Default)]
pub struct PeerDiscipline {
    strikes: BTreeMap<PublicKey, Strikes>,
}

impl PeerDiscipline {
    /// A discipline with no strikes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `peer` is being ignored at `now_ms`.
    pub fn is_muted(&self, peer: &PublicKey, now_ms: u64) -> bool {
        self.strikes.get(peer).and_then(|s| s.muted_until_ms).is_some_and(|until| now_ms < until)
    }

    /// Counts one invalid input from `peer`.
    pub fn strike(&mut self, peer: PublicKey, now_ms: u64) -> Verdict {
        let strikes = self.strikes.entry(peer).or_insert(Strikes {
            window_start_ms: now_ms,
            count: 0,
            next_mute_ms: MUTE_MIN_MS,
            muted_until_ms: None,
        });
        if now_ms.saturating_sub(strikes.window_start_ms) > INVALID_INPUTS_WINDOW_MS {
            strikes.window_start_ms = now_ms;
            strikes.count = 0;
        }
        strikes.count += 1;
        if strikes.count <= INVALID_INPUTS_MAX || strikes.muted_until_ms.is_some_and(|until| now_ms < until) {
            return Verdict::Counted;
        }
        let mute = strikes.next_mute_ms;
        strikes.muted_until_ms = Some(now_ms + mute);
        strikes.next_mute_ms = (mute * 2).min(MUTE_MAX_MS);
        strikes.count = 0;
        Verdict::Muted { for_ms: mute }
    }

    /// Ends the mutes that are over at `now_ms`; returns those peers (to be reconnected if
    /// their transport link is up). Their doubling back-off is kept for the next offence.
    pub fn expire(&mut self, now_ms: u64) -> Vec<PublicKey> {
        let mut ended = Vec::new();
        for (peer, strikes) in &mut self.strikes {
            if strikes.muted_until_ms.is_some_and(|until| now_ms >= until) {
                strikes.muted_until_ms = None;
                ended.push(*peer);
            }
        }
        ended
    }

    /// When the next mute ends.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.strikes.values().filter_map(|s| s.muted_until_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_invalid_inputs_in_a_window_mute_a_peer_for_doubling_times() {
        let peer = PublicKey([1; 32]);
        let mut discipline = PeerDiscipline::new();
        for _ in 0..INVALID_INPUTS_MAX {
            assert_eq!(discipline.strike(peer, 0), Verdict::Counted);
        }
        assert_eq!(discipline.strike(peer, 0), Verdict::Muted { for_ms: MUTE_MIN_MS });
        assert!(discipline.is_muted(&peer, MUTE_MIN_MS - 1));
        assert_eq!(discipline.poll_timeout(), Some(MUTE_MIN_MS));
        // Strikes while muted change nothing.
        assert_eq!(discipline.strike(peer, 10), Verdict::Counted);
        assert!(discipline.expire(MUTE_MIN_MS - 1).is_empty());
        assert_eq!(discipline.expire(MUTE_MIN_MS), [peer]);
        assert!(!discipline.is_muted(&peer, MUTE_MIN_MS));
        // The next offence mutes twice as long (the strike counted during the mute counts
        // towards it: the window runs on).
        let verdicts: Vec<Verdict> =
            (0..=INVALID_INPUTS_MAX).map(|_| discipline.strike(peer, MUTE_MIN_MS + 1)).collect();
        let mutes: Vec<&Verdict> = verdicts.iter().filter(|v| **v != Verdict::Counted).collect();
        assert_eq!(mutes, [&Verdict::Muted { for_ms: 2 * MUTE_MIN_MS }]);
    }

    #[test]
    fn strikes_spread_over_windows_never_mute() {
        let peer = PublicKey([2; 32]);
        let mut discipline = PeerDiscipline::new();
        for window in 0..5 {
            for _ in 0..INVALID_INPUTS_MAX {
                let now = window * (INVALID_INPUTS_WINDOW_MS + 1);
                assert_eq!(discipline.strike(peer, now), Verdict::Counted);
            }
        }
        assert_eq!(discipline.poll_timeout(), None);
    }

    #[test]
    fn the_longest_mute_is_bounded() {
        let peer = PublicKey([3; 32]);
        let mut discipline = PeerDiscipline::new();
        let mut now = 0;
        let mut last = 0;
        for _ in 0..20 {
            for _ in 0..=INVALID_INPUTS_MAX {
                if let Verdict::Muted { for_ms } = discipline.strike(peer, now) {
                    last = for_ms;
                }
            }
            now += last;
            discipline.expire(now);
        }
        assert_eq!(last, MUTE_MAX_MS);
    }
}
