//! Membership over time: the rules that turn signed membership changes into the membership in
//! force, as a pure function of a set of proposals and approvals (`docs/PROTOCOL.md` §17).
//!
//! A membership is the genesis's members after a chain of changes. Each change names the
//! membership it changes (its `base`, a [`MembershipId`] that commits to the whole chain before
//! it) and is one of: add a key, remove a key with its cut (the last seq of that key that is
//! kept), replace a key by a successor, or rotate a key (the member's own old key proposes it,
//! the new key signs a proof). A change takes effect once enough members of its base approved it
//! ([`Policy`]); a proposal is its proposer's approval.
//!
//! [`ChangeLog::resolve`] is a function of the *sets* of proposals and approvals it was given,
//! never of their order or of duplicates: a node computes the membership in force for an event
//! from the changes in that event's causal past, and its own current membership from its whole
//! accepted set, with the same function. When one membership has two changes that both reached
//! their threshold (possible only if some member approved both: a double approval, which the
//! resolution reports as misbehaviour), the winner is picked by [`ChangeKind::rank`] and then the
//! lowest change id; what only the loser allowed is then not admitted ([`Resolution::admits`]).
//!
//! This module decides; it does no I/O and keeps no history beyond what it is given.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cairn_crypto::{Domain, Hasher, PublicKey, Signature, hash, verify_strict};

use crate::codec;
use crate::event::EventId;
use crate::genesis::{Genesis, Member, is_valid_name};
use crate::limits::MEMBERS_MAX;

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

/// What a change does to the membership it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Adds a key that was never a member of this chain, under a name no member has.
    Add {
        /// The new member's key.
        key: PublicKey,
        /// Its display name (the genesis's name rule).
        name: String,
    },
    /// Removes a member. Its events up to `cut` are kept; its later ones are not admitted.
    Remove {
        /// The member removed.
        key: PublicKey,
        /// The last seq of `key` that is kept (0 keeps none).
        cut: u64,
    },
    /// Removes a member (a lost or stolen key) and adds its successor under the same name.
    Replace {
        /// The member removed.
        key: PublicKey,
        /// The last seq of `key` that is kept.
        cut: u64,
        /// The key that takes its place; never a member of this chain before.
        successor: PublicKey,
    },
    /// A member replaces its own key. Proposed only by `key` itself, in its event of seq `cut`;
    /// `proof` is the successor's signature over [`rotation_message`].
    Rotate {
        /// The member's current key (the proposer).
        key: PublicKey,
        /// The seq of the event that carries the rotation: the old key's last kept seq.
        cut: u64,
        /// The new key; never a member of this chain before.
        successor: PublicKey,
        /// `Ed25519(successor, rotation_message(base, key, cut, successor))`.
        proof: Signature,
    },
}

impl ChangeKind {
    /// Which of two changes of one membership that both reached their threshold wins: the lower
    /// rank, then the lower change id. A replacement or removal wins over a rotation (a key
    /// being removed cannot escape by rotating), and all of them over an addition.
    pub const fn rank(&self) -> u8 {
        match self {
            Self::Replace { .. } => 0,
            Self::Remove { .. } => 1,
            Self::Rotate { .. } => 2,
            Self::Add { .. } => 3,
        }
    }

    /// The key this change takes out of the membership, if any.
    pub const fn removes(&self) -> Option<&PublicKey> {
        match self {
            Self::Add { .. } => None,
            Self::Remove { key, .. } | Self::Replace { key, .. } | Self::Rotate { key, .. } => Some(key),
        }
    }

    /// The key this change brings in, if any.
    pub const fn adds(&self) -> Option<&PublicKey> {
        match self {
            Self::Remove { .. } => None,
            Self::Add { key, .. } => Some(key),
            Self::Replace { successor, .. } | Self::Rotate { successor, .. } => Some(successor),
        }
    }
}

