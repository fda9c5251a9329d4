//! The membership rules (`protocol/src/membership.rs`, `docs/PROTOCOL.md` §17): each kind of
//! change, the threshold, the cut, the winner between two changes that both reached their
//! threshold, and, as properties over generated histories, that the membership is a function
//! of the set of proposals and approvals and that fewer Byzantine members than the threshold
//! never change it alone.

use std::collections::BTreeSet;

use cairn_crypto::{PublicKey, SecretKey, Signature, hash};
use cairn_protocol::codec::{CodecError, decode_change, encode_change};
use cairn_protocol::membership::{
    Approval, Change, ChangeError, ChangeId, ChangeKind, ChangeLog, Membership, MembershipId, Policy,
    Proposal, Resolution, rotation_message,
};
use cairn_protocol::{EventId, Genesis, Member};
use proptest::prelude::*;

fn secret(i: u8) -> SecretKey {
    SecretKey::from_seed(&[i; 32])
}

fn key(i: u8) -> PublicKey {
    secret(i).public()
}

/// A genesis of `n` members with seeds 1..=n, named m1..mn.
fn genesis(n: u8) -> Genesis {
    Genesis::new((1..=n).map(|i| Member { key: key(i), name: format!("m{i}") }).collect()).unwrap()
}

/// A made-up event id: the log only stores it.
fn event(author: &PublicKey, seq: u64) -> EventId {
    let mut bytes = author.0.to_vec();
    bytes.extend_from_slice(&seq.to_le_bytes());
    EventId(hash(cairn_crypto::Domain::Event, &bytes))
}

fn propose(log: &mut ChangeLog, change: &Change, by: &PublicKey, seq: u64) -> ChangeId {
    log.propose(&Proposal { change: change.clone(), author: *by, seq, event: event(by, seq) });
    change.id()
}

fn approve(log: &mut ChangeLog, id: ChangeId, by: &PublicKey, seq: u64) {
    log.approve(&Approval { change: id, author: *by, seq, event: event(by, seq) });
}

fn rotation(base: MembershipId, old: u8, cut: u64, new: u8) -> Change {
    let proof = secret(new).sign(&rotation_message(&base, &key(old), cut, &key(new)));
    Change { base, kind: ChangeKind::Rotate { key: key(old), cut, successor: key(new), proof } }
}

fn add(base: MembershipId, new: u8, name: &str) -> Change {
    Change { base, kind: ChangeKind::Add { key: key(new), name: name.into() } }
}

fn remove(base: MembershipId, who: u8, cut: u64) -> Change {
    Change { base, kind: ChangeKind::Remove { key: key(who), cut } }
}

#[test]
fn an_addition_takes_effect_at_a_majority_of_the_members() {
    let g = genesis(4);
    let m0 = Membership::genesis(&g);
    assert_eq!(m0.id().0, g.cluster_id(), "the genesis membership's id is the cluster id");
    let change = add(m0.id(), 10, "new");
    m0.check(&change, &key(1), 1).unwrap();
    let mut log = ChangeLog::new();
    let id = propose(&mut log, &change, &key(1), 1);
    approve(&mut log, id, &key(2), 1);
    // 2 of 4: not yet (a majority of 4 is 3).
    assert_eq!(m0.threshold(Policy::Majority, &change.kind), 3);
    let r = log.resolve(&g, Policy::Majority);
    assert_eq!(r.in_force(), &m0);
    assert!(!r.admits(&key(10), 1));
    // The same approver again changes nothing.
    approve(&mut log, id, &key(2), 2);
    assert_eq!(log.resolve(&g, Policy::Majority).in_force(), &m0);
    approve(&mut log, id, &key(3), 1);
    let r = log.resolve(&g, Policy::Majority);
    let m1 = r.in_force();
    assert_eq!(r.applied(), [id]);
    assert_eq!(m1.epoch(), 1);
    assert_ne!(m1.id(), m0.id());
    assert!(m1.is_member(&key(10)));
    assert_eq!(m1.members().len(), 5);
    assert!(r.admits(&key(10), 1) && r.admits(&key(1), 1_000));
    // Under a policy of 4 approvals the same three are not enough.
    assert_eq!(log.resolve(&g, Policy::AtLeast(4)).in_force(), &m0);
}

