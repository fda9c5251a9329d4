//! The document's persisted form, key by key, so that a restart reads it instead of replaying
//! the history. The layout follows the crate's codec: integers little-endian, `u64(n)` 8 bytes,
//! `i128(n)` 16 bytes, `bytes(b)` is `u64(len(b)) ‖ b`, and decoding checks every length
//! against the bytes left (and the protocol's limits) before it allocates, and never panics.
//!
//! ```text
//! entry      = event id (32 bytes) ‖ u64(op index) ‖ u64(author index) ‖ u64(seq)
//!              ‖ u64(lamport) ‖ u64(number of clock entries, at most the authors) ‖ that many u64(clock entry)
//! register   = u64(number of frontier entries ≥ 1)
//!              then each, ascending by (lamport, author key, event id, op index):
//!                entry ‖ u8(1) ‖ bytes(value)      a put of at most VALUE_INLINE_BYTES_MAX bytes
//!                entry ‖ u8(2) ‖ u64(len(value)) ‖ SHA-256("cairn/value/v1" ‖ value)
//!                                                  a larger put (its value is in its event)
//!                entry ‖ u8(0)                     a del
//!              an op with a causal context has 16 added to its tag, and its seen clock follows
//!              the tag: u64(number of entries, at most the authors) ‖ that many u64(entry)
//! counter    = u64(number of non-zero author totals ≥ 1)
//!              then each, ascending by author index: u64(author index) ‖ i128(total)
//! set        = u64(number of elements with a frontier ≥ 1)
//!              then each, in ascending byte order:
//!                bytes(element) ‖ u64(number of frontier entries ≥ 1)
//!                then each, ascending by (lamport, author key, event id, op index):
//!                  entry ‖ u8(1 for an add, 0 for a remove)  (16 added, and the seen clock
//!                  after it, as for a register)
//! exclusions = u64(number of authors) ‖ per author u64(lowest excluded seq, 2^64-1 for none)
//! ```
//!
//! Only the canonical form decodes: entries in order and unique, no empty list, no zero total.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_crypto::PublicKey;

use super::counter::CounterState;
use super::register::{HeldValue, RegisterEntry, RegisterState, VALUE_INLINE_BYTES_MAX};
use super::set::{ElementState, SetEntry, SetState};
use super::{Document, EventMeta, KeyKind, OpMeta};
use crate::event::EventId;
use crate::limits::{KEY_BYTES_MAX, OPS_MAX, VALUE_BYTES_MAX};

/// Why persisted document bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentDecodeError {
    /// The input ended in the middle of the state.
    #[error("the input ends in the middle of the state")]
    Truncated,
    /// The state decoded but bytes were left over.
    #[error("{0} bytes after the end of the state")]
    TrailingBytes(usize),
    /// A field holds a value the layout does not allow.
    #[error("invalid document state: {0}")]
    Invalid(String),
}

fn invalid(what: impl Into<String>) -> DocumentDecodeError {
    DocumentDecodeError::Invalid(what.into())
}

/// Set in an entry's tag when a seen clock follows it: the entry's op carries a causal context.
const SEEN_TAG: u8 = 0x10;

/// The smallest encoding of a frontier entry with its tag, for 0 members: what bounds a count
/// before anything is allocated.
const ENTRY_BYTES_MIN: usize = 32 + 5 * 8 + 1;

impl Document {
    /// The persisted state of one key: a register's frontier, a counter's author totals or a
    /// set's element frontiers, in the layout of this module's documentation; `None` when the
    /// key has no state.
    pub fn encode_key(&self, kind: KeyKind, key: &[u8]) -> Option<Vec<u8>> {
        // Each key's state is encoded once per commit that changes it, so the buffer is sized
        // exactly up front ([`encoded_len`]) rather than grown entry by entry.
        let mut out = Vec::with_capacity(self.encoded_len(kind, key));
        match kind {
            KeyKind::Register => {
                let state = self.registers.get(key).filter(|state| !state.frontier.is_empty())?;
                put_len(&mut out, state.frontier.len());
                for entry in &state.frontier {
                    put_op(&mut out, &entry.op);
                    match &entry.value {
                        Some(HeldValue::Inline(value)) => {
                            put_tag(&mut out, 1, &entry.op);
                            put_bytes(&mut out, value);
                        }
                        Some(HeldValue::Elsewhere { len, hash }) => {
                            put_tag(&mut out, 2, &entry.op);
                            out.extend_from_slice(&len.to_le_bytes());
                            out.extend_from_slice(hash);
                        }
                        None => put_tag(&mut out, 0, &entry.op),
                    }
                }
            }
            KeyKind::Counter => {
                let state = self.counters.get(key).filter(|state| !state.is_empty())?;
                put_len(&mut out, state.totals.len());
                for (&author, total) in &state.totals {
                    put_len(&mut out, author);
                    out.extend_from_slice(&total.to_le_bytes());
                }
            }
            KeyKind::Set => {
                let state = self.sets.get(key).filter(|state| !state.elements.is_empty())?;
                put_len(&mut out, state.elements.len());
                for (element, element_state) in &state.elements {
                    put_bytes(&mut out, element);
                    put_len(&mut out, element_state.frontier.len());
                    for entry in &element_state.frontier {
                        put_op(&mut out, &entry.op);
                        put_tag(&mut out, u8::from(entry.is_add), &entry.op);
                    }
                }
            }
        }
        debug_assert_eq!(out.len(), self.encoded_len(kind, key), "encoded_len is exact");
        Some(out)
    }