/// A membership change: what it does, and the membership it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// What a rotation's successor key signs:
/// `SHA-256("cairn/rotation/v1" ‖ base ‖ key ‖ u64(cut) ‖ successor)`.
pub fn rotation_message(base: &MembershipId, key: &PublicKey, cut: u64, successor: &PublicKey) -> [u8; 32] {
    let mut hasher = Hasher::new(Domain::Rotation);
    hasher.update(&base.0).update(&key.0).update(&cut.to_le_bytes()).update(&successor.0);
    hasher.finish()
}

/// How many approvals a change needs. A rotation always needs exactly its own key's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// More than half of the voters: the members in force, less the one being removed.
    #[default]
    Majority,
    /// At least this many voters (at least one, at most all of them).
    AtLeast(u32),
}

impl Policy {
    /// Approvals needed out of `voters`.
    pub fn threshold(self, voters: usize) -> usize {
        match self {
            Self::Majority => voters / 2 + 1,
            Self::AtLeast(n) => (n as usize).clamp(1, voters.max(1)),
        }
    }
}

/// A key that was a member of this chain and is no more; its events up to `last_seq` are kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retired {
    /// The retired key.
    pub key: PublicKey,
    /// The name it had.
    pub name: String,
    /// Its last seq that is kept (the cut of the change that retired it).
    pub last_seq: u64,
}

/// One membership of a cluster's chain: the members in force and the keys retired before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    id: MembershipId,
    /// Changes applied since the genesis.
    epoch: u64,
    /// Sorted by key.
    members: Vec<Member>,
    /// Sorted by key.
    retired: Vec<Retired>,
}

/// Why a change cannot apply to a membership (a proposal of it is invalid there).
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
    /// The key to remove, replace or rotate is not a member.
    #[error("{0} is not a member")]
    NotMember(PublicKey),
    /// The key to add (or the successor) is a member, or was one of this chain before.
    #[error("{0} is or was a member already")]
    KeyUsed(PublicKey),
    /// The name to add is a member's already.
    #[error("the name {0:?} is a member's already")]
    NameUsed(String),
    /// The name breaks the genesis's name rule.
    #[error("the name {0:?} must be 1 to 64 bytes of UTF-8 without control characters")]
    BadName(String),
    /// An addition past [`MEMBERS_MAX`].
    #[error("a membership has at most {MEMBERS_MAX} members")]
    TooManyMembers,
    /// A removal of the last member.
    #[error("the last member cannot be removed")]
    LastMember,
    /// A rotation proposed by another key than the one it rotates, or not in the event its cut
    /// names.
    #[error("a rotation is proposed by the rotating key itself, in its event of seq `cut`")]
    RotationNotOwn,
    /// A rotation whose proof does not verify under the successor key.
    #[error("the rotation's proof does not verify under the new key")]
    BadProof,
}

