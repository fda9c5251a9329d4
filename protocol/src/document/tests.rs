//! The document's semantics, checked on hand-built event DAGs in every causal order.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::ops::{Deref, Range};

use cairn_crypto::{SecretKey, Signature, hash};
use proptest::prelude::*;

use super::reference::Reference;
use super::*;
use crate::event::{Event, Header, Seen, ops_hash};

const A: MemberIdx = 0;
const B: MemberIdx = 1;
const C: MemberIdx = 2;
const N_AUTHORS: usize = 3;

/// The authors' keys, by index (sorted, as a genesis is).
fn authors() -> Vec<PublicKey> {
    Dag::new().keys.iter().map(SecretKey::public).collect()
}

/// Signed test events with their causal relations; an event is named by its index.
struct Dag {
    /// Sorted by public key, so a key's position is its member index.
    keys: Vec<SecretKey>,
    events: Vec<Verified>,
    deps: Vec<Vec<usize>>,
    own_tip: Vec<Option<usize>>,
}

impl Dag {
    fn new() -> Self {
        let mut keys: Vec<SecretKey> =
            (1..=N_AUTHORS as u8).map(|seed| SecretKey::from_seed(&[seed; 32])).collect();
        keys.sort_by_key(SecretKey::public);
        Self { keys, events: Vec::new(), deps: Vec::new(), own_tip: vec![None; N_AUTHORS] }
    }

    /// The next event on `author`'s latest event, having also seen `seen`.
    fn event(&mut self, author: MemberIdx, seen: &[usize], ops: Vec<Op>) -> usize {
        let idx = self.event_on(author, self.own_tip[author], seen, ops).expect("a new event");
        self.own_tip[author] = Some(idx);
        idx
    }

    /// An event of `author` whose own predecessor is `parent`: a fork when `parent` already
    /// has a successor. `None` if exactly this event exists already.
    fn event_on(
        &mut self,
        author: MemberIdx,
        parent: Option<usize>,
        seen: &[usize],
        ops: Vec<Op>,
    ) -> Option<usize> {
        let seq = parent.map_or(1, |p| self.events[p].seq() + 1);
        let mut deps: Vec<usize> = parent.into_iter().chain(seen.iter().copied()).collect();
        deps.sort_unstable();
        deps.dedup();
        let lamport = 1 + deps.iter().map(|&d| self.events[d].lamport()).max().unwrap_or(0);
        // The clock as the adapter keeps it: the pointwise max over the deps, and the own seq.
        let mut clock = vec![0u64; N_AUTHORS];
        for &dep in &deps {
            for (entry, &seen_seq) in clock.iter_mut().zip(self.events[dep].clock()) {
                *entry = (*entry).max(seen_seq);
            }
        }
        clock[author] = clock[author].max(seq);
        let seen_clocks = self.seen_clocks(author, parent, &ops);
        let dep_ids = deps.iter().map(|&d| self.events[d].id()).collect();
        let event = Event::sign(&self.keys[author], seq, lamport, dep_ids, ops);
        let id = event.id();
        if self.events.iter().any(|e| e.id() == id) {
            return None;
        }
        let bytes = event.encode();
        self.events.push(Verified::new(event, id, bytes, (author, None), clock.into(), seen_clocks));
        self.deps.push(deps);
        Some(self.events.len() - 1)
    }

    /// The seen clocks of `ops` in an event of `author` on `parent`, as the adapter computes
    /// them: the clocks of the named events (by id), and of the author's own events on its
    /// chain at the named seqs.
    fn seen_clocks(&self, author: MemberIdx, parent: Option<usize>, ops: &[Op]) -> SeenClocks {
        let mut chain = Vec::new();
        let mut at = parent;
        while let Some(idx) = at {
            chain.push(idx);
            at = self.deps[idx].iter().copied().find(|&dep| self.events[dep].author_idx() == author);
        }
        let mut clocks = Vec::new();
        for (op_idx, op) in (0u32..).zip(ops) {
            let Some(seen) = op.seen() else { continue };
            let named = seen.events.iter().map(|id| {
                self.events.iter().position(|e| e.id() == *id).expect("a named event is in the dag")
            });
            let own = seen.own.iter().map(|&seq| {
                *chain
                    .iter()
                    .find(|&&idx| self.events[idx].seq() == seq)
                    .expect("a named own seq is on the chain")
            });
            let mut clock = vec![0u64; N_AUTHORS].into_boxed_slice();
            for idx in named.chain(own) {
                for (mine, &theirs) in clock.iter_mut().zip(self.events[idx].clock()) {
                    *mine = (*mine).max(theirs);
                }
            }
            clocks.push((op_idx, clock));
        }
        clocks
    }

    /// The index of the event `id`.
    fn idx_of(&self, id: &EventId) -> usize {
        self.events.iter().position(|e| e.id() == *id).expect("an event of the dag")
    }

    /// A causal order of all events; `choose(n)` picks one of the `n` ready events.
    fn topological_order(&self, mut choose: impl FnMut(usize) -> usize) -> Vec<usize> {
        let mut placed = vec![false; self.events.len()];
        let mut order = Vec::new();
        while order.len() < self.events.len() {
            let ready: Vec<usize> = (0..self.events.len())
                .filter(|&idx| !placed[idx] && self.deps[idx].iter().all(|&dep| placed[dep]))
                .collect();
            let pick = ready[choose(ready.len()) % ready.len()];
            placed[pick] = true;
            order.push(pick);
        }
        order
    }

    fn is_excluded(&self, idx: usize, exclusions: &[(MemberIdx, u64)]) -> bool {
        let event = &self.events[idx];
        exclusions.iter().any(|&(author, from_seq)| event.author_idx() == author && event.seq() >= from_seq)
    }
}

/// A document with the history its exclusions read, fed as the node feeds it.
struct Replica {
    doc: Document,
    history: MemoryHistory,
}

impl Replica {
    fn new() -> Self {
        Self { doc: Document::new(&authors()), history: MemoryHistory::new() }
    }

    fn apply(&mut self, event: &Verified) -> Vec<Change> {
        self.history.record_event(event);
        let Applied { changes, covered } = self.doc.apply(event);
        self.history.record_covered(covered);
        changes
    }

    fn exclude(&mut self, author: MemberIdx, from_seq: u64) -> Vec<Change> {
        let Applied { changes, covered } = self.doc.exclude(author, from_seq, &self.history);
        self.history.record_covered(covered);
        changes
    }
}

impl Deref for Replica {
    type Target = Document;

    fn deref(&self) -> &Document {
        &self.doc
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.into() }
}

fn del(key: &str) -> Op {
    Op::Del { key: key.into() }
}

fn incr(key: &str, delta: i64) -> Op {
    Op::Incr { key: key.into(), delta }
}

fn add(key: &str, element: &str) -> Op {
    Op::Add { key: key.into(), element: element.into() }
}

fn remove(key: &str, element: &str) -> Op {
    Op::Remove { key: key.into(), element: element.into() }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn author_name(author: MemberIdx) -> char {
    char::from(b'A' + u8::try_from(author).unwrap())
}

/// The visible state, one line per non-empty key: `register k = visible [siblings]`,
/// `counter c = sum {author totals}`, `set s = {members}`.
fn render(doc: &Document) -> String {
    let mut out = String::new();
    for key in doc.register_keys() {
        let read = doc.register(key);
        let siblings: Vec<String> =
            read.siblings.iter().map(|s| format!("{}/{}", text(&s.value), author_name(s.author))).collect();
        let visible = read.visible.expect("a listed register has a visible value");
        assert_eq!(Some(&visible), read.siblings.last());
        writeln!(out, "register {} = {} [{}]", text(key), text(&visible.value), siblings.join(" ")).unwrap();
    }
    for key in doc.counter_keys() {
        let totals: Vec<String> = doc
            .counter_totals(key)
            .iter()
            .map(|(author, total)| format!("{}:{total}", author_name(*author)))
            .collect();
        writeln!(out, "counter {} = {} {{{}}}", text(key), doc.counter(key), totals.join(" ")).unwrap();
    }
    for key in doc.set_keys() {
        let members: Vec<String> = doc.set_members(key).iter().map(|m| text(m)).collect();
        writeln!(out, "set {} = {{{}}}", text(key), members.join(" ")).unwrap();
    }
    out
}

fn normalize(expected: &str) -> String {
    expected.lines().map(str::trim).filter(|line| !line.is_empty()).map(|line| format!("{line}\n")).collect()
}

/// Applies every event of `dag` with `exclusions`, three ways: events in creation order then
/// the exclusions; the exclusions first, then the events in another causal order; and only
/// the events the exclusions leave, with no exclusion at all. All three must render as
/// `expected` and have the same digest, which is the empty digest when nothing shows.
fn check(dag: &Dag, exclusions: &[(MemberIdx, u64)], expected: &str) {
    let mut after = Replica::new();
    for event in &dag.events {
        after.apply(event);
    }
    for &(author, from_seq) in exclusions {
        after.exclude(author, from_seq);
    }
    let mut before = Replica::new();
    for &(author, from_seq) in exclusions {
        before.exclude(author, from_seq);
    }
    for idx in dag.topological_order(|n_ready| n_ready - 1) {
        before.apply(&dag.events[idx]);
    }
    let mut never = Replica::new();
    for (idx, event) in dag.events.iter().enumerate() {
        if !dag.is_excluded(idx, exclusions) {
            never.apply(event);
        }
    }
    let rendered = render(&after);
    assert_eq!(rendered, normalize(expected));
    assert_eq!(render(&before), rendered, "exclusion first, another causal order");
    assert_eq!(render(&never), rendered, "excluded events never applied");
    assert_eq!(before.digest(), after.digest());
    assert_eq!(never.digest(), after.digest());
    if rendered.is_empty() {
        assert_eq!(after.digest(), Document::new(&authors()).digest());
    } else {
        assert_ne!(after.digest(), Document::new(&authors()).digest());
    }
}

// ---- registers ------------------------------------------------------------------------

#[test]
fn register_single_write() {
    let mut dag = Dag::new();
    dag.event(A, &[], vec![put("k", "v1")]);
    check(&dag, &[], "register k = v1 [v1/A]");
    let mut doc = Replica::new();
    doc.apply(&dag.events[0]);
    let sibling = Sibling {
        value: b"v1".to_vec(),
        value_held: true,
        author: A,
        lamport: 1,
        event_id: dag.events[0].id(),
        op_idx: 0,
    };
    assert_eq!(doc.register(b"k"), RegisterRead { visible: Some(sibling.clone()), siblings: vec![sibling] });
    assert_eq!(doc.register(b"unknown"), RegisterRead::default());
}

#[test]
fn register_overwrite_in_causal_order() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "v1")]);
    let b1 = dag.event(B, &[a1], vec![put("k", "v2")]);
    dag.event(A, &[b1], vec![put("k", "v3")]);
    check(&dag, &[], "register k = v3 [v3/A]");
}

