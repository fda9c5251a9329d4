//! Membership over time: the rules that turn signed membership changes, approvals and key
//! rotations into the membership in force, as a pure function of the set of them
//! (`docs/PROTOCOL.md` §17).
//!
//! A membership is a set of **seats**. Each seat has a name and a chain of keys: the key that
//! founded it (a genesis member's, or the key an addition or a replacement brought in), then the
//! successor of each rotation. A rotation is a seat's own business: its current key hands over
//! to a successor that signed a proof, and no vote is needed. Adding, removing and replacing
//! seats is a vote: each such change names the membership it changes (its `base`, a
//! [`MembershipId`] that commits to every change before it) and takes effect once a quorum of
//! the base's seats approved it ([`Policy`]: always more than half of them).
//!
//! Two rules make the result a function of the *set* of signed ops that no later arrival can
//! rewrite without evidence against someone:
//!
//! - **One vote per seat per round.** A seat's approval of a change of one base counts only if
//!   it is the seat's first approval of that base in that round (the lowest key position in its
//!   chain, then the lowest seq, then the lowest change id). Since every quorum is more than half
//!   of the seats and a seat's vote counts once, two changes of one base can never both reach
//!   their quorum, whatever order things arrive in. A seat that approves two changes of one base
//!   in one round left a [`DoubleApproval`]: evidence, like an equivocation; its ops from its
//!   second approval on are not admitted to the document.
//! - **Rounds only after a deadlock.** When a round can no longer decide (no change could reach
//!   the quorum even if every seat that has not voted voted for it), the next round opens and the
//!   seats vote again. A round that can still decide never opens the next one, so at most one
//!   change per base ever takes effect.
//!
//! Rotations do not name a base and are not voted on, so they commute with every change: they
//! cannot undo a vote, and a removal of a seat cuts every key of it (a key cannot escape a removal
//! by rotating). A removal's cut names one key of the seat and its last kept seq; the proposal is
//! only valid if the cut is at most the highest seq of that key the proposer had seen.
//!
//! This module decides; it does no I/O and keeps no history beyond what it is given.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cairn_crypto::{Domain, Hasher, PublicKey, SecretKey, Signature, hash, is_usable_key, verify_strict};

use crate::codec;
use crate::event::{EventId, Op};
use crate::genesis::{Genesis, is_valid_name};
use crate::limits::{MEMBERS_MAX, VOTES_PER_SEAT_ROUND_MAX};

/// The id of a membership: the cluster id for the genesis membership, then
/// `SHA-256("cairn/membership/v1" ‖ base id ‖ change id)` for each change applied.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MembershipId(pub [u8; 32]);

/// The id of a change: `SHA-256("cairn/change/v1" ‖ canonical change)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChangeId(pub [u8; 32]);

impl fmt::Debug for MembershipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MembershipId({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for MembershipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChangeId({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for ChangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// What a voted change does to the membership it names.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    /// Adds a seat founded by a key that never founded one, under a name never used.
    Add {
        /// The new seat's key.
        key: PublicKey,
        /// Its display name (the genesis's name rule).
        name: String,
    },
    /// Removes `seat`. Of its keys, `key`'s events up to `cut` are kept, the keys before `key`
    /// in the seat's chain keep theirs up to their rotations, and the keys after it keep none.
    Remove {
        /// The seat removed (its founding key).
        seat: PublicKey,
        /// A key of the seat's chain, as the proposer knew it: where the cut is.
        key: PublicKey,
        /// The last seq of `key` that is kept (0 keeps none).
        cut: u64,
    },
    /// Removes `seat`, as [`ChangeKind::Remove`] does, and founds a seat of `successor` under
    /// the same name (a lost or stolen key).
    Replace {
        /// The seat replaced (its founding key).
        seat: PublicKey,
        /// A key of the seat's chain: where the cut is.
        key: PublicKey,
        /// The last seq of `key` that is kept.
        cut: u64,
        /// The key that founds the new seat; it never founded one before.
        successor: PublicKey,
    },
}

impl ChangeKind {
    /// The seat this change removes, the key its cut names, and the cut.
    pub const fn removes(&self) -> Option<(&PublicKey, &PublicKey, u64)> {
        match self {
            Self::Add { .. } => None,
            Self::Remove { seat, key, cut } | Self::Replace { seat, key, cut, .. } => Some((seat, key, *cut)),
        }
    }

    /// The key that founds a new seat, if any.
    pub const fn adds(&self) -> Option<&PublicKey> {
        match self {
            Self::Remove { .. } => None,
            Self::Add { key, .. } => Some(key),
            Self::Replace { successor, .. } => Some(successor),
        }
    }
}

/// A voted membership change: what it does, and the membership it changes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Change {
    /// The id of the membership this change applies to.
    pub base: MembershipId,
    /// What it does.
    pub kind: ChangeKind,
}

impl Change {
    /// `SHA-256("cairn/change/v1" ‖ canonical change)`.
    pub fn id(&self) -> ChangeId {
        ChangeId(hash(Domain::Change, &codec::encode_change(self)))
    }
}

/// A seat's key handing over to its successor. Signed by `key` itself in its event of seq
/// `cut` (its last event that counts), with the successor's `proof` that it holds its secret
/// key and agrees to this seat.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rotation {
    /// The key that rotates away (the event's author).
    pub key: PublicKey,
    /// The seq of the event that carries the rotation: the old key's last seq that counts.
    pub cut: u64,
    /// The new key.
    pub successor: PublicKey,
    /// `Ed25519(successor, Rotation::message(cluster, key, cut, successor))`.
    pub proof: Signature,
}

impl Rotation {
    /// What the successor signs:
    /// `SHA-256("cairn/rotation/v1" ‖ cluster id ‖ key ‖ u64(cut) ‖ successor)`.
    pub fn message(cluster: &[u8; 32], key: &PublicKey, cut: u64, successor: &PublicKey) -> [u8; 32] {
        let mut hasher = Hasher::new(Domain::Rotation);
        hasher.update(cluster).update(&key.0).update(&cut.to_le_bytes()).update(&successor.0);
        hasher.finish()
    }

    /// The rotation of `key`, in its event of seq `cut`, to `successor`'s public key, with the
    /// proof `successor` signs.
    pub fn new(cluster: &[u8; 32], key: PublicKey, cut: u64, successor: &SecretKey) -> Self {
        let next = successor.public();
        let proof = successor.sign(&Self::message(cluster, &key, cut, &next));
        Self { key, cut, successor: next, proof }
    }

    /// Whether the proof verifies (strictly) under the successor key.
    pub fn verify(&self, cluster: &[u8; 32]) -> bool {
        verify_strict(
            &self.successor,
            &Self::message(cluster, &self.key, self.cut, &self.successor),
            &self.proof,
        )
    }
}

/// How many of a membership's seats must approve a change. Always more than half, so that two
/// quorums of one membership share a seat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// More than half of the seats.
    #[default]
    Majority,
    /// At least this many seats, and never fewer than a majority nor more than all of them.
    AtLeast(u32),
}

