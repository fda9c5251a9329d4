//! The validity rules of `docs/PROTOCOL.md` §7, one function per rule, grouped by what they
//! need: `check_stateless` chains those that need only the bytes and the genesis (rules 1, 2,
//! 3, 7 and the order of the deps); rule 4 (the signature) runs in the adapter, `verify_strict`
//! on each event, spread over threads; `check_causal` needs the accepted deps (rules 5 and 6).
//! Each failure is a distinct [`Reject`] reason, counted in metrics and logs.
//!
//! [`crate::diagnose::diagnose`] runs the same functions one by one, to report every rule's
//! verdict on bytes that a tool was given (`cairnctl inspect`); `seq_from_header` and
//! `lamport_from_header` say how much of rules 5 and 6 the header alone decides.

use std::fmt;

use cairn_crypto::verify_strict;

use crate::codec::{self, CodecError};
use crate::event::{Event, EventId, Header, Op, Seen, ops_hash};
use crate::genesis::MemberIdx;
use crate::limits::OPS_MAX;

/// Why an event is invalid. The numbering in the docs follows the rules of `docs/PROTOCOL.md` §7.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Reject {
    /// Rule 1: more than [`crate::limits::EVENT_BYTES_MAX`] bytes.
    Oversize,
    /// Rule 1: the bytes do not decode, or a count or length is over its limit.
    Malformed,
    /// Rule 1: bytes follow the end of the event.
    TrailingBytes,
    /// Rule 2: the bytes are not the canonical encoding of what they decode to.
    NonCanonical,
    /// Rule 2: the deps are not sorted ascending and unique.
    DepsNotSorted,
    /// Rule 3: the author may not author this event: not a member in its causal past
    /// (`docs/PROTOCOL.md` §17, rule V1).
    NotMember,
    /// Rule 4: `verify_strict(author, id, sig)` fails.
    BadSignature,
    /// Rule 5: the seq does not follow the author's own dep (or a seq-1 event has own deps).
    BadSeq,
    /// Rule 6: the lamport is not one more than the greatest lamport of the deps.
    BadLamport,
    /// Rule 7: `ops_hash` does not match the ops.
    OpsHashMismatch,
    /// Rule 7: no ops, more than [`OPS_MAX`], or an op with an empty key.
    BadOp,
    /// Rule 8: a membership op the event may not carry (`docs/PROTOCOL.md` §17, rules V2 to V5).
    BadMembership,
}

impl Reject {
    /// Every reason, for metrics.
    pub const ALL: [Self; 12] = [
        Self::Oversize,
        Self::Malformed,
        Self::TrailingBytes,
        Self::NonCanonical,
        Self::DepsNotSorted,
        Self::NotMember,
        Self::BadSignature,
        Self::BadSeq,
        Self::BadLamport,
        Self::OpsHashMismatch,
        Self::BadOp,
        Self::BadMembership,
    ];

    /// A stable snake_case name for metrics labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::Malformed => "malformed",
            Self::TrailingBytes => "trailing_bytes",
            Self::NonCanonical => "non_canonical",
            Self::DepsNotSorted => "deps_not_sorted",
            Self::NotMember => "not_member",
            Self::BadSignature => "bad_signature",
            Self::BadSeq => "bad_seq",
            Self::BadLamport => "bad_lamport",
            Self::OpsHashMismatch => "ops_hash_mismatch",
            Self::BadOp => "bad_op",
            Self::BadMembership => "bad_membership",
        }
    }
}

impl Reject {
    /// The reason for bytes that do not decode: `oversize`, `trailing_bytes` or `non_canonical`
    /// for those rules, `malformed` for every other decoding rule (the codec's
    /// [`CodecError::name`] says which).
    pub fn of_codec(error: &CodecError) -> Self {
        match error {
            CodecError::Oversize { .. } => Self::Oversize,
            CodecError::TrailingBytes(_) => Self::TrailingBytes,
            CodecError::NonCanonical => Self::NonCanonical,
            _ => Self::Malformed,
        }
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An event that passed every check that needs neither the signature nor the causal past.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) event: Event,
    pub(crate) id: EventId,
    pub(crate) bytes: Vec<u8>,
}

