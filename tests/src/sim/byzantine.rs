//! Byzantine members. Each runs an ordinary [`Node`] (so it stays in step with the cluster and
//! can sign plausible events), but its outgoing traffic goes through a tampering filter, and at
//! scripted times it crafts attacks. Every crafted event whose invalidity is certain is
//! reported by id, so the simulator can assert that no honest node ever accepts it.

use cairn_crypto::{PublicKey, SecretKey, Signature};
use cairn_daemon::discipline::INVALID_INPUTS_MAX;
use cairn_protocol::codec::{decode_event, decode_message, encode_message};
use cairn_protocol::event::ops_hash;
use cairn_protocol::limits::{DEPS_MAX, EVENT_BYTES_MAX, MESSAGE_BYTES_MAX, OPS_MAX};
use cairn_protocol::membership::{Change, ChangeId, ChangeKind, MembershipId, Rotation};
use cairn_protocol::node::Node;
use cairn_protocol::{Event, EventId, Evidence, Header, Message, Op, SignedHeader, StoredEvent, Tip};

use super::rng::{PPM, Rng};

/// One kind of misbehaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attack {
    /// A fresh header (of any member) with a signature that does not verify.
    ForgedSignature,
    /// A fresh or replayed event with one byte flipped.
    MutatedBytes,
    /// A header naming another member as author, signed with the attacker's key.
    WrongAuthor,
    /// A few validly signed events whose deps are random ids: never acceptable.
    Orphans,
    /// Many large orphans at once, to push a node's causal buffer to its bounds.
    OrphanFlood,
    /// Two validly signed events with the same seq, each sent to a different set of honest
    /// nodes.
    Equivocation,
    /// A validly signed event that forks the attacker's own chain at an old seq.
    OldSeqFork,
    /// Old valid events sent again.
    Replay,
    /// A message over [`MESSAGE_BYTES_MAX`], or an event over [`EVENT_BYTES_MAX`].
    Oversize,
    /// Random bytes, random bytes after a valid tag, or undecodable events.
    Garbage,
    /// More undecodable messages at once than the daemon's discipline takes from a peer in its
    /// window (`INVALID_INPUTS_MAX`): the target mutes the attacker for a while.
    GarbageFlood,
    /// A validly signed header whose deps are not sorted and unique.
    BadDepsOrder,
    /// A validly signed header whose ops hash does not match the ops sent with it.
    OpsHashMismatch,
    /// Well-formed reconciliation messages full of lies: random tips, digests, probes,
    /// wants, chains, and evidence that does not verify.
    ProtocolNoise,
    /// Valid evidence against itself (two signed headers with one seq), without the events.
    SelfEvidence,
    /// An ordinary write through its own node, so its chain grows like an honest one.
    Write,
    /// Validly signed events breaking rule 5: a seq gap, seq 0, or seq 1 with an own dep.
    BadSeq,
    /// Validly signed events breaking rule 6: a lamport that is not one more than its deps'.
    BadLamport,
    /// Validly signed events of a key outside the genesis.
    NotMember,
    /// Validly signed events with no ops, too many ops, or an op with an empty key.
    BadOp,
    /// Up to 12 valid events with one seq at once, each to a random honest node: many tips
    /// of one author to reconcile.
    ForkFan,
    /// Two branches of its own chain, grown by up to 12 validly signed events per action,
    /// each branch sent to its own set of honest nodes: deep forks, which reconciliation
    /// must find by searching on seq.
    ForkChains,
    /// Two proposals of different changes of one membership, in consecutive events: valid,
    /// and a double approval (`docs/PROTOCOL.md` §17, rule M7).
    DoubleApproval,
    /// Membership ops that break a rule (`bad_membership`): a proposal of a membership that
    /// is not in force, an approval of a change nobody proposed, a rotation whose proof the
    /// successor did not sign, a rotation to another member's key.
    BadMembership,
    /// Three to six proposals in consecutive events: from the third on, over the two changes
    /// a seat may vote for in one membership and round (rule V5), so invalid.
    ProposalFlood,
}