impl Policy {
    /// Approvals needed out of `seats`.
    pub fn threshold(self, seats: usize) -> usize {
        let majority = seats / 2 + 1;
        match self {
            Self::Majority => majority,
            Self::AtLeast(n) => (n as usize).clamp(majority, seats.max(majority)),
        }
    }
}

/// A seat: its founding key (which names it for good) and its display name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seat {
    /// The key that founded the seat: a genesis member's, or an addition's or replacement's.
    pub founder: PublicKey,
    /// The seat's display name.
    pub name: String,
}

/// One membership of a cluster's chain: the seats in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    id: MembershipId,
    /// Changes applied since the genesis.
    epoch: u64,
    /// Sorted by founder.
    seats: Vec<Seat>,
    /// Every key that founded a seat of this chain, and every name a seat had: neither is
    /// used again (a replacement keeps its seat's name).
    founders_ever: BTreeSet<PublicKey>,
    names_ever: BTreeSet<String>,
}

/// Why a change or a rotation is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// The change names another membership.
    #[error("the change is of membership {found}, the one in force is {in_force}")]
    WrongBase {
        /// The membership the change names.
        found: MembershipId,
        /// The membership in force.
        in_force: MembershipId,
    },
    /// The seat to remove or replace is not in force.
    #[error("{0} founded no seat in force")]
    NotMember(PublicKey),
    /// The key a removal's cut names is not on the seat's chain.
    #[error("{key} is not a key of the seat of {seat}")]
    NotInChain {
        /// The seat.
        seat: PublicKey,
        /// The key.
        key: PublicKey,
    },
    /// The key to add founded a seat of this chain before.
    #[error("{0} founded a seat already")]
    KeyUsed(PublicKey),
    /// The key to add can never sign (not a valid point, or of small order).
    #[error("{0} is not a usable ed25519 key")]
    BadKey(PublicKey),
    /// The name to add is, or was, a seat's.
    #[error("the name {0:?} is or was a seat's already")]
    NameUsed(String),
    /// The name breaks the genesis's name rule.
    #[error("the name {0:?} must be 1 to 64 bytes of UTF-8 without control characters")]
    BadName(String),
    /// An addition past [`MEMBERS_MAX`].
    #[error("a membership has at most {MEMBERS_MAX} seats")]
    TooManyMembers,
    /// A removal of the last seat.
    #[error("the last seat cannot be removed")]
    LastMember,
    /// A removal whose cut is past what its proposer had seen of the key.
    #[error("the cut {cut} is past seq {seen}, the highest of the key its proposer had seen")]
    CutUnseen {
        /// The cut proposed.
        cut: u64,
        /// The highest seq of the key in the proposing event's causal past.
        seen: u64,
    },
    /// A rotation signed by another key than the one it rotates, or not in the event its cut
    /// names, or to the key itself.
    #[error("a rotation is signed by the rotating key itself, in its event of seq `cut`, to another key")]
    RotationNotOwn,
    /// A rotation whose proof does not verify under the new key.
    #[error("the rotation's proof does not verify under the new key")]
    BadProof,
    /// A vote by a key whose seat is not in force (or that may not author at this seq).
    #[error("{0} is not a key of a seat in force at this seq: it cannot vote")]
    NotVoter(PublicKey),
    /// A vote in another round than the open one.
    #[error("the vote is in round {found}, the open round is {open}")]
    WrongRound {
        /// The round the vote names.
        found: u32,
        /// The open round of the membership in force.
        open: u32,
    },
    /// An approval of a change not proposed in the event's causal past.
    #[error("change {0} was not proposed in the event's causal past")]
    UnknownChange(ChangeId),
    /// An event with more than one vote, or a seat's vote for a third different change of one
    /// membership and round.
    #[error(
        "one vote per event, and at most {VOTES_PER_SEAT_ROUND_MAX} different changes per seat, membership and round"
    )]
    TooManyVotes,
    /// An event with more than one rotation.
    #[error("one rotation per event")]
    TooManyRotations,
    /// This node's seat voted in this membership and round already: an honest node never
    /// approves a second change there (that is a double approval, rule M7).
    #[error("this seat voted for change {0} in this membership and round already")]
    AlreadyVoted(ChangeId),
}