#[test]
fn a_removal_keeps_the_removed_key_up_to_its_cut() {
    let g = genesis(4);
    let m0 = Membership::genesis(&g);
    let change = remove(m0.id(), 4, 5);
    let mut log = ChangeLog::new();
    let id = propose(&mut log, &change, &key(1), 3);
    // The removed key's own approval does not count: voters are the 3 others, majority 2.
    approve(&mut log, id, &key(4), 9);
    assert_eq!(m0.threshold(Policy::Majority, &change.kind), 2);
    assert_eq!(log.resolve(&g, Policy::Majority).in_force(), &m0);
    approve(&mut log, id, &key(2), 7);
    let r = log.resolve(&g, Policy::Majority);
    let m1 = r.in_force();
    assert!(!m1.is_member(&key(4)));
    assert_eq!(m1.retirement(&key(4)).map(|r| (r.last_seq, r.name.as_str())), Some((5, "m4")));
    assert!(m1.may_author(&key(4), 5) && !m1.may_author(&key(4), 6));
    assert!(r.admits(&key(4), 5) && !r.admits(&key(4), 6));
    // A retired key can never come back, nor be a successor.
    assert_eq!(m1.check(&add(m1.id(), 4, "back"), &key(1), 4), Err(ChangeError::KeyUsed(key(4))));
}

#[test]
fn proposals_that_cannot_apply_are_refused_with_their_reason() {
    let g = genesis(2);
    let m0 = Membership::genesis(&g);
    let base = m0.id();
    let other = MembershipId([7; 32]);
    assert!(matches!(m0.check(&add(other, 9, "x"), &key(1), 1), Err(ChangeError::WrongBase { .. })));
    assert_eq!(m0.check(&add(base, 2, "x"), &key(1), 1), Err(ChangeError::KeyUsed(key(2))));
    assert_eq!(m0.check(&add(base, 9, "m2"), &key(1), 1), Err(ChangeError::NameUsed("m2".into())));
    assert_eq!(m0.check(&add(base, 9, ""), &key(1), 1), Err(ChangeError::BadName(String::new())));
    assert_eq!(m0.check(&remove(base, 9, 0), &key(1), 1), Err(ChangeError::NotMember(key(9))));
    // A rotation by another key, at another seq, or with a proof by the wrong key.
    assert_eq!(m0.check(&rotation(base, 1, 4, 9), &key(2), 4), Err(ChangeError::RotationNotOwn));
    assert_eq!(m0.check(&rotation(base, 1, 4, 9), &key(1), 5), Err(ChangeError::RotationNotOwn));
    let mut forged = rotation(base, 1, 4, 9);
    if let ChangeKind::Rotate { proof, .. } = &mut forged.kind {
        *proof = secret(1).sign(&rotation_message(&base, &key(1), 4, &key(9)));
    }
    assert_eq!(m0.check(&forged, &key(1), 4), Err(ChangeError::BadProof));
    // The proof names the membership: one made for another base does not verify here.
    let mut replayed = rotation(other, 1, 4, 9);
    replayed.base = base;
    assert_eq!(m0.check(&replayed, &key(1), 4), Err(ChangeError::BadProof));
    m0.check(&rotation(base, 1, 4, 9), &key(1), 4).unwrap();
    // The last member stays.
    let one = genesis(1);
    let solo = Membership::genesis(&one);
    assert_eq!(solo.check(&remove(solo.id(), 1, 3), &key(1), 4), Err(ChangeError::LastMember));
    // A membership of MEMBERS_MAX members takes no addition.
    let full = Genesis::new(
        (1..=cairn_protocol::limits::MEMBERS_MAX as u8)
            .map(|i| Member { key: key(i), name: format!("m{i}") })
            .collect(),
    )
    .unwrap();
    let full = Membership::genesis(&full);
    assert_eq!(full.check(&add(full.id(), 200, "x"), &key(1), 1), Err(ChangeError::TooManyMembers));
}