impl Membership {
    /// The genesis membership; its id is the cluster id.
    pub fn genesis(genesis: &Genesis) -> Self {
        Self {
            id: MembershipId(genesis.cluster_id()),
            epoch: 0,
            members: genesis.members().to_vec(),
            retired: Vec::new(),
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

    /// The members in force, sorted by key.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The keys retired in this chain, sorted by key.
    pub fn retired(&self) -> &[Retired] {
        &self.retired
    }

    /// Whether `key` is a member in force.
    pub fn is_member(&self, key: &PublicKey) -> bool {
        self.members.binary_search_by(|m| m.key.cmp(key)).is_ok()
    }

    /// The retirement of `key`, if it was retired in this chain.
    pub fn retirement(&self, key: &PublicKey) -> Option<&Retired> {
        self.retired.binary_search_by(|r| r.key.cmp(key)).ok().map(|i| &self.retired[i])
    }

    /// Whether an event of `key` at `seq` may be authored under this membership: a member's at
    /// any seq, a retired key's up to its cut.
    pub fn may_author(&self, key: &PublicKey, seq: u64) -> bool {
        self.is_member(key) || self.retirement(key).is_some_and(|r| seq <= r.last_seq)
    }

    /// The members whose approvals count for `kind`: the rotating key alone for a rotation;
    /// otherwise every member but the one removed.
    pub fn voters<'a>(&'a self, kind: &'a ChangeKind) -> impl Iterator<Item = &'a PublicKey> + 'a {
        self.members.iter().map(|m| &m.key).filter(move |k| match kind {
            ChangeKind::Rotate { key, .. } => *k == key,
            ChangeKind::Remove { key, .. } | ChangeKind::Replace { key, .. } => *k != key,
            ChangeKind::Add { .. } => true,
        })
    }

    /// Approvals `kind` needs under `policy`.
    pub fn threshold(&self, policy: Policy, kind: &ChangeKind) -> usize {
        match kind {
            ChangeKind::Rotate { .. } => 1,
            _ => policy.threshold(self.voters(kind).count()),
        }
    }

    fn was_ever(&self, key: &PublicKey) -> bool {
        self.is_member(key) || self.retirement(key).is_some()
    }

    /// Whether `change`, proposed by `proposer` in its event of `seq`, may apply to this
    /// membership: the rules of `docs/PROTOCOL.md` §17 that a proposal must pass.
    pub fn check(&self, change: &Change, proposer: &PublicKey, seq: u64) -> Result<(), ChangeError> {
        if change.base != self.id {
            return Err(ChangeError::WrongBase { found: change.base, in_force: self.id });
        }
        self.check_kind(&change.kind)?;
        if let ChangeKind::Rotate { key, cut, successor, proof } = &change.kind {
            if key != proposer || *cut != seq {
                return Err(ChangeError::RotationNotOwn);
            }
            if !verify_strict(successor, &rotation_message(&self.id, key, *cut, successor), proof) {
                return Err(ChangeError::BadProof);
            }
        }
        Ok(())
    }

    /// The rules on the change alone, without its proposer or proof.
    fn check_kind(&self, kind: &ChangeKind) -> Result<(), ChangeError> {
        if let Some(key) = kind.removes() {
            if !self.is_member(key) {
                return Err(ChangeError::NotMember(*key));
            }
            if kind.adds().is_none() && self.members.len() == 1 {
                return Err(ChangeError::LastMember);
            }
        }
        if let Some(key) = kind.adds().filter(|k| self.was_ever(k)) {
            return Err(ChangeError::KeyUsed(*key));
        }
        if let ChangeKind::Add { name, .. } = kind {
            if !is_valid_name(name) {
                return Err(ChangeError::BadName(name.clone()));
            }
            if self.members.iter().any(|m| m.name == *name) {
                return Err(ChangeError::NameUsed(name.clone()));
            }
            if self.members.len() >= MEMBERS_MAX {
                return Err(ChangeError::TooManyMembers);
            }
        }
        Ok(())
    }

    /// The membership after `change` (which [`Membership::check_kind`] accepted).
    fn apply(&self, id: ChangeId, kind: &ChangeKind) -> Self {
        let mut next = self.clone();
        let mut hasher = Hasher::new(Domain::Membership);
        hasher.update(&self.id.0).update(&id.0);
        next.id = MembershipId(hasher.finish());
        next.epoch += 1;
        let retire = |next: &mut Self, key: &PublicKey, last_seq: u64| -> String {
            let at = next.members.binary_search_by(|m| m.key.cmp(key));
            // `check_kind` found the key among the members.
            let member = next.members.remove(at.expect("a removed key is a member"));
            let at = next.retired.binary_search_by(|r| r.key.cmp(key)).unwrap_or_else(|i| i);
            next.retired.insert(at, Retired { key: *key, name: member.name.clone(), last_seq });
            member.name
        };
        let admit = |next: &mut Self, key: PublicKey, name: String| {
            let at = next.members.binary_search_by(|m| m.key.cmp(&key)).unwrap_or_else(|i| i);
            next.members.insert(at, Member { key, name });
        };
        match kind {
            ChangeKind::Add { key, name } => admit(&mut next, *key, name.clone()),
            ChangeKind::Remove { key, cut } => {
                retire(&mut next, key, *cut);
            }
            ChangeKind::Replace { key, cut, successor } | ChangeKind::Rotate { key, cut, successor, .. } => {
                let name = retire(&mut next, key, *cut);
                admit(&mut next, *successor, name);
            }
        }
        next
    }
}

/// One event's proposal of a change (the proposal is also its author's approval).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The change proposed.
    pub change: Change,
    /// Who signed the event that carries it, and at which seq.
    pub author: PublicKey,
    /// The event's seq.
    pub seq: u64,
    /// The event's id.
    pub event: EventId,
}