impl Membership {
    /// The genesis membership; its id is the cluster id.
    pub fn genesis(genesis: &Genesis) -> Self {
        let mut seats: Vec<Seat> =
            genesis.members().iter().map(|m| Seat { founder: m.key, name: m.name.clone() }).collect();
        seats.sort_by_key(|s| s.founder);
        Self {
            id: MembershipId(genesis.cluster_id()),
            epoch: 0,
            founders_ever: seats.iter().map(|s| s.founder).collect(),
            names_ever: seats.iter().map(|s| s.name.clone()).collect(),
            seats,
        }
    }

    /// This membership's id.
    pub fn id(&self) -> MembershipId {
        self.id
    }

    /// Changes applied since the genesis.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The seats in force, sorted by founder.
    pub fn seats(&self) -> &[Seat] {
        &self.seats
    }

    /// The seat `founder` founded, if it is in force.
    pub fn seat(&self, founder: &PublicKey) -> Option<&Seat> {
        self.seats.binary_search_by(|s| s.founder.cmp(founder)).ok().map(|i| &self.seats[i])
    }

    /// Approvals a change of this membership needs under `policy`.
    pub fn threshold(&self, policy: Policy) -> usize {
        policy.threshold(self.seats.len())
    }

    /// Whether `change` may be proposed under this membership, by an event whose causal past
    /// holds the rotations `chains` and, of the key a removal names, seqs up to `seen`: the
    /// rules of `docs/PROTOCOL.md` §17 that a proposal must pass.
    pub fn check(&self, change: &Change, chains: &KeyChains, seen: u64) -> Result<(), ChangeError> {
        if change.base != self.id {
            return Err(ChangeError::WrongBase { found: change.base, in_force: self.id });
        }
        usable(&change.kind)?;
        self.check_kind(&change.kind, chains)?;
        // A key some seat rotated to is that seat's: a proposal may not found another seat with
        // it. (Resolution does not re-check this, so that a rotation arriving later never
        // changes what may apply; a key on two chains is on both, rule M1.)
        if let Some(key) = change.kind.adds().filter(|k| !chains.seats_of(k).is_empty()) {
            return Err(ChangeError::KeyUsed(*key));
        }
        match change.kind.removes() {
            Some((_, _, cut)) if cut > seen => Err(ChangeError::CutUnseen { cut, seen }),
            _ => Ok(()),
        }
    }

    /// The rules on the change's kind against this membership. A change that passes here
    /// passes in every causally later superset: key chains only grow (see [`KeyChains`]).
    fn check_kind(&self, kind: &ChangeKind, chains: &KeyChains) -> Result<(), ChangeError> {
        if let Some((seat, key, _)) = kind.removes() {
            if self.seat(seat).is_none() {
                return Err(ChangeError::NotMember(*seat));
            }
            if chains.position(seat, key).is_none() {
                return Err(ChangeError::NotInChain { seat: *seat, key: *key });
            }
            if kind.adds().is_none() && self.seats.len() == 1 {
                return Err(ChangeError::LastMember);
            }
        }
        if let Some(key) = kind.adds().filter(|k| self.founders_ever.contains(k)) {
            return Err(ChangeError::KeyUsed(*key));
        }
        if let ChangeKind::Add { name, .. } = kind {
            if !is_valid_name(name) {
                return Err(ChangeError::BadName(name.clone()));
            }
            if self.names_ever.contains(name) {
                return Err(ChangeError::NameUsed(name.clone()));
            }
            if self.seats.len() >= MEMBERS_MAX {
                return Err(ChangeError::TooManyMembers);
            }
        }
        Ok(())
    }

    /// Applies `kind` (which [`Membership::check_kind`] accepted) in place; returns the seat
    /// removed, if any.
    fn apply(&mut self, id: ChangeId, kind: &ChangeKind, chains: &KeyChains) -> Option<(PublicKey, Cut)> {
        let mut hasher = Hasher::new(Domain::Membership);
        hasher.update(&self.id.0).update(&id.0);
        self.id = MembershipId(hasher.finish());
        self.epoch += 1;
        let mut removed = None;
        let mut name = None;
        if let Some((seat, key, cut)) = kind.removes() {
            // `check_kind` found the seat in force and the key on its chain.
            let position = chains.position(seat, key).expect("the cut key is on the seat's chain");
            let at = self.seats.binary_search_by(|s| s.founder.cmp(seat));
            name = Some(self.seats.remove(at.expect("a removed seat is in force")).name);
            removed = Some((*seat, Cut { position, seq: cut }));
        }
        let founded = match kind {
            ChangeKind::Add { key, name } => Some((*key, name.clone())),
            ChangeKind::Replace { successor, .. } => name.map(|name| (*successor, name)),
            ChangeKind::Remove { .. } => None,
        };
        if let Some((founder, name)) = founded {
            self.founders_ever.insert(founder);
            self.names_ever.insert(name.clone());
            let at = self.seats.binary_search_by(|s| s.founder.cmp(&founder)).unwrap_or_else(|i| i);
            self.seats.insert(at, Seat { founder, name });
        }
        removed
    }
}

/// Whether the key a change founds a seat with can ever sign: a property of the change alone, so
/// a log checks it once per change rather than at every membership (it decompresses a point).
fn usable(kind: &ChangeKind) -> Result<(), ChangeError> {
    match kind.adds() {
        Some(key) if !is_usable_key(key) => Err(ChangeError::BadKey(*key)),
        _ => Ok(()),
    }
}

