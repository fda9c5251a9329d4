//! The named attacks. Each one dials honest nodes, does its damage, says what it did, and
//! fills in the adversary's [`Expect`](super::Expect). Wire-level attacks (lying frames,
//! floods, refused identities) also check the target's reaction themselves and fail if it was
//! wrong, so that `cairn-adversary run` gives a verdict without access to the nodes' APIs.
//!
//! Invalid events are sent at most [`INVALID_EVENTS_MAX`] per scenario and target: a node
//! mutes a peer after 100 invalid inputs in 10 s, and later ones would not be counted.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_crypto::{SecretKey, Signature};
use cairn_daemon::tls;
use cairn_daemon::transport::{CloseCode, FRAME_LENGTH_BYTES};
use cairn_protocol::limits::{EVENTS_PER_MESSAGE_MAX, MESSAGE_BYTES_MAX};
use cairn_protocol::membership::Rotation;
use cairn_protocol::{Change, ChangeKind, Event, EventId, Evidence, Header, Message, Op, Seen, SignedHeader};

use super::wire::{self, Dialed, Link, Target, WIRE_TIMEOUT, close_code, frame};
use super::{Adversary, hash_of, put, sign_header};

/// Invalid events one scenario sends one target, well under the 100 that get a peer muted.
pub const INVALID_EVENTS_MAX: u64 = 60;
/// Orphans of the orphan flood (the issue asks for at least a million).
pub const ORPHANS_DEFAULT: u64 = 1_000_000;
/// Orphans per `Events` message in the flood.
const ORPHANS_PER_MESSAGE: usize = 2_048;
/// Events the replay flood sends again.
pub const REPLAYS: usize = 200_000;
/// Connections the slowloris opens and leaves silent.
pub const SLOWLORIS_CONNECTIONS: usize = 64;
/// Connection attempts of the connection flood, and how many run at once.
pub const FLOOD_CONNECTIONS: usize = 600;
const FLOOD_CONCURRENCY: usize = 32;
/// How long the withholding relay keeps reading and forwarding nothing.
pub const WITHHOLD_FOR: Duration = Duration::from_secs(4);
/// Branches of the fork scenario, and the chain built on each.
pub const FORK_BRANCHES: u64 = 12;
const FORK_BRANCH_LENGTH: u64 = 5;
/// How long a target may take to close a connection it must close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// One named attack.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Its number in the list.
    pub number: u8,
    /// The name `cairn-adversary run` takes.
    pub name: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
}

/// Every scenario, in the order.
pub const SCENARIOS: [Scenario; 27] = [
    Scenario {
        number: 1,
        name: "forged-signature",
        summary: "valid events of its own with a signature that does not verify",
    },
    Scenario {
        number: 2,
        name: "author-swapped",
        summary: "events naming another member as author, signed with its own key",
    },
    Scenario {
        number: 3,
        name: "wrong-ops-hash",
        summary: "validly signed headers whose ops hash does not match the ops sent",
    },
    Scenario {
        number: 4,
        name: "mutated-header",
        summary: "valid events with one header byte flipped (lamport, author)",
    },
    Scenario {
        number: 5,
        name: "non-canonical",
        summary: "valid events with trailing bytes, or an op count that lies",
    },
    Scenario {
        number: 6,
        name: "edge-signatures",
        summary: "malleable s (s + L), R plus a torsion point, small-order and non-canonical R (speccheck)",
    },
    Scenario { number: 7, name: "seq-gap", summary: "validly signed events whose seq skips ahead, or is 0" },
    Scenario {
        number: 8,
        name: "equivocation",
        summary: "two valid events with one seq, one to each of two honest nodes",
    },
    Scenario {
        number: 9,
        name: "fork-branches",
        summary: "12 valid branches from one fork point, 5 events each, spread over the nodes",
    },
    Scenario {
        number: 10,
        name: "wrong-lamport",
        summary: "a validly signed event whose lamport is not one more than its deps'",
    },
    Scenario {
        number: 11,
        name: "bad-deps",
        summary: "deps unsorted, duplicated, or naming the event's own id",
    },
    Scenario {
        number: 12,
        name: "orphan-flood",
        summary: "a million validly signed events whose deps never arrive",
    },
    Scenario {
        number: 13,
        name: "lying-length",
        summary: "frames whose length prefix is longer or shorter than the frame",
    },
    Scenario {
        number: 14,
        name: "oversize-message",
        summary: "a frame announcing more than MESSAGE_BYTES_MAX",
    },
    Scenario {
        number: 15,
        name: "truncated-and-garbage",
        summary: "a frame cut short by the end of the stream; garbage after a valid frame",
    },
    Scenario {
        number: 16,
        name: "forged-evidence",
        summary: "evidence with unsigned headers, one header twice, or two authors",
    },
    Scenario {
        number: 17,
        name: "replay-flood",
        summary: "200 000 old valid events sent again as fast as the wire takes them",
    },
    Scenario {
        number: 18,
        name: "withholding-relay",
        summary: "reads everything from every node and forwards nothing",
    },
    Scenario {
        number: 19,
        name: "slowloris",
        summary: "64 connections that finish TLS and never send a hello; extra streams",
    },
    Scenario {
        number: 20,
        name: "connection-flood",
        summary: "600 connection attempts, 32 at once, members and outsiders",
    },
    Scenario { number: 21, name: "wrong-cluster", summary: "a hello naming another cluster id" },
    Scenario { number: 22, name: "non-member", summary: "a TLS key that is not in the genesis" },
    Scenario {
        number: 23,
        name: "impostor",
        summary: "a member's public key presented without its private key",
    },
    Scenario {
        number: 24,
        name: "double-approval",
        summary: "proposes two competing changes of one membership and round (two votes)",
    },
    Scenario {
        number: 25,
        name: "unapproved-add",
        summary: "proposes an accomplice's key, then connects and writes as it before any approval",
    },
    Scenario {
        number: 26,
        name: "old-key-after-rotation",
        summary: "rotates its key, then signs with the old key past the rotation",
    },
    Scenario {
        number: 28,
        name: "forged-context",
        summary: "causal contexts naming events outside the deps or future own seqs; a valid context that names nothing over an honest value",
    },
];

