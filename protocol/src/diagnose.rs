//! Every validity rule's verdict on an event's or evidence's bytes, for tools that judge bytes
//! offline (`cairnctl inspect`). A node stops at the first rule an event breaks, and it always
//! has the genesis and, before rules 5 and 6, the event's deps; a tool has only the bytes, and
//! perhaps the genesis. [`diagnose`] and [`diagnose_evidence`] therefore run each rule on its
//! own, with the functions a node runs (`validate`, the steps of [`Evidence::verify`]), and say
//! for each whether it holds, fails (with its reason's name in `docs/PROTOCOL.md`), or cannot
//! be decided from what was given. Nothing that needs the genesis or the causal past is ever
//! reported as holding.

use std::fmt;

use cairn_crypto::PublicKey;

use crate::codec::{self, CodecError};
use crate::event::Event;
use crate::evidence::{Evidence, EvidenceError, SignedHeader};
use crate::genesis::Genesis;
use crate::limits::OPS_MAX;
use crate::validate::{self, OpFlaw, Reject};

/// One rule's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The rule holds.
    Pass,
    /// The rule is broken.
    Fail(Failure),
    /// The bytes alone do not decide the rule.
    Undecided(Needs),
}

impl Verdict {
    /// Whether the rule holds.
    pub fn is_pass(&self) -> bool {
        matches!(self, Self::Pass)
    }

    /// Whether the rule is broken.
    pub fn is_fail(&self) -> bool {
        matches!(self, Self::Fail(_))
    }
}

/// Why a rule is broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The reason's name in `docs/PROTOCOL.md`: a [`Reject::name`] for an event (`bad_seq`), an
    /// [`EvidenceError::name`] for evidence (`DifferentSeqs`); for evidence that does not decode,
    /// the reason an event that does not decode gets (`malformed`, `oversize`, `trailing_bytes`).
    pub reason: &'static str,
    /// For bytes that do not decode, the decoding rule they break ([`CodecError::name`]:
    /// `truncated`, `length_over_limit`, …); `None` for every other rule.
    pub codec: Option<&'static str>,
    /// What exactly is wrong, in words (it may quote the input: escape it before printing).
    pub detail: String,
}

impl Failure {
    fn verdict(reason: Reject, detail: impl Into<String>) -> Verdict {
        Verdict::Fail(Self { reason: reason.name(), codec: None, detail: detail.into() })
    }

    fn evidence(reason: EvidenceError, detail: impl Into<String>) -> Verdict {
        Verdict::Fail(Self { reason: reason.name(), codec: None, detail: detail.into() })
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.codec {
            Some(codec) if codec != self.reason => write!(f, "{} ({codec}): {}", self.reason, self.detail),
            _ => write!(f, "{}: {}", self.reason, self.detail),
        }
    }
}

/// What a rule needs that the bytes do not hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// The cluster's genesis: is the author a member?
    Genesis,
    /// The event's deps, which a node checks once it has accepted them all.
    CausalPast,
    /// Bytes that decode: an earlier rule failed, so there is nothing to judge.
    Decoding,
}

impl Needs {
    /// A stable snake_case name, for machine output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Genesis => "needs_genesis",
            Self::CausalPast => "needs_causal_past",
            Self::Decoding => "not_decoded",
        }
    }

    /// Why the rule is undecided, in words.
    pub const fn why(self) -> &'static str {
        match self {
            Self::Genesis => "needs the cluster's genesis to tell whether the author is a member",
            Self::CausalPast => "needs the causal past: the authors, seqs and lamports of the deps",
            Self::Decoding => "not judged: the bytes do not decode",
        }
    }
}