/// The seats' key chains that a set of rotations makes: the keys of each seat, in order, and up
/// to which seq each key counts.
///
/// A key rotates at most once: its rotation with the lowest seq (then the lowest successor)
/// counts, and its events past that seq do not. A seat's chain starts at its founder and
/// follows each key's rotation to its successor, except into a genesis key, and stops before a
/// key it already holds. Rotating to a key takes that key's own signature, so a key on two
/// chains (it signed two proofs, or founded a seat and signed a proof) belongs to both: chains
/// only ever grow as rotations arrive in causal order, so no vote once counted is taken back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyChains {
    /// Per rotating key: the seq its rotation was signed at, and the successor.
    rotated: BTreeMap<PublicKey, (u64, PublicKey)>,
    /// Per seat (founding key): its chain, founder first.
    chains: BTreeMap<PublicKey, Vec<PublicKey>>,
    /// Per key: the seats whose chains hold it, and its position there.
    seats: BTreeMap<PublicKey, Vec<(PublicKey, usize)>>,
}

impl KeyChains {
    /// The chains of `founders` under `rotations`.
    fn build<'a>(
        rotations: &BTreeMap<PublicKey, (u64, PublicKey)>,
        genesis_keys: &BTreeSet<PublicKey>,
        founders: impl IntoIterator<Item = &'a PublicKey>,
    ) -> Self {
        let mut chains = BTreeMap::new();
        let mut seats: BTreeMap<PublicKey, Vec<(PublicKey, usize)>> = BTreeMap::new();
        for founder in founders {
            if chains.contains_key(founder) {
                continue;
            }
            let mut chain = vec![*founder];
            let mut held = BTreeSet::from([*founder]);
            let mut key = *founder;
            while let Some((_, successor)) = rotations.get(&key) {
                if genesis_keys.contains(successor) || !held.insert(*successor) {
                    break;
                }
                chain.push(*successor);
                key = *successor;
            }
            for (position, key) in chain.iter().enumerate() {
                seats.entry(*key).or_default().push((*founder, position));
            }
            chains.insert(*founder, chain);
        }
        Self { rotated: rotations.clone(), chains, seats }
    }

    /// The seats whose chains hold `key`, with its position in each (a founder is at 0 of its
    /// own). Empty for a key of no chain.
    pub fn seats_of(&self, key: &PublicKey) -> &[(PublicKey, usize)] {
        self.seats.get(key).map_or(&[], Vec::as_slice)
    }

    /// The position of `key` on the chain of `seat`: 0 for the founder itself (whatever the
    /// chains know), `None` if it is not on it.
    pub fn position(&self, seat: &PublicKey, key: &PublicKey) -> Option<usize> {
        if seat == key {
            return Some(0);
        }
        self.chains.get(seat)?.iter().position(|k| k == key)
    }

    /// The key that signs for `seat` now: the last of its chain.
    pub fn current(&self, seat: &PublicKey) -> PublicKey {
        self.chains.get(seat).and_then(|chain| chain.last()).copied().unwrap_or(*seat)
    }

    /// The last seq of `key` that counts, if it rotated.
    pub fn last_seq(&self, key: &PublicKey) -> Option<u64> {
        self.rotated.get(key).map(|(seq, _)| *seq)
    }

    /// The key `key` rotated to, if it rotated.
    pub fn successor(&self, key: &PublicKey) -> Option<&PublicKey> {
        self.rotated.get(key).map(|(_, successor)| successor)
    }
}

/// Where a removal cut a seat: the position of the key it named, and that key's last seq kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cut {
    position: usize,
    seq: u64,
}

impl Cut {
    /// Whether the seat's key at `position` keeps its event of `seq`.
    fn keeps(self, position: usize, seq: u64) -> bool {
        position < self.position || (position == self.position && seq <= self.seq)
    }
}

/// One event's proposal of a change, in a round; the proposal is also its author's approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The change proposed.
    pub change: Change,
    /// The round of the change's base this proposal votes in (0 unless the earlier rounds
    /// deadlocked).
    pub round: u32,
    /// Who signed the event that carries it.
    pub author: PublicKey,
    /// The event's seq.
    pub seq: u64,
    /// The event's id.
    pub event: EventId,
    /// For a removal or replacement: the highest seq of the key it names in the event's causal
    /// past (the adapter knows it; the event cannot lie about it). Unused otherwise.
    pub seen: u64,
}

/// One event's approval of a change, by its id, in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Approval {
    /// The change approved.
    pub change: ChangeId,
    /// The round of the change's base this approval votes in.
    pub round: u32,
    /// Who signed the event that carries it.
    pub author: PublicKey,
    /// The event's seq.
    pub seq: u64,
    /// The event's id.
    pub event: EventId,
}

/// One seat's approval, as the resolution orders them: position of the signing key in the
/// seat's chain, seq, change, then the key and the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vote {
    /// Position of `key` in its seat's chain.
    pub position: usize,
    /// The seq of the approving event.
    pub seq: u64,
    /// The change approved.
    pub change: ChangeId,
    /// The key that signed the approving event.
    pub key: PublicKey,
    /// The approving event.
    pub event: EventId,
}