#[test]
fn a_rotation_needs_only_its_own_key_and_hands_over_the_seat() {
    let g = genesis(3);
    let m0 = Membership::genesis(&g);
    let change = rotation(m0.id(), 2, 8, 20);
    m0.check(&change, &key(2), 8).unwrap();
    let mut log = ChangeLog::new();
    let id = propose(&mut log, &change, &key(2), 8);
    let r = log.resolve(&g, Policy::Majority);
    assert_eq!(r.applied(), [id]);
    let m1 = r.in_force();
    assert_eq!(m1.members().iter().find(|m| m.key == key(20)).map(|m| m.name.as_str()), Some("m2"));
    assert!(!m1.is_member(&key(2)));
    assert!(r.admits(&key(2), 8) && !r.admits(&key(2), 9), "the old key up to its rotation only");
    assert!(r.admits(&key(20), 1), "the new key starts its own chain at seq 1");
    // Another member's approval of someone else's rotation does not make it.
    let other = rotation(m0.id(), 3, 2, 30);
    let mut log = ChangeLog::new();
    let id = other.id();
    approve(&mut log, id, &key(1), 1);
    approve(&mut log, id, &key(2), 1);
    propose(&mut log, &other, &key(1), 2);
    assert_eq!(log.resolve(&g, Policy::Majority).in_force(), &m0);
}

#[test]
fn a_removal_wins_over_a_concurrent_rotation_of_the_same_key() {
    let g = genesis(4);
    let m0 = Membership::genesis(&g);
    let mut log = ChangeLog::new();
    let rotate = propose(&mut log, &rotation(m0.id(), 4, 6, 40), &key(4), 6);
    let removal = propose(&mut log, &remove(m0.id(), 4, 5), &key(1), 2);
    approve(&mut log, removal, &key(2), 2);
    let r = log.resolve(&g, Policy::Majority);
    assert_eq!(r.applied(), [removal], "rank: a removal before a rotation ({rotate:?} lost)");
    assert!(!r.admits(&key(40), 1), "the loser's new key is not admitted");
    assert!(r.admits(&key(4), 5) && !r.admits(&key(4), 6));
}

#[test]
fn removals_of_each_other_resolve_to_one_winner() {
    let g = genesis(4);
    let m0 = Membership::genesis(&g);
    let a = remove(m0.id(), 1, 3);
    let b = remove(m0.id(), 2, 3);
    let mut log = ChangeLog::new();
    propose(&mut log, &a, &key(2), 4);
    approve(&mut log, a.id(), &key(3), 4);
    propose(&mut log, &b, &key(1), 4);
    approve(&mut log, b.id(), &key(4), 4);
    let r = log.resolve(&g, Policy::Majority);
    let winner = a.id().min(b.id());
    assert_eq!(r.applied(), [winner]);
    // The loser names a membership no longer in force: it can never apply.
    assert_eq!(r.in_force().members().len(), 3);
    assert!(r.double_approvals().is_empty(), "nobody approved both");
}