#[test]
fn register_concurrent_puts_are_siblings() {
    // Equal lamports: the greater author index is visible.
    let mut dag = Dag::new();
    dag.event(B, &[], vec![put("k", "v2")]);
    dag.event(A, &[], vec![put("k", "v1")]);
    check(&dag, &[], "register k = v2 [v1/A v2/B]");

    // The greater lamport is visible whatever the author.
    let mut dag = Dag::new();
    let b1 = dag.event(B, &[], vec![put("other", "x")]);
    dag.event(A, &[b1], vec![put("k", "v1")]);
    dag.event(C, &[], vec![put("k", "v3")]);
    check(
        &dag,
        &[],
        "
        register k = v1 [v3/C v1/A]
        register other = x [x/B]
        ",
    );

    // A put that saw one sibling supersedes only that one.
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "v1")]);
    dag.event(B, &[], vec![put("k", "v2")]);
    dag.event(C, &[a1], vec![put("k", "v3")]);
    check(&dag, &[], "register k = v3 [v2/B v3/C]");
}

#[test]
fn register_del() {
    // A del of a seen value leaves nothing, the same state as an empty document.
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "v1")]);
    dag.event(B, &[a1], vec![del("k")]);
    check(&dag, &[], "");

    // A del concurrent with a put keeps the put.
    let mut dag = Dag::new();
    dag.event(A, &[], vec![put("k", "v1")]);
    dag.event(B, &[], vec![del("k")]);
    check(&dag, &[], "register k = v1 [v1/A]");

    // A del takes out only the siblings it saw.
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "v1")]);
    dag.event(B, &[], vec![put("k", "v2")]);
    dag.event(C, &[a1], vec![del("k")]);
    check(&dag, &[], "register k = v2 [v2/B]");

    // A put after a del shows again.
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "v1")]);
    let b1 = dag.event(B, &[a1], vec![del("k")]);
    dag.event(C, &[b1], vec![put("k", "v3")]);
    check(&dag, &[], "register k = v3 [v3/C]");
}

#[test]
fn register_ops_in_one_event_apply_in_index_order() {
    let mut dag = Dag::new();
    dag.event(
        A,
        &[],
        vec![
            put("two-puts", "first"),
            put("put-del", "gone"),
            del("del-put"),
            put("two-puts", "second"),
            del("put-del"),
            put("del-put", "kept"),
        ],
    );
    check(
        &dag,
        &[],
        "
        register del-put = kept [kept/A]
        register two-puts = second [second/A]
        ",
    );
}

// ---- causal contexts ------------------------------------------------------------------

/// A context naming events by their indexes in the dag (other authors' events, which must be
/// deps) and own seqs.
fn context(dag: &Dag, events: &[usize], own: &[u64]) -> Seen {
    let mut events: Vec<EventId> = events.iter().map(|&idx| dag.events[idx].id()).collect();
    events.sort_unstable();
    Seen { events, own: own.to_vec() }
}

#[test]
fn two_clients_that_read_the_same_value_and_write_on_one_node_make_siblings() {
    // B wrote v1; clients 1 and 2 both read it on A's node (context: B's event), then each
    // writes. A signs both writes, the second after the first, but neither client had read the
    // other's value: the second write keeps the first as a sibling instead of erasing it.
    let mut dag = Dag::new();
    let b1 = dag.event(B, &[], vec![put("k", "v1")]);
    let read = context(&dag, &[b1], &[]);
    let a1 = dag.event(A, &[b1], vec![with_seen(put("k", "client 1"), read.clone())]);
    dag.event(A, &[b1], vec![with_seen(put("k", "client 2"), read)]);
    check(&dag, &[], "register k = client 2 [client 1/A client 2/A]");

    // Without contexts the second write supersedes the first, which its node had seen.
    let mut blind = Dag::new();
    let b1 = blind.event(B, &[], vec![put("k", "v1")]);
    blind.event(A, &[b1], vec![put("k", "client 1")]);
    blind.event(A, &[b1], vec![put("k", "client 2")]);
    check(&blind, &[], "register k = client 2 [client 2/A]");

    // A client that then reads both siblings and writes with their context resolves them;
    // the own earlier write is named by its seq.
    let both = Seen { events: Vec::new(), own: vec![1, 2] };
    dag.event(A, &[], vec![with_seen(put("k", "merged"), both)]);
    check(&dag, &[], "register k = merged [merged/A]");
    let _ = a1;
}

#[test]
fn a_context_supersedes_what_its_events_had_seen_and_nothing_else() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "old")]);
    let b1 = dag.event(B, &[a1], vec![put("k", "read")]);
    let c1 = dag.event(C, &[], vec![put("k", "unread")]);
    // A's next event depends on all three, but its client read only B's value, which had seen
    // A's first.
    dag.event(A, &[b1, c1], vec![with_seen(put("k", "new"), context(&dag, &[b1], &[]))]);
    check(&dag, &[], "register k = new [unread/C new/A]");
}

#[test]
fn an_empty_or_forged_context_never_erases_a_write() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "a")]);
    // An empty context: a blind write that supersedes nothing, though A's put is a dep.
    let b1 = dag.event(B, &[a1], vec![with_seen(put("k", "b"), Seen::default())]);
    check(&dag, &[], "register k = b [a/A b/B]");
    // A delete with an empty context deletes nothing either.
    dag.event(C, &[a1, b1], vec![with_seen(del("k"), Seen::default())]);
    check(&dag, &[], "register k = b [a/A b/B]");
}

#[test]
fn a_delete_with_a_context_keeps_a_concurrent_write() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "seen")]);
    let read = context(&dag, &[a1], &[]);
    let c1 = dag.event(C, &[a1], vec![put("k", "concurrent")]);
    dag.event(B, &[a1, c1], vec![with_seen(del("k"), read)]);
    check(&dag, &[], "register k = concurrent [concurrent/C]");
}

#[test]
fn a_remove_with_a_stale_context_keeps_a_concurrent_add() {
    // A added x; a client read the set on B's node (x, with A's add as its context). Then C's
    // add of x arrived at B, and the client's remove, with the context it read, takes out only
    // A's add.
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![add("s", "x")]);
    let read = context(&dag, &[a1], &[]);
    let c1 = dag.event(C, &[a1], vec![add("s", "x")]);
    dag.event(B, &[a1, c1], vec![with_seen(remove("s", "x"), read.clone())]);
    check(&dag, &[], "set s = {x}");

    // Without the context the remove takes out both adds, which its node had seen.
    let mut blind = Dag::new();
    let a1 = blind.event(A, &[], vec![add("s", "x")]);
    let c1 = blind.event(C, &[a1], vec![add("s", "x")]);
    blind.event(B, &[a1, c1], vec![remove("s", "x")]);
    check(&blind, &[], "");

    // And the doc's read gives each member's context: the events of its live adds.
    let mut replica = Replica::new();
    for event in &dag.events {
        replica.apply(event);
    }
    assert_eq!(replica.set_member_contexts(b"s"), vec![(b"x".to_vec(), vec![dag.events[1].id()])]);
    let _ = read;
}

#[test]
fn an_exclusion_under_a_context_brings_back_exactly_what_a_replay_would() {
    // A (an equivocator, excluded from seq 1) covered B's first put; C wrote with a context
    // naming B's event, and B again with one naming C's only. With A excluded, B's first put
    // stays superseded (C's context named it) although B's second write did not name it:
    // one value, in every order. An exclusion that only re-tested B's first put against the
    // frontier would bring it back.
    let mut dag = Dag::new();
    let b1 = dag.event(B, &[], vec![put("k", "b")]);
    let a1 = dag.event(A, &[b1], vec![put("k", "a")]);
    let c1 = dag.event(C, &[b1], vec![with_seen(put("k", "c"), context(&dag, &[b1], &[]))]);
    dag.event(B, &[a1, c1], vec![with_seen(put("k", "d"), context(&dag, &[c1], &[]))]);
    check(&dag, &[], "register k = d [a/A d/B]");
    check(&dag, &[(A, 1)], "register k = d [d/B]");
}

#[test]
fn an_op_without_a_context_pays_one_pointer_for_the_feature() {
    // A frontier entry's op: the event's shared meta, the op index, and the seen clock of an op
    // with a context behind a thin pointer (what the document's memory grows with per entry).
    assert_eq!(size_of::<OpMeta>(), 24);
}

#[test]
fn client_contexts_round_trip_and_refuse_what_is_not_one() {
    let ids = [EventId([1; 32]), EventId([2; 32])];
    let bytes = encode_context(&ids);
    assert_eq!(bytes.len(), 1 + 64);
    assert_eq!(decode_context(&bytes), Ok(ids.to_vec()));
    assert_eq!(decode_context(&encode_context(&[])), Ok(Vec::new()));
    assert_eq!(decode_context(&[]), Err(ContextError::Version));
    assert_eq!(decode_context(&[2]), Err(ContextError::Version));
    assert_eq!(decode_context(&bytes[..40]), Err(ContextError::Length(7)));
    assert_eq!(decode_context(&encode_context(&[ids[1], ids[0]])), Err(ContextError::Order));
    assert_eq!(decode_context(&encode_context(&[ids[0], ids[0]])), Err(ContextError::Order));
    let many: Vec<EventId> = (0..=CONTEXT_EVENTS_MAX as u32)
        .map(|n| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_be_bytes());
            EventId(id)
        })
        .collect();
    assert_eq!(decode_context(&encode_context(&many)), Err(ContextError::TooMany(many.len())));
    assert_eq!(decode_context(&encode_context(&many[1..])).map(|ids| ids.len()), Ok(CONTEXT_EVENTS_MAX));
}

// ---- counters -------------------------------------------------------------------------

#[test]
fn counter_sums_per_author() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![incr("c", 5)]);
    dag.event(A, &[], vec![incr("c", -2), incr("d", 1)]);
    dag.event(B, &[a1], vec![incr("c", 10)]);
    dag.event(C, &[], vec![incr("c", -20)]);
    check(
        &dag,
        &[],
        "
        counter c = -7 {A:3 B:10 C:-20}
        counter d = 1 {A:1}
        ",
    );
    let mut doc = Replica::new();
    assert_eq!(doc.counter(b"c"), 0);
    for event in &dag.events {
        doc.apply(event);
    }
    assert_eq!(doc.counter(b"c"), -7);
}