/// The rules of an event's validity (`docs/PROTOCOL.md` §7), in the order that table gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum EventRule {
    /// Rule 1: within `EVENT_BYTES_MAX`, decodes within the limits, no bytes after the signature
    /// (`oversize`, `malformed`, `trailing_bytes`).
    Decoding,
    /// Rule 2: the bytes are the canonical encoding (`non_canonical`).
    Canonical,
    /// Rule 2: the deps are strictly ascending (`deps_not_sorted`).
    DepsSorted,
    /// Rule 3: the author is a member of the genesis (`not_member`).
    Membership,
    /// Rule 7: one op or more, no empty key, causal contexts that name deps and earlier own seqs
    /// and stand alone on their key (`bad_op`).
    Ops,
    /// Rule 7: `ops_hash` is the hash of the ops (`ops_hash_mismatch`).
    OpsHash,
    /// Rule 4: `verify_strict(author, id, sig)` (`bad_signature`).
    Signature,
    /// Rule 5: the seq follows the author's own dep (`bad_seq`).
    Seq,
    /// Rule 6: the lamport is one more than the deps' greatest (`bad_lamport`).
    Lamport,
}

impl EventRule {
    /// Every rule, in the order of the table of `docs/PROTOCOL.md` §7.
    pub const ALL: [Self; 9] = [
        Self::Decoding,
        Self::Canonical,
        Self::DepsSorted,
        Self::Membership,
        Self::Ops,
        Self::OpsHash,
        Self::Signature,
        Self::Seq,
        Self::Lamport,
    ];

    /// The rule's number in `docs/PROTOCOL.md` §7.
    pub const fn number(self) -> u8 {
        match self {
            Self::Decoding => 1,
            Self::Canonical | Self::DepsSorted => 2,
            Self::Membership => 3,
            Self::Signature => 4,
            Self::Seq => 5,
            Self::Lamport => 6,
            Self::Ops | Self::OpsHash => 7,
        }
    }

    /// A stable snake_case name, for machine output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Decoding => "decoding",
            Self::Canonical => "canonical",
            Self::DepsSorted => "deps_sorted",
            Self::Membership => "membership",
            Self::Ops => "ops",
            Self::OpsHash => "ops_hash",
            Self::Signature => "signature",
            Self::Seq => "seq",
            Self::Lamport => "lamport",
        }
    }

    /// What the rule requires, in words.
    pub const fn requirement(self) -> &'static str {
        match self {
            Self::Decoding => "decodes within the limits, nothing after the signature",
            Self::Canonical => "the bytes are the canonical encoding",
            Self::DepsSorted => "the deps are strictly ascending",
            Self::Membership => "the author is a member of the genesis",
            Self::Ops => {
                "one op or more, every key non-empty; a causal context names deps and earlier own seqs, in order, and its op is alone on its key"
            }
            Self::OpsHash => "ops_hash is the hash of the ops",
            Self::Signature => "verify_strict(author, id, sig) holds",
            Self::Seq => "seq 1 without an own dep, or seq n after the own dep at n - 1",
            Self::Lamport => "lamport is 1 + the deps' greatest lamport, 1 without deps",
        }
    }
}

/// The steps of [`Evidence::verify`] (`docs/PROTOCOL.md` §9), after decoding, in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum EvidenceRule {
    /// Both signed headers decode, within `EVIDENCE_BYTES_MAX`, with nothing after them.
    Decoding,
    /// Both headers name one author (`DifferentAuthors`).
    SameAuthor,
    /// Both headers have one seq (`DifferentSeqs`).
    SameSeq,
    /// Two different ids, the smaller first (`NotTwoOrdered`).
    TwoOrdered,
    /// The author is a member of the genesis (`NotMember`).
    Membership,
    /// The first header's signature holds (`BadSignature`).
    FirstSignature,
    /// The second header's signature holds (`BadSignature`).
    SecondSignature,
}

impl EvidenceRule {
    /// Every rule, in the order of [`Evidence::verify`].
    pub const ALL: [Self; 7] = [
        Self::Decoding,
        Self::SameAuthor,
        Self::SameSeq,
        Self::TwoOrdered,
        Self::Membership,
        Self::FirstSignature,
        Self::SecondSignature,
    ];

    /// The step's number in the list of `docs/PROTOCOL.md` §9 (0 for decoding, which comes
    /// before the list).
    pub const fn number(self) -> u8 {
        match self {
            Self::Decoding => 0,
            Self::SameAuthor => 1,
            Self::SameSeq => 2,
            Self::TwoOrdered => 3,
            Self::Membership => 4,
            Self::FirstSignature | Self::SecondSignature => 5,
        }
    }