/// The case: the honest members split between two additions of one membership, and
/// one member approves both; both reach the threshold. One wins by the rules, the other's key
/// is not admitted, and the double approver's ops from its second approval on are not.
#[test]
fn a_double_approver_cannot_make_two_competing_changes_both_win() {
    let g = genesis(5);
    let m0 = Membership::genesis(&g);
    let x = add(m0.id(), 10, "x");
    let y = add(m0.id(), 11, "y");
    let mut log = ChangeLog::new();
    propose(&mut log, &x, &key(1), 1);
    approve(&mut log, x.id(), &key(2), 1);
    propose(&mut log, &y, &key(3), 1);
    approve(&mut log, y.id(), &key(4), 1);
    // Member 5 approves both, at its seqs 2 and 3.
    approve(&mut log, x.id(), &key(5), 2);
    approve(&mut log, y.id(), &key(5), 3);
    let r = log.resolve(&g, Policy::Majority);
    let (winner, loser) = if x.id() < y.id() { (10, 11) } else { (11, 10) };
    assert_eq!(r.applied().len(), 1);
    assert!(r.in_force().is_member(&key(winner)));
    assert!(r.admits(&key(winner), 1));
    assert!(!r.admits(&key(loser), 1), "what only the loser allowed is excluded");
    let [double] = r.double_approvals() else { panic!("one double approval: {:?}", r.double_approvals()) };
    assert_eq!(double.approver, key(5));
    assert_eq!(double.base, m0.id());
    assert_eq!(double.excluded_from(), 3);
    assert!(r.admits(&key(5), 2) && !r.admits(&key(5), 3));
    // Without the double approver neither change has its 3 of 5.
    let mut honest = ChangeLog::new();
    propose(&mut honest, &x, &key(1), 1);
    approve(&mut honest, x.id(), &key(2), 1);
    propose(&mut honest, &y, &key(3), 1);
    approve(&mut honest, y.id(), &key(4), 1);
    assert_eq!(honest.resolve(&g, Policy::Majority).in_force(), &m0);
}

#[test]
fn changes_chain_and_each_counts_the_voters_of_its_own_base() {
    let g = genesis(2);
    let m0 = Membership::genesis(&g);
    let mut log = ChangeLog::new();
    let first = add(m0.id(), 10, "x");
    propose(&mut log, &first, &key(1), 1);
    approve(&mut log, first.id(), &key(2), 1);
    let m1 = log.resolve(&g, Policy::Majority).in_force().clone();
    assert_eq!(m1.members().len(), 3);
    // The new member votes on the next change; the approval comes before the proposal.
    let second = remove(m1.id(), 2, 1);
    approve(&mut log, second.id(), &key(10), 1);
    let r = log.resolve(&g, Policy::Majority);
    assert_eq!(r.in_force(), &m1, "the approval counts only once its change is proposed");
    propose(&mut log, &second, &key(1), 2);
    let r = log.resolve(&g, Policy::Majority);
    assert_eq!(r.applied(), [first.id(), second.id()]);
    assert_eq!(r.chain().len(), 3);
    assert_eq!(r.in_force().epoch(), 2);
    assert!(!r.in_force().is_member(&key(2)));
    // A change of a superseded membership never applies, whatever its approvals: here both
    // members of the genesis approve it (each a double approval, reported).
    let stale = add(m0.id(), 12, "late");
    propose(&mut log, &stale, &key(1), 3);
    approve(&mut log, stale.id(), &key(2), 2);
    let late = log.resolve(&g, Policy::Majority);
    assert_eq!((late.chain(), late.applied()), (r.chain(), r.applied()));
    let doubles: Vec<_> = late.double_approvals().iter().map(|d| (d.approver, d.excluded_from())).collect();
    assert_eq!(doubles.len(), 2);
    assert!(doubles.contains(&(key(1), 3)) && doubles.contains(&(key(2), 2)));
}

