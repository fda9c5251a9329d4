//! The local write path: why writes are refused, packing, signing into an opaque
//! [`Prepared`], and committing or aborting it once the caller's store has answered.

use cairn_crypto::keys::SIGNATURE_BYTES;
use cairn_crypto::{PublicKey, SecretKey};

use super::*;
use crate::archive::EventMeta;
use crate::event::Seen;
use crate::limits::SEEN_EVENTS_MAX;
use crate::validate::{context_clash, op_target};

/// Why a local write failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The signing key is not a member of the genesis.
    #[error("this node's key is not a member of the cluster")]
    NotMember,
    /// The node's own key is a proven equivocator.
    #[error("this node's key has equivocated; it must not sign anything more")]
    Equivocator,
    /// This node's store may lack events its key signed (a new store for a running cluster, a
    /// restored backup, a rolled-back disk) and it has not yet learned its latest seq from
    /// enough peers: signing now could reuse a seq and make it an equivocator.
    #[error(
        "this node's store may lack events its own key signed (a new, restored or rolled-back \
         store), and it is learning its latest seq from peers ({heard} of {needed} heard, own seq \
         {held} of {reported} held); writes are refused until then, so that it never signs a seq \
         it already used. Connect it to its peers; `new_cluster = true` is only for the first \
         start of a cluster no member has written to"
    )]
    OwnSeqUnknown {
        /// Peers whose report of this node's own tips is confirmed (every tip held).
        heard: usize,
        /// Peers needed.
        needed: usize,
        /// Highest own seq held.
        held: u64,
        /// Highest own seq any peer reported (confirmed or not).
        reported: u64,
    },
    /// The ops do not form a valid event.
    #[error("the write is not a valid event: {0}")]
    Invalid(Reject),
    /// The membership op may not be signed now (`docs/PROTOCOL.md` §17).
    #[error("{0}")]
    Membership(crate::membership::ChangeError),
    /// A causal context names an event this node has not accepted.
    #[error(
        "the context names event {0}, which this node has not received (yet): read on this node, \
         or retry once it has caught up"
    )]
    UnknownSeen(EventId),
}

/// How many distinct events the causal contexts of `ops` name: each becomes a dep once.
fn n_named(ops: &[Op]) -> usize {
    let named: BTreeSet<&EventId> = ops.iter().filter_map(Op::seen).flat_map(|seen| &seen.events).collect();
    named.len()
}

/// A membership op to sign (`docs/PROTOCOL.md` §17), for [`Node::prepare_membership`]: the node
/// fills in what its accepted set decides (the base, the round, the rotation's seq).
#[derive(Debug)]
pub enum MemberRequest<'a> {
    /// Propose a change of the membership in force, and vote for it.
    Propose(crate::membership::ChangeKind),
    /// Vote for a pending change.
    Approve(crate::membership::ChangeId),
    /// Hand this node's seat over to the key `successor`, which signs the proof here.
    Rotate(&'a SecretKey),
}

/// Own events signed by [`Node::prepare_writes`] and not yet accepted: the caller stores
/// [`Prepared::events`], then hands this back to [`Node::commit_writes`] (or
/// [`Node::abort_writes`]). Only `prepare_writes` makes one, so no other bytes can take the
/// commit's path into the document, which skips the signature check. Neither a forged value
/// nor a list of events is accepted in its place:
///
/// ```compile_fail,E0451
/// # use cairn_protocol::node::Prepared;
/// let forged = Prepared { events: Vec::new(), up_to: 1 };
/// ```
///
/// ```compile_fail,E0308
/// # fn f(node: &mut cairn_protocol::Node, events: Vec<cairn_protocol::Event>) {
/// node.commit_writes(events, 0);
/// # }
/// ```
///
/// And there is no shortcut that signs and accepts in one step, past the caller's store:
///
/// ```compile_fail,E0599
/// # fn f(node: &mut cairn_protocol::Node, key: &cairn_crypto::SecretKey, ops: Vec<cairn_protocol::Op>) {
/// node.write(key, ops, 0);
/// # }
/// ```
#[derive(Debug)]
#[must_use = "prepared events must be committed (after they are stored) or aborted"]
pub struct Prepared {
    events: Vec<Event>,
    /// The last seq signed, which the node's `prepared_up_to` must still be.
    up_to: u64,
}

