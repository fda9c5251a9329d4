//! Protocol constants. Every limit that decides validity lives here and is the same on every
//! node; per-node settings (buffer sizes, queue lengths, rate limits) live in
//! [`crate::node::NodeConfig`] and may only affect liveness. Units come last in each name.
//! `docs/PROTOCOL.md` lists the same numbers, and a test keeps the two in step.

/// Most members a genesis may list. Each accepted event carries a causal clock with one entry
/// per member, so this bounds per-event memory (8 bytes × members: 4 KiB at the bound).
pub const MEMBERS_MAX: usize = 512;
/// Longest member display name, in bytes of UTF-8.
pub const MEMBER_NAME_BYTES_MAX: usize = 64;
/// Largest encoded genesis.
pub const GENESIS_BYTES_MAX: usize = 8 + MEMBERS_MAX * (32 + 8 + MEMBER_NAME_BYTES_MAX) + 4;

/// Largest encoded membership change: an addition with the longest name (base, tag, key, name
/// length, name), as long as a replacement (base, tag, seat, key, cut, successor).
pub const CHANGE_BYTES_MAX: usize = 32 + 4 + 32 + 8 + MEMBER_NAME_BYTES_MAX;
/// An encoded key rotation: key, cut, successor, proof (fixed size).
pub const ROTATION_BYTES: usize = 32 + 8 + 32 + 64;
/// Most different changes one seat may approve (proposals included) of one membership in one
/// round: its vote, and one more that is already evidence. A further one is invalid, so a
/// seat flooding proposals makes honest nodes keep at most this many changes per membership
/// and round.
pub const VOTES_PER_SEAT_ROUND_MAX: usize = 2;

/// Most dependencies one event may name.
pub const DEPS_MAX: usize = 128;
/// Most operations one event may carry.
pub const OPS_MAX: usize = 256;
/// Most events an op's causal context names by id (`Seen::events`). Each must be a dep, and the
/// node keeps half of [`DEPS_MAX`] for its own tips: the events named by all the ops of one
/// event it signs are at most this many too.
pub const SEEN_EVENTS_MAX: usize = DEPS_MAX / 2;
/// Most of its author's own earlier events an op's causal context names by seq (`Seen::own`).
pub const SEEN_OWN_MAX: usize = 64;
/// Longest key of a register, counter or set, in bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Longest register value or set element, in bytes.
pub const VALUE_BYTES_MAX: usize = 64 * 1024;
/// Largest encoded event (header, ops and signature).
pub const EVENT_BYTES_MAX: usize = 128 * 1024;
/// Largest encoded header: author, seq, lamport, deps length and deps, ops hash.
pub const HEADER_BYTES_MAX: usize = 32 + 8 + 8 + 8 + DEPS_MAX * 32 + 32;
/// Largest encoded evidence: two headers, each with its signature.
pub const EVIDENCE_BYTES_MAX: usize = 2 * (HEADER_BYTES_MAX + 64);

/// Largest reconciliation message, in bytes (the transport frames messages of at most this).
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Most entries one `Events` message may list. A valid event is far larger than the 8-byte
/// length of an entry, so this bounds what a lying count can make a decoder allocate.
pub const EVENTS_PER_MESSAGE_MAX: usize = 16 * 1024;
/// Most tips one `Tips` message carries; a larger tip set is split over several messages.
pub const TIPS_PER_MESSAGE_MAX: usize = 4096;
/// Most evidence objects one message carries (a `Tips` carries at most this many of the
/// sender's; evidence beyond it still travels in `Evidence` pushes).
pub const EVIDENCE_PER_MESSAGE_MAX: usize = 64;
/// Most ids one `Want` message asks for.
pub const WANT_IDS_MAX: usize = 4096;
/// Most address records one `Addrs` message carries: one per member.
pub const ADDR_RECORDS_PER_MESSAGE_MAX: usize = MEMBERS_MAX;
/// Most addresses one member's address record lists.
pub const ADDRS_PER_RECORD_MAX: usize = 4;
/// Longest address text in an address record (`[IPv6%scope]:port` fits).
pub const ADDR_TEXT_BYTES_MAX: usize = 64;
// An `Addrs` message with a record for every member, each as long as it may be, fits.
const _: () = assert!(
    8 + 8
        + ADDR_RECORDS_PER_MESSAGE_MAX * (32 + 8 + 8 + ADDRS_PER_RECORD_MAX * (8 + ADDR_TEXT_BYTES_MAX) + 64)
        <= MESSAGE_BYTES_MAX
);
/// Most seqs one `ForkProbe` asks about.
pub const FORK_PROBE_SEQS_MAX: usize = 64;

// An event with a header of the largest size and one op of the largest key and value fits.
const _: () =
    assert!(HEADER_BYTES_MAX + 8 + 4 + 8 + KEY_BYTES_MAX + 8 + VALUE_BYTES_MAX + 64 <= EVENT_BYTES_MAX);
// A message holds several events of the largest size, so one large event never stalls sync:
// seven of them with the `Events` framing (a u32 tag, a u64 count, a u64 length per entry).
const _: () = assert!(4 + 8 + 7 * (8 + EVENT_BYTES_MAX) <= MESSAGE_BYTES_MAX);
const _: () = assert!(4 + 8 + 8 * (8 + EVENT_BYTES_MAX) > MESSAGE_BYTES_MAX);
// A replacement fits a change.
const _: () = assert!(32 + 4 + 32 + 32 + 8 + 32 <= CHANGE_BYTES_MAX);
// A full Tips, Want or evidence message fits in one message.
const _: () = assert!(
    16 + TIPS_PER_MESSAGE_MAX * (32 + 8 + 32) + 8 + EVIDENCE_PER_MESSAGE_MAX * EVIDENCE_BYTES_MAX
        <= MESSAGE_BYTES_MAX
);
const _: () = assert!(16 + WANT_IDS_MAX * 32 <= MESSAGE_BYTES_MAX);
const _: () = assert!(GENESIS_BYTES_MAX <= MESSAGE_BYTES_MAX);
// The smallest valid event (no deps, one `Del` of a one-byte key) with its entry length: a
// message full of valid events never hits the entry count.
const EVENT_ENTRY_BYTES_MIN: usize = 8 + (32 + 8 + 8 + 8 + 32) + 8 + (4 + 8 + 1) + 64;
const _: () = assert!(EVENTS_PER_MESSAGE_MAX * EVENT_ENTRY_BYTES_MIN >= MESSAGE_BYTES_MAX);