impl Attack {
    /// Every attack.
    pub const ALL: [Self; 25] = [
        Self::ForgedSignature,
        Self::MutatedBytes,
        Self::WrongAuthor,
        Self::Orphans,
        Self::OrphanFlood,
        Self::Equivocation,
        Self::OldSeqFork,
        Self::Replay,
        Self::Oversize,
        Self::Garbage,
        Self::GarbageFlood,
        Self::BadDepsOrder,
        Self::OpsHashMismatch,
        Self::ProtocolNoise,
        Self::SelfEvidence,
        Self::Write,
        Self::ForkChains,
        Self::BadSeq,
        Self::BadLamport,
        Self::NotMember,
        Self::BadOp,
        Self::ForkFan,
        Self::DoubleApproval,
        Self::BadMembership,
        Self::ProposalFlood,
    ];
}

/// What a Byzantine node does once the active phase is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterHeal {
    /// It sends nothing and reads nothing (withholding everything).
    Silent,
    /// It runs its node without tampering (an honest relay).
    Honest,
}

/// The behaviour of one Byzantine node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByzantineConfig {
    /// The attacks it picks from at each scripted action.
    pub attacks: Vec<Attack>,
    /// Scripted actions during the active phase.
    pub n_actions: usize,
    /// Probability of withholding one of its node's outgoing messages, in parts per million.
    pub withhold_ppm: u32,
    /// Probability of flipping one byte of an outgoing message.
    pub flip_ppm: u32,
    /// Probability of corrupting one event's signature in an outgoing `Events` message.
    pub corrupt_signature_ppm: u32,
    /// What it does after the active phase.
    pub after_heal: AfterHeal,
}

impl ByzantineConfig {
    /// Only `attacks`, `n_actions` times, with no tampering of its ordinary traffic.
    pub fn only(attacks: &[Attack], n_actions: usize) -> Self {
        Self {
            attacks: attacks.to_vec(),
            n_actions,
            withhold_ppm: 0,
            flip_ppm: 0,
            corrupt_signature_ppm: 0,
            after_heal: AfterHeal::Honest,
        }
    }

    /// A behaviour drawn from `rng`: a random non-empty subset of the attacks and random
    /// tampering rates.
    pub fn random(rng: &mut Rng) -> Self {
        let mut attacks: Vec<Attack> = Attack::ALL.iter().copied().filter(|_| rng.chance(PPM / 2)).collect();
        if attacks.is_empty() {
            attacks.push(*rng.pick(&Attack::ALL));
        }
        // Self-evidence gets the attacker refused at once, which hides every other attack;
        // keep it to a few runs.
        if attacks.len() > 1 && !rng.chance(PPM / 4) {
            attacks.retain(|a| *a != Attack::SelfEvidence);
        }
        Self {
            attacks,
            n_actions: rng.range(3, 16) as usize,
            withhold_ppm: rng.range(0, 200_000) as u32,
            flip_ppm: rng.range(0, 50_000) as u32,
            corrupt_signature_ppm: rng.range(0, 100_000) as u32,
            after_heal: if rng.chance(PPM / 2) { AfterHeal::Silent } else { AfterHeal::Honest },
        }
    }
}

/// What one attack produced.
#[derive(Debug, Default)]
pub struct Crafted {
    /// Messages to send: `(sim index of the target, bytes)`.
    pub sends: Vec<(usize, Vec<u8>)>,
    /// Ids of crafted events that can never be valid.
    pub invalid: Vec<EventId>,
    /// Pairs of valid events with the same author and seq that were sent out.
    pub forks: Vec<(EventId, EventId)>,
}

/// What an attack may look at.
pub struct CraftContext<'a> {
    /// The attacker's node (its view of the cluster).
    pub node: &'a Node,
    /// The attacker's key.
    pub key: &'a SecretKey,
    /// Every node's public key, by sim index.
    pub publics: &'a [PublicKey],
    /// Sim indices of the honest nodes (never empty).
    pub honest: &'a [usize],
    /// A counter that makes every crafted op list unique, so no crafted header is ever
    /// signed twice by accident.
    pub counter: &'a mut u64,
    /// The attacker's two branches for [`Attack::ForkChains`], once started.
    pub fork_chains: &'a mut Option<ForkChains>,
}

