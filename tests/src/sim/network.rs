//! The simulated network: per directed link a drop probability, a duplicate probability and a
//! random delay (which reorders), plus partitions that cut a bipartition of the nodes for a
//! while and may also close the connections across the cut. Connections are tracked per
//! unordered pair; an epoch per pair makes every message sent on a closed connection vanish.
//!
//! Each directed link has a bounded transport queue, like the daemon's
//! (`transport_queue_messages_max`): a message sent counts against the link's room until it is
//! delivered or lost, and a connection that closes empties the queues of both directions.

use super::rng::{PPM, Rng};

/// The faults of one directed link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// Probability that a message is lost, in parts per million.
    pub drop_ppm: u32,
    /// Probability that a message is delivered twice, in parts per million.
    pub duplicate_ppm: u32,
    /// Each copy of a message arrives `1..=delay_max_ms` milliseconds after it was sent.
    pub delay_max_ms: u64,
}

impl Link {
    /// A link that loses nothing and delivers within `delay_max_ms`.
    pub fn reliable(delay_max_ms: u64) -> Self {
        Self { drop_ppm: 0, duplicate_ppm: 0, delay_max_ms }
    }
}

/// How the faults of the links are drawn for a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkProfile {
    /// Each link's drop probability is drawn from `0..=drop_max_ppm`.
    pub drop_max_ppm: u32,
    /// Each link's duplicate probability is drawn from `0..=duplicate_max_ppm`.
    pub duplicate_max_ppm: u32,
    /// Each link's largest delay is drawn from `1..=delay_max_ms`.
    pub delay_max_ms: u64,
}

impl LinkProfile {
    /// No loss, no duplicates, delays up to `delay_max_ms`.
    pub fn reliable(delay_max_ms: u64) -> Self {
        Self { drop_max_ppm: 0, duplicate_max_ppm: 0, delay_max_ms }
    }

    fn draw(&self, rng: &mut Rng) -> Link {
        Link {
            drop_ppm: rng.range(0, u64::from(self.drop_max_ppm)) as u32,
            duplicate_ppm: rng.range(0, u64::from(self.duplicate_max_ppm)) as u32,
            delay_max_ms: rng.range(1, self.delay_max_ms.max(1)),
        }
    }
}

/// The connection between two nodes (either direction).
#[derive(Clone, Copy, Debug, Default)]
struct Pair {
    /// Both ends consider the connection up.
    up: bool,
    /// One end refused the other for good (a proven equivocator); never reconnected.
    refused: bool,
    /// Bumped whenever the connection closes: messages sent in an older epoch are lost.
    epoch: u64,
}

/// A cut between the nodes with `side[i] == true` and the others.
#[derive(Clone, Debug)]
struct Partition {
    id: u64,
    side: Vec<bool>,
    /// The connections across the cut were closed when it began.
    disconnects: bool,
}

/// What [`Network::send`] decided for one message: the delays of the copies to deliver.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    /// One delay per delivered copy (empty: the message was lost).
    pub delays_ms: Vec<u64>,
    /// The epoch of the connection the message travels on.
    pub epoch: u64,
}

/// The simulated network of `n` nodes.
#[derive(Clone, Debug)]
pub struct Network {
    n_nodes: usize,
    links: Vec<Link>,
    /// Message copies on each directed link that hold its room: sent in the current epoch and
    /// not yet delivered or lost.
    queued: Vec<usize>,
    pairs: Vec<Pair>,
    partitions: Vec<Partition>,
    n_partitions: u64,
}

impl Network {
    /// A network of `n_nodes` nodes, every connection up, each link's faults drawn from
    /// `profile`.
    pub fn new(n_nodes: usize, profile: LinkProfile, rng: &mut Rng) -> Self {
        let links = (0..n_nodes * n_nodes).map(|_| profile.draw(rng)).collect();
        let pairs = vec![Pair { up: true, refused: false, epoch: 0 }; n_nodes * n_nodes];
        let queued = vec![0; n_nodes * n_nodes];
        Self { n_nodes, links, queued, pairs, partitions: Vec::new(), n_partitions: 0 }
    }

    fn pair(&self, a: usize, b: usize) -> &Pair {
        &self.pairs[a.min(b) * self.n_nodes + a.max(b)]
    }

    fn pair_mut(&mut self, a: usize, b: usize) -> &mut Pair {
        &mut self.pairs[a.min(b) * self.n_nodes + a.max(b)]
    }

    /// The faults of the link `from → to`.
    pub fn link(&self, from: usize, to: usize) -> Link {
        self.links[from * self.n_nodes + to]
    }

    /// Replaces the faults of every link (used when healing: drop and duplicate go to zero).
    pub fn set_links(&mut self, mut f: impl FnMut(Link) -> Link) {
        for link in &mut self.links {
            *link = f(*link);
        }
    }

    /// Whether an active partition separates `a` and `b`.
    pub fn is_cut(&self, a: usize, b: usize) -> bool {
        self.partitions.iter().any(|p| p.side[a] != p.side[b])
    }

    /// Whether the connection `a – b` is up.
    pub fn is_up(&self, a: usize, b: usize) -> bool {
        self.pair(a, b).up
    }