/// Runs the scenario called `name` (`orphans` sizes the orphan flood).
pub async fn run(name: &str, adv: &mut Adversary, orphans: u64) -> anyhow::Result<()> {
    match name {
        "forged-signature" => forged_signature(adv).await,
        "author-swapped" => author_swapped(adv).await,
        "wrong-ops-hash" => wrong_ops_hash(adv).await,
        "mutated-header" => mutated_header(adv).await,
        "non-canonical" => non_canonical(adv).await,
        "edge-signatures" => edge_signatures(adv).await,
        "seq-gap" => seq_gap(adv).await,
        "equivocation" => equivocation(adv).await,
        "fork-branches" => fork_branches(adv).await,
        "wrong-lamport" => wrong_lamport(adv).await,
        "bad-deps" => bad_deps(adv).await,
        "orphan-flood" => orphan_flood(adv, orphans).await,
        "lying-length" => lying_length(adv).await,
        "oversize-message" => oversize_message(adv).await,
        "truncated-and-garbage" => truncated_and_garbage(adv).await,
        "forged-evidence" => forged_evidence(adv).await,
        "replay-flood" => replay_flood(adv).await,
        "withholding-relay" => withholding_relay(adv).await,
        "slowloris" => slowloris(adv).await,
        "connection-flood" => connection_flood(adv).await,
        "wrong-cluster" => wrong_cluster(adv).await,
        "non-member" => non_member(adv).await,
        "impostor" => impostor(adv).await,
        "double-approval" => double_approval(adv).await,
        "unapproved-add" => unapproved_add(adv).await,
        "old-key-after-rotation" => old_key_after_rotation(adv).await,
        "forged-context" => forged_context(adv).await,
        other => {
            let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
            bail!("no scenario {other:?}; the scenarios are: {}", names.join(", "))
        }
    }
}

// ---- helpers ----------------------------------------------------------------------------

/// Links to target `i` and learns its events.
pub async fn learned_link(adv: &mut Adversary, i: usize) -> anyhow::Result<Link> {
    let mut link = adv.link(i).await?;
    adv.learn(&mut link).await?;
    Ok(link)
}

/// Sends `events` (encoded) in `Events` messages that stay within the message limit.
pub async fn send_events(link: &mut Link, events: Vec<Vec<u8>>) -> anyhow::Result<()> {
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    for event in events {
        if !chunk.is_empty()
            && (bytes + event.len() + 64 > MESSAGE_BYTES_MAX / 2 || chunk.len() >= EVENTS_PER_MESSAGE_MAX)
        {
            link.send(&Message::Events { events: std::mem::take(&mut chunk) }).await?;
            bytes = 0;
        }
        bytes += event.len() + 8;
        chunk.push(event);
    }
    if !chunk.is_empty() {
        link.send(&Message::Events { events: chunk }).await?;
    }
    Ok(())
}

/// Sends `events` to target `i` on `link`, expects each to be rejected for `reason`, and
/// forbids them everywhere.
async fn send_invalid(
    adv: &mut Adversary,
    link: &mut Link,
    events: Vec<(EventId, Vec<u8>)>,
    reason: &'static str,
) -> anyhow::Result<()> {
    let n = events.len() as u64;
    assert!(n <= INVALID_EVENTS_MAX, "a scenario sends at most {INVALID_EVENTS_MAX} invalid events a target");
    adv.expect.forbidden.extend(events.iter().map(|(id, _)| *id));
    adv.expect.rejected.push((link.target.name.clone(), reason, n));
    send_events(link, events.into_iter().map(|(_, bytes)| bytes).collect()).await?;
    adv.say(format!("sent {n} events to {} that must be rejected as {reason}", link.target.name));
    Ok(())
}

/// Waits until the target closes `link` and checks the close code.
async fn expect_close(adv: &mut Adversary, link: &Link, code: CloseCode) -> anyhow::Result<()> {
    let Some(error) = link.closed(CLOSE_WAIT).await else {
        bail!("{} kept the connection open; it should have closed it ({code:?})", link.target.name);
    };
    let got = close_code(&error);
    adv.say(format!("{} closed the connection: {}", link.target.name, wire::describe(&error)));
    if got != Some(u64::from(code.code())) {
        bail!("{} closed with {got:?}, expected {} ({code:?})", link.target.name, code.code());
    }
    adv.expect.closed.push((link.target.name.clone(), got));
    Ok(())
}

/// The events of `adv`'s replica, encoded, in causal order.
pub fn learned_events(adv: &Adversary) -> Vec<Vec<u8>> {
    let adapter = adv.replica.adapter();
    let mut events: Vec<_> = adapter.accepted_ids().iter().filter_map(|id| adapter.event(id)).collect();
    events.sort_by_key(|e| (e.lamport(), e.id()));
    events.iter().map(|e| e.bytes().to_vec()).collect()
}