impl Prepared {
    /// The signed events, in seq order: what the caller must store before committing.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// How many events were signed.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event was signed (never the case for a non-empty list of writes).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl Node {
    /// Why a write signed by `me` would be refused now, if it would: not a member, a proven
    /// equivocator, or own-seq safety (see [`Node::own_seq_pending`]). The same checks as
    /// [`Node::prepare_writes`], for status reports.
    pub fn write_refusal(&self, me: &PublicKey) -> Option<WriteError> {
        let Some(author) = self.adapter.roster().idx(me) else {
            return Some(WriteError::NotMember);
        };
        if !self.adapter.membership().may_author(me, self.adapter.max_seq(author) + 1) {
            return Some(WriteError::NotMember);
        }
        if self.adapter.is_equivocator(author) {
            return Some(WriteError::Equivocator);
        }
        self.own_seq_pending()
    }

    /// Whether own-seq safety still holds writes back, and why: see
    /// [`NodeConfig::own_seq_peers_needed`].
    pub fn own_seq_pending(&self) -> Option<WriteError> {
        if !self.learning_own_seq {
            return None;
        }
        // A report counts once this node holds every own tip it names: a peer that lies about
        // a tip can only fail to count, never hold writes back for ever.
        let reports: Vec<&Vec<(u64, EventId)>> =
            self.peers.values().filter_map(|p| p.own_tips_reported.as_ref()).collect();
        let heard =
            reports.iter().filter(|tips| tips.iter().all(|(_, id)| self.adapter.is_accepted(id))).count();
        let reported = reports.iter().flat_map(|tips| tips.iter().map(|(seq, _)| *seq)).max().unwrap_or(0);
        let held =
            self.me.and_then(|me| self.adapter.roster().idx(&me)).map_or(0, |m| self.adapter.max_seq(m));
        let needed = self.config.own_seq_peers_needed;
        if heard >= needed {
            return None;
        }
        Some(WriteError::OwnSeqUnknown { heard, needed, held, reported })
    }

    /// Checks that `ops` can form an event: non-empty, within the count and size limits, and
    /// small enough that the event fits in [`crate::limits::EVENT_BYTES_MAX`] whatever its deps.
    pub fn check_ops(ops: &[Op]) -> Result<(), WriteError> {
        let invalid = || Err(WriteError::Invalid(Reject::BadOp));
        if ops.is_empty() || ops.len() > OPS_MAX {
            return invalid();
        }
        for op in ops {
            // A write is document ops; a membership op goes through `Node::prepare_membership`.
            if op.is_membership() {
                return invalid();
            }
            let value_len = op.payload().map_or(0, <[u8]>::len);
            if op.key().is_empty() || op.key().len() > KEY_BYTES_MAX || value_len > VALUE_BYTES_MAX {
                return invalid();
            }
            if op.seen().is_some_and(|seen| seen.events.len() > SEEN_EVENTS_MAX || !seen.own.is_empty()) {
                return invalid();
            }
        }
        if n_named(ops) > SEEN_EVENTS_MAX || context_clash(ops).is_some() {
            return invalid();
        }
        if HEADER_BYTES_MAX + codec::encode_ops(ops).len() + SIGNATURE_BYTES > EVENT_BYTES_MAX {
            return Err(WriteError::Invalid(Reject::Oversize));
        }
        Ok(())
    }