/// Rules 1, 2 and 7, and the order of the deps, in the order of `docs/PROTOCOL.md` §7. Rule 3
/// (the author may author) needs the causal past: the adapter checks it once the deps are
/// accepted, or before the signature when they are and the author is a key it never heard of.
pub(crate) fn check_stateless(bytes: Vec<u8>) -> Result<Decoded, (Option<EventId>, Reject)> {
    let event = codec::decode_event(&bytes).map_err(|e| (None, Reject::of_codec(&e)))?;
    let id = event.id();
    let fail = |reason| Err((Some(id), reason));
    if unsorted_dep(&event.header.deps).is_some() {
        return fail(Reject::DepsNotSorted);
    }
    if op_flaw(&event).is_some() {
        return fail(Reject::BadOp);
    }
    if check_ops_hash(&event).is_err() {
        return fail(Reject::OpsHashMismatch);
    }
    Ok(Decoded { event, id, bytes })
}

/// Rule 2 (deps): the index of the first dep that is not above the one before it, if any
/// (`deps_not_sorted`).
pub(crate) fn unsorted_dep(deps: &[EventId]) -> Option<usize> {
    deps.windows(2).position(|pair| pair[0] >= pair[1]).map(|idx| idx + 1)
}

/// What breaks rule 7's shape of the ops (`bad_op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpFlaw {
    /// The event has no op.
    NoOps,
    /// More than [`OPS_MAX`] ops (the codec refuses these first, as `malformed`).
    TooMany(usize),
    /// The op at this index has an empty key.
    EmptyKey(usize),
    /// The causal context of the op at this index is not strictly ascending, names an event
    /// that is not a dep, or an own seq that is not below the event's; or the op shares its
    /// register key or set element with an op with a causal context of the same event.
    Seen(usize),
}

/// Rule 7 (ops): what is wrong with the ops, if anything (`bad_op`).
pub(crate) fn op_flaw(event: &Event) -> Option<OpFlaw> {
    let ops = &event.ops;
    if ops.is_empty() {
        Some(OpFlaw::NoOps)
    } else if ops.len() > OPS_MAX {
        Some(OpFlaw::TooMany(ops.len()))
    } else if let Some(idx) = ops.iter().position(|op| !op.is_membership() && op.key().is_empty()) {
        Some(OpFlaw::EmptyKey(idx))
    } else if let Some(idx) =
        ops.iter().position(|op| op.seen().is_some_and(|seen| !seen_holds(seen, &event.header)))
    {
        Some(OpFlaw::Seen(idx))
    } else {
        context_clash(ops).map(OpFlaw::Seen)
    }
}

/// What a register or set op writes: `(0, key, [])` for a register, `(2, key, element)` for a
/// set element; `None` for a counter or membership op, which takes no causal context.
pub(crate) fn op_target(op: &Op) -> Option<(u8, &[u8], &[u8])> {
    match op {
        Op::Put { key, .. } | Op::Del { key } | Op::PutSeen { key, .. } | Op::DelSeen { key, .. } => {
            Some((0, key, &[]))
        }
        Op::Add { key, element }
        | Op::Remove { key, element }
        | Op::AddSeen { key, element, .. }
        | Op::RemoveSeen { key, element, .. } => Some((2, key, element)),
        _ => None,
    }
}

/// Rule 7 (causal contexts): the index of the first op that shares a register key or set
/// element with an op with a causal context in the same event, if any. (An op with a context
/// supersedes no op of its own event, so without this rule one event could leave any number of
/// siblings on one key.)
pub(crate) fn context_clash(ops: &[Op]) -> Option<usize> {
    // A clash needs an op with a context: without one (every plain write) the answer is known
    // without the map, which cost a tree insertion per op on each of the three passes a local
    // write takes (the API's check, signing, acceptance).
    if ops.iter().all(|op| op.seen().is_none()) {
        return None;
    }
    // Per target: whether an op on it so far carries a context.
    let mut targets: std::collections::BTreeMap<(u8, &[u8], &[u8]), bool> = std::collections::BTreeMap::new();
    for (idx, op) in ops.iter().enumerate() {
        let Some(target) = op_target(op) else { continue };
        let has_context = op.seen().is_some();
        match targets.get(&target) {
            Some(&earlier_has_context) if earlier_has_context || has_context => return Some(idx),
            Some(_) => {}
            None => {
                targets.insert(target, has_context);
            }
        }
    }
    None
}

/// Rule 7 (causal contexts): the named events are strictly ascending and deps of the event,
/// and the own seqs strictly ascending, each at least 1 and below the event's seq.
fn seen_holds(seen: &Seen, header: &Header) -> bool {
    let events_hold = seen.events.windows(2).all(|pair| pair[0] < pair[1])
        && seen.events.iter().all(|id| header.deps.binary_search(id).is_ok());
    let own_holds = seen.own.windows(2).all(|pair| pair[0] < pair[1])
        && seen.own.iter().all(|&seq| seq >= 1 && seq < header.seq);
    events_hold && own_holds
}