/// The proposals, approvals and rotations of a set of events, as sets: the input of
/// [`ChangeLog::resolve`]. Bound to one cluster's genesis and policy.
#[derive(Clone, Debug)]
pub struct ChangeLog {
    cluster: [u8; 32],
    genesis: Membership,
    policy: Policy,
    /// Every change proposed, and whether its founding key, if any, is usable (checked once).
    changes: BTreeMap<ChangeId, (Change, bool)>,
    /// Per change, per proposing key, seq and event: the proposal's `seen`.
    proposals: BTreeMap<ChangeId, BTreeMap<(PublicKey, u64, EventId), u64>>,
    /// Per (change, round, approving key): every (seq, event) where it approved. A key that
    /// equivocated can approve in two events of one seq; which one an event's causal past
    /// holds decides which counts there ([`ChangeLog::resolve_in`]).
    approvals: BTreeMap<(ChangeId, u32, PublicKey), BTreeSet<(u64, EventId)>>,
    /// Per rotating key: its rotations, as (seq, successor, event; no event for one recorded
    /// by [`ChangeLog::rotate`]).
    rotations: BTreeMap<PublicKey, BTreeSet<(u64, PublicKey, Option<EventId>)>>,
}

impl ChangeLog {
    /// An empty log of `genesis`'s cluster: the genesis membership is in force.
    pub fn new(genesis: &Genesis, policy: Policy) -> Self {
        Self {
            cluster: genesis.cluster_id(),
            genesis: Membership::genesis(genesis),
            policy,
            changes: BTreeMap::new(),
            proposals: BTreeMap::new(),
            approvals: BTreeMap::new(),
            rotations: BTreeMap::new(),
        }
    }

    /// Records a proposal and its author's approval.
    pub fn propose(&mut self, proposal: &Proposal) {
        let id = proposal.change.id();
        self.changes
            .entry(id)
            .or_insert_with(|| (proposal.change.clone(), usable(&proposal.change.kind).is_ok()));
        let seen = self
            .proposals
            .entry(id)
            .or_default()
            .entry((proposal.author, proposal.seq, proposal.event))
            .or_insert(0);
        *seen = (*seen).max(proposal.seen);
        self.approve(&Approval {
            change: id,
            round: proposal.round,
            author: proposal.author,
            seq: proposal.seq,
            event: proposal.event,
        });
    }

    /// Records an approval. The same approval again, or the same key's approval of the same
    /// change in the same round in another event, changes nothing but where it approved first.
    pub fn approve(&mut self, approval: &Approval) {
        self.approvals
            .entry((approval.change, approval.round, approval.author))
            .or_default()
            .insert((approval.seq, approval.event));
    }

    /// Records a rotation signed by `author` in its event of `seq`, after checking that the
    /// author is the rotating key, `seq` its cut, the successor another key, and the proof.
    pub fn rotate(&mut self, rotation: &Rotation, author: &PublicKey, seq: u64) -> Result<(), ChangeError> {
        self.rotate_at(rotation, author, seq, None)
    }

    /// [`ChangeLog::rotate`], for a rotation carried by the event `event`.
    pub fn rotate_in(
        &mut self,
        rotation: &Rotation,
        author: &PublicKey,
        seq: u64,
        event: EventId,
    ) -> Result<(), ChangeError> {
        self.rotate_at(rotation, author, seq, Some(event))
    }

    fn rotate_at(
        &mut self,
        rotation: &Rotation,
        author: &PublicKey,
        seq: u64,
        event: Option<EventId>,
    ) -> Result<(), ChangeError> {
        if rotation.key != *author || rotation.cut != seq || rotation.successor == rotation.key {
            return Err(ChangeError::RotationNotOwn);
        }
        if !rotation.verify(&self.cluster) {
            return Err(ChangeError::BadProof);
        }
        self.rotations.entry(*author).or_default().insert((seq, rotation.successor, event));
        Ok(())
    }

    /// Each key's rotation that counts among those `within` holds for: its first by (seq,
    /// successor).
    fn rotations_in(
        &self,
        within: &impl Fn(&PublicKey, u64, Option<&EventId>) -> bool,
    ) -> BTreeMap<PublicKey, (u64, PublicKey)> {
        self.rotations
            .iter()
            .filter_map(|(key, all)| {
                let (seq, successor, _) =
                    all.iter().find(|(seq, _, event)| within(key, *seq, event.as_ref()))?;
                Some((*key, (*seq, *successor)))
            })
            .collect()
    }

    /// The cluster id the rotations' proofs are bound to.
    pub fn cluster(&self) -> &[u8; 32] {
        &self.cluster
    }

    /// The change of this id, if proposed.
    pub fn change(&self, id: &ChangeId) -> Option<&Change> {
        self.changes.get(id).map(|(change, _)| change)
    }

    /// Changes proposed.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether no change was proposed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The key chains the rotations recorded so far make, of the genesis's seats and of every
    /// key a proposed change would found a seat with.
    pub fn chains(&self) -> KeyChains {
        let founders = self.changes.values().filter_map(|(change, _)| change.kind.adds());
        KeyChains::build(
            &self.rotations_in(&|_, _, _| true),
            &self.genesis.founders_ever,
            self.genesis.founders_ever.iter().chain(founders),
        )
    }

    /// The membership chain, key chains, cuts and evidence this log makes (`docs/PROTOCOL.md`
    /// §17, rules M1 to M9). Costs O((changes + approvals + rotations) · log) plus, per change
    /// applied, O(seats · rounds).
    pub fn resolve(&self) -> Resolution {
        self.resolve_within(|_, _| true)
    }

    /// The resolution of the ops signed by `key` at `seq` for which `within(key, seq)` holds:
    /// for an event's causal past, `within(key, seq)` is `seq ≤` the event's clock entry of
    /// `key`. Equal to [`ChangeLog::resolve`] of a log holding only those ops, provided
    /// `within` holds for a prefix of each key's seqs (as a causal past does): each key's
    /// earliest approval and rotation are what count, and if the earliest is not within, no
    /// later one is.
    pub fn resolve_within(&self, within: impl Fn(&PublicKey, u64) -> bool) -> Resolution {
        self.resolve_in(|key, seq, _| within(key, seq))
    }