    /// A stable snake_case name, for machine output.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Decoding => "decoding",
            Self::SameAuthor => "same_author",
            Self::SameSeq => "same_seq",
            Self::TwoOrdered => "two_ordered",
            Self::Membership => "membership",
            Self::FirstSignature => "first_signature",
            Self::SecondSignature => "second_signature",
        }
    }

    /// What the rule requires, in words.
    pub const fn requirement(self) -> &'static str {
        match self {
            Self::Decoding => "two signed headers, within the limits, nothing after them",
            Self::SameAuthor => "both headers name one author",
            Self::SameSeq => "both headers have one seq",
            Self::TwoOrdered => "two different ids, the smaller first",
            Self::Membership => "the author is a member of the genesis",
            Self::FirstSignature => "verify_strict(author, id, sig) holds for the first header",
            Self::SecondSignature => "verify_strict(author, id, sig) holds for the second header",
        }
    }
}

/// What the verdicts add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every rule holds: the event is valid, the evidence proves an equivocation.
    Valid,
    /// A rule is broken: the event is invalid on every node, the evidence proves nothing.
    Invalid,
    /// No rule is broken, but one or more need the genesis or the causal past.
    Undecided,
}

/// Every rule's verdict on one input.
#[derive(Clone, Debug)]
pub struct Diagnosis<T, R> {
    /// The length of the input.
    pub n_bytes: usize,
    /// What the bytes decode to; `None` if they do not.
    pub decoded: Option<T>,
    /// Every rule with its verdict, in the order of `R::ALL`.
    pub verdicts: Vec<(R, Verdict)>,
}

impl<T, R: Copy> Diagnosis<T, R> {
    /// Invalid if any rule fails, else undecided if any is undecided, else valid.
    pub fn outcome(&self) -> Outcome {
        if self.verdicts.iter().any(|(_, v)| v.is_fail()) {
            Outcome::Invalid
        } else if self.verdicts.iter().all(|(_, v)| v.is_pass()) {
            Outcome::Valid
        } else {
            Outcome::Undecided
        }
    }

    /// The rules that fail, with why.
    pub fn failures(&self) -> impl Iterator<Item = (R, &Failure)> {
        self.verdicts.iter().filter_map(|(rule, verdict)| match verdict {
            Verdict::Fail(failure) => Some((*rule, failure)),
            _ => None,
        })
    }

    /// The rules that are undecided, with what they need.
    pub fn undecided(&self) -> impl Iterator<Item = (R, Needs)> {
        self.verdicts.iter().filter_map(|(rule, verdict)| match verdict {
            Verdict::Undecided(needs) => Some((*rule, *needs)),
            _ => None,
        })
    }
}