/// Rule 7 (ops hash): `Err` with the hash of the ops when the header names another
/// (`ops_hash_mismatch`).
pub(crate) fn check_ops_hash(event: &Event) -> Result<(), [u8; 32]> {
    let computed = ops_hash(&event.ops);
    if computed == event.header.ops_hash { Ok(()) } else { Err(computed) }
}

/// Rule 4: `verify_strict(author, id, sig)` (`bad_signature`), for one event. The adapter checks
/// many at once with `verify_many_with` (the members' keys decoded once), which gives the same
/// verdicts.
pub(crate) fn signature_holds(event: &Event, id: &EventId) -> bool {
    verify_strict(&event.header.author, &id.0, &event.sig)
}

/// Rule 5: whether `seq` follows the author's own deps, given how many of the deps are the
/// author's (`own_deps`) and the seq of the last of them (`own_dep_seq`).
pub(crate) fn seq_follows(seq: u64, own_deps: usize, own_dep_seq: u64) -> bool {
    match seq {
        0 => false,
        1 => own_deps == 0,
        seq => own_deps == 1 && own_dep_seq == seq - 1,
    }
}

/// Rule 6: whether `lamport` is one more than the greatest lamport of the deps (0 without deps).
pub(crate) fn lamport_follows(lamport: u64, lamport_max: u64) -> bool {
    lamport_max.checked_add(1) == Some(lamport)
}

/// Rule 5 as far as the header alone decides it: `Some(verdict)`, or `None` when it needs the
/// authors and seqs of the deps. Without deps no dep is the author's, so [`seq_follows`] decides;
/// seq 0 fails whatever the deps.
pub(crate) fn seq_from_header(header: &Header) -> Option<bool> {
    if header.deps.is_empty() {
        Some(seq_follows(header.seq, 0, 0))
    } else if header.seq == 0 {
        Some(false)
    } else {
        None
    }
}

/// Rule 6 as far as the header alone decides it: `Some(verdict)`, or `None` when it needs the
/// lamports of the deps. Without deps [`lamport_follows`] decides. With deps, each is an
/// accepted event and so has a lamport of at least 1 (1 without deps, more with), so a lamport
/// below 2 fails.
pub(crate) fn lamport_from_header(header: &Header) -> Option<bool> {
    if header.deps.is_empty() {
        Some(lamport_follows(header.lamport, 0))
    } else if header.lamport < 2 {
        Some(false)
    } else {
        None
    }
}