#[test]
fn changes_encode_as_protocol_md_says_and_decode_strictly() {
    let base = MembershipId([0xab; 32]);
    let change = Change { base, kind: ChangeKind::Remove { key: PublicKey([1; 32]), cut: 7 } };
    let mut expected = vec![0xab; 32];
    expected.extend_from_slice(&1u32.to_le_bytes());
    expected.extend_from_slice(&[1; 32]);
    expected.extend_from_slice(&7u64.to_le_bytes());
    assert_eq!(encode_change(&change), expected);
    assert_eq!(change.id().0, hash(cairn_crypto::Domain::Change, &expected));
    let kinds = [
        ChangeKind::Add { key: PublicKey([2; 32]), name: "n".repeat(64) },
        ChangeKind::Remove { key: PublicKey([3; 32]), cut: 0 },
        ChangeKind::Replace { key: PublicKey([4; 32]), cut: u64::MAX, successor: PublicKey([5; 32]) },
        ChangeKind::Rotate {
            key: PublicKey([6; 32]),
            cut: 1,
            successor: PublicKey([7; 32]),
            proof: Signature([8; 64]),
        },
    ];
    for kind in kinds {
        let change = Change { base, kind };
        let bytes = encode_change(&change);
        assert!(bytes.len() <= cairn_protocol::limits::CHANGE_BYTES_MAX);
        assert_eq!(decode_change(&bytes), Ok(change));
        let longer = decode_change(&[bytes.as_slice(), &[0]].concat());
        if bytes.len() == cairn_protocol::limits::CHANGE_BYTES_MAX {
            assert_eq!(longer, Err(CodecError::Oversize { len: bytes.len() + 1, max: bytes.len() }));
        } else {
            assert_eq!(longer, Err(CodecError::TrailingBytes(1)));
        }
        assert_eq!(decode_change(&bytes[..bytes.len() - 1]), Err(CodecError::Truncated));
    }
    let mut unknown = expected.clone();
    unknown[32] = 4;
    assert!(matches!(decode_change(&unknown), Err(CodecError::UnknownTag(_))));
    let bad_name = encode_change(&Change {
        base,
        kind: ChangeKind::Add { key: PublicKey([2; 32]), name: "a\nb".into() },
    });
    assert!(matches!(decode_change(&bad_name), Err(CodecError::InvalidValue(_))));
}

// ---- properties -------------------------------------------------------------------------------

/// A small deterministic generator, so one proptest seed gives one whole history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One recorded membership op of a generated history.
#[derive(Clone, Debug)]
enum Entry {
    Propose(Proposal),
    Approve(Approval),
}

/// A generated history: rounds in which members propose changes of the membership in force and
/// approve them. Honest members approve at most one change of each membership (their proposal
/// counts as their approval); Byzantine members approve whatever they like, propose changes of
/// memberships not in force and approve changes never proposed.
struct History {
    genesis: Genesis,
    byzantine: BTreeSet<PublicKey>,
    entries: Vec<Entry>,
}