/// The failure of bytes that do not decode: the reason a node reports, and the codec's rule.
fn undecodable(reason: &'static str, error: &CodecError) -> Verdict {
    Verdict::Fail(Failure { reason, codec: Some(error.name()), detail: error.to_string() })
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Every validity rule's verdict on `bytes`, which should hold one encoded event. With
/// `genesis`, membership (rule 3) is decided; without, it is undecided. Rules 5 and 6 are
/// decided as far as the header decides them (seq 0, seq above 1 without deps, a lamport other
/// than 1 without deps or below 2 with deps fail; seq 1 and lamport 1 without deps hold); the
/// rest needs the deps and is undecided.
pub fn diagnose(bytes: &[u8], genesis: Option<&Genesis>) -> Diagnosis<Event, EventRule> {
    let n_bytes = bytes.len();
    let event = match codec::decode_event(bytes) {
        Ok(event) => event,
        Err(error) => {
            let reason = Reject::of_codec(&error);
            let (decoding, canonical) = if reason == Reject::NonCanonical {
                (Verdict::Pass, undecodable(reason.name(), &error))
            } else {
                (undecodable(reason.name(), &error), Verdict::Undecided(Needs::Decoding))
            };
            let verdicts = EventRule::ALL
                .into_iter()
                .map(|rule| {
                    let verdict = match rule {
                        EventRule::Decoding => decoding.clone(),
                        EventRule::Canonical => canonical.clone(),
                        _ => Verdict::Undecided(Needs::Decoding),
                    };
                    (rule, verdict)
                })
                .collect();
            return Diagnosis { n_bytes, decoded: None, verdicts };
        }
    };
    let id = event.id();
    let header = &event.header;
    let verdicts = EventRule::ALL
        .into_iter()
        .map(|rule| {
            let verdict = match rule {
                EventRule::Decoding | EventRule::Canonical => Verdict::Pass,
                EventRule::DepsSorted => match validate::unsorted_dep(&header.deps) {
                    None => Verdict::Pass,
                    Some(idx) => Failure::verdict(
                        Reject::DepsNotSorted,
                        format!("dep {idx} is not above dep {} (deps count from 0)", idx - 1),
                    ),
                },
                EventRule::Membership => match genesis {
                    None => Verdict::Undecided(Needs::Genesis),
                    Some(genesis) => match genesis.member_idx(&header.author) {
                        Some(_) => Verdict::Pass,
                        None => Failure::verdict(
                            Reject::NotMember,
                            format!(
                                "the author {} is not one of the genesis's {}",
                                header.author,
                                plural(genesis.members().len(), "member", "members")
                            ),
                        ),
                    },
                },
                EventRule::Ops => match validate::op_flaw(&event) {
                    None => Verdict::Pass,
                    Some(OpFlaw::NoOps) => Failure::verdict(Reject::BadOp, "no ops; an event carries at least one"),
                    Some(OpFlaw::TooMany(n)) => {
                        Failure::verdict(Reject::BadOp, format!("{n} ops, over the limit of {OPS_MAX}"))
                    }
                    Some(OpFlaw::EmptyKey(idx)) => Failure::verdict(
                        Reject::BadOp,
                        format!("op {idx} ({}) has an empty key (ops count from 0)", op_name(&event, idx)),
                    ),
                    Some(OpFlaw::Seen(idx)) => Failure::verdict(
                        Reject::BadOp,
                        format!(
                            "op {idx} ({}) has a causal context that is not strictly ascending, names an \
                             event that is not a dep, or an own seq not below the event's (ops count from 0)",
                            op_name(&event, idx)
                        ),
                    ),
                },
                EventRule::OpsHash => match validate::check_ops_hash(&event) {
                    Ok(()) => Verdict::Pass,
                    Err(computed) => Failure::verdict(
                        Reject::OpsHashMismatch,
                        format!(
                            "the header names {}, the ops hash to {}",
                            hex::encode(header.ops_hash),
                            hex::encode(computed)
                        ),
                    ),
                },
                EventRule::Signature => {
                    if validate::signature_holds(&event, &id) {
                        Verdict::Pass
                    } else {
                        Failure::verdict(Reject::BadSignature, "verify_strict(author, id, sig) fails")
                    }
                }
                EventRule::Seq => match validate::seq_from_header(header) {
                    Some(true) => Verdict::Pass,
                    Some(false) if header.seq == 0 => Failure::verdict(Reject::BadSeq, "seq 0: seqs start at 1"),
                    Some(false) => Failure::verdict(
                        Reject::BadSeq,
                        format!("seq {} without deps: it needs its author's event at seq {}", header.seq, header.seq - 1),
                    ),
                    None => Verdict::Undecided(Needs::CausalPast),
                },
                EventRule::Lamport => match validate::lamport_from_header(header) {
                    Some(true) => Verdict::Pass,
                    Some(false) if header.deps.is_empty() => Failure::verdict(
                        Reject::BadLamport,
                        format!("lamport {} without deps: it must be 1", header.lamport),
                    ),
                    Some(false) => Failure::verdict(
                        Reject::BadLamport,
                        format!(
                            "lamport {} with deps: it must be at least 2, as every dep has a lamport of 1 or more",
                            header.lamport
                        ),
                    ),
                    None => Verdict::Undecided(Needs::CausalPast),
                },
            };
            (rule, verdict)
        })
        .collect();
    Diagnosis { n_bytes, decoded: Some(event), verdicts }
}

/// The header fields of an accepted dep that rules 5 and 6 read, for
/// [`Diagnosis::decide_causal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepHeader {
    /// The dep's author.
    pub author: PublicKey,
    /// Its seq.
    pub seq: u64,
    /// Its lamport.
    pub lamport: u64,
}