/// Rules 5 and 6, given the author's index and the accepted deps as `(author_idx, seq,
/// lamport)` in the header's order.
pub(crate) fn check_causal(
    decoded: &Decoded,
    author: MemberIdx,
    deps: impl Iterator<Item = (MemberIdx, u64, u64)>,
) -> Result<(), Reject> {
    let header = &decoded.event.header;
    let mut own_deps = 0usize;
    let mut own_dep_seq = 0u64;
    let mut lamport_max = 0u64;
    for (author_idx, seq, lamport) in deps {
        if author_idx == author {
            own_deps += 1;
            own_dep_seq = seq;
        }
        lamport_max = lamport_max.max(lamport);
    }
    if !seq_follows(header.seq, own_deps, own_dep_seq) {
        return Err(Reject::BadSeq);
    }
    if !lamport_follows(header.lamport, lamport_max) {
        return Err(Reject::BadLamport);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_header_decides_agrees_with_the_causal_rules() {
        // For every header the verdict from the header alone, when there is one, is the verdict
        // of the causal rules for every possible set of deps (here: small seqs and lamports).
        let header = |seq, lamport, n_deps: u8| Header {
            author: cairn_crypto::PublicKey([0; 32]),
            seq,
            lamport,
            deps: (0..n_deps).map(|idx| EventId([idx; 32])).collect(),
            ops_hash: [0; 32],
        };
        for seq in 0..4 {
            for lamport in 0..4 {
                for n_deps in 0..2u8 {
                    let header = header(seq, lamport, n_deps);
                    // With one dep: it is the author's or not, of any seq, of lamport 1 or more.
                    let cases: Vec<(usize, u64, u64)> = if n_deps == 0 {
                        vec![(0, 0, 0)]
                    } else {
                        (0..2)
                            .flat_map(|own| (1..4).flat_map(move |s| (1..4).map(move |l| (own, s, l))))
                            .collect()
                    };
                    for (own_deps, own_dep_seq, lamport_max) in cases {
                        if let Some(verdict) = seq_from_header(&header) {
                            assert_eq!(verdict, seq_follows(seq, own_deps, own_dep_seq), "{header:?}");
                        }
                        if let Some(verdict) = lamport_from_header(&header) {
                            assert_eq!(verdict, lamport_follows(lamport, lamport_max), "{header:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(seq_from_header(&header(0, 1, 0)), Some(false));
        assert_eq!(seq_from_header(&header(2, 2, 0)), Some(false));
        assert_eq!(seq_from_header(&header(1, 1, 0)), Some(true));
        assert_eq!(seq_from_header(&header(2, 2, 1)), None);
        assert_eq!(seq_from_header(&header(1, 2, 1)), None);
        assert_eq!(lamport_from_header(&header(1, 2, 0)), Some(false));
        assert_eq!(lamport_from_header(&header(2, 1, 1)), Some(false));
        assert_eq!(lamport_from_header(&header(2, 2, 1)), None);
    }

    #[test]
    fn unsorted_deps_and_op_flaws_are_located() {
        let ids = |bytes: &[u8]| bytes.iter().map(|&b| EventId([b; 32])).collect::<Vec<_>>();
        assert_eq!(unsorted_dep(&ids(&[])), None);
        assert_eq!(unsorted_dep(&ids(&[1, 2, 3])), None);
        assert_eq!(unsorted_dep(&ids(&[1, 3, 2])), Some(2));
        assert_eq!(unsorted_dep(&ids(&[1, 1])), Some(1));
        let del = |key: &[u8]| Op::Del { key: key.to_vec() };
        let key = cairn_crypto::SecretKey::from_seed(&[7; 32]);
        let on = |seq: u64, deps: Vec<EventId>, ops: Vec<Op>| Event::sign(&key, seq, seq, deps, ops);
        let flaw = |ops: Vec<Op>| op_flaw(&on(2, ids(&[1, 2]), ops));
        assert_eq!(flaw(vec![]), Some(OpFlaw::NoOps));
        assert_eq!(flaw(vec![del(b"a"), del(b"")]), Some(OpFlaw::EmptyKey(1)));
        assert_eq!(flaw(vec![del(b"a"); OPS_MAX + 1]), Some(OpFlaw::TooMany(OPS_MAX + 1)));
        assert_eq!(flaw(vec![del(b"a"); OPS_MAX]), None);

        // A causal context names deps by id and the author's own earlier seqs, each list
        // strictly ascending.
        let seen = |events: &[u8], own: &[u64]| Op::DelSeen {
            key: b"k".to_vec(),
            seen: Seen { events: ids(events), own: own.to_vec() },
        };
        assert_eq!(flaw(vec![del(b"a"), seen(&[1, 2], &[1])]), None);
        assert_eq!(flaw(vec![seen(&[], &[])]), None);
        assert_eq!(flaw(vec![del(b"a"), seen(&[3], &[])]), Some(OpFlaw::Seen(1)), "not a dep");
        assert_eq!(flaw(vec![seen(&[2, 1], &[])]), Some(OpFlaw::Seen(0)), "not ascending");
        assert_eq!(flaw(vec![seen(&[1, 1], &[])]), Some(OpFlaw::Seen(0)), "repeated");
        assert_eq!(flaw(vec![seen(&[], &[2])]), Some(OpFlaw::Seen(0)), "own seq not below the event's");
        assert_eq!(flaw(vec![seen(&[], &[0])]), Some(OpFlaw::Seen(0)), "own seq 0");
        assert_eq!(op_flaw(&on(5, vec![], vec![seen(&[], &[1, 4])])), None);
        // An op with a context shares its key with no other op of its event, in either order.
        assert_eq!(flaw(vec![del(b"k"), seen(&[], &[])]), Some(OpFlaw::Seen(1)));
        assert_eq!(flaw(vec![seen(&[], &[]), del(b"k")]), Some(OpFlaw::Seen(1)));
        assert_eq!(flaw(vec![seen(&[], &[]), seen(&[1], &[])]), Some(OpFlaw::Seen(1)));
        assert_eq!(flaw(vec![del(b"k"), del(b"k")]), None, "without a context, as before");
        assert_eq!(op_flaw(&on(5, vec![], vec![seen(&[], &[4, 1])])), Some(OpFlaw::Seen(0)));
    }
}