fn history(seed: u64, n: u8, n_byzantine: usize, rounds: usize) -> History {
    let mut rng = Rng(seed);
    let genesis = genesis(n);
    let byzantine: BTreeSet<PublicKey> = (1..=n).take(n_byzantine).map(key).collect();
    let mut next_key = 100u8;
    let mut seqs = std::collections::BTreeMap::<PublicKey, u64>::new();
    fn next_seq(seqs: &mut std::collections::BTreeMap<PublicKey, u64>, k: &PublicKey) -> u64 {
        let s = seqs.entry(*k).or_insert(0);
        *s += 1;
        *s
    }
    let mut entries = Vec::new();
    let mut log = ChangeLog::new();
    let mut honest_approved: std::collections::BTreeMap<(MembershipId, PublicKey), ChangeId> =
        Default::default();
    for _ in 0..rounds {
        let current = log.resolve(&genesis, Policy::Majority).in_force().clone();
        let members: Vec<PublicKey> = current.members().iter().map(|m| m.key).collect();
        // Candidate changes of the membership in force, each with its proposer.
        let mut candidates: Vec<(Change, PublicKey)> = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let proposer = members[rng.below(members.len())];
            let target = members[rng.below(members.len())];
            next_key += 1;
            let kind = match rng.below(4) {
                0 => ChangeKind::Add { key: key(next_key), name: format!("k{next_key}") },
                1 => ChangeKind::Remove { key: target, cut: rng.below(5) as u64 },
                2 => ChangeKind::Replace { key: target, cut: rng.below(5) as u64, successor: key(next_key) },
                _ => {
                    // Only the rotating member proposes its rotation, at its next seq.
                    let seed = (1..=n).chain(101..=next_key).find(|i| key(*i) == proposer);
                    let Some(old) = seed else { continue };
                    let cut = seqs.get(&proposer).copied().unwrap_or(0) + 1;
                    let proof = secret(next_key).sign(&rotation_message(
                        &current.id(),
                        &proposer,
                        cut,
                        &key(next_key),
                    ));
                    ChangeKind::Rotate { key: key(old), cut, successor: key(next_key), proof }
                }
            };
            let base = if byzantine.contains(&proposer) && rng.chance(10) {
                MembershipId([rng.next() as u8; 32])
            } else {
                current.id()
            };
            candidates.push((Change { base, kind }, proposer));
        }
        // An honest proposer proposes its change only if it approved no change of this
        // membership before; others choose one or none.
        let mut chosen: std::collections::BTreeMap<PublicKey, usize> = Default::default();
        for (i, (change, proposer)) in candidates.iter().enumerate() {
            let seq = seqs.get(proposer).copied().unwrap_or(0) + 1;
            if !byzantine.contains(proposer)
                && !honest_approved.contains_key(&(current.id(), *proposer))
                && current.check(change, proposer, seq).is_ok()
            {
                chosen.entry(*proposer).or_insert(i);
            }
        }
        for (member, i) in &chosen {
            honest_approved.insert((current.id(), *member), candidates[*i].0.id());
        }
        for (i, (change, proposer)) in candidates.iter().enumerate() {
            let honest_ok = chosen.get(proposer) == Some(&i);
            if byzantine.contains(proposer) || honest_ok {
                let seq = next_seq(&mut seqs, proposer);
                let p =
                    Proposal { change: change.clone(), author: *proposer, seq, event: event(proposer, seq) };
                log.propose(&p);
                entries.push(Entry::Propose(p));
            }
        }
        for member in &members {
            let approvals: Vec<usize> = if byzantine.contains(member) {
                (0..candidates.len()).filter(|_| rng.chance(60)).collect()
            } else if chosen.contains_key(member) || candidates.is_empty() || !rng.chance(70) {
                Vec::new()
            } else {
                // An honest member approves one change of a membership, and may repeat it.
                let pick = rng.below(candidates.len());
                let id = candidates[pick].0.id();
                match *honest_approved.entry((current.id(), *member)).or_insert(id) == id {
                    true => vec![pick],
                    false => Vec::new(),
                }
            };
            for i in approvals {
                let seq = next_seq(&mut seqs, member);
                let a = Approval {
                    change: candidates[i].0.id(),
                    author: *member,
                    seq,
                    event: event(member, seq),
                };
                log.approve(&a);
                entries.push(Entry::Approve(a));
            }
        }
        // A Byzantine approval of a change nobody proposed.
        if let Some(b) = byzantine.iter().next().filter(|_| rng.chance(20)) {
            let seq = next_seq(&mut seqs, b);
            let a =
                Approval { change: ChangeId([rng.next() as u8; 32]), author: *b, seq, event: event(b, seq) };
            log.approve(&a);
            entries.push(Entry::Approve(a));
        }
    }
    History { genesis, byzantine, entries }
}