impl Diagnosis<Event, EventRule> {
    /// Decides rules 5 and 6 (seq, lamport) from the headers of the event's deps, given in the
    /// header's order, with the functions a node that holds the deps runs. Changes nothing
    /// unless the bytes decoded and `deps` holds one header per dep.
    pub fn decide_causal(&mut self, deps: &[DepHeader]) {
        let Some(event) = &self.decoded else { return };
        let header = &event.header;
        if deps.len() != header.deps.len() {
            return;
        }
        let own: Vec<&DepHeader> = deps.iter().filter(|dep| dep.author == header.author).collect();
        let own_dep_seq = own.last().map_or(0, |dep| dep.seq);
        let lamport_max = deps.iter().map(|dep| dep.lamport).max().unwrap_or(0);
        let seq = if validate::seq_follows(header.seq, own.len(), own_dep_seq) {
            Verdict::Pass
        } else {
            Failure::verdict(
                Reject::BadSeq,
                format!(
                    "seq {} after {} of the author's own deps (the last at seq {own_dep_seq})",
                    header.seq,
                    own.len()
                ),
            )
        };
        let lamport = if validate::lamport_follows(header.lamport, lamport_max) {
            Verdict::Pass
        } else {
            Failure::verdict(
                Reject::BadLamport,
                format!("lamport {}, where the deps' greatest is {lamport_max}", header.lamport),
            )
        };
        for (rule, verdict) in &mut self.verdicts {
            match rule {
                EventRule::Seq => *verdict = seq.clone(),
                EventRule::Lamport => *verdict = lamport.clone(),
                _ => {}
            }
        }
    }
}

fn op_name(event: &Event, idx: usize) -> &'static str {
    match event.ops.get(idx) {
        Some(crate::event::Op::Put { .. }) => "put",
        Some(crate::event::Op::Del { .. }) => "del",
        Some(crate::event::Op::Incr { .. }) => "incr",
        Some(crate::event::Op::Add { .. }) => "add",
        Some(crate::event::Op::Remove { .. }) => "remove",
        Some(crate::event::Op::Propose { .. }) => "propose",
        Some(crate::event::Op::Approve { .. }) => "approve",
        Some(crate::event::Op::Rotate(_)) => "rotate",
        Some(crate::event::Op::PutSeen { .. }) => "put with a context",
        Some(crate::event::Op::DelSeen { .. }) => "del with a context",
        Some(crate::event::Op::AddSeen { .. }) => "add with a context",
        Some(crate::event::Op::RemoveSeen { .. }) => "remove with a context",
        None => "?",
    }
}