    /// Whether `a` and `b` refused each other for good.
    pub fn is_refused(&self, a: usize, b: usize) -> bool {
        self.pair(a, b).refused
    }

    /// Whether a message sent in `epoch` on `from → to` can still arrive now.
    pub fn can_deliver(&self, from: usize, to: usize, epoch: u64) -> bool {
        let pair = self.pair(from, to);
        pair.up && pair.epoch == epoch && !self.is_cut(from, to)
    }

    /// Message copies on `from → to` that hold its transport queue's room.
    pub fn queued(&self, from: usize, to: usize) -> usize {
        self.queued[from * self.n_nodes + to]
    }

    /// Decides the fate of one message on `from → to`; each copy to deliver holds the link's
    /// room until [`Network::arrived`].
    pub fn send(&mut self, from: usize, to: usize, rng: &mut Rng) -> Sent {
        let pair = *self.pair(from, to);
        let mut sent = Sent { delays_ms: Vec::new(), epoch: pair.epoch };
        if !pair.up || self.is_cut(from, to) {
            return sent;
        }
        let link = self.link(from, to);
        if rng.chance(link.drop_ppm) {
            return sent;
        }
        let copies = if rng.chance(link.duplicate_ppm) { 2 } else { 1 };
        for _ in 0..copies {
            sent.delays_ms.push(rng.range(1, link.delay_max_ms.max(1)));
        }
        self.queued[from * self.n_nodes + to] += copies;
        sent
    }

    /// A copy sent on `from → to` in `epoch` arrives (or is found lost): it no longer holds the
    /// link's room. Returns whether it did (a copy of a closed connection's epoch did not).
    pub fn arrived(&mut self, from: usize, to: usize, epoch: u64) -> bool {
        if self.pair(from, to).epoch != epoch {
            return false;
        }
        let queued = &mut self.queued[from * self.n_nodes + to];
        assert!(*queued > 0, "a copy arrived on {from} → {to} that the link did not count");
        *queued -= 1;
        true
    }

    fn empty_queues(&mut self, a: usize, b: usize) {
        self.queued[a * self.n_nodes + b] = 0;
        self.queued[b * self.n_nodes + a] = 0;
    }

    /// Closes the connection `a – b` (both ends must be told); `refused` keeps it closed.
    pub fn close(&mut self, a: usize, b: usize, refused: bool) {
        let pair = self.pair_mut(a, b);
        pair.up = false;
        pair.refused |= refused;
        pair.epoch += 1;
        self.empty_queues(a, b);
    }

    /// Takes the connection `a – b` down for good: the two nodes never talk directly, and
    /// must learn each other's events through other nodes.
    pub fn sever(&mut self, a: usize, b: usize) {
        self.close(a, b, true);
    }

    /// Marks the connection `a – b` up again (both ends accepted it).
    pub fn open(&mut self, a: usize, b: usize) {
        let pair = self.pair_mut(a, b);
        assert!(!pair.refused, "a refused connection is never reopened");
        pair.up = true;
        pair.epoch += 1;
        self.empty_queues(a, b);
    }

    /// Starts a partition; returns its id and, if it closes connections, the pairs that were
    /// up across the cut (the caller closes them and tells both ends).
    pub fn start_partition(&mut self, side: Vec<bool>, disconnects: bool) -> (u64, Vec<(usize, usize)>) {
        assert_eq!(side.len(), self.n_nodes, "a partition names a side for every node");
        self.n_partitions += 1;
        let id = self.n_partitions;
        let mut across = Vec::new();
        if disconnects {
            for a in 0..self.n_nodes {
                for b in a + 1..self.n_nodes {
                    if side[a] != side[b] && self.pair(a, b).up {
                        across.push((a, b));
                    }
                }
            }
        }
        self.partitions.push(Partition { id, side, disconnects });
        (id, across)
    }

    /// Ends partition `id` (if still active); returns whether it had closed connections.
    pub fn end_partition(&mut self, id: u64) -> bool {
        let mut disconnects = false;
        self.partitions.retain(|p| {
            if p.id == id {
                disconnects = p.disconnects;
            }
            p.id != id
        });
        disconnects
    }

    /// Ends every partition.
    pub fn end_all_partitions(&mut self) {
        self.partitions.clear();
    }

    /// The pairs that are down, not refused and not cut: the connections to reopen.
    pub fn reconnectable(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for a in 0..self.n_nodes {
            for b in a + 1..self.n_nodes {
                let pair = self.pair(a, b);
                if !pair.up && !pair.refused && !self.is_cut(a, b) {
                    out.push((a, b));
                }
            }
        }
        out
    }

    /// A random bipartition with both sides non-empty.
    pub fn random_bipartition(n_nodes: usize, rng: &mut Rng) -> Vec<bool> {
        assert!(n_nodes >= 2, "a bipartition needs two nodes");
        loop {
            let side: Vec<bool> = (0..n_nodes).map(|_| rng.chance(PPM / 2)).collect();
            if side.iter().any(|s| *s) && side.iter().any(|s| !*s) {
                return side;
            }
        }
    }
}