/// A valid header of the adversary's next own event, with `ops`.
fn next_header(adv: &Adversary, ops: &[Op]) -> Header {
    let (seq, lamport, deps) = adv.next_header();
    Header { author: adv.key.public(), seq, lamport, deps, ops_hash: hash_of(ops) }
}

fn encoded(event: &Event) -> (EventId, Vec<u8>) {
    (event.id(), event.encode())
}

// ---- 1–7, 10, 11: invalid events --------------------------------------------------------

async fn forged_signature(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    let events = (0..20)
        .map(|k| {
            let mut event = adv.next_event(put("forged", k));
            event.sig.0[40] ^= 0x01;
            encoded(&event)
        })
        .collect();
    send_invalid(adv, &mut link, events, "bad_signature").await?;
    link.close().await;
    Ok(())
}

async fn author_swapped(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    // Headers valid for the victim (its next seq, on its tip), signed by the adversary.
    let victim = adv.target(1)?.key;
    let victim_idx = adv.genesis.member_idx(&victim).context("the victim is a member")?;
    let events = (0..20)
        .map(|k| {
            let ops = put("swapped", k);
            let (_, lamport, deps) = adv.next_header();
            let seq = adv.replica.adapter().max_seq(victim_idx) + 1;
            let header = Header { author: victim, seq, lamport, deps, ops_hash: hash_of(&ops) };
            encoded(&sign_header(&adv.key, header, ops))
        })
        .collect();
    send_invalid(adv, &mut link, events, "bad_signature").await?;
    link.close().await;
    Ok(())
}

async fn wrong_ops_hash(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    let events = (0..20)
        .map(|k| {
            let header = next_header(adv, &put("claimed", k));
            encoded(&sign_header(&adv.key, header, put("sent", k)))
        })
        .collect();
    send_invalid(adv, &mut link, events, "ops_hash_mismatch").await?;
    link.close().await;
    Ok(())
}

async fn mutated_header(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    // Layout: author (32) ‖ seq (8) ‖ lamport (8) ‖ …: byte 40 is the lamport's lowest.
    const LAMPORT_BYTE: usize = 32 + 8;
    let flip = |adv: &Adversary, k: u64, at: usize| {
        let event = adv.next_event(put("mutated", k));
        let mut bytes = event.encode();
        bytes[at] ^= 0x01;
        let id = cairn_protocol::codec::decode_event(&bytes).map(|e| e.id()).unwrap_or(event.id());
        (id, bytes)
    };
    let lamport: Vec<_> = (0..15).map(|k| flip(adv, k, LAMPORT_BYTE)).collect();
    send_invalid(adv, &mut link, lamport, "bad_signature").await?;
    // A flipped author byte names a key outside the genesis (2^-250 odds that it does not).
    let author: Vec<_> = (15..30).map(|k| flip(adv, k, 0)).collect();
    send_invalid(adv, &mut link, author, "not_member").await?;
    link.close().await;
    Ok(())
}

async fn non_canonical(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    adv.say(
        "the layout is fixed-width (PROTOCOL.md section 2): the non-canonical forms of a valid event are \
         bytes after its end, counts that lie, and unsorted deps (see bad-deps)",
    );
    let trailing = (0..10)
        .map(|k| {
            let event = adv.next_event(put("trailing", k));
            let mut bytes = event.encode();
            bytes.push(0);
            (event.id(), bytes)
        })
        .collect();
    send_invalid(adv, &mut link, trailing, "trailing_bytes").await?;
    // The op count (a u64 after the header) claims one op more than follows.
    let lying_count = (0..10)
        .map(|k| {
            let event = adv.next_event(put("count", k));
            let header_len = cairn_protocol::codec::encode_header(&event.header).len();
            let mut bytes = event.encode();
            let count = u64::from_le_bytes(bytes[header_len..header_len + 8].try_into().expect("8 bytes"));
            bytes[header_len..header_len + 8].copy_from_slice(&(count + 1).to_le_bytes());
            (event.id(), bytes)
        })
        .collect();
    send_invalid(adv, &mut link, lying_count, "malformed").await?;
    link.close().await;
    Ok(())
}

/// The group order ℓ of ed25519, little-endian.
const ELL: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// `a + b` for 256-bit little-endian numbers whose sum fits (s < ℓ < 2^253).
fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    out
}

/// The `R` halves and whole signatures of the ed25519-speccheck cases (small-order and
/// non-canonical points among them), from the copy in `testdata/`.
fn speccheck_signatures() -> Vec<[u8; 64]> {
    include_str!("../../../testdata/ed25519-speccheck/cases.txt")
        .lines()
        .filter_map(|line| line.strip_prefix("sig="))
        .filter_map(|hex_sig| hex::decode(hex_sig).ok()?.try_into().ok())
        .collect()
}