    /// The resolution of the ops for which `within(key, seq, event)` holds, where `event` is
    /// the event that carries the op (`None` for a rotation recorded without one): for an
    /// event's causal past, whether that event is in it. Exact where a key equivocated, which
    /// [`ChangeLog::resolve_within`] is not: two events of one seq can carry different ops, and
    /// a causal past may hold either, or both.
    pub fn resolve_in(&self, within: impl Fn(&PublicKey, u64, Option<&EventId>) -> bool) -> Resolution {
        let rotations = self.rotations_in(&within);
        // The changes proposed within, with the highest `seen` of their proposals within.
        let mut changes: BTreeMap<ChangeId, (&Change, bool, u64)> = BTreeMap::new();
        for (id, proposals) in &self.proposals {
            let seen = proposals
                .iter()
                .filter(|((key, seq, event), _)| within(key, *seq, Some(event)))
                .map(|(_, seen)| *seen)
                .max();
            if let (Some(seen), Some((change, usable))) = (seen, self.changes.get(id)) {
                changes.insert(*id, (change, *usable, seen));
            }
        }
        // The chains of every seat that is or may come to be: the genesis's and those the changes
        // proposed within would found.
        let founders = changes.values().filter_map(|(change, _, _)| change.kind.adds());
        let chains = KeyChains::build(
            &rotations,
            &self.genesis.founders_ever,
            self.genesis.founders_ever.iter().chain(founders),
        );
        // Every counted approval, per (base, round, seat), in the order that picks a seat's vote.
        let mut ballots: BTreeMap<(MembershipId, u32, PublicKey), Vec<Vote>> = BTreeMap::new();
        for ((change, round, key), all) in &self.approvals {
            let Some((proposed, _, _)) = changes.get(change) else { continue };
            // The key's first approval of the change within: a later one changes nothing.
            let Some((seq, event)) = all.iter().find(|(seq, event)| within(key, *seq, Some(event))) else {
                continue;
            };
            if chains.last_seq(key).is_some_and(|last| *seq > last) {
                continue;
            }
            for (seat, position) in chains.seats_of(key) {
                let vote = Vote { position: *position, seq: *seq, change: *change, key: *key, event: *event };
                ballots.entry((proposed.base, *round, *seat)).or_default().push(vote);
            }
        }
        for votes in ballots.values_mut() {
            votes.sort_unstable();
        }

        let mut membership = self.genesis.clone();
        let mut chain = vec![membership.id];
        let mut applied = Vec::new();
        let mut founded: BTreeSet<PublicKey> = membership.founders_ever.clone();
        let mut cuts: BTreeMap<PublicKey, Cut> = BTreeMap::new();
        let round = loop {
            let id = match self.decide(&membership, &changes, &ballots, &chains) {
                Ok(id) => id,
                Err(round) => break round,
            };
            let (change, _, _) = changes[&id];
            if let Some((seat, cut)) = membership.apply(id, &change.kind, &chains) {
                cuts.insert(seat, cut);
            }
            founded.extend(change.kind.adds());
            applied.push(id);
            chain.push(membership.id);
        };

        let on_chain: BTreeSet<MembershipId> = chain.iter().copied().collect();
        let mut double_approvals = Vec::new();
        let mut excluded: BTreeMap<PublicKey, (usize, u64)> = BTreeMap::new();
        for ((base, round, seat), votes) in &ballots {
            if !on_chain.contains(base) {
                continue;
            }
            let first = votes[0];
            let Some(second) = votes.iter().find(|v| v.change != first.change) else { continue };
            double_approvals.push(DoubleApproval {
                seat: *seat,
                base: *base,
                round: *round,
                first,
                second: *second,
            });
            let from = (second.position, second.seq);
            excluded.entry(*seat).and_modify(|at| *at = (*at).min(from)).or_insert(from);
        }
        Resolution {
            chain,
            applied,
            in_force: membership,
            round,
            chains,
            founded,
            cuts,
            excluded,
            double_approvals,
            ballots,
            proposed: changes.iter().map(|(id, (change, _, _))| (*id, change.base)).collect(),
            cluster: self.cluster,
        }
    }

    /// The change of `membership` that takes effect, or the round still open if none does:
    /// rounds are counted from 0; in each, a seat's first vote counts if it is for a change that
    /// may apply; a change with the threshold of votes wins; a round where no change can reach
    /// it any more (even with every seat that has not voted) opens the next.
    fn decide(
        &self,
        membership: &Membership,
        changes: &BTreeMap<ChangeId, (&Change, bool, u64)>,
        ballots: &BTreeMap<(MembershipId, u32, PublicKey), Vec<Vote>>,
        chains: &KeyChains,
    ) -> Result<ChangeId, u32> {
        let threshold = membership.threshold(self.policy);
        let seats = membership.seats.len();
        let may_apply = |id: &ChangeId| {
            // Ballots only hold approvals of changes in `changes`.
            let (change, usable, seen) = &changes[id];
            *usable
                && membership.check_kind(&change.kind, chains).is_ok()
                && change.kind.removes().is_none_or(|(_, _, cut)| cut <= *seen)
        };
        for round in 0..=u32::MAX {
            let mut tally: BTreeMap<ChangeId, usize> = BTreeMap::new();
            let mut voted = 0;
            for seat in &membership.seats {
                let Some(votes) = ballots.get(&(membership.id, round, seat.founder)) else { continue };
                voted += 1;
                if may_apply(&votes[0].change) {
                    *tally.entry(votes[0].change).or_default() += 1;
                }
            }
            // Votes are disjoint and the threshold is a majority: at most one change reaches it.
            if let Some((id, _)) = tally.iter().find(|(_, n)| **n >= threshold) {
                return Ok(*id);
            }
            let best = tally.values().max().copied().unwrap_or(0);
            if voted == 0 || best + (seats - voted) >= threshold {
                return Err(round);
            }
        }
        // Each round that opens the next needs votes in it, and there are finitely many.
        Err(u32::MAX)
    }
}