/// One event's approval of a change, by its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Approval {
    /// The change approved.
    pub change: ChangeId,
    /// Who signed the event that carries it.
    pub author: PublicKey,
    /// The event's seq.
    pub seq: u64,
    /// The event's id.
    pub event: EventId,
}

/// Where one key approved one change: the lowest (seq, event id) among its events that did.
type ApprovedAt = (u64, EventId);

/// The proposals and approvals of a set of events, as sets: the input of [`ChangeLog::resolve`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeLog {
    changes: BTreeMap<ChangeId, Change>,
    /// Per change, per approver, where it approved first. Approvals may come before the
    /// proposal they name; they count once it is here.
    approvals: BTreeMap<ChangeId, BTreeMap<PublicKey, ApprovedAt>>,
}

impl ChangeLog {
    /// An empty log: the genesis membership is in force.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a proposal and its author's approval.
    pub fn propose(&mut self, proposal: &Proposal) {
        let id = proposal.change.id();
        self.changes.entry(id).or_insert_with(|| proposal.change.clone());
        self.approve(&Approval {
            change: id,
            author: proposal.author,
            seq: proposal.seq,
            event: proposal.event,
        });
    }

    /// Records an approval. Recording the same approval again, or the same approver's approval
    /// of the same change in another event, changes nothing but where it approved first.
    pub fn approve(&mut self, approval: &Approval) {
        let at = (approval.seq, approval.event);
        self.approvals
            .entry(approval.change)
            .or_default()
            .entry(approval.author)
            .and_modify(|first| *first = (*first).min(at))
            .or_insert(at);
    }

    /// The change of this id, if proposed.
    pub fn change(&self, id: &ChangeId) -> Option<&Change> {
        self.changes.get(id)
    }

    /// Every approver of `id` with where it approved first (voters or not).
    pub fn approvers(&self, id: &ChangeId) -> impl Iterator<Item = (&PublicKey, &ApprovedAt)> {
        self.approvals.get(id).into_iter().flatten()
    }

    /// Changes proposed.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether no change was proposed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The membership chain these proposals and approvals make from `genesis`: starting at the
    /// genesis membership, while some change of the membership in force (applicable to it, its
    /// base being that membership's id) has approvals from at least its threshold of voters,
    /// the winner among those (lowest [`ChangeKind::rank`], then lowest id) is applied.
    pub fn resolve(&self, genesis: &Genesis, policy: Policy) -> Resolution {
        let mut by_base: BTreeMap<MembershipId, Vec<(&ChangeId, &Change)>> = BTreeMap::new();
        for (id, change) in &self.changes {
            by_base.entry(change.base).or_default().push((id, change));
        }
        let mut chain = vec![Membership::genesis(genesis)];
        let mut applied = Vec::new();
        // Each step moves to a membership id never seen before (it hashes the one before), so
        // a change applies at most once and the loop ends within `changes.len()` steps.
        loop {
            let current = chain.last().expect("the chain starts with the genesis membership");
            let qualified = by_base.get(&current.id).into_iter().flatten().filter(|(id, change)| {
                current.check_kind(&change.kind).is_ok() && {
                    let voters: BTreeSet<&PublicKey> = current.voters(&change.kind).collect();
                    let approvals = self.approvers(id).filter(|(k, _)| voters.contains(k)).count();
                    approvals >= current.threshold(policy, &change.kind)
                }
            });
            let Some((id, change)) = qualified.min_by_key(|(id, change)| (change.kind.rank(), **id)) else {
                break;
            };
            let next = current.apply(**id, &change.kind);
            applied.push(**id);
            chain.push(next);
        }
        let double_approvals = self.double_approvals(&chain);
        Resolution { chain, applied, double_approvals }
    }