    /// The length of [`Document::encode_key`]'s bytes for `key` (0 when it has no state).
    fn encoded_len(&self, kind: KeyKind, key: &[u8]) -> usize {
        const LEN: usize = 8;
        // An entry's op (put_op) and its tag (put_tag).
        let op_len = |op: &OpMeta| {
            32 + 8
                + LEN
                + 8
                + 8
                + LEN
                + 8 * op.event.clock.len()
                + 1
                + op.seen.as_ref().map_or(0, |seen| LEN + 8 * seen.len())
        };
        match kind {
            KeyKind::Register => self.registers.get(key).map_or(0, |state| {
                LEN + state
                    .frontier
                    .iter()
                    .map(|entry| {
                        op_len(&entry.op)
                            + match &entry.value {
                                Some(HeldValue::Inline(value)) => LEN + value.len(),
                                Some(HeldValue::Elsewhere { hash, .. }) => 8 + hash.len(),
                                None => 0,
                            }
                    })
                    .sum::<usize>()
            }),
            KeyKind::Counter => {
                self.counters.get(key).map_or(0, |state| LEN + state.totals.len() * (LEN + 16))
            }
            KeyKind::Set => self.sets.get(key).map_or(0, |state| {
                LEN + state
                    .elements
                    .iter()
                    .map(|(element, element_state)| {
                        LEN + element.len()
                            + LEN
                            + element_state.frontier.iter().map(|entry| op_len(&entry.op)).sum::<usize>()
                    })
                    .sum::<usize>()
            }),
        }
    }

    /// Every key with persisted state, by kind then key: what to write for a full snapshot.
    pub fn state_keys(&self) -> impl Iterator<Item = (KeyKind, &[u8])> {
        let registers = self.registers.keys().map(|key| (KeyKind::Register, key.as_slice()));
        let counters = self.counters.keys().map(|key| (KeyKind::Counter, key.as_slice()));
        let sets = self.sets.keys().map(|key| (KeyKind::Set, key.as_slice()));
        registers.chain(counters).chain(sets)
    }