/// Rules V2 to V5 of `docs/PROTOCOL.md` §17: whether `author`'s event of `seq` may carry `ops`,
/// given `past`, the resolution of the event's causal past
/// ([`ChangeLog::resolve_within`] its clock), and `seen(key)`, the highest seq of `key` in that
/// causal past. (V1, that the author may author at all, is [`Resolution::may_author`].) Only
/// the membership ops of `ops` (5 to 7) are read; document ops are the other rules' business. A
/// function of the event and its causal past only.
pub fn check_ops(
    past: &Resolution,
    author: &PublicKey,
    seq: u64,
    ops: &[Op],
    seen: impl Fn(&PublicKey) -> u64,
) -> Result<(), ChangeError> {
    let votes = ops.iter().filter(|op| matches!(op, Op::Propose { .. } | Op::Approve { .. })).count();
    if votes > 1 {
        return Err(ChangeError::TooManyVotes);
    }
    if ops.iter().filter(|op| matches!(op, Op::Rotate(_))).count() > 1 {
        return Err(ChangeError::TooManyRotations);
    }
    let in_force = past.in_force();
    for op in ops {
        let (id, round) = match op {
            // Document ops are the other rules' business.
            Op::Put { .. }
            | Op::Del { .. }
            | Op::Incr { .. }
            | Op::Add { .. }
            | Op::Remove { .. }
            | Op::PutSeen { .. }
            | Op::DelSeen { .. }
            | Op::AddSeen { .. }
            | Op::RemoveSeen { .. } => {
                continue;
            }
            Op::Rotate(rotation) => {
                if rotation.key != *author || rotation.cut != seq || rotation.successor == rotation.key {
                    return Err(ChangeError::RotationNotOwn);
                }
                if !rotation.verify(&past.cluster) {
                    return Err(ChangeError::BadProof);
                }
                continue;
            }
            Op::Propose { change, round } => {
                // A removal's cut names the seat's current key in the causal past.
                if let Some((seat, key, _)) = change.kind.removes()
                    && past.chains().current(seat) != *key
                {
                    return Err(ChangeError::NotInChain { seat: *seat, key: *key });
                }
                let cut_of = change.kind.removes().map_or(0, |(_, key, _)| seen(key));
                in_force.check(change, past.chains(), cut_of)?;
                (change.id(), *round)
            }
            Op::Approve { change, round } => match past.proposed.get(change) {
                Some(base) if *base == in_force.id() => (*change, *round),
                Some(base) => return Err(ChangeError::WrongBase { found: *base, in_force: in_force.id() }),
                None => return Err(ChangeError::UnknownChange(*change)),
            },
        };
        if round != past.round() {
            return Err(ChangeError::WrongRound { found: round, open: past.round() });
        }
        // The seats in force the author votes for (usually one; a key on two chains votes for
        // both).
        let seats: Vec<PublicKey> = past
            .seats_of(author)
            .into_iter()
            .filter(|(seat, position)| {
                in_force.seat(seat).is_some()
                    && past.keeps(seat, *position, author, seq)
                    // A seat that left a double approval in the causal past votes no more.
                    && !past.excluded.contains_key(seat)
            })
            .map(|(seat, _)| seat)
            .collect();
        if seats.is_empty() {
            return Err(ChangeError::NotVoter(*author));
        }
        for seat in seats {
            let ballot = past.ballot(&seat, &in_force.id(), round);
            let mut changes: BTreeSet<ChangeId> = ballot.iter().map(|v| v.change).collect();
            changes.insert(id);
            if changes.len() > VOTES_PER_SEAT_ROUND_MAX {
                return Err(ChangeError::TooManyVotes);
            }
        }
    }
    Ok(())
}

/// A seat's approvals of two different changes of one membership in one round: misbehaviour,
/// like an equivocation. Each side is the seat's vote; `first` is the one that counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoubleApproval {
    /// The seat (its founding key).
    pub seat: PublicKey,
    /// The membership both changes change.
    pub base: MembershipId,
    /// The round both approvals vote in.
    pub round: u32,
    /// The seat's vote that counts.
    pub first: Vote,
    /// Its earliest vote for another change.
    pub second: Vote,
}

/// What [`ChangeLog::resolve`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Membership ids from the genesis's to the one in force.
    chain: Vec<MembershipId>,
    /// `applied[i]` took `chain[i]` to `chain[i + 1]`.
    applied: Vec<ChangeId>,
    in_force: Membership,
    /// The round of the membership in force that is open for votes.
    round: u32,
    chains: KeyChains,
    /// Every seat ever in force.
    founded: BTreeSet<PublicKey>,
    /// Per seat removed: where its removal cut it.
    cuts: BTreeMap<PublicKey, Cut>,
    /// Per seat with a double approval: the (position, seq) of its earliest second vote.
    excluded: BTreeMap<PublicKey, (usize, u64)>,
    /// Sorted by (base, round, seat).
    double_approvals: Vec<DoubleApproval>,
    /// Per (base, round, seat): its approvals, in the order of rule M2.
    ballots: BTreeMap<(MembershipId, u32, PublicKey), Vec<Vote>>,
    /// The base of every change proposed in the resolved set.
    proposed: BTreeMap<ChangeId, MembershipId>,
    /// The cluster the rotations' proofs are bound to.
    cluster: [u8; 32],
}