/// The state of [`Attack::ForkChains`]: the head of each branch and who receives it.
#[derive(Clone, Debug)]
pub struct ForkChains {
    /// The event both branches grow from: `(id, seq, lamport)`, or `None` from seq 1.
    base: Option<(EventId, u64, u64)>,
    /// The head of each branch: `(id, seq, lamport)`.
    heads: [Option<(EventId, u64, u64)>; 2],
    /// The honest nodes each branch is sent to.
    targets: [Vec<usize>; 2],
}

/// Message bytes carrying `events`.
pub fn events_message(events: Vec<Vec<u8>>) -> Vec<u8> {
    encode_message(&Message::Events { events })
}

/// Crafts one attack. [`Attack::Write`] needs the node mutably and is done by the cluster.
pub fn craft(attack: Attack, cx: &mut CraftContext<'_>, rng: &mut Rng) -> Crafted {
    let mut out = Crafted::default();
    let me = cx.key.public();
    let target = *rng.pick(cx.honest);
    match attack {
        Attack::Write => {}
        Attack::ForgedSignature => {
            let author = *rng.pick(cx.publics);
            let (seq, lamport, deps) = frontier(cx.node, &author, rng);
            let ops = fresh_ops(cx, rng, 8);
            let header = Header { author, seq, lamport, deps: sorted(deps), ops_hash: ops_hash(&ops) };
            let id = header.id();
            let sig = match rng.below(3) {
                0 => {
                    let mut sig = [0u8; 64];
                    rng.fill(&mut sig);
                    Signature(sig)
                }
                1 => {
                    let mut sig = cx.key.sign(&id.0);
                    let idx = rng.index(64);
                    sig.0[idx] ^= 1 << rng.below(8);
                    sig
                }
                _ => cx.key.sign(&rng.array32()),
            };
            out.invalid.push(id);
            out.sends.push((target, events_message(vec![Event { header, ops, sig }.encode()])));
        }
        Attack::WrongAuthor => {
            let others: Vec<PublicKey> = cx.publics.iter().copied().filter(|p| *p != me).collect();
            let author = *rng.pick(&others);
            let (seq, lamport, deps) = frontier(cx.node, &author, rng);
            let ops = fresh_ops(cx, rng, 8);
            let header = Header { author, seq, lamport, deps: sorted(deps), ops_hash: ops_hash(&ops) };
            let id = header.id();
            let sig = cx.key.sign(&id.0);
            out.invalid.push(id);
            out.sends.push((target, events_message(vec![Event { header, ops, sig }.encode()])));
        }
        Attack::MutatedBytes => {
            let replayed = if rng.chance(PPM / 2) { random_accepted(cx.node, rng) } else { None };
            // A fresh event is never sent intact, so even its own id can never be accepted;
            // a replayed one is valid, so only a changed header gives a certainly invalid id.
            let (original, fresh) = match replayed {
                Some(event) => (event.bytes().to_vec(), false),
                None => {
                    let (seq, lamport, deps) = frontier(cx.node, &me, rng);
                    let ops = fresh_ops(cx, rng, 8);
                    (Event::sign(cx.key, seq, lamport, deps, ops).encode(), true)
                }
            };
            let mut mutated = original.clone();
            let idx = rng.index(mutated.len());
            mutated[idx] ^= rng.range(1, 255) as u8;
            out.invalid.extend(mutated_id(&original, &mutated, fresh));
            out.sends.push((target, events_message(vec![mutated])));
        }
        Attack::Orphans | Attack::OrphanFlood => {
            let flood = attack == Attack::OrphanFlood;
            let n = if flood { rng.range(30, 60) } else { rng.range(1, 5) };
            let own_idx = cx.node.genesis().member_idx(&me);
            let max_seq = own_idx.map_or(0, |i| cx.node.adapter().max_seq(i));
            let mut events = Vec::new();
            for _ in 0..n {
                let seq = rng.range(1, max_seq + 3);
                let lamport = rng.range(1, 100);
                let deps: Vec<EventId> = (0..rng.range(1, 3)).map(|_| EventId(rng.array32())).collect();
                let len = if flood { rng.range(3000, 6000) as usize } else { 8 };
                let ops = fresh_ops(cx, rng, len);
                let event = Event::sign(cx.key, seq, lamport, deps, ops);
                out.invalid.push(event.id());
                events.push(event.encode());
            }
            out.sends.push((target, events_message(events)));
        }
        Attack::Equivocation => {
            let (seq, lamport, deps) = frontier(cx.node, &me, rng);
            let a = Event::sign(cx.key, seq, lamport, deps.clone(), fresh_ops(cx, rng, 8));
            let b = Event::sign(cx.key, seq, lamport, deps, fresh_ops(cx, rng, 8));
            let mut targets = cx.honest.to_vec();
            rng.shuffle(&mut targets);
            let split = rng.range(1, targets.len() as u64 - 1) as usize;
            for (i, t) in targets.iter().enumerate() {
                let event = if i < split { &a } else { &b };
                out.sends.push((*t, events_message(vec![event.encode()])));
            }
            out.forks.push((a.id(), b.id()));
        }
        Attack::OldSeqFork => {
            let Some(own_idx) = cx.node.genesis().member_idx(&me) else { return out };
            let adapter = cx.node.adapter();
            let max_seq = adapter.max_seq(own_idx);
            if max_seq == 0 {
                return out;
            }
            let seq = rng.range(1, max_seq);
            let pred = if seq > 1 { adapter.at_seq(own_idx, seq - 1).first().copied() } else { None };
            if seq > 1 && pred.is_none() {
                return out;
            }
            let lamport = 1 + pred.and_then(|p| adapter.meta(&p)).map_or(0, |meta| meta.lamport);
            let event = Event::sign(cx.key, seq, lamport, pred.into_iter().collect(), fresh_ops(cx, rng, 8));
            if let Some(existing) = adapter.at_seq(own_idx, seq).first() {
                out.forks.push((*existing, event.id()));
            }
            out.sends.push((target, events_message(vec![event.encode()])));
        }
        Attack::Replay => {
            let events: Vec<Vec<u8>> = (0..rng.range(1, 6))
                .filter_map(|_| random_accepted(cx.node, rng))
                .map(|e| e.bytes().to_vec())
                .collect();
            if !events.is_empty() {
                out.sends.push((target, events_message(events)));
            }
        }
        Attack::Oversize => {
            let bytes = if rng.chance(PPM / 2) {
                let len = MESSAGE_BYTES_MAX + 1 + rng.index(1024);
                let mut bytes = rng.bytes(len);
                bytes[..4].copy_from_slice(&3u32.to_le_bytes());
                bytes
            } else {
                let len = EVENT_BYTES_MAX + 1 + rng.index(64);
                events_message(vec![rng.bytes(len)])
            };
            out.sends.push((target, bytes));
        }
        Attack::GarbageFlood => {
            let n = INVALID_INPUTS_MAX as u64;
            for _ in 0..rng.range(n + 1, n * 3 / 2) {
                // A tag no message has: certainly undecodable.
                let mut bytes = u32::MAX.to_le_bytes().to_vec();
                bytes.extend(random_bytes(rng, 32));
                out.sends.push((target, bytes));
            }
        }
        Attack::Garbage => {
            let bytes = match rng.below(5) {
                0 => random_bytes(rng, 300),
                1 => {
                    let mut bytes = (rng.below(12) as u32).to_le_bytes().to_vec();
                    bytes.extend(random_bytes(rng, 200));
                    bytes
                }
                2 => events_message((0..rng.range(1, 4)).map(|_| random_bytes(rng, 400)).collect()),
                3 => match random_accepted(cx.node, rng) {
                    Some(event) => {
                        let mut bytes = event.bytes().to_vec();
                        bytes.extend(random_bytes(rng, 8).into_iter().chain([0]));
                        events_message(vec![bytes])
                    }
                    None => rng.bytes(16),
                },
                _ => match random_accepted(cx.node, rng) {
                    Some(event) => {
                        let cut = rng.index(event.bytes().len());
                        events_message(vec![event.bytes()[..cut].to_vec()])
                    }
                    None => rng.bytes(16),
                },
            };
            out.sends.push((target, bytes));
        }
        Attack::BadSeq => {
            let (seq, lamport, deps) = frontier(cx.node, &me, rng);
            let own_dep = deps.iter().find(|d| {
                cx.node.adapter().meta(d).is_some_and(|e| Some(e.author) == cx.node.genesis().member_idx(&me))
            });
            let seq = match (rng.below(3), own_dep) {
                (0, _) => 0,
                (1, Some(_)) => 1,
                _ => seq + rng.range(1, 3),
            };
            let event = Event::sign(cx.key, seq, lamport, deps, fresh_ops(cx, rng, 8));
            out.invalid.push(event.id());
            out.sends.push((target, events_message(vec![event.encode()])));
        }
        Attack::BadLamport => {
            let (seq, lamport, deps) = frontier(cx.node, &me, rng);
            let lamport = if rng.chance(PPM / 2) { lamport - 1 } else { lamport + rng.range(1, 5) };
            let event = Event::sign(cx.key, seq, lamport, deps, fresh_ops(cx, rng, 8));
            out.invalid.push(event.id());
            out.sends.push((target, events_message(vec![event.encode()])));
        }
        Attack::NotMember => {
            let outsider = SecretKey::from_seed(&rng.array32());
            let (seq, lamport, deps) = frontier(cx.node, &me, rng);
            let event = Event::sign(&outsider, seq, lamport, deps, fresh_ops(cx, rng, 8));
            out.invalid.push(event.id());
            out.sends.push((target, events_message(vec![event.encode()])));
        }
        Attack::BadOp => {
            let (seq, lamport, deps) = frontier(cx.node, &me, rng);
            let mut ops = fresh_ops(cx, rng, 8);
            match rng.below(3) {
                0 => ops.clear(),
                1 => ops.push(Op::Del { key: Vec::new() }),
                _ => {
                    let op = ops[0].clone();
                    ops.resize(OPS_MAX + 1, op);
                }
            }
            let event = Event::sign(cx.key, seq, lamport, deps, ops);
            out.invalid.push(event.id());
            out.sends.push((target, events_message(vec![event.encode()])));
        }
        Attack::DoubleApproval | Attack::ProposalFlood => {
            let n = if attack == Attack::DoubleApproval { 2 } else { rng.range(3, 7) as usize };
            let (mut seq, mut lamport, mut deps) = full_frontier(cx.node, &me);
            let resolution = cx.node.adapter().membership();
            let (base, round) = (resolution.in_force().id(), resolution.round());
            for k in 0..n {
                let newcomer = SecretKey::from_seed(&rng.array32()).public();
                *cx.counter += 1;
                let name = format!("byz-{}", cx.counter);
                let change = Change { base, kind: ChangeKind::Add { key: newcomer, name } };
                let event = Event::sign(cx.key, seq, lamport, deps, vec![Op::Propose { change, round }]);
                if k >= 2 {
                    out.invalid.push(event.id());
                }
                deps = vec![event.id()];
                seq += 1;
                lamport += 1;
                out.sends.push((target, events_message(vec![event.encode()])));
            }
        }
        Attack::BadMembership => {
            let (seq, lamport, deps) = full_frontier(cx.node, &me);
            let resolution = cx.node.adapter().membership();
            let cluster = cx.node.genesis().cluster_id();
            let op = match rng.below(4) {
                0 => {
                    let newcomer = SecretKey::from_seed(&rng.array32()).public();
                    let change = Change {
                        base: MembershipId(rng.array32()),
                        kind: ChangeKind::Add { key: newcomer, name: "nobody's".into() },
                    };
                    Op::Propose { change, round: resolution.round() }
                }
                1 => Op::Approve { change: ChangeId(rng.array32()), round: resolution.round() },
                2 => {
                    // Signed by one fresh key, naming another as the successor.
                    let mut rotation =
                        Rotation::new(&cluster, me, seq, &SecretKey::from_seed(&rng.array32()));
                    rotation.successor = SecretKey::from_seed(&rng.array32()).public();
                    Op::Rotate(rotation)
                }
                _ => {
                    // To another member's key: the attacker cannot sign its proof.
                    let other = *rng.pick(cx.publics);
                    let mut rotation =
                        Rotation::new(&cluster, me, seq, &SecretKey::from_seed(&rng.array32()));
                    rotation.successor = other;
                    Op::Rotate(rotation)
                }
            };
            let event = Event::sign(cx.key, seq, lamport, deps, vec![op]);
            out.invalid.push(event.id());
            out.sends.push((target, events_message(vec![event.encode()])));
        }
        Attack::ForkFan => {
            let (seq, lamport, deps) = frontier(cx.node, &me, rng);
            let mut ids = Vec::new();
            for _ in 0..rng.range(3, 12) {
                let event = Event::sign(cx.key, seq, lamport, deps.clone(), fresh_ops(cx, rng, 8));
                ids.push(event.id());
                out.sends.push((*rng.pick(cx.honest), events_message(vec![event.encode()])));
            }
            out.forks.extend(ids.windows(2).map(|pair| (pair[0], pair[1])));
        }
        Attack::BadDepsOrder => {
            let (seq, lamport, mut deps) = frontier(cx.node, &me, rng);
            while deps.len() < 2 {
                deps.push(EventId(rng.array32()));
            }
            deps.sort_unstable();
            deps.dedup();
            if rng.chance(PPM / 2) || deps.len() < 2 {
                // A duplicate is "not unique", which is the same rule.
                let first = deps[0];
                deps.insert(0, first);
            } else {
                deps.reverse();
            }
            let ops = fresh_ops(cx, rng, 8);
            let header = Header { author: me, seq, lamport, deps, ops_hash: ops_hash(&ops) };
            let id = header.id();
            let sig = cx.key.sign(&id.0);
            out.invalid.push(id);
            out.sends.push((target, events_message(vec![Event { header, ops, sig }.encode()])));
        }
        Attack::OpsHashMismatch => {
            let (seq, lamport, deps) = frontier(cx.node, &me, rng);
            let signed_ops = fresh_ops(cx, rng, 8);
            let sent_ops = fresh_ops(cx, rng, 8);
            let header =
                Header { author: me, seq, lamport, deps: sorted(deps), ops_hash: ops_hash(&signed_ops) };
            let id = header.id();
            let sig = cx.key.sign(&id.0);
            out.invalid.push(id);
            out.sends.push((target, events_message(vec![Event { header, ops: sent_ops, sig }.encode()])));
        }
        Attack::ProtocolNoise => {
            let message = noise(cx, rng);
            out.sends.push((target, encode_message(&message)));
        }
        Attack::ForkChains => {
            let Some(own_idx) = cx.node.genesis().member_idx(&me) else { return out };
            let adapter = cx.node.adapter();
            let state = cx.fork_chains.get_or_insert_with(|| {
                let max_seq = adapter.max_seq(own_idx);
                let base = adapter
                    .at_seq(own_idx, max_seq)
                    .first()
                    .and_then(|id| adapter.event(id))
                    .map(|e| (e.id(), e.seq(), e.lamport()));
                let mut targets = cx.honest.to_vec();
                rng.shuffle(&mut targets);
                let split = rng.range(1, targets.len() as u64 - 1) as usize;
                let second = targets.split_off(split);
                ForkChains { base, heads: [None, None], targets: [targets, second] }
            });
            let n_events = rng.range(1, 12);
            let mut firsts = Vec::new();
            for branch in 0..2 {
                let mut events = Vec::new();
                for _ in 0..n_events {
                    let prev = state.heads[branch].or(state.base);
                    let mut deps: Vec<EventId> = prev.map(|p| p.0).into_iter().collect();
                    let mut lamport_max = prev.map_or(0, |p| p.2);
                    for tip in adapter.tips() {
                        if tip.author != me && deps.len() < 4 && rng.chance(PPM / 3) {
                            deps.push(tip.id);
                            lamport_max =
                                lamport_max.max(adapter.meta(&tip.id).map_or(0, |meta| meta.lamport));
                        }
                    }
                    let seq = prev.map_or(1, |p| p.1 + 1);
                    *cx.counter += 1;
                    let ops = vec![Op::Incr { key: b"k0".to_vec(), delta: *cx.counter as i64 }];
                    let event = Event::sign(cx.key, seq, lamport_max + 1, deps, ops);
                    if state.heads[branch].is_none() {
                        firsts.push(event.id());
                    }
                    state.heads[branch] = Some((event.id(), seq, lamport_max + 1));
                    events.push(event.encode());
                }
                for target in &state.targets[branch] {
                    out.sends.push((*target, events_message(events.clone())));
                }
            }
            if let [a, b] = firsts[..] {
                out.forks.push((a, b));
            }
        }
        Attack::SelfEvidence => {
            let seq = rng.range(1, 50);
            let header = |cx: &mut CraftContext<'_>, rng: &mut Rng| {
                let ops = fresh_ops(cx, rng, 8);
                let header =
                    Header { author: me, seq, lamport: seq, deps: Vec::new(), ops_hash: ops_hash(&ops) };
                let sig = cx.key.sign(&header.id().0);
                SignedHeader { header, sig }
            };
            let a = header(cx, rng);
            let b = header(cx, rng);
            let evidence = Evidence::new(a, b);
            out.sends.push((target, encode_message(&Message::Evidence { evidence: vec![evidence] })));
        }
    }
    out
}