async fn edge_signatures(adv: &mut Adversary) -> anyhow::Result<()> {
    use curve25519_dalek::edwards::CompressedEdwardsY;
    let mut link = learned_link(adv, 0).await?;
    let mut events = Vec::new();
    let mut k = 0u64;
    let mut with_sig = |adv: &Adversary, sig: [u8; 64]| {
        k += 1;
        let mut event = adv.next_event(put("edge", k));
        event.sig = Signature(sig);
        encoded(&event)
    };
    // (a) s + ℓ: a valid signature with a non-reduced scalar; a verifier that reduces s
    // accepts it. Every variant signs its own event: two copies of one id in a message count
    // once.
    let split = |event: &Event| -> ([u8; 32], [u8; 32]) {
        (event.sig.0[..32].try_into().expect("32 bytes"), event.sig.0[32..].try_into().expect("32 bytes"))
    };
    let mut malleable = adv.next_event(put("edge-malleable", 0));
    let (r, s) = split(&malleable);
    malleable.sig = Signature([r, add_le(&s, &ELL)].concat().try_into().expect("64 bytes"));
    events.push(encoded(&malleable));
    // (b) R + T for a point T of order 8: a cofactored verifier accepts it, verify_strict not.
    let torsion = CompressedEdwardsY(
        hex::decode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")?
            .try_into()
            .expect("32 bytes"),
    )
    .decompress()
    .context("the speccheck order-8 point decompresses")?;
    if !torsion.is_small_order() {
        bail!("the torsion point is not of small order");
    }
    let mut cofactored = adv.next_event(put("edge-torsion", 0));
    let (r, s) = split(&cofactored);
    let r_point = CompressedEdwardsY(r).decompress().context("R of a valid signature decompresses")?;
    let shifted = (r_point + torsion).compress().to_bytes();
    cofactored.sig = Signature([shifted, s].concat().try_into().expect("64 bytes"));
    events.push(encoded(&cofactored));
    // (c) each speccheck R (small order, non-canonical encodings) with s = 0 and with the
    // case's own s; (d) each speccheck signature as it is.
    for sig in speccheck_signatures() {
        let mut zero_s = sig;
        zero_s[32..].fill(0);
        events.push(with_sig(adv, zero_s));
        events.push(with_sig(adv, sig));
    }
    adv.say(format!(
        "{} edge-case signatures: s + ℓ, R + T(order 8), speccheck R values and signatures",
        events.len()
    ));
    send_invalid(adv, &mut link, events, "bad_signature").await?;
    link.close().await;
    Ok(())
}

async fn seq_gap(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    // Distinct seqs, so no two share one (that would be evidence, not a rejection).
    let mut events: Vec<_> = (0..15)
        .map(|k| {
            let ops = put("gap", k);
            let (seq, lamport, deps) = adv.next_header();
            encoded(&Event::sign(&adv.key, seq + 5 + k, lamport, deps, ops))
        })
        .collect();
    let (_, lamport, deps) = adv.next_header();
    events.push(encoded(&Event::sign(&adv.key, 0, lamport, deps, put("gap", 99))));
    send_invalid(adv, &mut link, events, "bad_seq").await?;
    link.close().await;
    Ok(())
}

/// The register every honest node wrote before the attack: `seed-0-0` = "seed".
const CONTEXT_VICTIM: &str = "seed-0-0";

async fn forged_context(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    let key = CONTEXT_VICTIM.as_bytes().to_vec();
    let seen = |events: Vec<EventId>, own: Vec<u64>| Seen { events, own };
    let put_seen = |k: u64, seen: Seen| Op::PutSeen {
        key: key.clone(),
        value: format!("forged {k}").into_bytes(),
        seen,
    };
    // Rule 7: contexts that name an event outside the deps, an own seq not below the event's, or
    // lists out of order. Distinct seqs, so that no two share one.
    let outsider = EventId([0x5a; 32]);
    let mut events = Vec::new();
    for k in 0..12u64 {
        let (seq, lamport, deps) = adv.next_header();
        let seq = seq + k;
        let bad = match k % 4 {
            0 => seen(vec![outsider], vec![]),
            1 => seen(vec![], vec![seq]),
            2 => seen(vec![], vec![seq + 3]),
            _ => {
                let mut named = deps.clone();
                named.push(outsider);
                named.sort_unstable();
                named.reverse();
                seen(named, vec![])
            }
        };
        events.push(encoded(&Event::sign(&adv.key, seq, lamport, deps, vec![put_seen(k, bad)])));
    }
    send_invalid(adv, &mut link, events, "bad_op").await?;
    // A valid context that names nothing, over an honest value it depends on: accepted, and the
    // honest value stays as a sibling on every node (a context can leave writes standing, never
    // erase one).
    let event = adv.next_event(vec![put_seen(99, seen(vec![], vec![]))]);
    adv.say(format!("a context naming nothing over {CONTEXT_VICTIM}, event {}", event.id()));
    send_events(&mut link, vec![event.encode()]).await?;
    adv.keep(&event);
    adv.expect.kept.push((CONTEXT_VICTIM.to_owned(), "seed".to_owned()));
    adv.expect.kept.push((CONTEXT_VICTIM.to_owned(), "forged 99".to_owned()));
    link.close().await;
    Ok(())
}

async fn wrong_lamport(adv: &mut Adversary) -> anyhow::Result<()> {
    // One event per target: two with one seq and valid signatures would make evidence.
    for i in 0..adv.targets.len() {
        let mut link = learned_link(adv, i).await?;
        let (seq, lamport, deps) = adv.next_header();
        let event = Event::sign(&adv.key, seq, lamport + 7 + i as u64, deps, put("lamport", i as u64));
        send_invalid(adv, &mut link, vec![encoded(&event)], "bad_lamport").await?;
        link.close().await;
    }
    Ok(())
}