    /// Packs checked writes, in order, into as few events as the limits allow: returns how many
    /// consecutive writes go into each event. Every write stays whole inside one event (so a
    /// batch stays atomic), and the ops of one event are applied in order, so writes packed
    /// together relate exactly as they would in consecutive events of this node's own chain
    /// (an earlier op of an event is in the causal past of a later one).
    ///
    /// Concatenate the ops of each group and pass the lists to [`Node::prepare_writes`]: one
    /// signature then serves many concurrent writes.
    pub fn pack_writes(writes: &[Vec<Op>]) -> Vec<usize> {
        // The op list's length prefix is counted once per event, not once per write.
        let prefix = codec::encode_ops(&[]).len();
        let bytes_max = EVENT_BYTES_MAX - HEADER_BYTES_MAX - SIGNATURE_BYTES - prefix;
        let mut groups = Vec::new();
        let (mut n, mut ops, mut bytes) = (0usize, 0usize, 0usize);
        let mut named = 0usize;
        // The register keys and set elements the group's ops write, and those of them an op
        // with a causal context writes: such an op shares its event with no other op on its key
        // (rule 7), so a write that would meet one starts a new event.
        let mut targets = BTreeSet::new();
        let mut context_targets = BTreeSet::new();
        for write in writes {
            // A named event becomes a dep, which the header's bound on bytes already counts.
            let write_bytes = codec::encode_ops(write).len() - prefix;
            let write_named = n_named(write);
            let clashes = write.iter().any(|op| {
                op_target(op).is_some_and(|target| {
                    context_targets.contains(&target) || (op.seen().is_some() && targets.contains(&target))
                })
            });
            if n > 0
                && (ops + write.len() > OPS_MAX
                    || bytes + write_bytes > bytes_max
                    || named + write_named > SEEN_EVENTS_MAX
                    || clashes)
            {
                groups.push(n);
                (n, ops, bytes, named) = (0, 0, 0, 0);
                targets.clear();
                context_targets.clear();
            }
            n += 1;
            ops += write.len();
            bytes += write_bytes;
            named += write_named;
            for op in write {
                if let Some(target) = op_target(op) {
                    if op.seen().is_some() {
                        context_targets.insert(target);
                    }
                    targets.insert(target);
                }
            }
        }
        if n > 0 {
            groups.push(n);
        }
        groups
    }

    /// Why the causal contexts of `ops` cannot be signed here, if they cannot: each named event
    /// must be accepted by this node (a context read on another node may name events this one
    /// has not received yet).
    pub fn check_seen(&self, ops: &[Op]) -> Result<(), WriteError> {
        let named = ops.iter().filter_map(Op::seen).flat_map(|seen| &seen.events);
        match named.into_iter().find(|id| !self.adapter.is_accepted(id)) {
            Some(id) => Err(WriteError::UnknownSeen(*id)),
            None => Ok(()),
        }
    }

    /// Drops from the causal contexts of `ops` (which `check_seen` accepted) every named event
    /// that another named event of the same op has in its causal past: the seen clock stays the
    /// same (a clock is at least those of its causal past), and what is left is at most one event
    /// per author that has not forked. A read of a register with many siblings gives a context
    /// that fits [`SEEN_EVENTS_MAX`] this way.
    pub fn reduce_seen(&self, ops: &mut [Op]) {
        for op in ops.iter_mut() {
            let Some(seen) = op.seen_mut() else { continue };
            let metas: Vec<(EventId, EventMeta)> =
                seen.events.iter().filter_map(|id| self.adapter.meta(id).map(|meta| (*id, meta))).collect();
            seen.events.retain(|id| {
                let Some((_, meta)) = metas.iter().find(|(named, _)| named == id) else { return true };
                !metas.iter().any(|(other, other_meta)| {
                    other != id && other_meta.clock.get(meta.author).is_some_and(|&seq| seq >= meta.seq)
                })
            });
        }
    }

    /// Signs one event per op list, chained by seq (each depends on the one before; the first
    /// on the current frontier), without accepting them: the caller stores
    /// [`Prepared::events`] durably, then hands the [`Prepared`] to [`Node::commit_writes`] (or,
    /// if they certainly were not stored, to [`Node::abort_writes`]). Nothing is sent to peers
    /// before that, so an own event can never exist elsewhere without being on this node's disk.
    ///
    /// # Panics
    ///
    /// If an op list fails [`Node::check_ops`]: callers check every request first.
    pub fn prepare_writes(&mut self, key: &SecretKey, writes: Vec<Vec<Op>>) -> Result<Prepared, WriteError> {
        for ops in &writes {
            assert!(Self::check_ops(ops).is_ok(), "prepare_writes takes checked ops");
        }
        self.prepare(key, writes, |_, _, _| Ok(()))
    }