#[test]
fn counter_i64_extremes_do_not_overflow() {
    let mut dag = Dag::new();
    dag.event(A, &[], vec![incr("max", i64::MAX), incr("max", i64::MAX), incr("min", i64::MIN)]);
    dag.event(A, &[], vec![incr("max", i64::MAX), incr("min", i64::MIN)]);
    dag.event(B, &[], vec![incr("min", i64::MIN), incr("mixed", i64::MAX)]);
    dag.event(C, &[], vec![incr("mixed", i64::MIN)]);
    check(
        &dag,
        &[],
        "
        counter max = 27670116110564327421 {A:27670116110564327421}
        counter min = -27670116110564327424 {A:-18446744073709551616 B:-9223372036854775808}
        counter mixed = -1 {B:9223372036854775807 C:-9223372036854775808}
        ",
    );
}

#[test]
fn counter_zero_totals() {
    // An author's total back at zero leaves no trace.
    let mut dag = Dag::new();
    dag.event(A, &[], vec![incr("c", 5)]);
    dag.event(A, &[], vec![incr("c", -5)]);
    dag.event(B, &[], vec![incr("c", 0), incr("d", 3), incr("d", -3)]);
    check(&dag, &[], "");

    // Authors' totals that cancel out are still state.
    let mut dag = Dag::new();
    dag.event(A, &[], vec![incr("c", 5)]);
    dag.event(B, &[], vec![incr("c", -5)]);
    check(&dag, &[], "counter c = 0 {A:5 B:-5}");
}

// ---- sets -----------------------------------------------------------------------------

#[test]
fn set_add_and_remove() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![add("s", "x"), add("s", "y")]);
    dag.event(B, &[a1], vec![remove("s", "x")]);
    check(&dag, &[], "set s = {y}");

    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![add("s", "x")]);
    dag.event(B, &[a1], vec![remove("s", "x")]);
    check(&dag, &[], "");
}

#[test]
fn set_concurrent_add_wins_over_remove() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![add("s", "x")]);
    dag.event(B, &[a1], vec![remove("s", "x")]);
    dag.event(C, &[a1], vec![add("s", "x")]);
    check(&dag, &[], "set s = {x}");
}

#[test]
fn set_remove_of_unseen_add_does_nothing() {
    let mut dag = Dag::new();
    dag.event(A, &[], vec![add("s", "x")]);
    dag.event(B, &[], vec![remove("s", "x"), remove("s", "never-added")]);
    check(&dag, &[], "set s = {x}");
}

#[test]
fn set_readd_after_remove() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![add("s", "x")]);
    let b1 = dag.event(B, &[a1], vec![remove("s", "x")]);
    dag.event(A, &[b1], vec![add("s", "x")]);
    check(&dag, &[], "set s = {x}");
}

#[test]
fn set_ops_in_one_event_apply_in_index_order() {
    let mut dag = Dag::new();
    dag.event(
        A,
        &[],
        vec![add("s", "gone"), remove("s", "kept"), add("t", "z"), remove("s", "gone"), add("s", "kept")],
    );
    check(
        &dag,
        &[],
        "
        set s = {kept}
        set t = {z}
        ",
    );
}

// ---- exclusion ------------------------------------------------------------------------

#[test]
fn exclusion_equals_never_applying_the_ops() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "a1"), incr("c", 1), add("s", "x")]);
    dag.event(A, &[], vec![put("k", "a2"), incr("c", 2), add("s", "y"), put("only-a2", "v")]);
    let a3 = dag.event(A, &[], vec![incr("c", 4), remove("s", "x")]);
    let b1 = dag.event(B, &[a1], vec![incr("c", 8), put("b", "b1")]);
    dag.event(C, &[a3, b1], vec![add("s", "z")]);
    check(
        &dag,
        &[],
        "
        register b = b1 [b1/B]
        register k = a2 [a2/A]
        register only-a2 = v [v/A]
        counter c = 15 {A:7 B:8}
        set s = {y z}
        ",
    );
    check(
        &dag,
        &[(A, 2)],
        "
        register b = b1 [b1/B]
        register k = a1 [a1/A]
        counter c = 9 {A:1 B:8}
        set s = {x z}
        ",
    );
    check(
        &dag,
        &[(A, 1)],
        "
        register b = b1 [b1/B]
        counter c = 8 {B:8}
        set s = {z}
        ",
    );
}

#[test]
fn exclusion_uncovers_what_only_the_excluded_op_superseded() {
    let mut dag = Dag::new();
    let c1 = dag.event(C, &[], vec![put("k", "v0"), add("s", "x")]);
    dag.event(A, &[c1], vec![put("k", "v1"), remove("s", "x")]);
    dag.event(B, &[], vec![put("k", "v2")]);
    check(&dag, &[], "register k = v1 [v2/B v1/A]");
    check(
        &dag,
        &[(A, 1)],
        "
        register k = v0 [v2/B v0/C]
        set s = {x}
        ",
    );
}

#[test]
fn exclusion_keeps_hidden_what_an_included_op_superseded() {
    // B's put saw v0 through A's event, so v0 stays superseded when A's put goes.
    let mut dag = Dag::new();
    let c1 = dag.event(C, &[], vec![put("k", "v0"), add("s", "x")]);
    let a1 = dag.event(A, &[c1], vec![put("k", "v1")]);
    dag.event(B, &[a1], vec![put("k", "v2"), remove("s", "x")]);
    check(&dag, &[], "register k = v2 [v2/B]");
    check(&dag, &[(A, 1)], "register k = v2 [v2/B]");
}

#[test]
fn exclusion_of_a_fork() {
    // A signs two events with seq 2; B sees both. Until the exclusion, the clock test is
    // wrong about A's forked ops; after it, they are gone and the rest is exact.
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "a1"), add("s", "x"), incr("c", 1)]);
    let a2 = dag.event_on(A, Some(a1), &[], vec![put("k", "left"), remove("s", "x")]).unwrap();
    let a2_fork = dag.event_on(A, Some(a1), &[], vec![put("k", "right"), incr("c", 10)]).unwrap();
    dag.event_on(A, Some(a2_fork), &[], vec![put("fork-only", "v")]).unwrap();
    let b1 = dag.event(B, &[a2, a2_fork], vec![put("b", "b1"), add("s", "y")]);
    dag.event(C, &[b1], vec![incr("c", 100)]);
    check(
        &dag,
        &[(A, 2)],
        "
        register b = b1 [b1/B]
        register k = a1 [a1/A]
        counter c = 101 {A:1 C:100}
        set s = {x y}
        ",
    );
}

#[test]
fn exclusion_drops_what_an_op_it_brings_back_has_seen() {
    // A forks at seq 2. A's seq 3 on one branch covers B's first put; A's seq 2 on the other
    // covers B's second put, which saw the first; C's put saw only the first branch, so the
    // clock test takes it for having seen A's seq 2 on the other branch too. Excluding A from 3
    // brings B's first put back (C's put did not see it); excluding A from 2 brings B's second
    // put back, which has B's first in its past: that one must leave the frontier again.
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![incr("c", 1)]);
    let b1 = dag.event(B, &[], vec![put("k", "b1")]);
    let a2_fork = dag.event_on(A, Some(a1), &[], vec![incr("c", 2)]).unwrap();
    dag.event_on(A, Some(a2_fork), &[b1], vec![put("k", "a3")]).unwrap();
    let b2 = dag.event(B, &[], vec![put("k", "b2")]);
    dag.event_on(A, Some(a1), &[b2], vec![put("k", "a2")]).unwrap();
    dag.event(C, &[a2_fork], vec![put("k", "c1")]);
    check(
        &dag,
        &[(A, 3), (A, 2)],
        "
        register k = c1 [b2/B c1/C]
        counter c = 1 {A:1}
        ",
    );
}

#[test]
fn exclusion_only_lowers() {
    let mut dag = Dag::new();
    for seq in 1..=4 {
        dag.event(A, &[], vec![incr("c", 1 << seq)]);
    }
    let mut doc = Replica::new();
    for event in &dag.events {
        doc.apply(event);
    }
    assert_eq!(doc.excluded_from(A), None);
    let counter_c = vec![Change { kind: KeyKind::Counter, key: b"c".to_vec() }];
    assert_eq!(doc.exclude(A, 4), counter_c);
    assert_eq!(doc.counter(b"c"), 2 + 4 + 8);
    assert_eq!(doc.exclude(A, 4), []);
    assert_eq!(doc.exclude(A, 9), []);
    assert_eq!(doc.excluded_from(A), Some(4));
    assert_eq!(doc.exclude(A, 2), counter_c);
    assert_eq!(doc.counter(b"c"), 2);
    assert_eq!(doc.excluded_from(A), Some(2));
    // Nothing of A's is left from seq 2 on, so a lower exclusion there changes nothing.
    let mut dag = Dag::new();
    dag.event(A, &[], vec![incr("c", 1)]);
    dag.event(A, &[], vec![put("k", "v")]);
    let mut doc = Replica::new();
    doc.apply(&dag.events[0]);
    doc.apply(&dag.events[1]);
    assert_eq!(doc.exclude(A, 2), [Change { kind: KeyKind::Register, key: b"k".to_vec() }]);
    assert_eq!(doc.exclude(A, 3), []);
    assert_eq!(doc.exclude(B, 1), []);
    // Events at or above the exclusion are skipped when they arrive.
    let mut late = Replica::new();
    late.exclude(A, 2);
    late.apply(&dag.events[0]);
    assert_eq!(late.apply(&dag.events[1]), []);
    assert_eq!(late.digest(), doc.digest());
}