async fn bad_deps(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    let (seq, lamport, deps) = adv.next_header();
    if deps.is_empty() {
        bail!("the target holds no events to depend on");
    }
    let unsorted_or_duplicated = |k: u64| {
        let ops = put("deps", k);
        let mut bad = deps.clone();
        if k.is_multiple_of(2) && bad.len() >= 2 {
            bad.swap(0, 1);
        } else {
            bad.push(bad[0]);
            bad.sort_unstable();
        }
        let header = Header { author: adv.key.public(), seq, lamport, deps: bad, ops_hash: hash_of(&ops) };
        encoded(&sign_header(&adv.key, header, ops))
    };
    let events = (0..20).map(unsorted_or_duplicated).collect();
    send_invalid(adv, &mut link, events, "deps_not_sorted").await?;
    // An event cannot name its own id (the id hashes the deps), so it names the id it would
    // have without that dep: a dep that never arrives. It is held, never accepted.
    let ops = put("self", 0);
    let own = Event::sign(&adv.key, seq, lamport, deps.clone(), ops.clone());
    let mut with_self = deps.clone();
    with_self.push(own.id());
    let naming = Event::sign(&adv.key, seq, lamport, with_self, ops);
    adv.expect.forbidden.push(naming.id());
    adv.expect.orphans += 1;
    send_events(&mut link, vec![naming.encode()]).await?;
    adv.say("sent an event naming its own id (as computed without that dep): held, never accepted");
    link.close().await;
    Ok(())
}

// ---- 8, 9: equivocation ------------------------------------------------------------------

async fn equivocation(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut first = learned_link(adv, 0).await?;
    let mut second = learned_link(adv, 1).await?;
    let a = adv.next_event(put("equivocation", 1));
    let b = adv.next_event(put("equivocation", 2));
    send_events(&mut first, vec![a.encode()]).await?;
    send_events(&mut second, vec![b.encode()]).await?;
    adv.say(format!(
        "sent seq {} twice: {} to {}, {} to {}",
        a.header.seq,
        a.id(),
        first.target.name,
        b.id(),
        second.target.name
    ));
    adv.expect.equivocated = true;
    first.close().await;
    second.close().await;
    Ok(())
}

async fn fork_branches(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut links = Vec::new();
    for i in 0..adv.targets.len() {
        links.push(learned_link(adv, i).await?);
    }
    let (seq, lamport, deps) = adv.next_header();
    let mut per_link: Vec<Vec<Vec<u8>>> = vec![Vec::new(); links.len()];
    for b in 0..FORK_BRANCHES {
        let mut event = Event::sign(&adv.key, seq, lamport, deps.clone(), put("branch", b * 100));
        let mut chain = vec![event.encode()];
        for step in 1..FORK_BRANCH_LENGTH {
            event = Event::sign(
                &adv.key,
                seq + step,
                lamport + step,
                vec![event.id()],
                put("branch", b * 100 + step),
            );
            chain.push(event.encode());
        }
        per_link[b as usize % links.len()].extend(chain);
    }
    for (link, events) in links.iter_mut().zip(per_link) {
        let n = events.len();
        send_events(link, events).await?;
        adv.say(format!("sent {n} branch events to {}", link.target.name));
    }
    adv.say(format!("{FORK_BRANCHES} branches of {FORK_BRANCH_LENGTH} events from seq {seq}"));
    adv.expect.equivocated = true;
    for link in links {
        link.close().await;
    }
    Ok(())
}

// ---- 12, 17: floods ----------------------------------------------------------------------

/// Signs `n` orphans of `key` (on every core): distinct seqs far above any chain, each with
/// one dep that exists nowhere, so none is ever acceptable and no two share a seq.
pub async fn sign_orphans(key: &SecretKey, n: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let key = SecretKey::from_seed(&key.seed_bytes());
    let threads = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 4) as u64;
    Ok(tokio::task::spawn_blocking(move || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let key = &key;
                    scope.spawn(move || {
                        (t..n)
                            .step_by(threads as usize)
                            .map(|i| {
                                let mut missing = [0u8; 32];
                                missing[..8].copy_from_slice(&i.to_le_bytes());
                                missing[8..16].copy_from_slice(b"orphans!");
                                let deps = vec![EventId(missing)];
                                Event::sign(key, 1_000_000_000 + i, 2, deps, put("orphan", i)).encode()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("a signing thread")).collect()
        })
    })
    .await?)
}

/// Sends `orphans` on `link`, reading (and ignoring) whatever the target sends meanwhile.
pub async fn send_orphans(link: &mut Link, orphans: &[Vec<u8>]) -> anyhow::Result<()> {
    for chunk in orphans.chunks(ORPHANS_PER_MESSAGE) {
        link.send(&Message::Events { events: chunk.to_vec() }).await?;
        while link.recv(Duration::ZERO).await.is_some() {}
    }
    Ok(())
}

async fn orphan_flood(adv: &mut Adversary, n: u64) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    let started = Instant::now();
    let orphans = sign_orphans(&adv.key, n).await?;
    adv.say(format!("signed {n} orphans in {:.1} s", started.elapsed().as_secs_f64()));
    let started = Instant::now();
    send_orphans(&mut link, &orphans).await?;
    adv.say(format!(
        "sent {n} orphans to {} in {:.1} s (the wire waits while the target verifies)",
        link.target.name,
        started.elapsed().as_secs_f64()
    ));
    adv.expect.orphans += n;
    link.close().await;
    Ok(())
}

/// Sends `count` of `events` (old valid ones, cycled) on `link`.
pub async fn send_replays(link: &mut Link, events: &[Vec<u8>], count: usize) -> anyhow::Result<()> {
    let mut sent = 0usize;
    while sent < count {
        let take = (count - sent).min(events.len());
        send_events(link, events[..take].to_vec()).await?;
        sent += take;
        while link.recv(Duration::ZERO).await.is_some() {}
    }
    Ok(())
}