/// Every step's verdict on `bytes`, which should hold encoded evidence. With `genesis`,
/// membership is decided; without, it is undecided, and everything else is decided from the
/// bytes.
pub fn diagnose_evidence(bytes: &[u8], genesis: Option<&Genesis>) -> Diagnosis<Evidence, EvidenceRule> {
    let n_bytes = bytes.len();
    let evidence = match codec::decode_evidence(bytes) {
        Ok(evidence) => evidence,
        Err(error) => {
            let verdicts = EvidenceRule::ALL
                .into_iter()
                .map(|rule| {
                    let verdict = match rule {
                        EvidenceRule::Decoding => undecodable(Reject::of_codec(&error).name(), &error),
                        _ => Verdict::Undecided(Needs::Decoding),
                    };
                    (rule, verdict)
                })
                .collect();
            return Diagnosis { n_bytes, decoded: None, verdicts };
        }
    };
    let (a, b) = (&evidence.first.header, &evidence.second.header);
    let roster = genesis.map(crate::roster::Roster::new);
    let step = |step: EvidenceError, detail: String| match evidence.step_holds(step, roster.as_ref()) {
        None => Verdict::Undecided(Needs::Genesis),
        Some(true) => Verdict::Pass,
        Some(false) => Failure::evidence(step, detail),
    };
    let signature = |signed: &SignedHeader| {
        if signed.signature_holds() {
            Verdict::Pass
        } else {
            Failure::evidence(EvidenceError::BadSignature, "verify_strict(author, id, sig) fails")
        }
    };
    let verdicts = EvidenceRule::ALL
        .into_iter()
        .map(|rule| {
            let verdict = match rule {
                EvidenceRule::Decoding => Verdict::Pass,
                EvidenceRule::SameAuthor => step(
                    EvidenceError::DifferentAuthors,
                    format!("the first header names {}, the second {}", a.author, b.author),
                ),
                EvidenceRule::SameSeq => step(
                    EvidenceError::DifferentSeqs,
                    format!("the first header has seq {}, the second {}", a.seq, b.seq),
                ),
                EvidenceRule::TwoOrdered => {
                    let (id_a, id_b) = evidence.ids();
                    let detail = if id_a == id_b {
                        format!("both headers are one event, {id_a}")
                    } else {
                        format!("the first id {id_a} is above the second {id_b}")
                    };
                    step(EvidenceError::NotTwoOrdered, detail)
                }
                EvidenceRule::Membership => step(
                    EvidenceError::NotMember,
                    format!(
                        "the author {} is not one of the genesis's {}",
                        a.author,
                        plural(genesis.map_or(0, |g| g.members().len()), "member", "members")
                    ),
                ),
                EvidenceRule::FirstSignature => signature(&evidence.first),
                EvidenceRule::SecondSignature => signature(&evidence.second),
            };
            (rule, verdict)
        })
        .collect();
    Diagnosis { n_bytes, decoded: Some(evidence), verdicts }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_in_order() {
        let names: std::collections::BTreeSet<_> = EventRule::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), EventRule::ALL.len());
        let names: std::collections::BTreeSet<_> = EvidenceRule::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), EvidenceRule::ALL.len());
        // The evidence steps after decoding follow `EvidenceError::ALL`.
        let numbers: Vec<u8> = EvidenceRule::ALL.iter().map(|r| r.number()).collect();
        assert!(numbers.windows(2).all(|pair| pair[0] <= pair[1]), "{numbers:?}");
    }

    #[test]
    fn the_deps_decide_seq_and_lamport() {
        let key = cairn_crypto::SecretKey::from_seed(&[7; 32]);
        let other = cairn_crypto::SecretKey::from_seed(&[8; 32]).public();
        let ops = vec![crate::event::Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }];
        let deps = vec![crate::event::EventId([1; 32]), crate::event::EventId([2; 32])];
        let event = Event::sign(&key, 2, 4, deps, ops);
        let verdict = |d: &Diagnosis<Event, EventRule>, rule| {
            d.verdicts.iter().find(|(r, _)| *r == rule).unwrap().1.clone()
        };
        let mut d = diagnose(&event.encode(), None);
        assert_eq!(verdict(&d, EventRule::Seq), Verdict::Undecided(Needs::CausalPast));
        // Too few headers: nothing is decided.
        d.decide_causal(&[DepHeader { author: key.public(), seq: 1, lamport: 3 }]);
        assert_eq!(verdict(&d, EventRule::Lamport), Verdict::Undecided(Needs::CausalPast));
        let good = [
            DepHeader { author: key.public(), seq: 1, lamport: 1 },
            DepHeader { author: other, seq: 5, lamport: 3 },
        ];
        d.decide_causal(&good);
        assert_eq!(
            (verdict(&d, EventRule::Seq), verdict(&d, EventRule::Lamport)),
            (Verdict::Pass, Verdict::Pass)
        );
        assert_eq!(d.outcome(), Outcome::Undecided, "membership still needs the genesis");
        let bad = [
            DepHeader { author: other, seq: 1, lamport: 1 },
            DepHeader { author: other, seq: 5, lamport: 4 },
        ];
        d.decide_causal(&bad);
        let failed: Vec<&str> = d.failures().map(|(_, f)| f.reason).collect();
        assert_eq!(failed, ["bad_seq", "bad_lamport"]);
    }
}