#[test]
fn changes_name_each_key_whose_visible_state_changed() {
    let mut dag = Dag::new();
    let a1 = dag.event(
        A,
        &[],
        vec![
            put("k2", "v"),
            add("s", "x"),
            put("k1", "v"),
            incr("zero", 3),
            incr("c", 3),
            incr("zero", -3),
            put("put-del", "v"),
            del("put-del"),
            del("never-put"),
            add("s", "y"),
            add("add-remove", "x"),
            remove("add-remove", "x"),
        ],
    );
    let b1 = dag.event(B, &[a1], vec![add("s", "x"), put("k1", "w")]);
    let c1 = dag.event(C, &[a1], vec![remove("s", "x"), del("k2"), incr("c", 0)]);
    let mut doc = Replica::new();
    let change = |kind, key: &str| Change { kind, key: key.as_bytes().to_vec() };
    assert_eq!(
        doc.apply(&dag.events[a1]),
        [
            change(KeyKind::Register, "k1"),
            change(KeyKind::Register, "k2"),
            change(KeyKind::Counter, "c"),
            change(KeyKind::Set, "s"),
        ]
    );
    // Another tag of a present element changes nothing visible.
    assert_eq!(doc.apply(&dag.events[b1]), [change(KeyKind::Register, "k1")]);
    // x keeps B's concurrent tag.
    assert_eq!(doc.apply(&dag.events[c1]), [change(KeyKind::Register, "k2")]);
    assert_eq!(doc.set_members(b"s"), [b"x".to_vec(), b"y".to_vec()]);
    assert_eq!(
        doc.exclude(B, 1),
        [change(KeyKind::Register, "k1"), change(KeyKind::Set, "s")],
        "k1 shows A's value again; x goes, C removed the tag it saw"
    );
    assert_eq!(doc.set_members(b"s"), [b"y".to_vec()]);
    assert_eq!(doc.register(b"k1").visible.unwrap().value, b"v");
}

// ---- digest ---------------------------------------------------------------------------

#[test]
fn empty_digest_vector() {
    // SHA-256("cairn/document/v3" ‖ three u64 zero counts), computed with `sha256sum`.
    assert_eq!(
        hex::encode(Document::new(&authors()).digest()),
        "f276e45ea96397bc861d6c154b2e7899365fa7d60bc9168dc4aac29f6a404c9e"
    );
}

#[test]
fn digest_follows_the_documented_layout() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "v1"), incr("c", -7), add("s", "y"), add("s", "x")]);
    let b1 = dag.event(B, &[], vec![put("k", "v2"), incr("c", 9), put("gone", "v"), del("gone")]);
    let mut doc = Replica::new();
    doc.apply(&dag.events[a1]);
    doc.apply(&dag.events[b1]);

    let mut state = Vec::new();
    let u64_le = |state: &mut Vec<u8>, n: u64| state.extend_from_slice(&n.to_le_bytes());
    let bytes = |state: &mut Vec<u8>, b: &[u8]| {
        state.extend_from_slice(&(b.len() as u64).to_le_bytes());
        state.extend_from_slice(b);
    };
    u64_le(&mut state, 1); // registers
    bytes(&mut state, b"k");
    u64_le(&mut state, 2);
    for (event, value) in [(a1, b"v1"), (b1, b"v2")] {
        state.extend_from_slice(&dag.events[event].id().0);
        u64_le(&mut state, 0); // op index
        state.extend_from_slice(dag.events[event].event().header.author.as_bytes());
        u64_le(&mut state, 1); // lamport
        state.extend_from_slice(&(value.len() as u64).to_le_bytes());
        state.extend_from_slice(&hash(Domain::Value, value));
    }
    u64_le(&mut state, 1); // counters
    bytes(&mut state, b"c");
    u64_le(&mut state, 2);
    // A's key sorts before B's (the dag's keys are sorted).
    state.extend_from_slice(dag.keys[A].public().as_bytes());
    state.extend_from_slice(&(-7i128).to_le_bytes());
    state.extend_from_slice(dag.keys[B].public().as_bytes());
    state.extend_from_slice(&9i128.to_le_bytes());
    u64_le(&mut state, 1); // sets
    bytes(&mut state, b"s");
    u64_le(&mut state, 2);
    bytes(&mut state, b"x");
    bytes(&mut state, b"y");
    assert_eq!(doc.digest(), hash(Domain::Document, &state));
}

// ---- convergence ----------------------------------------------------------------------

const REGISTER_KEYS: [&str; 2] = ["r0", "r1"];
const COUNTER_KEYS: [&str; 2] = ["c0", "c1"];
const SET_KEYS: [&str; 2] = ["s0", "s1"];
const VALUES: [&str; 4] = ["v0", "v1", "v2", "v3"];
const ELEMENTS: [&str; 3] = ["x", "y", "z"];

#[derive(Clone, Debug)]
enum OpSpec {
    Put(usize, usize),
    Del(usize),
    Incr(usize, i64),
    Add(usize, usize),
    Remove(usize, usize),
    /// An op of the kinds above (never `Incr`) with a causal context: the mask's low four bits
    /// pick among the event's deps of other authors, the high four among its author's own
    /// earlier seqs.
    Seen(Box<Self>, u8),
}

impl OpSpec {
    fn op(&self) -> Op {
        self.op_in(&[], &[])
    }

    /// The op, a context naming what its mask picks of `deps` and `own`.
    fn op_in(&self, deps: &[EventId], own: &[u64]) -> Op {
        match self {
            &Self::Put(key, value) => put(REGISTER_KEYS[key], VALUES[value]),
            &Self::Del(key) => del(REGISTER_KEYS[key]),
            &Self::Incr(key, delta) => incr(COUNTER_KEYS[key], delta),
            &Self::Add(key, element) => add(SET_KEYS[key], ELEMENTS[element]),
            &Self::Remove(key, element) => remove(SET_KEYS[key], ELEMENTS[element]),
            Self::Seen(op, mask) => {
                let pick = |n: usize, bits: u8| (0..n.min(4)).filter(move |i| bits & (1 << i) != 0);
                let mut events: Vec<EventId> = pick(deps.len(), mask & 0xf).map(|i| deps[i]).collect();
                events.sort_unstable();
                let own: Vec<u64> = pick(own.len(), mask >> 4).map(|i| own[i]).collect();
                with_seen(op.op(), Seen { events, own })
            }
        }
    }
}

/// `op` with the causal context `seen`.
fn with_seen(op: Op, seen: Seen) -> Op {
    let op = op.with_seen(seen);
    assert!(op.seen().is_some(), "{op:?} takes no context");
    op
}

/// Wraps some of the ops `plain` gives in a causal context (never an `Incr`).
fn with_contexts(plain: impl Strategy<Value = OpSpec>) -> impl Strategy<Value = OpSpec> {
    (plain, proptest::option::weighted(0.4, any::<u8>())).prop_map(|(op, mask)| match (op, mask) {
        (OpSpec::Incr(key, delta), _) => OpSpec::Incr(key, delta),
        (op, Some(mask)) => OpSpec::Seen(Box::new(op), mask),
        (op, None) => op,
    })
}

fn op_spec() -> impl Strategy<Value = OpSpec> {
    prop_oneof![
        (0..2usize, 0..VALUES.len()).prop_map(|(key, value)| OpSpec::Put(key, value)),
        (0..2usize).prop_map(OpSpec::Del),
        (0..2usize, prop_oneof![4 => -3i64..=3, 1 => any::<i64>()])
            .prop_map(|(key, delta)| OpSpec::Incr(key, delta)),
        (0..2usize, 0..ELEMENTS.len()).prop_map(|(key, element)| OpSpec::Add(key, element)),
        (0..2usize, 0..ELEMENTS.len()).prop_map(|(key, element)| OpSpec::Remove(key, element)),
    ]
}

/// One new event: its author; for a forking author sometimes a fork (a branch and a seq on it to fork at);
/// which of the author's branches to extend; which other tips it sees (a bit mask); its ops.
#[derive(Clone, Debug)]
struct StepSpec {
    author: MemberIdx,
    fork: Option<(usize, usize)>,
    branch: usize,
    seen_mask: u32,
    ops: Vec<OpSpec>,
}

/// A step that forks with probability `fork_weight` (for an author that forks).
fn step_spec(fork_weight: f64) -> impl Strategy<Value = StepSpec> {
    step_spec_with(fork_weight, with_contexts(op_spec()))
}

/// Ops on one register and one set element only: every op competes with every other.
fn contended_op_spec() -> impl Strategy<Value = OpSpec> {
    prop_oneof![
        (0..VALUES.len()).prop_map(|value| OpSpec::Put(0, value)),
        Just(OpSpec::Del(0)),
        Just(OpSpec::Add(0, 0)),
        Just(OpSpec::Remove(0, 0)),
    ]
}

fn step_spec_with(fork_weight: f64, ops: impl Strategy<Value = OpSpec>) -> impl Strategy<Value = StepSpec> {
    (
        0..N_AUTHORS,
        proptest::option::weighted(fork_weight, (any::<usize>(), any::<usize>())),
        any::<usize>(),
        any::<u32>(),
        proptest::collection::vec(ops, 1..4),
    )
        .prop_map(|(author, fork, branch, seen_mask, ops)| StepSpec {
            author,
            fork,
            branch,
            seen_mask,
            ops,
        })
}

/// Builds the events. Only the authors in `forkers` fork; the others each keep one chain.
fn build(steps: &[StepSpec], forkers: &[MemberIdx]) -> Dag {
    let mut dag = Dag::new();
    // Per author, its branches, each the chain of its event indexes from seq 1.
    let mut branches: Vec<Vec<Vec<usize>>> = vec![vec![Vec::new()]; N_AUTHORS];
    for step in steps {
        let author = step.author;
        let (mut chain, is_fork) = match step.fork {
            Some((branch, at)) if forkers.contains(&author) && !branches[author][0].is_empty() => {
                let chain = &branches[author][branch % branches[author].len()];
                let seq = 1 + at % chain.len();
                (chain[..seq - 1].to_vec(), true)
            }
            _ => {
                let n_branches = branches[author].len();
                (branches[author][step.branch % n_branches].clone(), false)
            }
        };
        // The mask picks among the other authors' branch tips, or (its top bit set) among
        // their latest events, tips or not.
        let seeable: Vec<usize> = if step.seen_mask >> 31 == 0 {
            (0..N_AUTHORS)
                .filter(|&other| other != author)
                .flat_map(|other| branches[other].iter().filter_map(|chain| chain.last().copied()))
                .collect()
        } else {
            (0..dag.events.len())
                .rev()
                .filter(|&idx| dag.events[idx].author_idx() != author)
                .take(31)
                .collect()
        };
        let seen: Vec<usize> = seeable
            .iter()
            .enumerate()
            .filter(|&(position, _)| position < 31 && step.seen_mask & (1 << position) != 0)
            .map(|(_, &event)| event)
            .collect();
        // Contexts name deps of other authors and the author's own earlier seqs.
        let mut dep_ids: Vec<EventId> = seen.iter().map(|&idx| dag.events[idx].id()).collect();
        dep_ids.sort_unstable();
        dep_ids.dedup();
        let own: Vec<u64> = (1..=chain.len() as u64).collect();
        let ops = step.ops.iter().map(|op| op.op_in(&dep_ids, &own)).collect();
        let Some(idx) = dag.event_on(author, chain.last().copied(), &seen, ops) else {
            continue;
        };
        if is_fork {
            chain.push(idx);
            branches[author].push(chain);
        } else {
            let n_branches = branches[author].len();
            branches[author][step.branch % n_branches].push(idx);
        }
    }
    dag
}

