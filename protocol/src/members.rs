//! The adapter's view of membership over time (`docs/PROTOCOL.md` §17): the membership ops of
//! the accepted events, the resolution of the whole accepted set (the membership in force
//! here, and what the document admits), and the resolutions of causal pasts that validity
//! reads, cached by what they depend on.
//!
//! An event's causal past resolves to what the membership ops of its keys up to its clock's
//! entries make. Those ops are few, and most events after a change see all of them, so the
//! resolution is computed once per *membership frontier*: for each key that signed membership
//! ops, its highest such seq within the clock. A cluster whose membership never changed has
//! no such op, and validity reads the genesis without resolving anything.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use cairn_crypto::PublicKey;

use crate::event::{EventId, Op};
use crate::genesis::Genesis;
use crate::membership::{Approval, ChangeError, ChangeKind, ChangeLog, Proposal, Resolution, check_ops};

/// Most resolutions of causal pasts kept, by membership frontier. A node setting: a miss only
/// costs a resolution.
pub const PAST_RESOLUTIONS_CACHED_MAX: usize = 16;

/// A membership frontier: for each key that signed membership ops, its highest such seq in a
/// causal past (below its fork seq, if it forked), in key order; and the events of forked keys
/// at or past their fork seqs, with membership ops, that the causal past holds.
type Frontier = (Vec<(PublicKey, u64)>, Vec<EventId>);

/// See the module docs.
#[derive(Debug)]
pub(crate) struct MemberState {
    log: ChangeLog,
    /// Per key and seq, its accepted events that carry membership ops (more than one at a seq
    /// only where it equivocated).
    op_events: BTreeMap<PublicKey, BTreeMap<u64, BTreeSet<EventId>>>,
    /// Recent resolutions of causal pasts, newest last.
    cache: VecDeque<(Frontier, Arc<Resolution>)>,
    /// The resolution of every accepted op.
    current: Arc<Resolution>,
}

impl MemberState {
    pub(crate) fn new(genesis: &Genesis) -> Self {
        let log = ChangeLog::new(genesis, genesis.policy());
        let current = Arc::new(log.resolve());
        Self { log, op_events: BTreeMap::new(), cache: VecDeque::new(), current }
    }

    /// Whether no accepted event carried a membership op: the genesis membership is in force
    /// everywhere, and validity reads nothing else.
    pub(crate) fn is_genesis_only(&self) -> bool {
        self.op_events.is_empty()
    }

    /// The resolution of every accepted op: the membership in force at this node.
    pub(crate) fn current(&self) -> &Arc<Resolution> {
        &self.current
    }

    /// The change of this id, if an accepted event proposed it.
    pub(crate) fn change(&self, id: &crate::membership::ChangeId) -> Option<&crate::membership::Change> {
        self.log.change(id)
    }

    /// The resolution of a causal past: `clock(key)` is its clock's entry for a key,
    /// `fork_seq(key)` the key's lowest seq with two accepted events, if any, and
    /// `holds(event)` whether the past holds `event` (asked only of events of a forked key at
    /// or past its fork seq: below it, and for a key that never forked, the clock decides).
    pub(crate) fn past(
        &mut self,
        clock: impl Fn(&PublicKey) -> u64,
        fork_seq: impl Fn(&PublicKey) -> Option<u64>,
        mut holds: impl FnMut(&EventId) -> bool,
    ) -> Arc<Resolution> {
        let mut bounds = Vec::new();
        let mut forked_in = Vec::new();
        for (key, by_seq) in &self.op_events {
            let through = clock(key);
            let fork = fork_seq(key).unwrap_or(u64::MAX);
            if let Some((&seq, _)) = by_seq.range(..fork.min(through.saturating_add(1))).next_back() {
                bounds.push((*key, seq));
            }
            if fork <= through {
                for events in by_seq.range(fork..=through).map(|(_, events)| events) {
                    forked_in.extend(events.iter().filter(|event| holds(event)));
                }
            }
        }
        let frontier: Frontier = (bounds, forked_in);
        if let Some(at) = self.cache.iter().position(|(f, _)| *f == frontier) {
            // Move it to the back: the cache keeps the most recently used.
            let entry = self.cache.remove(at).expect("the position is in the cache");
            let resolution = Arc::clone(&entry.1);
            self.cache.push_back(entry);
            return resolution;
        }
        let bounds: BTreeMap<PublicKey, u64> = frontier.0.iter().copied().collect();
        let forked_in: BTreeSet<EventId> = frontier.1.iter().copied().collect();
        let resolution = Arc::new(self.log.resolve_in(|key, seq, event| {
            bounds.get(key).is_some_and(|&through| seq <= through)
                || event.is_some_and(|event| forked_in.contains(event))
        }));
        if self.cache.len() >= PAST_RESOLUTIONS_CACHED_MAX {
            self.cache.pop_front();
        }
        self.cache.push_back((frontier, Arc::clone(&resolution)));
        resolution
    }

    /// Rules V1 to V5 for `author`'s event of `seq` carrying `ops`, judged on `past` (the
    /// resolution of its causal past) and `clock(key)` (its clock's entry for a key).
    pub(crate) fn check(
        past: &Resolution,
        author: &PublicKey,
        seq: u64,
        ops: &[Op],
        clock: impl Fn(&PublicKey) -> u64,
    ) -> Result<(), MemberReject> {
        if !past.may_author(author, seq) {
            return Err(MemberReject::NotMember);
        }
        if !ops.iter().any(Op::is_membership) {
            return Ok(());
        }
        check_ops(past, author, seq, ops, clock).map_err(MemberReject::Op)
    }

    /// Records the membership ops of an accepted event, whose clock entry for a key is
    /// `clock(key)`, and resolves the accepted set again. Returns the keys the ops name (the
    /// key an addition founds a seat with, a replacement's successor, a rotation's successor),
    /// which the roster indexes from now on.
    pub(crate) fn record(
        &mut self,
        author: PublicKey,
        seq: u64,
        event: EventId,
        ops: &[Op],
        clock: impl Fn(&PublicKey) -> u64,
    ) -> Vec<PublicKey> {
        let mut named = Vec::new();
        for op in ops {
            match op {
                Op::Propose { change, round } => {
                    let seen = change.kind.removes().map_or(0, |(_, key, _)| clock(key));
                    match &change.kind {
                        ChangeKind::Add { key, .. } => named.push(*key),
                        ChangeKind::Replace { successor, .. } => named.push(*successor),
                        ChangeKind::Remove { .. } => {}
                    }
                    self.log.propose(&Proposal {
                        change: change.clone(),
                        round: *round,
                        author,
                        seq,
                        event,
                        seen,
                    });
                }
                Op::Approve { change, round } => {
                    self.log.approve(&Approval { change: *change, round: *round, author, seq, event });
                }
                Op::Rotate(rotation) => {
                    // Validity checked it (rule V4), so the log takes it.
                    if self.log.rotate_in(rotation, &author, seq, event).is_ok() {
                        named.push(rotation.successor);
                    }
                }
                _ => continue,
            }
            self.op_events.entry(author).or_default().entry(seq).or_default().insert(event);
        }
        self.current = Arc::new(self.log.resolve());
        named
    }
}

/// Why an event breaks a membership rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MemberReject {
    /// Rule V1: its author may not author at its seq in its causal past.
    NotMember,
    /// Rules V2 to V5: a membership op it carries.
    Op(ChangeError),
}