    /// Sets the state of one key from [`Document::encode_key`]'s bytes, replacing what the key
    /// held. For a restart: a new document, [`Document::restore_exclusions`], then every key.
    /// Nothing changes when the bytes do not decode.
    pub fn restore_key(
        &mut self,
        kind: KeyKind,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<(), DocumentDecodeError> {
        if key.len() > KEY_BYTES_MAX {
            return Err(invalid(format!("a key of {} bytes", key.len())));
        }
        let mut reader = Reader { bytes, metas: BTreeMap::new(), authors: &self.authors };
        match kind {
            KeyKind::Register => {
                let n = reader.len(ENTRY_BYTES_MIN, "register entries")?;
                let mut frontier = Vec::with_capacity(n);
                for _ in 0..n {
                    let mut op = reader.op()?;
                    let value = match reader.tag(&mut op)? {
                        1 => Some(HeldValue::Inline(reader.bytes(VALUE_INLINE_BYTES_MAX, "value")?.into())),
                        2 => {
                            let len = reader.u64()?;
                            let hash = reader.take::<32>()?;
                            if len <= VALUE_INLINE_BYTES_MAX as u64 || len > VALUE_BYTES_MAX as u64 {
                                return Err(invalid(format!("a value held elsewhere of {len} bytes")));
                            }
                            Some(HeldValue::Elsewhere { len, hash })
                        }
                        0 => None,
                        tag => return Err(invalid(format!("register entry tag {tag}"))),
                    };
                    frontier.push(RegisterEntry { op, value });
                }
                check_order(frontier.iter().map(|entry| &entry.op))?;
                reader.finish()?;
                self.registers.insert(key.to_vec(), RegisterState { frontier });
            }
            KeyKind::Counter => {
                let n = reader.len(8 + 16, "counter totals")?;
                if n == 0 {
                    return Err(invalid("a counter without totals"));
                }
                let mut totals = BTreeMap::new();
                let mut last = None;
                for _ in 0..n {
                    let author = reader.member()?;
                    let total = reader.i128()?;
                    if last.is_some_and(|last| author <= last) || total == 0 {
                        return Err(invalid("counter totals out of order or zero"));
                    }
                    last = Some(author);
                    totals.insert(author, total);
                }
                reader.finish()?;
                self.counters.insert(key.to_vec(), CounterState { totals });
            }
            KeyKind::Set => {
                let n = reader.len(8 + 8 + ENTRY_BYTES_MIN, "set elements")?;
                if n == 0 {
                    return Err(invalid("a set without elements"));
                }
                let mut elements: BTreeMap<Vec<u8>, ElementState> = BTreeMap::new();
                let mut n_members = 0;
                for _ in 0..n {
                    let element = reader.bytes(VALUE_BYTES_MAX, "element")?;
                    if elements.last_key_value().is_some_and(|(last, _)| element <= *last) {
                        return Err(invalid("set elements out of order"));
                    }
                    let n_entries = reader.len(ENTRY_BYTES_MIN, "element entries")?;
                    let mut frontier = Vec::with_capacity(n_entries);
                    for _ in 0..n_entries {
                        let mut op = reader.op()?;
                        let is_add = match reader.tag(&mut op)? {
                            1 => true,
                            0 => false,
                            tag => return Err(invalid(format!("set entry tag {tag}"))),
                        };
                        frontier.push(SetEntry { op, is_add });
                    }
                    check_order(frontier.iter().map(|entry| &entry.op))?;
                    let element_state = ElementState { frontier };
                    n_members += usize::from(element_state.is_member());
                    elements.insert(element, element_state);
                }
                reader.finish()?;
                self.sets.insert(key.to_vec(), SetState { elements, n_members });
            }
        }
        Ok(())
    }

    /// The persisted exclusions: each author's lowest excluded seq.
    pub fn encode_exclusions(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 8 * self.excluded_from.len());
        put_len(&mut out, self.excluded_from.len());
        for &seq in &self.excluded_from {
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out
    }

    /// Sets the exclusions from [`Document::encode_exclusions`]'s bytes. Nothing is retracted:
    /// the persisted keys already hold the state after the exclusions. Nothing changes when the
    /// bytes do not decode or are for another number of members.
    pub fn restore_exclusions(&mut self, bytes: &[u8]) -> Result<(), DocumentDecodeError> {
        let mut reader = Reader { bytes, metas: BTreeMap::new(), authors: &self.authors };
        let n = reader.len(8, "members")?;
        if n > self.authors.len() {
            return Err(invalid(format!(
                "exclusions of {n} authors for a document of {}",
                self.authors.len()
            )));
        }
        let mut excluded_from = (0..n).map(|_| reader.u64()).collect::<Result<Vec<_>, _>>()?;
        reader.finish()?;
        // Authors indexed after the exclusions were written have none.
        excluded_from.resize(self.authors.len(), u64::MAX);
        self.excluded_from = excluded_from;
        Ok(())
    }
}

/// Frontier entries must be strictly ascending by the sibling order (which also makes them
/// unique), and no list is empty.
fn check_order<'a>(ops: impl Iterator<Item = &'a OpMeta>) -> Result<(), DocumentDecodeError> {
    let mut last = None;
    for op in ops {
        let order_key = op.order_key();
        if last.is_some_and(|last| order_key <= last) {
            return Err(invalid("frontier entries out of order"));
        }
        last = Some(order_key);
    }
    if last.is_none() {
        return Err(invalid("an empty frontier"));
    }
    Ok(())
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.extend_from_slice(bytes);
}

/// An entry's tag, with [`SEEN_TAG`] set and the seen clock after it for an op with a causal
/// context.
fn put_tag(out: &mut Vec<u8>, tag: u8, op: &OpMeta) {
    match &op.seen {
        None => out.push(tag),
        Some(seen) => {
            out.push(tag | SEEN_TAG);
            put_len(out, seen.len());
            for &entry in seen.iter() {
                out.extend_from_slice(&entry.to_le_bytes());
            }
        }
    }
}