/// The lowest seq at which A has two different events.
fn lowest_fork_seq(dag: &Dag) -> Option<u64> {
    let mut ids_by_seq: BTreeMap<u64, BTreeSet<EventId>> = BTreeMap::new();
    for event in dag.events.iter().filter(|e| e.author_idx() == A) {
        ids_by_seq.entry(event.seq()).or_default().insert(event.id());
    }
    ids_by_seq.into_iter().find(|(_, ids)| ids.len() > 1).map(|(seq, _)| seq)
}

/// Per counter key, its value and its non-zero author totals.
type CounterReads = BTreeMap<String, (i128, Vec<(MemberIdx, i128)>)>;

/// Everything a reader can see of the document at the keys the proptest uses.
#[derive(Debug, PartialEq, Eq)]
struct Reads {
    registers: BTreeMap<String, RegisterRead>,
    counters: CounterReads,
    sets: BTreeMap<String, Vec<Vec<u8>>>,
    listed: [Vec<Vec<u8>>; 3],
    digest: [u8; 32],
}

/// What the tests read of a document, the frontier one or the replay reference.
trait View {
    fn register(&self, key: &[u8]) -> RegisterRead;
    fn counter(&self, key: &[u8]) -> i128;
    fn counter_totals(&self, key: &[u8]) -> Vec<(MemberIdx, i128)>;
    fn set_members(&self, key: &[u8]) -> Vec<Vec<u8>>;
    /// The listed keys of each kind: registers, counters, sets.
    fn listed(&self) -> [Vec<Vec<u8>>; 3];
    fn digest(&self) -> [u8; 32];
}

/// The two documents answer the same reads with their own methods of the same names.
macro_rules! impl_view {
    ($type:ty) => {
        impl View for $type {
            fn register(&self, key: &[u8]) -> RegisterRead {
                Self::register(self, key)
            }

            fn counter(&self, key: &[u8]) -> i128 {
                Self::counter(self, key)
            }

            fn counter_totals(&self, key: &[u8]) -> Vec<(MemberIdx, i128)> {
                Self::counter_totals(self, key)
            }

            fn set_members(&self, key: &[u8]) -> Vec<Vec<u8>> {
                Self::set_members(self, key)
            }

            fn listed(&self) -> [Vec<Vec<u8>>; 3] {
                [
                    self.register_keys().map(<[u8]>::to_vec).collect(),
                    self.counter_keys().map(<[u8]>::to_vec).collect(),
                    self.set_keys().map(<[u8]>::to_vec).collect(),
                ]
            }

            fn digest(&self) -> [u8; 32] {
                Self::digest(self)
            }
        }
    };
}

impl_view!(Document);
impl_view!(Reference);

fn reads(doc: &impl View) -> Reads {
    Reads {
        registers: REGISTER_KEYS.iter().map(|&k| (k.to_owned(), doc.register(k.as_bytes()))).collect(),
        counters: COUNTER_KEYS
            .iter()
            .map(|&k| (k.to_owned(), (doc.counter(k.as_bytes()), doc.counter_totals(k.as_bytes()))))
            .collect(),
        sets: SET_KEYS.iter().map(|&k| (k.to_owned(), doc.set_members(k.as_bytes()))).collect(),
        listed: doc.listed(),
        digest: doc.digest(),
    }
}

/// The keys whose visible state differs between two reads.
fn changed(before: &Reads, after: &Reads) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut push = |kind, key: &String, differs: bool| {
        if differs {
            changes.push(Change { kind, key: key.as_bytes().to_vec() });
        }
    };
    for (key, read) in &after.registers {
        push(KeyKind::Register, key, before.registers[key] != *read);
    }
    for (key, (_, totals)) in &after.counters {
        push(KeyKind::Counter, key, before.counters[key].1 != *totals);
    }
    for (key, members) in &after.sets {
        push(KeyKind::Set, key, before.sets[key] != *members);
    }
    changes.sort();
    changes
}

/// The document computed straight from the definitions over the included ops, with the
/// causal past taken from the event graph rather than from clocks.
fn model(dag: &Dag, exclusions: &[(MemberIdx, u64)]) -> Reads {
    let n_events = dag.events.len();
    let mut ancestors = vec![vec![false; n_events]; n_events];
    for idx in 0..n_events {
        for &dep in &dag.deps[idx] {
            // Deps come before their dependents, so `ancestors[dep]` is complete.
            let of_dep = ancestors[dep].clone();
            ancestors[idx][dep] = true;
            for (is_ancestor, &of_dep) in ancestors[idx].iter_mut().zip(&of_dep) {
                *is_ancestor |= of_dep;
            }
        }
    }
    // (event, op index, op) of every included op.
    let ops: Vec<(usize, u32, &Op)> = (0..n_events)
        .filter(|&idx| !dag.is_excluded(idx, exclusions))
        .flat_map(|idx| {
            dag.events[idx].event().ops.iter().enumerate().map(move |(op_idx, op)| (idx, op_idx as u32, op))
        })
        .collect();
    let seen = |x: (usize, u32), y: (usize, u32)| if x.0 == y.0 { x.1 < y.1 } else { ancestors[y.0][x.0] };
    // The events a context of an op of event `y` names: by id, and the author's own events in
    // `y`'s causal past at the named seqs.
    let named = |y: usize, context: &Seen| -> Vec<usize> {
        let author = dag.events[y].author_idx();
        let own = context.own.iter().filter_map(|&seq| {
            (0..n_events).find(|&i| {
                ancestors[y][i] && dag.events[i].author_idx() == author && dag.events[i].seq() == seq
            })
        });
        context.events.iter().map(|id| dag.idx_of(id)).chain(own).collect()
    };
    // Whether op `y` supersedes op `x` on its key: `x` in its causal past, or with a context
    // in the causal past of (or in) an event the context names.
    let supersedes = |x: (usize, u32), y: (usize, u32), op: &Op| match op.seen() {
        None => seen(x, y),
        Some(context) => x.0 != y.0 && named(y.0, context).into_iter().any(|n| n == x.0 || ancestors[n][x.0]),
    };

    let mut registers = BTreeMap::new();
    for key in REGISTER_KEYS {
        let writes: Vec<_> = ops
            .iter()
            .filter(|(_, _, op)| {
                matches!(op, Op::Put { .. } | Op::Del { .. } | Op::PutSeen { .. } | Op::DelSeen { .. })
                    && op.key() == key.as_bytes()
            })
            .collect();
        let mut siblings: Vec<Sibling> = writes
            .iter()
            .filter_map(|&&(idx, op_idx, op)| {
                let (Op::Put { value, .. } | Op::PutSeen { value, .. }) = op else { return None };
                let superseded = writes.iter().any(|&&(other, other_op_idx, other_op)| {
                    (other, other_op_idx) != (idx, op_idx)
                        && supersedes((idx, op_idx), (other, other_op_idx), other_op)
                });
                let event = &dag.events[idx];
                // The document holds small values; larger ones are read from their events.
                let value_held = value.len() <= VALUE_INLINE_BYTES_MAX;
                (!superseded).then(|| Sibling {
                    value: if value_held { value.clone() } else { Vec::new() },
                    value_held,
                    author: event.author_idx(),
                    lamport: event.lamport(),
                    event_id: event.id(),
                    op_idx,
                })
            })
            .collect();
        siblings.sort_by_key(|s| (s.lamport, s.author, s.event_id, s.op_idx));
        registers.insert(key.to_owned(), RegisterRead { visible: siblings.last().cloned(), siblings });
    }

    let mut counters = BTreeMap::new();
    for key in COUNTER_KEYS {
        let mut totals: BTreeMap<MemberIdx, i128> = BTreeMap::new();
        for &(idx, _, op) in &ops {
            if let Op::Incr { key: op_key, delta } = op
                && op_key == key.as_bytes()
            {
                *totals.entry(dag.events[idx].author_idx()).or_default() += i128::from(*delta);
            }
        }
        let totals: Vec<(MemberIdx, i128)> = totals.into_iter().filter(|&(_, total)| total != 0).collect();
        counters.insert(key.to_owned(), (totals.iter().map(|&(_, total)| total).sum(), totals));
    }

    let mut sets = BTreeMap::new();
    for key in SET_KEYS {
        let mut members = Vec::new();
        for element in ELEMENTS {
            let of_element = |want_add: bool| {
                ops.iter().filter(move |(_, _, op)| match op {
                    Op::Add { key: k, element: e } | Op::AddSeen { key: k, element: e, .. } => {
                        want_add && k == key.as_bytes() && e == element.as_bytes()
                    }
                    Op::Remove { key: k, element: e } | Op::RemoveSeen { key: k, element: e, .. } => {
                        !want_add && k == key.as_bytes() && e == element.as_bytes()
                    }
                    _ => false,
                })
            };
            // A tag is live unless a remove takes it out; an add with a context that does not
            // name it leaves it, and one that names it takes it out while making its own.
            let is_member = of_element(true).any(|&(idx, op_idx, _)| {
                !of_element(false)
                    .any(|&(other, other_op_idx, op)| supersedes((idx, op_idx), (other, other_op_idx), op))
            });
            if is_member {
                members.push(element.as_bytes().to_vec());
            }
        }
        sets.insert(key.to_owned(), members);
    }

    let listed = [
        registers
            .iter()
            .filter(|(_, r)| !r.siblings.is_empty())
            .map(|(k, _)| k.as_bytes().to_vec())
            .collect(),
        counters.iter().filter(|(_, (_, t))| !t.is_empty()).map(|(k, _)| k.as_bytes().to_vec()).collect(),
        sets.iter().filter(|(_, m)| !m.is_empty()).map(|(k, _)| k.as_bytes().to_vec()).collect(),
    ];
    let digest = model_digest(&registers, &counters, &sets);
    Reads { registers, counters, sets, listed, digest }
}