    /// Every member that approved two different changes of one membership of `chain`, with the
    /// two lowest such changes and where it approved them.
    fn double_approvals(&self, chain: &[Membership]) -> Vec<DoubleApproval> {
        let bases: BTreeSet<MembershipId> = chain.iter().map(|m| m.id).collect();
        let mut seen: BTreeMap<(MembershipId, PublicKey), (ChangeId, ApprovedAt)> = BTreeMap::new();
        let mut found: BTreeMap<(MembershipId, PublicKey), DoubleApproval> = BTreeMap::new();
        for (id, change) in &self.changes {
            if !bases.contains(&change.base) {
                continue;
            }
            for (approver, at) in self.approvers(id) {
                let slot = (change.base, *approver);
                match seen.get(&slot) {
                    None => {
                        seen.insert(slot, (*id, *at));
                    }
                    Some(first) => {
                        found.entry(slot).or_insert(DoubleApproval {
                            approver: *approver,
                            base: change.base,
                            first: (first.0, first.1.0, first.1.1),
                            second: (*id, at.0, at.1),
                        });
                    }
                }
            }
        }
        found.into_values().collect()
    }
}

/// A member's approvals of two different changes of one membership: misbehaviour, like an
/// equivocation. Each side is (change, seq, event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoubleApproval {
    /// Who approved both.
    pub approver: PublicKey,
    /// The membership both changes change.
    pub base: MembershipId,
    /// The change with the lower id, the seq and the event of its approval.
    pub first: (ChangeId, u64, EventId),
    /// The other change, the seq and the event of its approval.
    pub second: (ChangeId, u64, EventId),
}

impl DoubleApproval {
    /// The approver's first seq whose ops are not admitted: the later of the two approvals.
    pub fn excluded_from(&self) -> u64 {
        self.first.1.max(self.second.1)
    }
}

/// What [`ChangeLog::resolve`] found: the chain of memberships and the changes between them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// From the genesis membership to the one in force.
    chain: Vec<Membership>,
    /// `applied[i]` took `chain[i]` to `chain[i + 1]`.
    applied: Vec<ChangeId>,
    /// Sorted by (base, approver).
    double_approvals: Vec<DoubleApproval>,
}

impl Resolution {
    /// The membership in force.
    pub fn in_force(&self) -> &Membership {
        self.chain.last().expect("the chain starts with the genesis membership")
    }

    /// Every membership from the genesis's to the one in force.
    pub fn chain(&self) -> &[Membership] {
        &self.chain
    }

    /// The changes applied, in order.
    pub fn applied(&self) -> &[ChangeId] {
        &self.applied
    }

    /// Members that approved two changes of one membership of the chain.
    pub fn double_approvals(&self) -> &[DoubleApproval] {
        &self.double_approvals
    }

    /// Whether the document admits the ops of `key`'s event at `seq`: a member's or a retired
    /// key's up to its cut, and not at or past a double approval of its. A key that only a
    /// losing change (or no change) brought in is not admitted at all.
    pub fn admits(&self, key: &PublicKey, seq: u64) -> bool {
        self.in_force().may_author(key, seq)
            && self.double_approvals.iter().all(|d| d.approver != *key || seq < d.excluded_from())
    }
}