fn put_op(out: &mut Vec<u8>, op: &OpMeta) {
    let event = &op.event;
    out.extend_from_slice(&event.id.0);
    out.extend_from_slice(&u64::from(op.op_idx).to_le_bytes());
    put_len(out, event.author);
    out.extend_from_slice(&event.seq.to_le_bytes());
    out.extend_from_slice(&event.lamport.to_le_bytes());
    put_len(out, event.clock.len());
    for &entry in &event.clock {
        out.extend_from_slice(&entry.to_le_bytes());
    }
}

/// Reads persisted bytes, bounds-checked; the frontier entries of one event share their meta.
struct Reader<'a> {
    bytes: &'a [u8],
    metas: BTreeMap<EventId, Arc<EventMeta>>,
    /// The document's authors, by index.
    authors: &'a [PublicKey],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DocumentDecodeError> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(DocumentDecodeError::Truncated)?;
        self.bytes = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DocumentDecodeError> {
        Ok(self.take::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, DocumentDecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn i128(&mut self) -> Result<i128, DocumentDecodeError> {
        Ok(i128::from_le_bytes(self.take()?))
    }

    /// A count of items at least `item_bytes` long each, checked against the bytes left.
    fn len(&mut self, item_bytes: usize, what: &str) -> Result<usize, DocumentDecodeError> {
        let n = self.u64()?;
        match usize::try_from(n) {
            Ok(n) if n <= self.bytes.len() / item_bytes.max(1) => Ok(n),
            _ => Err(invalid(format!("{n} {what} in {} bytes", self.bytes.len()))),
        }
    }

    fn bytes(&mut self, max: usize, what: &str) -> Result<Vec<u8>, DocumentDecodeError> {
        let n = self.u64()?;
        let n = match usize::try_from(n) {
            Ok(n) if n <= max => n,
            _ => return Err(invalid(format!("a {what} of {n} bytes"))),
        };
        if n > self.bytes.len() {
            return Err(DocumentDecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head.to_vec())
    }

    fn member(&mut self) -> Result<usize, DocumentDecodeError> {
        let author = self.u64()?;
        match usize::try_from(author) {
            Ok(author) if author < self.authors.len() => Ok(author),
            _ => Err(invalid(format!("author index {author} of {} authors", self.authors.len()))),
        }
    }

    /// An entry's tag without [`SEEN_TAG`]; with it, the seen clock that follows goes into `op`.
    fn tag(&mut self, op: &mut OpMeta) -> Result<u8, DocumentDecodeError> {
        let tag = self.u8()?;
        if tag & SEEN_TAG == 0 {
            return Ok(tag);
        }
        let n = self.len(8, "seen clock entries")?;
        if n > self.authors.len() {
            return Err(invalid(format!("a seen clock of {n} entries for {} authors", self.authors.len())));
        }
        let seen: Box<[u64]> = (0..n).map(|_| self.u64()).collect::<Result<_, _>>()?;
        op.seen = Some(Arc::new(seen));
        Ok(tag & !SEEN_TAG)
    }

    fn op(&mut self) -> Result<OpMeta, DocumentDecodeError> {
        let id = EventId(self.take()?);
        let op_idx = match u32::try_from(self.u64()?) {
            Ok(op_idx) if (op_idx as usize) < OPS_MAX => op_idx,
            _ => return Err(invalid("an op index over OPS_MAX")),
        };
        let author = self.member()?;
        let seq = self.u64()?;
        let lamport = self.u64()?;
        let n_clock = self.len(8, "clock entries")?;
        if n_clock > self.authors.len() {
            return Err(invalid(format!("a clock of {n_clock} entries for {} authors", self.authors.len())));
        }
        let clock: Box<[u64]> = (0..n_clock).map(|_| self.u64()).collect::<Result<_, _>>()?;
        if seq == 0 || clock.get(author).is_none_or(|&entry| entry < seq) {
            return Err(invalid("a seq that its clock does not cover"));
        }
        let author_key = self.authors[author];
        let meta = EventMeta { id, author, author_key, seq, lamport, clock };
        let event = match self.metas.get(&id) {
            Some(known) if **known == meta => Arc::clone(known),
            Some(_) => return Err(invalid(format!("two metas for event {id}"))),
            None => Arc::clone(self.metas.entry(id).or_insert_with(|| Arc::new(meta))),
        };
        Ok(OpMeta { event, op_idx, seen: None })
    }

    fn finish(&self) -> Result<(), DocumentDecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(DocumentDecodeError::TrailingBytes(n)),
        }
    }
}