/// The digest layout of the module documentation, written out a second time.
fn model_digest(
    registers: &BTreeMap<String, RegisterRead>,
    counters: &CounterReads,
    sets: &BTreeMap<String, Vec<Vec<u8>>>,
) -> [u8; 32] {
    // The test authors' keys are sorted, so index order is key order.
    let authors = authors();
    let mut state = Vec::new();
    let u64_le = |state: &mut Vec<u8>, n: usize| state.extend_from_slice(&(n as u64).to_le_bytes());
    let bytes = |state: &mut Vec<u8>, b: &[u8]| {
        u64_le(state, b.len());
        state.extend_from_slice(b);
    };
    let registers: Vec<_> = registers.iter().filter(|(_, r)| !r.siblings.is_empty()).collect();
    u64_le(&mut state, registers.len());
    for (key, read) in registers {
        bytes(&mut state, key.as_bytes());
        u64_le(&mut state, read.siblings.len());
        for sibling in &read.siblings {
            state.extend_from_slice(&sibling.event_id.0);
            u64_le(&mut state, sibling.op_idx as usize);
            state.extend_from_slice(authors[sibling.author].as_bytes());
            state.extend_from_slice(&sibling.lamport.to_le_bytes());
            assert!(sibling.value_held, "the generated values are small enough to be held");
            state.extend_from_slice(&(sibling.value.len() as u64).to_le_bytes());
            state.extend_from_slice(&hash(Domain::Value, &sibling.value));
        }
    }
    let counters: Vec<_> = counters.iter().filter(|(_, (_, totals))| !totals.is_empty()).collect();
    u64_le(&mut state, counters.len());
    for (key, (_, totals)) in counters {
        bytes(&mut state, key.as_bytes());
        u64_le(&mut state, totals.len());
        for &(author, total) in totals {
            state.extend_from_slice(authors[author].as_bytes());
            state.extend_from_slice(&total.to_le_bytes());
        }
    }
    let sets: Vec<_> = sets.iter().filter(|(_, members)| !members.is_empty()).collect();
    u64_le(&mut state, sets.len());
    for (key, members) in sets {
        bytes(&mut state, key.as_bytes());
        u64_le(&mut state, members.len());
        for member in members {
            bytes(&mut state, member);
        }
    }
    hash(Domain::Document, &state)
}

/// Applies `order` to a fresh document, running each `(point, from_seq)` exclusion of A
/// before the event at `point` (after all of them for `point == order.len()`), and checks
/// that every call reports exactly the keys whose visible state changed.
fn run(dag: &Dag, order: &[usize], exclusions: &[(usize, u64)]) -> Replica {
    #[derive(Debug)]
    enum Step {
        Exclude(u64),
        Apply(usize),
    }
    let mut doc = Replica::new();
    let mut last = reads(&doc.doc);
    for point in 0..=order.len() {
        let excludes =
            exclusions.iter().filter(|&&(at, _)| at == point).map(|&(_, from_seq)| Step::Exclude(from_seq));
        for step in excludes.chain(order.get(point).map(|&idx| Step::Apply(idx))) {
            let changes = match step {
                Step::Apply(idx) => doc.apply(&dag.events[idx]),
                Step::Exclude(from_seq) => doc.exclude(A, from_seq),
            };
            let now = reads(&doc.doc);
            assert_eq!(changes, changed(&last, &now), "at point {point}, {step:?}");
            last = now;
        }
    }
    doc
}

proptest! {
    #[test]
    fn converges_whatever_the_order_and_the_time_of_exclusion(
        steps in proptest::collection::vec(step_spec(0.15), 1..24),
        order_choices in proptest::array::uniform2(proptest::collection::vec(any::<usize>(), 24)),
        exclude_without_fork in any::<bool>(),
        from_seq_choice in any::<u64>(),
        higher_first in proptest::option::of(0..3u64),
        points in proptest::array::uniform3(any::<usize>()),
    ) {
        let dag = build(&steps, &[A]);
        let n_events = dag.events.len();
        let a_seq_max = dag.events.iter().filter(|e| e.author_idx() == A).map(Verified::seq).max();
        // A fork must be excluded at or below its seq; without one, exclusion is optional.
        let from_seq = match lowest_fork_seq(&dag) {
            Some(fork_seq) => Some(1 + from_seq_choice % fork_seq),
            None if exclude_without_fork => Some(1 + from_seq_choice % (a_seq_max.unwrap_or(0) + 1)),
            None => None,
        };
        let [choices_1, choices_2] = order_choices;
        let mut choices_1 = choices_1.into_iter().cycle();
        let mut choices_2 = choices_2.into_iter().cycle();
        let order_1 = dag.topological_order(|n| choices_1.next().unwrap() % n);
        let order_2 = dag.topological_order(|n| choices_2.next().unwrap() % n);
        let point = |choice: usize| choice % (n_events + 1);

        // Document 1 may first exclude at a higher seq, then lowers it; document 2 excludes
        // once; document 3 excludes before anything arrives.
        let mut exclusions_1 = Vec::new();
        let mut exclusions_2 = Vec::new();
        let mut exclusions_3 = Vec::new();
        if let Some(from_seq) = from_seq {
            if let Some(higher) = higher_first {
                exclusions_1.push((point(points[0]), from_seq + higher));
            }
            exclusions_1.push((point(points[1]), from_seq));
            exclusions_2.push((point(points[2]), from_seq));
            exclusions_3.push((0, from_seq));
        }
        // Document 1's exclusions run in point order; at one point, the higher one first.
        exclusions_1.sort_by_key(|&(at, _)| at);
        let doc_1 = run(&dag, &order_1, &exclusions_1);
        let doc_2 = run(&dag, &order_2, &exclusions_2);
        let doc_3 = run(&dag, &order_1, &exclusions_3);
        let exclusions: Vec<(MemberIdx, u64)> = from_seq.map(|from_seq| (A, from_seq)).into_iter().collect();
        let expected = model(&dag, &exclusions);
        prop_assert_eq!(reads(&doc_1.doc), reads(&doc_2.doc));
        prop_assert_eq!(reads(&doc_1.doc), reads(&doc_3.doc));
        prop_assert_eq!(reads(&doc_1.doc), expected);
    }
}

// ---- the replay reference -------------------------------------------------------------

/// A document driven step by step next to the replay reference, with the persisted state the
/// daemon would keep (updated from `take_dirty` after every step).
struct Harness<'d> {
    dag: &'d Dag,
    doc: Replica,
    reference: Reference,
    /// Every event given to `apply`, in order: the accepted events.
    accepted: Vec<usize>,
    last: Reads,
    store: BTreeMap<(KeyKind, Vec<u8>), Vec<u8>>,
    n_exact_steps: usize,
    /// Whether the state before the step was exact (so both started from the same reads).
    was_exact: bool,
}

impl<'d> Harness<'d> {
    fn new(dag: &'d Dag) -> Self {
        let mut doc = Replica::new();
        doc.doc.track_dirty();
        let last = reads(&doc.doc);
        Self {
            dag,
            doc,
            reference: Reference::new(N_AUTHORS),
            accepted: Vec::new(),
            last,
            store: BTreeMap::new(),
            n_exact_steps: 0,
            was_exact: true,
        }
    }

    fn apply(&mut self, idx: usize) {
        let event = &self.dag.events[idx];
        let changes = self.doc.apply(event);
        let reference_changes = self.reference.apply(event);
        self.accepted.push(idx);
        self.after(changes, reference_changes, &format!("apply {idx}"));
    }

    fn exclude(&mut self, author: MemberIdx, from_seq: u64) {
        let changes = self.doc.exclude(author, from_seq);
        let reference_changes = self.reference.exclude(author, from_seq);
        self.after(changes, reference_changes, &format!("exclude {author} from {from_seq}"));
    }

    /// The lowest seq at which `author` has two accepted events.
    fn lowest_fork(&self, author: MemberIdx) -> Option<u64> {
        let mut ids_by_seq: BTreeMap<u64, BTreeSet<EventId>> = BTreeMap::new();
        for event in
            self.accepted.iter().map(|&idx| &self.dag.events[idx]).filter(|e| e.author_idx() == author)
        {
            ids_by_seq.entry(event.seq()).or_default().insert(event.id());
        }
        ids_by_seq.into_iter().find(|(_, ids)| ids.len() > 1).map(|(seq, _)| seq)
    }

    /// Whether the causal test is exact: every fork is excluded at or below its seq.
    fn is_exact(&self) -> bool {
        (0..N_AUTHORS).all(|author| {
            self.lowest_fork(author)
                .is_none_or(|fork| self.doc.excluded_from(author).is_some_and(|from| from <= fork))
        })
    }

    fn after(&mut self, changes: Vec<Change>, reference_changes: Vec<Change>, step: &str) {
        let now = reads(&self.doc.doc);
        assert_eq!(changes, changed(&self.last, &now), "{step}: the changes name what changed");
        let is_exact = self.is_exact();
        if is_exact {
            self.n_exact_steps += 1;
            assert_eq!(now, reads(&self.reference), "{step}: the frontier document reads as the replay");
            if self.was_exact {
                assert_eq!(changes, reference_changes, "{step}: and reports the same changes");
            }
        }
        self.was_exact = is_exact;
        self.last = now;
        for (kind, key) in self.doc.doc.take_dirty() {
            match self.doc.encode_key(kind, &key) {
                Some(bytes) => self.store.insert((kind, key), bytes),
                None => self.store.remove(&(kind, key)),
            };
        }
    }

    /// Replaces the document by one restored from the persisted keys, as at a restart.
    fn restart(&mut self) {
        let full: BTreeMap<(KeyKind, Vec<u8>), Vec<u8>> = self
            .doc
            .state_keys()
            .map(|(kind, key)| ((kind, key.to_vec()), self.doc.encode_key(kind, key).expect("a state key")))
            .collect();
        assert_eq!(self.store, full, "take_dirty named every key whose persisted state changed");
        let mut restored = Document::new(&authors());
        restored.restore_exclusions(&self.doc.encode_exclusions()).expect("encoded by the document");
        for ((kind, key), bytes) in &self.store {
            restored.restore_key(*kind, key, bytes).expect("encoded by the document");
        }
        restored.track_dirty();
        assert_eq!(reads(&restored), reads(&self.doc.doc), "the restored document reads the same");
        assert_eq!(restored.n_frontier_entries(), self.doc.n_frontier_entries());
        self.doc.doc = restored;
    }
}