/// Well-formed messages whose contents lie.
fn noise(cx: &mut CraftContext<'_>, rng: &mut Rng) -> Message {
    let some_id = |rng: &mut Rng| match random_accepted(cx.node, rng) {
        Some(event) if rng.chance(PPM / 2) => event.id(),
        _ => EventId(rng.array32()),
    };
    match rng.below(8) {
        0 => Message::Summary { digest: rng.array32() },
        1 => Message::InSync { digest: rng.array32() },
        2 => {
            let mut tips: Vec<Tip> = (0..rng.range(1, 6))
                .map(|_| {
                    // Rarely a non-member, which spoils the whole message.
                    let author =
                        if rng.chance(PPM / 16) { PublicKey(rng.array32()) } else { *rng.pick(cx.publics) };
                    // Sometimes a seq near the top of the range, where careless arithmetic
                    // on a peer's numbers overflows.
                    let seq = if rng.chance(PPM / 4) { u64::MAX - rng.below(3) } else { rng.range(1, 200) };
                    Tip { author, seq, id: some_id(rng) }
                })
                .collect();
            tips.sort();
            Message::Tips {
                reply: rng.chance(PPM / 2),
                more: rng.chance(PPM / 4),
                // Claims to have heard any number of messages, often more than were sent.
                heard: if rng.chance(PPM / 2) { rng.range(0, 50) } else { u64::MAX - rng.below(3) },
                tips,
                evidence: Vec::new(),
            }
        }
        3 => Message::Want { ids: (0..rng.range(1, 10)).map(|_| some_id(rng)).collect() },
        4 => {
            let mut seqs: Vec<u64> = (0..rng.range(1, 20)).map(|_| rng.range(0, 300)).collect();
            seqs.sort_unstable();
            seqs.dedup();
            Message::ForkProbe { tip: some_id(rng), seqs }
        }
        5 => {
            let mut entries: Vec<(u64, EventId)> =
                (0..rng.range(1, 16)).map(|_| (rng.range(0, 300), some_id(rng))).collect();
            entries.sort();
            Message::ForkIds { tip: some_id(rng), entries }
        }
        6 => Message::WantChain { tip: some_id(rng), from_seq: rng.range(0, 50) },
        _ => {
            // Evidence whose signatures do not verify, against any member.
            let author = *rng.pick(cx.publics);
            let seq = rng.range(1, 50);
            let header = |rng: &mut Rng| SignedHeader {
                header: Header { author, seq, lamport: seq, deps: Vec::new(), ops_hash: rng.array32() },
                sig: Signature({
                    let mut sig = [0u8; 64];
                    rng.fill(&mut sig);
                    sig
                }),
            };
            let (a, b) = (header(rng), header(rng));
            Message::Evidence { evidence: vec![Evidence::new(a, b)] }
        }
    }
}