    /// Signs one event carrying the membership op `request` asks for, on the node's whole
    /// accepted set, without accepting it: as [`Node::prepare_writes`], the caller stores it and
    /// commits it. Refused, with the rule's reason, if the event would not be valid: the base
    /// is the membership in force here, the round its open round, and a rotation's cut the
    /// event's own seq.
    pub fn prepare_membership(
        &mut self,
        key: &SecretKey,
        request: MemberRequest<'_>,
    ) -> Result<Prepared, WriteError> {
        let resolution = self.adapter.membership();
        let (base, round) = (resolution.in_force().id(), resolution.round());
        let cluster = self.genesis().cluster_id();
        let me = key.public();
        let build = |seq: u64| match &request {
            MemberRequest::Propose(kind) => {
                Op::Propose { change: crate::membership::Change { base, kind: kind.clone() }, round }
            }
            MemberRequest::Approve(change) => Op::Approve { change: *change, round },
            MemberRequest::Rotate(successor) => {
                Op::Rotate(crate::membership::Rotation::new(&cluster, me, seq, successor))
            }
        };
        let author = self.adapter.roster().idx(&me).ok_or(WriteError::NotMember)?;
        let seq = self.adapter.max_seq(author) + 1;
        let op = build(seq);
        // An honest seat votes once per membership and round (rule M2): a second approval of
        // another change would be a double approval, and one of the same change counts for
        // nothing.
        if matches!(op, Op::Propose { .. } | Op::Approve { .. }) {
            let resolution = self.adapter.membership();
            for (seat, _) in resolution.seats_of(&me) {
                if let Some(vote) = resolution.ballot(&seat, &base, round).first() {
                    return Err(WriteError::Membership(crate::membership::ChangeError::AlreadyVoted(
                        vote.change,
                    )));
                }
            }
        }
        self.prepare(key, vec![vec![op]], |adapter, deps, ops| {
            adapter.check_own(&me, seq, deps, ops).map_err(WriteError::Membership)
        })
    }

    /// Signs one event per op list, chained by seq, after `check(adapter, deps, ops)` of the
    /// first accepts it (the membership path checks its op on the event's causal past).
    fn prepare(
        &mut self,
        key: &SecretKey,
        writes: Vec<Vec<Op>>,
        check: impl Fn(&mut Adapter, &[EventId], &[Op]) -> Result<(), WriteError>,
    ) -> Result<Prepared, WriteError> {
        let me = key.public();
        let author = self.adapter.roster().idx(&me).ok_or(WriteError::NotMember)?;
        if self.adapter.is_equivocator(author) {
            return Err(WriteError::Equivocator);
        }
        if let Some(pending) = self.own_seq_pending() {
            return Err(pending);
        }
        // A key removed, or rotated away, in the accepted set may not sign again (rule V1 on
        // the event's causal past, which is the whole accepted set).
        if !self.adapter.membership().may_author(&me, self.adapter.max_seq(author) + 1) {
            return Err(WriteError::NotMember);
        }
        let mut tips = self.adapter.tips();
        // The own predecessor must be a dep; the other tips fill the rest, newest first, leaving
        // room for the events the first event's causal contexts name (`check_ops` bounds them).
        let lamport_of = |adapter: &Adapter, id: &EventId| adapter.meta(id).map_or(0, |meta| meta.lamport);
        tips.sort_by_cached_key(|t| {
            (t.author != me, std::cmp::Reverse(lamport_of(&self.adapter, &t.id)), t.id)
        });
        tips.truncate(DEPS_MAX - writes.first().map_or(0, |ops| n_named(ops)));
        let mut seq = self.adapter.max_seq(author);
        // Preparing again before the last prepared events were committed would sign their
        // seqs twice: equivocation by this node itself.
        assert!(self.prepared_up_to <= seq, "prepare_writes called again before commit_writes");
        let mut deps: Vec<EventId> = tips.iter().map(|t| t.id).collect();
        let mut writes = writes.into_iter();
        let Some(first) = writes.next() else {
            return Ok(Prepared { events: Vec::new(), up_to: self.prepared_up_to });
        };
        let first = self.place_seen(author, first, &mut deps);
        check(&mut self.adapter, &deps, &first)?;
        self.learning_own_seq = false;
        let mut events = Vec::with_capacity(writes.len() + 1);
        let mut ops = Some(first);
        // The lamport of the event signed last, which the adapter has not accepted yet.
        let mut last_lamport = 0;
        while let Some(event_ops) = ops.take() {
            seq += 1;
            let lamport =
                1 + deps.iter().map(|id| lamport_of(&self.adapter, id)).max().unwrap_or(0).max(last_lamport);
            let event = Event::sign(key, seq, lamport, std::mem::take(&mut deps), event_ops);
            deps = vec![event.id()];
            last_lamport = lamport;
            events.push(event);
            ops = writes.next().map(|next| self.place_seen(author, next, &mut deps));
        }
        self.prepared_from = Some(self.prepared_up_to);
        self.prepared_up_to = seq;
        Ok(Prepared { events, up_to: seq })
    }