/// The highest seq of `author` in `dag`.
fn seq_max(dag: &Dag, author: MemberIdx) -> u64 {
    dag.events.iter().filter(|e| e.author_idx() == author).map(Verified::seq).max().unwrap_or(0)
}

/// Applies `dag` in a causal order picked by `order_choices` next to the replay reference.
/// `exclusions` are `(author, seq choice, point)`: at that point, the author is excluded from a
/// seq between 1 and one past its last (above a fork, below it, lowering several times). When
/// `prompt`, each fork is also excluded at its seq as soon as it is applied (as the node does).
/// In every state where the causal test is exact the document must read as the replay; at
/// `restart_at` it restarts from its persisted keys; at the end every fork is excluded and it
/// must read as the definitions.
fn check_against_the_reference(
    dag: &Dag,
    order_choices: Vec<usize>,
    exclusions: &[(MemberIdx, u64, usize)],
    prompt: bool,
    restart_at: Option<usize>,
) -> Result<(), TestCaseError> {
    let mut choices = order_choices.into_iter().cycle();
    let order = dag.topological_order(|n| choices.next().expect("a cycle never ends") % n);
    let n_points = order.len() + 1;
    let mut harness = Harness::new(dag);
    for point in 0..n_points {
        for &(author, seq_choice, at) in exclusions {
            if at % n_points == point {
                harness.exclude(author, 1 + seq_choice % (seq_max(dag, author) + 1));
            }
        }
        if restart_at.is_some_and(|at| at % n_points == point) {
            harness.restart();
        }
        if let Some(&idx) = order.get(point) {
            harness.apply(idx);
            let author = dag.events[idx].author_idx();
            if let Some(fork) = harness.lowest_fork(author).filter(|_| prompt) {
                harness.exclude(author, fork);
            }
        }
    }
    for author in 0..N_AUTHORS {
        if let Some(fork) = harness.lowest_fork(author) {
            harness.exclude(author, fork);
        }
    }
    prop_assert!(harness.is_exact());
    let exclusions: Vec<(MemberIdx, u64)> =
        (0..N_AUTHORS).filter_map(|author| Some((author, harness.doc.excluded_from(author)?))).collect();
    prop_assert_eq!(reads(&harness.doc.doc), model(dag, &exclusions));
    prop_assert_eq!(reads(&harness.doc.doc), reads(&harness.reference));
    prop_assert!(harness.n_exact_steps > 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Every author may fork, on all kinds of keys.
    #[test]
    fn reads_as_the_replay_in_every_exact_state(
        steps in proptest::collection::vec(step_spec(0.15), 1..28),
        order_choices in proptest::collection::vec(any::<usize>(), 32),
        exclusions in proptest::collection::vec((0..N_AUTHORS, any::<u64>(), any::<usize>()), 0..6),
        prompt in any::<bool>(),
        restart_at in proptest::option::of(any::<usize>()),
    ) {
        check_against_the_reference(&build(&steps, &[A, B, C]), order_choices, &exclusions, prompt, restart_at)?;
    }

    /// The same with every op on one register or one set element, where covering chains are
    /// long and exclusions bring back ops that the rest has seen.
    #[test]
    fn reads_as_the_replay_on_one_contended_key(
        steps in proptest::collection::vec(step_spec_with(0.2, with_contexts(contended_op_spec())), 1..28),
        order_choices in proptest::collection::vec(any::<usize>(), 32),
        exclusions in proptest::collection::vec((0..N_AUTHORS, any::<u64>(), any::<usize>()), 0..8),
        prompt in any::<bool>(),
        restart_at in proptest::option::of(any::<usize>()),
    ) {
        check_against_the_reference(&build(&steps, &[A, B, C]), order_choices, &exclusions, prompt, restart_at)?;
    }
}

/// The replay reference disagrees in a state with a fork not yet excluded, and agrees again
/// once it is: what `reads_as_the_replay_in_every_exact_state` skips, pinned.
#[test]
fn a_fork_not_yet_excluded_may_read_differently_until_it_is() {
    // C adds x; A forks at seq 1: one branch adds x again having seen C's add (covering it),
    // the other does nothing; B removes x having seen only the empty branch, whose clock says
    // it saw A's seq 1, so the causal test takes the forked add for seen.
    let mut dag = Dag::new();
    let c1 = dag.event(C, &[], vec![add("s", "x")]);
    let a1 = dag.event_on(A, None, &[c1], vec![add("s", "x")]).unwrap();
    let a1_fork = dag.event_on(A, None, &[], vec![incr("c", 1)]).unwrap();
    let b1 = dag.event(B, &[a1_fork], vec![remove("s", "x")]);
    let mut doc = Replica::new();
    let mut reference = Reference::new(N_AUTHORS);
    for idx in [c1, a1, a1_fork, b1] {
        doc.apply(&dag.events[idx]);
        reference.apply(&dag.events[idx]);
    }
    assert_eq!(doc.set_members(b"s"), Vec::<Vec<u8>>::new(), "the add that covered C's is taken for seen");
    assert_eq!(reference.set_members(b"s"), [b"x".to_vec()], "the replay keeps C's tag, which B did not see");
    doc.exclude(A, 1);
    reference.exclude(A, 1);
    assert_eq!(reads(&doc.doc), reads(&reference));
    assert_eq!(doc.set_members(b"s"), [b"x".to_vec()]);
}

// ---- cost and memory ------------------------------------------------------------------

/// Events built without signatures (the document never looks at them), for the large tests.
struct Chains {
    keys: Vec<SecretKey>,
    tips: Vec<Option<Verified>>,
}

impl Chains {
    fn new() -> Self {
        Self { keys: Dag::new().keys, tips: vec![None; N_AUTHORS] }
    }

    /// The next event of `author`, having seen its own tip and `seen`.
    fn next(&mut self, author: MemberIdx, seen: &[&Verified], ops: Vec<Op>) -> Verified {
        let own = self.tips[author].clone();
        let deps: Vec<&Verified> = own.iter().chain(seen.iter().copied()).collect();
        let mut clock = vec![0u64; N_AUTHORS];
        for dep in &deps {
            for (entry, &seen_seq) in clock.iter_mut().zip(dep.clock()) {
                *entry = (*entry).max(seen_seq);
            }
        }
        let seq = own.as_ref().map_or(1, |own| own.seq() + 1);
        clock[author] = seq;
        let lamport = 1 + deps.iter().map(|dep| dep.lamport()).max().unwrap_or(0);
        let header = Header {
            author: self.keys[author].public(),
            seq,
            lamport,
            deps: deps.iter().map(|dep| dep.id()).collect(),
            ops_hash: ops_hash(&ops),
        };
        let event = Event { header, ops, sig: Signature([0; 64]) };
        let id = event.id();
        let verified = Verified::new(event, id, Vec::new(), (author, None), clock.into(), Vec::new());
        self.tips[author] = Some(verified.clone());
        verified
    }
}

/// A history that counts what an exclusion reads.
struct Counting<'h> {
    inner: &'h MemoryHistory,
    events_of_calls: Cell<usize>,
    events_returned: Cell<usize>,
    covered_calls: Cell<usize>,
    covered_returned: Cell<usize>,
    event_calls: Cell<usize>,
}

impl<'h> Counting<'h> {
    fn new(inner: &'h MemoryHistory) -> Self {
        Self {
            inner,
            events_of_calls: Cell::new(0),
            events_returned: Cell::new(0),
            covered_calls: Cell::new(0),
            covered_returned: Cell::new(0),
            event_calls: Cell::new(0),
        }
    }
}

impl DocHistory for Counting<'_> {
    fn events_of(&self, author: MemberIdx, seqs: Range<u64>) -> Vec<HistoricEvent> {
        let events = self.inner.events_of(author, seqs);
        self.events_of_calls.set(self.events_of_calls.get() + 1);
        self.events_returned.set(self.events_returned.get() + events.len());
        events
    }

    fn event(&self, id: &EventId) -> Option<HistoricEvent> {
        self.event_calls.set(self.event_calls.get() + 1);
        self.inner.event(id)
    }

    fn covered(&self, id: &EventId, op_idx: u32) -> Vec<OpId> {
        let covered = self.inner.covered(id, op_idx);
        self.covered_calls.set(self.covered_calls.get() + 1);
        self.covered_returned.set(self.covered_returned.get() + covered.len());
        covered
    }
}

#[test]
fn exclusion_reads_the_author_s_ops_not_the_key_s_history() {
    // B writes k 10 000 times; A writes it once, in the middle, having seen B's 5 000th write.
    // Either B goes on having seen A's put, or B never sees it (A's put stays a sibling).
    for b_sees_a in [true, false] {
        let mut chains = Chains::new();
        let mut doc = Replica::new();
        let mut reference = Reference::new(N_AUTHORS);
        let mut a1 = None;
        for n in 1..=10_000 {
            let seen: Vec<&Verified> = a1.iter().filter(|_| b_sees_a).collect();
            let b = chains.next(B, &seen, vec![put("k", &format!("b{n}")), incr("c", 1)]);
            doc.apply(&b);
            reference.apply(&b);
            if n == 5_000 {
                let a = chains.next(A, &[&b], vec![put("k", "a"), incr("c", 1)]);
                doc.apply(&a);
                reference.apply(&a);
                a1 = Some(a);
            }
        }
        let expected_siblings = if b_sees_a { 1 } else { 2 };
        assert_eq!(doc.register(b"k").siblings.len(), expected_siblings);
        let Replica { doc: document, history } = &mut doc;
        let counting = Counting::new(history);
        let Applied { changes, covered } = document.exclude(A, 1, &counting);
        reference.exclude(A, 1);
        assert_eq!(reads(&*document), reads(&reference));
        assert_eq!(document.register(b"k").visible.unwrap().value, b"b10000");
        assert_eq!(document.counter(b"c"), 10_000);
        assert_eq!(changes.len(), if b_sees_a { 1 } else { 2 }, "{changes:?}");
        assert_eq!(counting.events_of_calls.get(), 1);
        assert_eq!(counting.events_returned.get(), 1, "only A's event is read");
        assert_eq!(counting.covered_calls.get(), 1, "one covered list per register or set op of A's");
        assert_eq!(counting.covered_returned.get(), 1, "A's put covered B's 5 000th write");
        assert_eq!(counting.event_calls.get(), 1, "which is read back, and stays covered by B's last");
        // B's 5 000th write is now recorded as covered by an op that is still included.
        assert_eq!(covered.len(), 1);
        history.record_covered(covered);
        assert_eq!(document.n_frontier_entries(), 1);
    }
}