/// The ids a mutation certainly made invalid: the mutated event's own id if it decodes with a
/// changed header (nobody signed that header), and, when the original was never sent intact
/// (`fresh`), its id too.
fn mutated_id(original: &[u8], mutated: &[u8], fresh: bool) -> Option<EventId> {
    let decoded = decode_event(mutated).ok()?;
    let original = decode_event(original).ok()?;
    (fresh || decoded.header != original.header).then(|| decoded.id())
}

/// The ids of events a byte flip in an `Events` message made certainly invalid.
pub(super) fn mutated_ids_in_message(original: &[u8], mutated: &[u8]) -> Vec<EventId> {
    let (Ok(Message::Events { events: before }), Ok(Message::Events { events: after })) =
        (decode_message(original), decode_message(mutated))
    else {
        return Vec::new();
    };
    if before.len() != after.len() {
        return Vec::new();
    }
    before.iter().zip(&after).filter(|(a, b)| a != b).filter_map(|(a, b)| mutated_id(a, b, false)).collect()
}

/// Flips the signature of one event of an `Events` message; other messages pass unchanged.
pub(super) fn corrupt_one_signature(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let Ok(Message::Events { mut events }) = decode_message(bytes) else { return bytes.to_vec() };
    if events.is_empty() {
        return bytes.to_vec();
    }
    let idx = rng.index(events.len());
    let event = &mut events[idx];
    if event.len() < 64 {
        return bytes.to_vec();
    }
    // The signature is the last 64 bytes of an event's encoding.
    let at = event.len() - 1 - rng.index(64);
    event[at] ^= 1 << rng.below(8);
    events_message(events)
}