async fn replay_flood(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    let events = learned_events(adv);
    if events.is_empty() {
        bail!("the target holds no events to replay");
    }
    let started = Instant::now();
    send_replays(&mut link, &events, REPLAYS).await?;
    adv.say(format!(
        "replayed {REPLAYS} old valid events ({} distinct) to {} in {:.1} s",
        events.len(),
        link.target.name,
        started.elapsed().as_secs_f64()
    ));
    link.close().await;
    Ok(())
}

// ---- 18: withholding -----------------------------------------------------------------------

async fn withholding_relay(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut links = Vec::new();
    for i in 0..adv.targets.len() {
        links.push(adv.link(i).await?);
    }
    let until = Instant::now() + WITHHOLD_FOR;
    let mut frames = 0u64;
    while Instant::now() < until {
        for link in &mut links {
            while link.recv(Duration::ZERO).await.is_some() {
                frames += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    adv.say(format!(
        "read {frames} frames from {} nodes in {WITHHOLD_FOR:?} and forwarded none",
        links.len()
    ));
    for link in links {
        link.close().await;
    }
    Ok(())
}

// ---- 13–16: lying frames and messages ------------------------------------------------------

async fn lying_length(adv: &mut Adversary) -> anyhow::Result<()> {
    // Longer: announces 1 000 bytes, sends 10, ends the stream.
    let mut link = adv.link(0).await?;
    let mut bytes = 1000u32.to_le_bytes().to_vec();
    bytes.extend([0u8; 10]);
    link.send_raw(&bytes).await?;
    link.finish()?;
    adv.say("announced a 1000-byte frame, sent 10 bytes and ended the stream");
    expect_close(adv, &link, CloseCode::ProtocolViolation).await?;
    // Shorter: announces 5 bytes of a 36-byte Summary; the rest reads as a huge length.
    let mut link = adv.link(0).await?;
    let summary = cairn_protocol::codec::encode_message(&Message::Summary { digest: [0xee; 32] });
    let mut bytes = 5u32.to_le_bytes().to_vec();
    bytes.extend(&summary);
    link.send_raw(&bytes).await?;
    adv.say("announced 5 bytes of a 36-byte message");
    adv.expect.bad_messages.push((link.target.name.clone(), 1));
    expect_close(adv, &link, CloseCode::ProtocolViolation).await?;
    Ok(())
}

async fn oversize_message(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = adv.link(0).await?;
    let announced = u32::try_from(MESSAGE_BYTES_MAX + 1).unwrap_or(u32::MAX);
    let mut bytes = announced.to_le_bytes().to_vec();
    bytes.extend(vec![0u8; 64 * 1024]);
    link.send_raw(&bytes).await?;
    adv.say(format!("announced a {announced}-byte frame (MESSAGE_BYTES_MAX + 1)"));
    expect_close(adv, &link, CloseCode::ProtocolViolation).await
}

async fn truncated_and_garbage(adv: &mut Adversary) -> anyhow::Result<()> {
    // A frame cut short by the end of the stream.
    let mut link = adv.link(0).await?;
    let summary = cairn_protocol::codec::encode_message(&Message::Summary { digest: [1; 32] });
    let framed = frame(&summary);
    link.send_raw(&framed[..FRAME_LENGTH_BYTES + summary.len() / 2]).await?;
    link.finish()?;
    adv.say("sent half a frame and ended the stream");
    expect_close(adv, &link, CloseCode::ProtocolViolation).await?;
    // A valid frame, then a frame of garbage, then bytes that are no frame at all.
    let mut link = adv.link(0).await?;
    link.send_frame(&summary).await?;
    link.send_frame(&[0xff; 20]).await?;
    link.send_raw(&[0xff; 16]).await?;
    adv.say("sent a valid frame, a frame of garbage, and 16 bytes of 0xff");
    adv.expect.bad_messages.push((link.target.name.clone(), 1));
    expect_close(adv, &link, CloseCode::ProtocolViolation).await
}

async fn forged_evidence(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    let signed = |event: &Event| SignedHeader { header: event.header.clone(), sig: event.sig };
    let a = adv.next_event(put("evidence", 1));
    let b = adv.next_event(put("evidence", 2));
    let unsigned = |event: &Event| SignedHeader { header: event.header.clone(), sig: Signature([0; 64]) };
    // A real event of an honest member at some seq, paired with one of ours claiming it.
    let victim = adv.target(1)?.key;
    let victim_idx = adv.genesis.member_idx(&victim).context("a member")?;
    let victim_event = adv
        .replica
        .adapter()
        .at_seq(victim_idx, 1)
        .first()
        .and_then(|id| adv.replica.adapter().event(id))
        .map(|v| cairn_protocol::codec::decode_event(v.bytes()))
        .transpose()?
        .context("the victim has written nothing to frame")?;
    let framed_header = Header { author: victim, ..victim_event.header.clone() };
    let framed = SignedHeader {
        sig: adv.key.sign(&Header { ops_hash: [7; 32], ..framed_header.clone() }.id().0),
        header: Header { ops_hash: [7; 32], ..framed_header },
    };
    let forgeries = [
        ("two unsigned headers", Evidence::new(unsigned(&a), unsigned(&b))),
        ("one signed header twice", Evidence::new(signed(&a), signed(&a))),
        ("headers of two authors", Evidence::new(signed(&a), signed(&victim_event))),
        ("a member framed with a header it never signed", Evidence::new(signed(&victim_event), framed)),
    ];
    for (what, evidence) in forgeries {
        link.send(&Message::Evidence { evidence: vec![evidence] }).await?;
        adv.say(format!("sent forged evidence: {what}"));
    }
    adv.expect.bad_messages.push((link.target.name.clone(), 4));
    link.close().await;
    Ok(())
}

// ---- 19–23: connections ----------------------------------------------------------------------

async fn slowloris(adv: &mut Adversary) -> anyhow::Result<()> {
    let target = adv.target(0)?.clone();
    let identity = tls::Identity::new(&adv.key);
    // Connections that finish TLS and never send the hello.
    let mut silent = Vec::new();
    for _ in 0..SLOWLORIS_CONNECTIONS {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let connecting = endpoint.connect_with(
            tls::client_config(&identity, &target.key),
            target.address,
            tls::SERVER_NAME,
        )?;
        if let Ok(Ok(connection)) = tokio::time::timeout(WIRE_TIMEOUT, connecting).await {
            silent.push((endpoint, connection));
        }
    }
    adv.say(format!("{} silent connections to {} finished TLS", silent.len(), target.name));
    let mut closed = 0usize;
    for (_, connection) in &silent {
        if tokio::time::timeout(CLOSE_WAIT, connection.closed()).await.is_ok() {
            closed += 1;
        }
    }
    adv.say(format!("{closed} of {} silent connections were closed by {}", silent.len(), target.name));
    if closed != silent.len() {
        bail!("{} left {} silent connections open", target.name, silent.len() - closed);
    }
    // A linked connection that tries to open more streams than the one it may.
    let link = adv.link(0).await?;
    let extra = tokio::time::timeout(Duration::from_secs(1), async {
        let (mut send, _recv) = link.connection().open_bi().await?;
        send.write_all(&frame(&[0u8; 4])).await?;
        anyhow::Ok(())
    })
    .await;
    adv.say(match &extra {
        Err(_) => "a second stream could not be opened (the target allows one)".to_owned(),
        Ok(Ok(())) => "a second stream opened; the target must not read it".to_owned(),
        Ok(Err(error)) => format!("a second stream failed: {error}"),
    });
    link.close().await;
    Ok(())
}

/// One round of the connection flood against `target`: [`FLOOD_CONNECTIONS`] attempts,
/// [`FLOOD_CONCURRENCY`] at once, every other one an outsider with a fresh key. Returns how
/// many member and outsider attempts completed the hello.
pub async fn flood_connections(
    member: &SecretKey,
    target: &Target,
    cluster_id: [u8; 32],
) -> anyhow::Result<(usize, usize)> {
    // (member or outsider, completed the hello) of every attempt.
    let mut outcomes: Vec<(bool, bool)> = Vec::with_capacity(FLOOD_CONNECTIONS);
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..FLOOD_CONNECTIONS {
        if attempts.len() >= FLOOD_CONCURRENCY
            && let Some(result) = attempts.join_next().await
        {
            outcomes.push(result??);
        }
        let is_member = i.is_multiple_of(2);
        let identity =
            if is_member { tls::Identity::new(member) } else { tls::Identity::new(&SecretKey::generate()) };
        let target = target.clone();
        attempts.spawn(async move {
            match wire::dial(&identity, &target, &cluster_id).await? {
                Dialed::Linked(link) => {
                    // No flush: a newer connection of the same member replaces this one, and
                    // the target no longer reads it.
                    link.abort().await;
                    anyhow::Ok((is_member, true))
                }
                Dialed::Refused(_) => Ok((is_member, false)),
            }
        });
    }
    while let Some(result) = attempts.join_next().await {
        outcomes.push(result??);
    }
    let linked = |member: bool| outcomes.iter().filter(|(m, ok)| *m == member && *ok).count();
    Ok((linked(true), linked(false)))
}

async fn connection_flood(adv: &mut Adversary) -> anyhow::Result<()> {
    let target = adv.target(0)?.clone();
    let started = Instant::now();
    let (members, outsiders) = flood_connections(&adv.key, &target, adv.cluster_id()).await?;
    adv.say(format!(
        "{FLOOD_CONNECTIONS} connection attempts to {} in {:.1} s: {members} of {} member attempts completed the \
         hello, {outsiders} of {} outsider attempts did",
        target.name,
        started.elapsed().as_secs_f64(),
        FLOOD_CONNECTIONS.div_ceil(2),
        FLOOD_CONNECTIONS / 2
    ));
    if outsiders > 0 {
        bail!("{} let {outsiders} outsiders complete the hello", target.name);
    }
    if members == 0 {
        bail!("no member connection got through the flood");
    }
    // The target still takes a normal connection afterwards.
    let link = adv.link(0).await?;
    link.close().await;
    Ok(())
}

async fn wrong_cluster(adv: &mut Adversary) -> anyhow::Result<()> {
    let target = adv.target(0)?.clone();
    let mut other = adv.cluster_id();
    other[0] ^= 0xff;
    match wire::dial(&tls::Identity::new(&adv.key), &target, &other).await? {
        Dialed::Linked(link) => {
            link.close().await;
            bail!("{} completed the hello for another cluster", target.name)
        }
        Dialed::Refused(reason) => {
            adv.say(format!("a hello for cluster {} was refused: {reason}", hex::encode(&other[..8])));
            if !reason.contains(&format!("code {}", CloseCode::ClusterMismatch.code())) {
                bail!(
                    "expected close code {} (cluster mismatch): {reason}",
                    CloseCode::ClusterMismatch.code()
                );
            }
            adv.expect.closed.push((target.name.clone(), Some(u64::from(CloseCode::ClusterMismatch.code()))));
            Ok(())
        }
    }
}

/// Dials every target with `identity` and fails unless each refuses it in the TLS handshake.
async fn expect_tls_refusal(adv: &mut Adversary, identity: &tls::Identity, who: &str) -> anyhow::Result<()> {
    let cluster_id = adv.cluster_id();
    for target in adv.targets.clone() {
        match wire::dial(identity, &target, &cluster_id).await? {
            Dialed::Linked(link) => {
                link.close().await;
                bail!("{} let {who} in", target.name)
            }
            Dialed::Refused(reason) => {
                adv.say(format!("{} refused {who}: {reason}", target.name));
                if !reason.contains("handshake") {
                    bail!("{} refused {who} after the handshake, not in it: {reason}", target.name);
                }
                adv.expect.closed.push((target.name.clone(), None));
            }
        }
    }
    Ok(())
}

async fn non_member(adv: &mut Adversary) -> anyhow::Result<()> {
    let outsider = SecretKey::generate();
    expect_tls_refusal(adv, &tls::Identity::new(&outsider), "a key outside the genesis").await
}

async fn impostor(adv: &mut Adversary) -> anyhow::Result<()> {
    let victim = adv.target(1)?.key;
    let identity = wire::impostor_identity(&victim, &adv.key);
    let name = adv.target(1)?.name.clone();
    expect_tls_refusal(adv, &identity, &format!("{name}'s public key without its private key")).await
}

// ---- 24–26: membership ----------------------------------------------------------------------

/// A proposal, by the adversary's seat, to add the key of seed `seed` as `name`, to the
/// membership in force in its replica, in the open round.
fn propose_add(adv: &Adversary, seed: u8, name: &str) -> Op {
    let resolution = adv.replica.adapter().membership();
    let change = Change {
        base: resolution.in_force().id(),
        kind: ChangeKind::Add { key: SecretKey::from_seed(&[seed; 32]).public(), name: name.to_owned() },
    };
    Op::Propose { change, round: resolution.round() }
}

async fn double_approval(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    let first = adv.next_event(vec![propose_add(adv, 201, "accomplice-a")]);
    adv.keep(&first);
    let second = adv.next_event(vec![propose_add(adv, 202, "accomplice-b")]);
    adv.keep(&second);
    send_events(&mut link, vec![first.encode(), second.encode()]).await?;
    adv.say(format!(
        "proposed two competing additions in one round to {}: {} and {} (two votes of one seat)",
        link.target.name,
        first.id(),
        second.id()
    ));
    adv.expect.double_approval = true;
    link.close().await;
    Ok(())
}

async fn unapproved_add(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    let proposal = adv.next_event(vec![propose_add(adv, 203, "accomplice")]);
    adv.keep(&proposal);
    send_events(&mut link, vec![proposal.encode()]).await?;
    adv.say(format!("proposed adding an accomplice's key: {}", proposal.id()));
    // The accomplice's key is named by a valid op, but no change made it a seat's: every honest
    // node refuses it at the TLS layer and its events as not a member's.
    let accomplice = SecretKey::from_seed(&[203; 32]);
    expect_tls_refusal(adv, &tls::Identity::new(&accomplice), "the accomplice").await?;
    let (_, lamport, deps) = adv.next_header();
    let mut events = Vec::new();
    let mut previous: Option<EventId> = None;
    for seq in 1..=5 {
        let deps = previous.map_or_else(|| deps.clone(), |p| vec![p]);
        let event = Event::sign(&accomplice, seq, lamport + seq - 1, deps, put("accomplice", seq));
        previous = Some(event.id());
        adv.expect.forbidden.push(event.id());
        events.push(event.encode());
    }
    send_events(&mut link, events).await?;
    adv.say(format!("sent 5 events signed by the accomplice's key to {}", link.target.name));
    // The first has every dep accepted and is refused; the others wait for it in the buffer
    // (their author is known to no one yet), and go when the session ends.
    adv.expect.rejected.push((link.target.name.clone(), "not_member", 1));
    link.close().await;
    Ok(())
}

async fn old_key_after_rotation(adv: &mut Adversary) -> anyhow::Result<()> {
    let mut link = learned_link(adv, 0).await?;
    let successor = SecretKey::from_seed(&[204; 32]);
    let (seq, _, _) = adv.next_header();
    let rotation = Rotation::new(&adv.cluster_id(), adv.key.public(), seq, &successor);
    let rotate = adv.next_event(vec![Op::Rotate(rotation)]);
    adv.keep(&rotate);
    let after = adv.next_event(put("after-rotation", 1));
    adv.expect.forbidden.push(after.id());
    send_events(&mut link, vec![rotate.encode(), after.encode()]).await?;
    adv.say(format!(
        "rotated to {} at seq {seq}, then signed seq {} with the old key ({})",
        successor.public(),
        seq + 1,
        after.id()
    ));
    // The rotation is in force at once (it needs no vote): the old key is out, its connection
    // closed, saying why.
    adv.expect.rejected.push((link.target.name.clone(), "not_member", 1));
    expect_close(adv, &link, CloseCode::Removed).await?;
    // The new key is the seat's now: it connects to the node that holds the rotation.
    let new_link = wire::link(&successor, adv.target(0)?, &adv.cluster_id()).await?;
    adv.say(format!("the new key connects to {}", new_link.target.name));
    new_link.close().await;
    Ok(())
}