#[test]
fn a_register_overwritten_100_000_times_holds_one_frontier_entry() {
    let mut chains = Chains::new();
    let mut doc = Document::new(&authors());
    let mut previous = None;
    for n in 0..100_000 {
        let event = chains.next(A, &[], vec![put("k", &format!("v{n}"))]);
        let applied = doc.apply(&event);
        // Each write covers the one before it, and only that one.
        let expected: Vec<Covered> =
            previous.iter().map(|&id| Covered { by: (event.id(), 0), ops: vec![(id, 0)] }).collect();
        assert_eq!(applied.covered, expected);
        previous = Some(event.id());
    }
    assert_eq!(doc.n_frontier_entries(), 1);
    assert_eq!(doc.register(b"k").visible.unwrap().value, b"v99999");
    // Deleting keeps the del as a tombstone, and nothing else.
    let event = chains.next(A, &[], vec![del("k")]);
    let _ = doc.apply(&event);
    assert_eq!(doc.n_frontier_entries(), 1);
    assert_eq!(doc.register(b"k"), RegisterRead::default());
    // An element added and removed again and again holds one entry too.
    for _ in 0..1_000 {
        let _ = doc.apply(&chains.next(B, &[], vec![add("s", "x")]));
        let _ = doc.apply(&chains.next(B, &[], vec![remove("s", "x")]));
    }
    assert_eq!(doc.n_frontier_entries(), 2);
}

// ---- persistence ----------------------------------------------------------------------

/// A document with some of everything: concurrent siblings, a tombstone, counters, members and
/// removed elements, and an exclusion.
fn mixed_dag() -> Dag {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("k", "a1"), add("s", "x"), incr("c", 5), put("gone", "v")]);
    let b1 = dag.event(B, &[], vec![put("k", "b1"), add("s", "y"), incr("c", -2)]);
    let c1 = dag.event(C, &[a1], vec![del("gone"), remove("s", "x"), add("t", "z"), put("k", "c1")]);
    dag.event(A, &[b1, c1], vec![put("other", "o"), incr("d", 7), add("s", "w")]);
    dag.event(B, &[c1], vec![del("gone"), put("k", "b2")]);
    dag
}

#[test]
fn persisted_keys_restore_the_same_document_and_its_future() {
    let dag = mixed_dag();
    let mut original = Replica::new();
    for event in &dag.events[..4] {
        original.apply(event);
    }
    original.exclude(C, 3);
    let mut restored = Replica::new();
    restored.doc.restore_exclusions(&original.encode_exclusions()).unwrap();
    let keys: Vec<(KeyKind, Vec<u8>)> =
        original.state_keys().map(|(kind, key)| (kind, key.to_vec())).collect();
    assert_eq!(keys.len(), 7, "{keys:?}"); // registers gone k other, counters c d, sets s t
    for (kind, key) in &keys {
        let bytes = original.encode_key(*kind, key).unwrap();
        restored.doc.restore_key(*kind, key, &bytes).unwrap();
        assert_eq!(restored.encode_key(*kind, key), Some(bytes), "encoding is canonical");
    }
    assert_eq!(restored.encode_key(KeyKind::Register, b"never"), None);
    assert_eq!(restored.encode_key(KeyKind::Set, b"k"), None, "each kind has its own key space");
    assert_eq!(restored.digest(), original.digest());
    assert_eq!(restored.n_frontier_entries(), original.n_frontier_entries());
    // The history stays with the caller: the restored document reads a copy of the same one.
    restored.history = original.history.clone();
    for replica in [&mut original, &mut restored] {
        let changes = replica.apply(&dag.events[4]);
        assert_eq!(changes, [Change { kind: KeyKind::Register, key: b"k".to_vec() }]);
        replica.exclude(A, 1);
        replica.exclude(B, 2);
    }
    assert_eq!(restored.digest(), original.digest());
    assert_eq!(render(&restored), render(&original));
    assert_eq!(
        render(&restored),
        normalize(
            "
            register k = c1 [b1/B c1/C]
            counter c = -2 {B:-2}
            set s = {y}
            set t = {z}
            "
        )
    );
}

#[test]
fn dirty_keys_name_every_persisted_change_even_an_invisible_one() {
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![del("k"), incr("zero", 0), add("s", "x")]);
    let b1 = dag.event(B, &[a1], vec![del("k"), add("s", "x")]);
    let mut doc = Replica::new();
    doc.apply(&dag.events[a1]);
    assert_eq!(doc.doc.take_dirty(), [], "off until asked for");
    doc.doc.track_dirty();
    // A del replacing a del and a second tag of a member change nothing visible, but the
    // frontiers change.
    assert_eq!(doc.apply(&dag.events[b1]), []);
    let dirty = vec![(KeyKind::Register, b"k".to_vec()), (KeyKind::Set, b"s".to_vec())];
    assert_eq!(doc.doc.take_dirty(), dirty);
    assert_eq!(doc.doc.take_dirty(), []);
    assert_eq!(doc.n_frontier_entries(), 2);
    // Excluding B brings A's ops back: the keys change again, and a key whose state is gone
    // is listed too, with nothing to encode.
    doc.exclude(B, 1);
    assert_eq!(doc.doc.take_dirty(), dirty);
    doc.exclude(A, 1);
    assert_eq!(doc.doc.take_dirty(), dirty);
    assert_eq!(doc.encode_key(KeyKind::Register, b"k"), None);
    assert_eq!(doc.encode_key(KeyKind::Set, b"s"), None);
    assert_eq!(doc.state_keys().count(), 0);
    assert_eq!(doc.n_frontier_entries(), 0);
}

#[test]
fn persisted_bytes_that_do_not_decode_are_refused() {
    let dag = mixed_dag();
    let mut doc = Replica::new();
    for event in &dag.events[..4] {
        doc.apply(event);
    }
    let keys: Vec<(KeyKind, Vec<u8>)> = doc.state_keys().map(|(kind, key)| (kind, key.to_vec())).collect();
    let digest = doc.digest();
    for (kind, key) in &keys {
        let bytes = doc.encode_key(*kind, key).unwrap();
        let mut target = Document::new(&authors());
        for len in 0..bytes.len() {
            assert!(target.restore_key(*kind, key, &bytes[..len]).is_err(), "{kind:?} cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(target.restore_key(*kind, key, &longer), Err(DocumentDecodeError::TrailingBytes(1)));
        // A count of zero: a key without state is not persisted.
        assert!(target.restore_key(*kind, key, &0u64.to_le_bytes()).is_err());
        // Fewer authors than the bytes' clocks have entries.
        assert!(
            Document::new(&authors()[..N_AUTHORS - 1]).restore_key(*kind, key, &bytes).is_err()
                || *kind == KeyKind::Counter
        );
        assert_eq!(target.state_keys().count(), 0, "nothing changes when the bytes do not decode");
    }
    // Entries out of order: the two siblings of k swapped.
    let bytes = doc.encode_key(KeyKind::Register, b"k").unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n, 2, "k has two siblings");
    let entry_len = (bytes.len() - 8) / 2;
    let mut swapped = bytes[..8].to_vec();
    swapped.extend_from_slice(&bytes[8 + entry_len..]);
    swapped.extend_from_slice(&bytes[8..8 + entry_len]);
    let mut target = Document::new(&authors());
    assert!(target.restore_key(KeyKind::Register, b"k", &swapped).is_err());
    // Exclusions.
    let exclusions = doc.encode_exclusions();
    assert!(target.restore_exclusions(&exclusions[..exclusions.len() - 1]).is_err());
    assert!(Document::new(&authors()[..N_AUTHORS - 1]).restore_exclusions(&exclusions).is_err());
    target.restore_exclusions(&exclusions).unwrap();
    for (kind, key) in &keys {
        target.restore_key(*kind, key, &doc.encode_key(*kind, key).unwrap()).unwrap();
    }
    assert_eq!(target.digest(), digest);
}

proptest! {
    /// Whatever the bytes, restoring never panics, and what it accepts reads without panicking.
    #[test]
    fn restoring_any_bytes_never_panics(
        kind in prop_oneof![Just(KeyKind::Register), Just(KeyKind::Counter), Just(KeyKind::Set)],
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<usize>(),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let dag = mixed_dag();
        let mut doc = Replica::new();
        for event in &dag.events {
            doc.apply(event);
        }
        let key: &[u8] = match kind {
            KeyKind::Register => b"k",
            KeyKind::Counter => b"c",
            KeyKind::Set => b"s",
        };
        let mut bytes = doc.encode_key(kind, key).unwrap();
        for &(position, value) in &flips {
            let len = bytes.len();
            bytes[position % len] ^= value;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        bytes.extend_from_slice(&noise);
        let mut target = Document::new(&authors());
        if target.restore_key(kind, key, &bytes).is_ok() {
            let _ = (target.digest(), target.register(key), target.counter(key), target.set_members(key));
            let event = &dag.events[0];
            let _ = target.apply(event);
        }
        let _ = target.restore_exclusions(&bytes);
    }
}

/// A value larger than `VALUE_INLINE_BYTES_MAX` is not held: the read names its event (the node
/// reads it from there), the digest takes its length and hash, and its persisted state holds no
/// value bytes and restores to the same digest.
#[test]
fn large_values_are_held_by_hash_not_in_memory() {
    let large = "x".repeat(1_000);
    assert!(large.len() > VALUE_INLINE_BYTES_MAX);
    let mut dag = Dag::new();
    let a1 = dag.event(A, &[], vec![put("big", &large), put("small", "v")]);
    let mut doc = Replica::new();
    doc.apply(&dag.events[a1]);
    let read = doc.doc.register(b"big");
    let sibling = read.visible.unwrap();
    assert!(!sibling.value_held && sibling.value.is_empty());
    assert_eq!((sibling.event_id, sibling.op_idx), (dag.events[a1].id(), 0));
    assert!(doc.doc.register(b"small").visible.unwrap().value_held);
    let encoded = doc.doc.encode_key(KeyKind::Register, b"big").unwrap();
    assert!(encoded.len() < large.len(), "the persisted state holds no value bytes");
    let mut restored = Document::new(&authors());
    restored.restore_key(KeyKind::Register, b"big", &encoded).unwrap();
    restored
        .restore_key(KeyKind::Register, b"small", &doc.doc.encode_key(KeyKind::Register, b"small").unwrap())
        .unwrap();
    assert_eq!(restored.digest(), doc.doc.digest());
}