/// Up to `len_max - 1` random bytes.
fn random_bytes(rng: &mut Rng, len_max: usize) -> Vec<u8> {
    let len = rng.index(len_max);
    rng.bytes(len)
}

fn sorted(mut deps: Vec<EventId>) -> Vec<EventId> {
    deps.sort_unstable();
    deps.dedup();
    deps
}

/// Fresh ops for a crafted event: unique through the counter, padded to about `len` bytes.
fn fresh_ops(cx: &mut CraftContext<'_>, rng: &mut Rng, len: usize) -> Vec<Op> {
    *cx.counter += 1;
    let mut value = format!("byz/{}/", cx.counter).into_bytes();
    while value.len() < len {
        value.push(b'a' + rng.below(26) as u8);
    }
    vec![Op::Put { key: format!("k{}", rng.below(4)).into_bytes(), value }]
}

/// A random accepted event of the attacker's node.
fn random_accepted(node: &Node, rng: &mut Rng) -> Option<StoredEvent> {
    let adapter = node.adapter();
    let n = adapter.n_accepted();
    if n == 0 {
        return None;
    }
    let id = *adapter.accepted_ids().get(rng.index(n))?;
    adapter.event(&id)
}

/// The next `(seq, lamport, deps)` for `author` on everything the node accepted (its own
/// latest event and every tip, up to the deps limit): a causal past as large as the node's
/// view, where its membership in force is the one in force.
fn full_frontier(node: &Node, author: &PublicKey) -> (u64, u64, Vec<EventId>) {
    let adapter = node.adapter();
    let Some(idx) = adapter.roster().idx(author) else { return (1, 1, Vec::new()) };
    let seq = adapter.max_seq(idx) + 1;
    let mut tips = adapter.tips();
    // The own predecessor first, so the deps limit never drops it.
    tips.sort_by_key(|tip| (tip.author != *author, tip.id));
    let deps: Vec<EventId> = tips.iter().take(DEPS_MAX).map(|tip| tip.id).collect();
    let lamport = 1 + deps.iter().filter_map(|d| adapter.meta(d)).map(|meta| meta.lamport).max().unwrap_or(0);
    (seq, lamport, sorted(deps))
}

/// A plausible next `(seq, lamport, deps)` for `author` from the node's view: the author's
/// latest event and a random subset of other tips. It is valid when the author has not forked
/// and the deps are accepted where it arrives.
fn frontier(node: &Node, author: &PublicKey, rng: &mut Rng) -> (u64, u64, Vec<EventId>) {
    let adapter = node.adapter();
    let Some(idx) = node.genesis().member_idx(author) else { return (1, 1, Vec::new()) };
    let seq = adapter.max_seq(idx) + 1;
    let mut deps: Vec<EventId> = if seq > 1 {
        adapter.at_seq(idx, seq - 1).first().copied().into_iter().collect()
    } else {
        Vec::new()
    };
    for tip in adapter.tips() {
        if tip.author != *author && deps.len() < 8 && rng.chance(PPM * 3 / 4) {
            deps.push(tip.id);
        }
    }
    let lamport = 1 + deps.iter().filter_map(|d| adapter.meta(d)).map(|meta| meta.lamport).max().unwrap_or(0);
    (seq, lamport, sorted(deps))
}