fn resolve(genesis: &Genesis, entries: &[Entry]) -> Resolution {
    let mut log = ChangeLog::new();
    for entry in entries {
        match entry {
            Entry::Propose(p) => log.propose(p),
            Entry::Approve(a) => log.approve(a),
        }
    }
    log.resolve(genesis, Policy::Majority)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any order and duplication of the same proposals and approvals gives the same chain, the
    /// same membership in force and the same misbehaviour.
    #[test]
    fn the_membership_is_a_function_of_the_set_of_changes(
        seed in any::<u64>(),
        n in 2u8..=6,
        rounds in 1usize..=4,
        order in any::<u64>(),
    ) {
        let h = history(seed, n, usize::from(n) / 2, rounds);
        let expected = resolve(&h.genesis, &h.entries);
        let mut shuffled = h.entries.clone();
        let mut rng = Rng(order);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i + 1));
        }
        let duplicates: Vec<Entry> = shuffled.iter().filter(|_| rng.chance(30)).cloned().collect();
        shuffled.extend(duplicates);
        prop_assert_eq!(resolve(&h.genesis, &shuffled), expected);
    }

    /// With fewer Byzantine members than any threshold (at most half of the members), every
    /// change that took effect had honest approvals, honest members are never reported for a
    /// double approval, and what is admitted follows the chain.
    #[test]
    fn fewer_byzantine_members_than_the_threshold_never_change_the_membership_alone(
        seed in any::<u64>(),
        n in 3u8..=7,
        rounds in 1usize..=5,
    ) {
        let byzantine_count = usize::from(n - 1) / 2;
        let h = history(seed, n, byzantine_count, rounds);
        let r = resolve(&h.genesis, &h.entries);
        let mut log = ChangeLog::new();
        for entry in &h.entries {
            match entry {
                Entry::Propose(p) => log.propose(p),
                Entry::Approve(a) => log.approve(a),
            }
        }
        for (i, id) in r.applied().iter().enumerate() {
            let base = &r.chain()[i];
            let change = log.change(id).expect("an applied change was proposed");
            prop_assert_eq!(change.base, base.id());
            let voters: BTreeSet<&PublicKey> = base.voters(&change.kind).collect();
            let approvers: Vec<&PublicKey> = log.approvers(id).map(|(k, _)| k).filter(|k| voters.contains(k)).collect();
            let threshold = base.threshold(Policy::Majority, &change.kind);
            prop_assert!(approvers.len() >= threshold);
            // Where the Byzantine voters are fewer than the threshold (always at the genesis;
            // later removals may leave them enough), honest ones must have approved.
            let byzantine_voters = voters.iter().filter(|k| h.byzantine.contains(**k)).count();
            if byzantine_voters < threshold {
                prop_assert!(
                    approvers.iter().any(|k| !h.byzantine.contains(*k)),
                    "change {} took effect on Byzantine approvals alone", i
                );
            }
        }
        for double in r.double_approvals() {
            prop_assert!(h.byzantine.contains(&double.approver), "an honest member was reported");
        }
        for member in r.in_force().members() {
            prop_assert!(r.in_force().may_author(&member.key, 1));
        }
        for retired in r.in_force().retired() {
            prop_assert!(!r.admits(&retired.key, retired.last_seq.saturating_add(1)));
        }
    }
}

/// The generated histories are not vacuous: over a fixed set of seeds they apply changes of
/// every kind, chain them, meet competing changes and double approvals, and leave changes
/// pending.
#[test]
fn the_generated_histories_cover_the_cases_the_properties_are_about() {
    let (mut applied, mut chained, mut doubles, mut kinds) = (0, 0, 0, BTreeSet::new());
    for seed in 0..300u64 {
        let h = history(seed, 3 + (seed % 5) as u8, 1 + (seed % 2) as usize, 4);
        let r = resolve(&h.genesis, &h.entries);
        let mut log = ChangeLog::new();
        for entry in &h.entries {
            match entry {
                Entry::Propose(p) => log.propose(p),
                Entry::Approve(a) => log.approve(a),
            }
        }
        applied += usize::from(!r.applied().is_empty());
        chained += usize::from(r.applied().len() >= 2);
        doubles += usize::from(!r.double_approvals().is_empty());
        for id in r.applied() {
            kinds.insert(log.change(id).expect("applied changes were proposed").kind.rank());
        }
    }
    assert!(
        applied > 100 && chained > 30 && doubles > 30,
        "applied {applied}, chained {chained}, doubles {doubles}"
    );
    assert_eq!(kinds.len(), 4, "every kind of change took effect somewhere: {kinds:?}");
}