impl Resolution {
    /// The membership in force.
    pub fn in_force(&self) -> &Membership {
        &self.in_force
    }

    /// The round of the membership in force that is open: a proposal or approval of one of its
    /// changes votes in this round (0 unless earlier rounds deadlocked).
    pub fn round(&self) -> u32 {
        self.round
    }

    /// The approvals of `seat` of changes of `base` in `round`, its vote first (rule M2).
    pub fn ballot(&self, seat: &PublicKey, base: &MembershipId, round: u32) -> &[Vote] {
        self.ballots.get(&(*base, round, *seat)).map_or(&[], Vec::as_slice)
    }

    /// The changes voted for in the open round of the membership in force, with their counted
    /// votes (seats in force whose vote it is), most votes first, then by id.
    pub fn pending(&self) -> Vec<(ChangeId, usize)> {
        let mut tally: BTreeMap<ChangeId, usize> = BTreeMap::new();
        for seat in &self.in_force.seats {
            if let Some(vote) = self.ballot(&seat.founder, &self.in_force.id, self.round).first() {
                *tally.entry(vote.change).or_default() += 1;
            }
        }
        let mut pending: Vec<(ChangeId, usize)> = tally.into_iter().collect();
        pending.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        pending
    }

    /// Membership ids from the genesis's (the cluster id) to the one in force.
    pub fn chain(&self) -> &[MembershipId] {
        &self.chain
    }

    /// The changes applied, in order.
    pub fn applied(&self) -> &[ChangeId] {
        &self.applied
    }

    /// The key chains.
    pub fn chains(&self) -> &KeyChains {
        &self.chains
    }

    /// Seats that approved two changes of one membership of the chain in one round.
    pub fn double_approvals(&self) -> &[DoubleApproval] {
        &self.double_approvals
    }

    /// The seats ever in force whose chains hold `key`, with its position in each.
    pub fn seats_of(&self, key: &PublicKey) -> Vec<(PublicKey, usize)> {
        self.chains.seats_of(key).iter().filter(|(seat, _)| self.founded.contains(seat)).copied().collect()
    }

    /// Whether `key`, at `position` of `seat`'s chain, counts for the seat at `seq`: not past
    /// its rotation, nor cut by a removal of this seat or of any other whose chain holds it.
    fn keeps(&self, seat: &PublicKey, position: usize, key: &PublicKey, seq: u64) -> bool {
        self.chains.last_seq(key).is_none_or(|last| seq <= last)
            && self.cuts.get(seat).is_none_or(|cut| cut.keeps(position, seq))
            && seq <= self.cut_through(key)
    }

    /// The highest seq of `key` that no removal cuts: a removal's cut binds the key on every
    /// chain that holds it, so a seat in force that rotates onto a removed seat's key never
    /// brings back what the removal cut (`u64::MAX`: no removal cuts it).
    fn cut_through(&self, key: &PublicKey) -> u64 {
        self.seats_of(key)
            .iter()
            .filter_map(|(seat, position)| {
                let cut = self.cuts.get(seat)?;
                Some(match position.cmp(&cut.position) {
                    std::cmp::Ordering::Less => u64::MAX,
                    std::cmp::Ordering::Equal => cut.seq,
                    std::cmp::Ordering::Greater => 0,
                })
            })
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Whether `key`'s event at `seq` counts as a seat's (rule M8): on the chain of a seat that
    /// was in force at some point, not past the key's rotation, and not cut by a removal of that
    /// seat.
    pub fn may_author(&self, key: &PublicKey, seq: u64) -> bool {
        self.seats_of(key).iter().any(|(seat, position)| self.keeps(seat, *position, key, seq))
    }

    /// The highest seq of `key` whose ops the document admits (rule M9): it admits exactly
    /// the seqs up to it (`u64::MAX`: all; 0: none). [`Resolution::admits`] holds for a prefix
    /// of each key's seqs, and this is its end.
    pub fn admitted_through(&self, key: &PublicKey) -> u64 {
        self.seats_of(key)
            .iter()
            .map(|(seat, position)| {
                let mut through = self.chains.last_seq(key).unwrap_or(u64::MAX);
                if let Some(cut) = self.cuts.get(seat) {
                    through = match position.cmp(&cut.position) {
                        std::cmp::Ordering::Less => through,
                        std::cmp::Ordering::Equal => through.min(cut.seq),
                        std::cmp::Ordering::Greater => 0,
                    };
                }
                if let Some(&(at, from)) = self.excluded.get(seat) {
                    through = match position.cmp(&at) {
                        std::cmp::Ordering::Less => through,
                        std::cmp::Ordering::Equal => through.min(from.saturating_sub(1)),
                        std::cmp::Ordering::Greater => 0,
                    };
                }
                through
            })
            .max()
            .unwrap_or(0)
            .min(self.cut_through(key))
    }

    /// Whether the document admits the ops of `key`'s event at `seq` (rule M9): as
    /// [`Resolution::may_author`], for a seat whose earliest second vote in a double approval, if
    /// any, comes later.
    pub fn admits(&self, key: &PublicKey, seq: u64) -> bool {
        self.seats_of(key).iter().any(|(seat, position)| {
            self.keeps(seat, *position, key, seq)
                && self
                    .excluded
                    .get(seat)
                    .is_none_or(|&(at, from)| *position < at || (*position == at && seq < from))
        })
    }
}
