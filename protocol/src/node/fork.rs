//! The fork search: find where a peer's chain of an author leaves ours, by seq, in a
//! logarithmic number of rounds, then exchange the missing parts.

use std::collections::BTreeSet;

use super::*;

pub(super) struct ForkSearch {
    pub(super) author: MemberIdx,
    /// Highest seq whose ancestor of the tip we hold (0: none yet).
    pub(super) lo: u64,
    /// The tip's ancestor at `lo`, which we hold.
    pub(super) lo_id: Option<EventId>,
    /// Lowest seq known not to be held (starts at the tip's seq).
    pub(super) hi: u64,
    pub(super) rounds: u32,
    pub(super) since_ms: u64,
}

impl ForkSearch {
    /// Narrows the range with the peer's `(seq, id)` answers on the tip's chain: the highest
    /// seq whose id we hold becomes `lo`, the lowest above it that we lack becomes `hi`.
    /// Returns whether the range shrank.
    fn narrow(&mut self, entries: &[(u64, EventId)], adapter: &Adapter, now_ms: u64) -> bool {
        let (mut lo, mut lo_id, mut hi) = (self.lo, self.lo_id, self.hi);
        for (seq, id) in entries {
            if *seq <= lo || *seq >= hi {
                continue;
            }
            let ours = adapter.meta(id);
            if ours.is_some_and(|e| e.seq == *seq && e.author == self.author) {
                lo = *seq;
                lo_id = Some(*id);
            }
        }
        for (seq, id) in entries {
            if *seq > lo && *seq < hi && !adapter.is_accepted(id) {
                hi = *seq;
            }
        }
        let progressed = (lo, hi) != (self.lo, self.hi);
        self.lo = lo;
        self.lo_id = lo_id;
        self.hi = hi;
        self.rounds += 1;
        self.since_ms = now_ms;
        progressed
    }
}

impl Node {
    pub(super) fn start_fork_search(&mut self, peer: PeerId, tip: Tip, now_ms: u64) {
        let max = self.config.fork_searches_max;
        let Some(author) = self.adapter.roster().idx(&tip.author) else { return };
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if p.searches.contains_key(&tip.id) || p.searches.len() >= max || tip.seq == 0 {
            return;
        }
        p.searches.insert(
            tip.id,
            ForkSearch { author, lo: 0, lo_id: None, hi: tip.seq, rounds: 0, since_ms: now_ms },
        );
        self.probe(peer, tip.id);
    }

    /// Asks for the next round of seqs, or pulls the chain once the fork point is found.
    pub(super) fn probe(&mut self, peer: PeerId, tip: EventId) {
        let Some(search) = self.peers.get(&peer).and_then(|p| p.searches.get(&tip)) else { return };
        let (lo, hi) = (search.lo, search.hi);
        let first_round = search.rounds == 0;
        if hi <= lo + 1 {
            self.finish_fork_search(peer, tip);
            return;
        }
        let mut seqs: BTreeSet<u64> = BTreeSet::new();
        let gap = hi - lo - 1;
        if gap as usize <= FORK_PROBE_SEQS_PER_ROUND {
            seqs.extend(lo + 1..hi);
        } else {
            if first_round {
                // A recent fork, or a peer just ahead, is found in the first round: a few
                // probes just below the tip, doubling the distance each time.
                let mut step = 1u64;
                while seqs.len() < FORK_PROBE_SEQS_PER_ROUND / 4 && step <= gap {
                    seqs.insert(hi - step);
                    step *= 2;
                }
            }
            let spread = (FORK_PROBE_SEQS_PER_ROUND - seqs.len()) as u64;
            for i in 1..=spread {
                // In u128: `gap` comes from a peer's tip and may be near u64::MAX.
                let offset = (u128::from(gap) * u128::from(i)) / u128::from(spread + 1);
                seqs.insert(lo + offset as u64 + 1);
            }
        }
        let seqs: Vec<u64> = seqs.into_iter().filter(|s| *s > lo && *s < hi).collect();
        self.send(peer, &Message::ForkProbe { tip, seqs });
    }

    pub(super) fn on_fork_ids(
        &mut self,
        peer: PeerId,
        tip: EventId,
        entries: Vec<(u64, EventId)>,
        now_ms: u64,
    ) {
        let adapter = &self.adapter;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let Some(search) = p.searches.get_mut(&tip) else { return };
        let progressed = search.narrow(&entries, adapter, now_ms);
        let (lo, hi) = (search.lo, search.hi);
        if progressed || hi <= lo + 1 {
            self.probe(peer, tip);
        } else {
            // The peer answered nothing useful: give up; the next session starts over.
            p.searches.remove(&tip);
        }
    }

    /// The fork point of the peer's `tip` is `lo`: pull the peer's chain above it, and send
    /// the part of our chains of that author the peer lacks.
    pub(super) fn finish_fork_search(&mut self, peer: PeerId, tip: EventId) {
        let Some(p) = self.peers.get_mut(&peer) else { return };
        let Some(search) = p.searches.remove(&tip) else { return };
        let author = search.author;
        let peer_tips = p.peer_tips.get(&author).cloned().unwrap_or_default();
        self.send(peer, &Message::WantChain { tip, from_seq: search.lo + 1 });
        // What the peer holds of this author: the chains of its tips we hold, and the chain
        // of the common ancestor found by this search.
        let mut covers: Vec<EventId> =
            peer_tips.iter().map(|t| t.id).filter(|id| self.adapter.is_accepted(id)).collect();
        covers.extend(search.lo_id);
        let mut lacking = self.not_covered(author, &covers);
        self.sort_causally(&mut lacking);
        self.queue_events(peer, lacking, false);
    }

    pub(super) fn on_want_chain(&mut self, peer: PeerId, tip: EventId, from_seq: u64) {
        let Some(mut current) = self.adapter.meta(&tip) else { return };
        let mut current_id = tip;
        let mut chain = Vec::new();
        let limit = self.config.peer_queue_ids_max;
        while current.seq >= from_seq.max(1) && chain.len() < limit {
            chain.push(current_id);
            match current.own_pred.and_then(|id| self.adapter.meta(&id).map(|meta| (id, meta))) {
                Some((id, pred)) => (current_id, current) = (id, pred),
                None => break,
            }
        }
        chain.reverse();
        self.queue_events(peer, chain, false);
    }
}