    /// Puts the causal contexts of `ops` (which `check_seen` accepted) in their wire form: the
    /// named events of `author` (this node's key) become own seqs, and every other named event
    /// joins `deps`, which stays sorted and unique.
    fn place_seen(&self, author: MemberIdx, mut ops: Vec<Op>, deps: &mut Vec<EventId>) -> Vec<Op> {
        for op in &mut ops {
            let Some(seen) = op.seen_mut() else { continue };
            let mut events = Vec::new();
            let mut own = Vec::new();
            for id in std::mem::take(&mut seen.events) {
                // An event not accepted here cannot be named (`check_seen`); dropping it can only
                // leave a write standing as a sibling.
                let Some(meta) = self.adapter.meta(&id) else { continue };
                if meta.author == author {
                    own.push(meta.seq);
                } else {
                    events.push(id);
                }
            }
            events.sort_unstable();
            events.dedup();
            own.sort_unstable();
            own.dedup();
            deps.extend_from_slice(&events);
            *seen = Seen { events, own };
        }
        deps.sort_unstable();
        deps.dedup();
        ops
    }

    /// Undoes a [`Node::prepare_writes`] whose events were never committed: their seqs are
    /// handed out again by the next `prepare_writes`, which signs other events with them.
    ///
    /// Only for events that can never surface: never given to [`Node::commit_writes`] (which
    /// consumes them, so no peer has them) and certainly not stored (a store that cannot tell
    /// whether a failed commit landed must not call this). Otherwise the node would equivocate
    /// against itself.
    ///
    /// # Panics
    ///
    /// If `prepared` is not the last prepared set: the seqs would not be the ones handed out last.
    pub fn abort_writes(&mut self, prepared: Prepared) {
        assert_eq!(prepared.up_to, self.prepared_up_to, "abort_writes takes the last prepared writes");
        if let Some(from) = self.prepared_from.take() {
            self.prepared_up_to = from;
        }
    }

    /// Accepts own events made by [`Node::prepare_writes`] (and stored), in order, and pushes
    /// them to peers. Their signatures were made by this node a moment ago, so they are not
    /// checked again; every other rule is. This is the one way into the document that skips a
    /// signature check, and [`Prepared`] is what guards it: only `prepare_writes` makes one.
    ///
    /// # Panics
    ///
    /// If one of them is not accepted: they were built on this node's own state, so that would
    /// be a bug (or events prepared twice without committing the first ones).
    pub fn commit_writes(&mut self, prepared: Prepared, now_ms: u64) -> Vec<Verified> {
        self.now_ms = self.now_ms.max(now_ms);
        self.prepared_from = None;
        let events = prepared.events;
        let ingested = self.adapter.ingest_own(events.iter().map(Event::encode).collect());
        assert!(ingested.rejected.is_empty(), "own events must be valid: {:?}", ingested.rejected);
        // They come out in the order they were signed, each after its own predecessor.
        let accepted = ingested.accepted.clone();
        assert_eq!(accepted.len(), events.len(), "own events are accepted");
        self.absorb(None, ingested, now_ms);
        accepted
    }
}
