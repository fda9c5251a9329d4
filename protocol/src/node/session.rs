//! Reconciliation sessions: summary or tips, what the peer lacks, and the answer.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

impl Node {
    pub(super) fn start_session(&mut self, peer: PeerId, now_ms: u64) {
        let digest = self.sync_digest();
        let Some(p) = self.peers.get_mut(&peer) else { return };
        p.session_since_ms = Some(now_ms);
        if p.last_in_sync == Some(digest) || p.last_in_sync.is_none() {
            // Unchanged since the last in-sync (or never synced): the digest alone may do.
            self.send(peer, &Message::Summary { digest });
        } else {
            self.send_tips(peer, true);
        }
    }

    pub(super) fn send_tips(&mut self, peer: PeerId, reply: bool) {
        let Some(heard) = self.peers.get(&peer).map(Peer::heard_through) else { return };
        let tips = self.adapter.tips();
        let evidence: Vec<Evidence> =
            self.adapter.evidence().take(EVIDENCE_PER_MESSAGE_MAX).cloned().collect();
        let mut parts = tips.chunks(TIPS_PER_MESSAGE_MAX).peekable();
        if parts.peek().is_none() {
            self.send(peer, &Message::Tips { reply, more: false, heard, tips: Vec::new(), evidence });
            return;
        }
        while let Some(part) = parts.next() {
            let last = parts.peek().is_none();
            let evidence = if last { evidence.clone() } else { Vec::new() };
            self.send(peer, &Message::Tips { reply, more: !last, heard, tips: part.to_vec(), evidence });
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_tips(
        &mut self,
        peer: PeerId,
        reply: bool,
        more: bool,
        heard: u64,
        tips: Vec<Tip>,
        evidence: Vec<Evidence>,
        now_ms: u64,
    ) {
        let max = self.config.peer_tips_max;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if p.incoming_tips.len() + tips.len() > max {
            p.incoming_tips.clear();
            self.bad_message(peer, Misbehaviour::TooManyTips, &format!("more than {max} tips"));
            return;
        }
        p.incoming_tips.extend(tips);
        if more {
            return;
        }
        let tips = std::mem::take(&mut p.incoming_tips);
        p.stats.sessions_tips += 1;
        self.on_evidence(peer, evidence, now_ms);

        let mut by_author: BTreeMap<MemberIdx, Vec<Tip>> = BTreeMap::new();
        for tip in tips {
            match self.adapter.roster().idx(&tip.author) {
                Some(author) => by_author.entry(author).or_default().push(tip),
                None => {
                    self.bad_message(peer, Misbehaviour::TipOfNonMember, &"a tip of a non-member");
                    return;
                }
            }
        }
        // Events the peer lacks, for every author whose peer tips we all hold.
        let mut lacking = Vec::new();
        let n_authors = self.adapter.roster().len();
        let mut unknown = Vec::new();
        for author in 0..n_authors {
            let theirs = by_author.get(&author).map_or(&[][..], Vec::as_slice);
            if theirs.iter().all(|t| self.adapter.is_accepted(&t.id)) {
                let covers: Vec<EventId> = theirs.iter().map(|t| t.id).collect();
                lacking.extend(self.not_covered(author, &covers));
            } else {
                // A tip announced by `Have` is on its way (or grafted soon): no fork search.
                unknown.extend(
                    theirs
                        .iter()
                        .filter(|t| !self.adapter.is_known(&t.id) && !self.is_awaited(&t.id))
                        .copied(),
                );
            }
        }
        // What this node sent after the peer wrote its tips is on its way, on the same ordered
        // stream; sending it again would only double the bytes. An event the peer dropped
        // unread comes back once its `heard` passes the message; see `Peer::forget_in_flight`.
        let (timeout, now) = (self.config.session_timeout_ms, self.now_ms);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.forget_in_flight(heard, now, timeout);
            p.retain_not_in_flight(&mut lacking);
        }
        self.drop_recent(&mut lacking);
        self.sort_causally(&mut lacking);
        self.queue_events(peer, lacking, false);
        let own = self.me.and_then(|me| self.adapter.roster().idx(&me));
        let own_reported =
            own.map(|m| by_author.get(&m).map_or(Vec::new(), |t| t.iter().map(|t| (t.seq, t.id)).collect()));
        // Whoever opened the session, a complete Tips ends this node's part of it: with
        // `reply` it answers with its own tips, and the peer finishes the exchange.
        let in_sync = (!reply && unknown.is_empty()).then(|| self.sync_digest());
        let Some(p) = self.peers.get_mut(&peer) else { return };
        p.end_tips_session(by_author, own_reported, in_sync);
        if reply {
            self.send_tips(peer, false);
        } else {
            for tip in unknown {
                self.start_fork_search(peer, tip, now_ms);
            }
        }
    }

    /// Our accepted events of `author` that are not an own-ancestor (or self) of any of
    /// `covers` (accepted ids of that author).
    pub(super) fn not_covered(&self, author: MemberIdx, covers: &[EventId]) -> Vec<EventId> {
        let fork_seq = self.adapter.fork_seq(author).unwrap_or(u64::MAX);
        // Below the fork seq the chain is unique: a cover at seq s covers every seq <= s.
        let mut prefix = 0u64;
        let mut walked: BTreeSet<EventId> = BTreeSet::new();
        for cover in covers {
            let Some(mut current) = self.adapter.meta(cover) else { continue };
            let mut current_id = *cover;
            prefix = prefix.max(current.seq.min(fork_seq.saturating_sub(1)));
            while current.seq >= fork_seq {
                if !walked.insert(current_id) {
                    break;
                }
                match current.own_pred.and_then(|id| self.adapter.meta(&id).map(|meta| (id, meta))) {
                    Some((id, pred)) => (current_id, current) = (id, pred),
                    None => break,
                }
            }
        }
        // One range read of the archive, at most a peer's queue of ids: the queue would drop
        // the rest (the causally latest), and a later session asks again.
        let max_seq = self.adapter.max_seq(author);
        let limit = self.config.peer_queue_ids_max.saturating_add(walked.len());
        let mut out = self.adapter.archive().in_seqs(author, prefix + 1..=max_seq, limit);
        out.retain(|id| !walked.contains(id));
        out
    }

    pub(super) fn sort_causally(&self, ids: &mut [EventId]) {
        // One read of the archive for all the lamports.
        let metas = self.adapter.archive().metas_many(ids);
        let mut keyed: Vec<(u64, EventId)> =
            ids.iter().zip(metas).map(|(id, meta)| (meta.map_or(0, |m| m.lamport), *id)).collect();
        keyed.sort_unstable();
        for (slot, (_, id)) in ids.iter_mut().zip(keyed) {
            *slot = id;
        }
    }
}
