//! The outbox of each peer: messages and event ids queued, bounded, each id once, cut into
//! `Events` messages as the transport takes them.

use super::*;

/// Queued ids whose bytes are read at once when an `Events` message is cut: a chunk of
/// [`EVENTS_CHUNK_BYTES`] holds about 900 events of 285 bytes.
const OUTBOX_READ_AHEAD: usize = 1_024;

impl Node {
    pub(super) fn next_outgoing(&mut self, peer: PeerId) -> Option<Vec<u8>> {
        let p = self.peers.get_mut(&peer)?;
        if !p.connected {
            return None;
        }
        loop {
            match p.outbox.front_mut()? {
                Outgoing::Message(_) => {
                    let Some(Outgoing::Message(bytes)) = p.outbox.pop_front() else { unreachable!() };
                    p.n_queued_messages -= 1;
                    p.sent += 1;
                    return Some(bytes);
                }
                Outgoing::Events(ids) => {
                    let mut chunk = Vec::new();
                    let mut chunk_ids = Vec::new();
                    let mut size = 0usize;
                    // The bytes of the next ids, read at once (one read of an archive on
                    // disk); more than a chunk holds only when events are small.
                    let ahead: Vec<EventId> = ids.iter().take(OUTBOX_READ_AHEAD).copied().collect();
                    let mut fetched = self.adapter.archive().bytes_many(&ahead).into_iter();
                    while let Some(id) = ids.front() {
                        let Some(bytes) =
                            fetched.next().unwrap_or_else(|| self.adapter.event(id).map(|e| e.bytes))
                        else {
                            p.queued_ids.remove(id);
                            ids.pop_front();
                            p.n_queued_ids -= 1;
                            continue;
                        };
                        if !chunk.is_empty() && size + bytes.len() > EVENTS_CHUNK_BYTES {
                            break;
                        }
                        size += bytes.len() + 8;
                        chunk.push(bytes.to_vec());
                        chunk_ids.push(*id);
                        p.queued_ids.remove(id);
                        ids.pop_front();
                        p.n_queued_ids -= 1;
                    }
                    if ids.is_empty() {
                        p.outbox.pop_front();
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    p.stats.events_out += chunk.len() as u64;
                    p.sent += 1;
                    p.n_in_flight_ids += chunk_ids.len();
                    p.in_flight.push_back(SentEvents { number: p.sent, at_ms: self.now_ms, ids: chunk_ids });
                    while p.n_in_flight_ids > self.config.peer_queue_ids_max {
                        let oldest = p.in_flight.pop_front().expect("ids are counted in in_flight");
                        p.n_in_flight_ids -= oldest.ids.len();
                    }
                    return Some(codec::encode_message(&Message::Events { events: chunk }));
                }
            }
        }
    }

    pub(super) fn send(&mut self, peer: PeerId, message: &Message) {
        let max = self.config.peer_queue_messages_max;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if !p.connected {
            return;
        }
        if p.n_queued_messages >= max {
            p.next_sync_ms = 0;
            return;
        }
        p.n_queued_messages += 1;
        p.outbox.push_back(Outgoing::Message(codec::encode_message(message)));
    }

    /// Queues events for `peer`, in the given order. A push that does not fit is dropped and
    /// the peer marked for reconciliation; an answer that does not fit is cut at the bound
    /// (the peer asks again in its next session).
    pub(super) fn queue_events(&mut self, peer: PeerId, ids: Vec<EventId>, push: bool) {
        let max = self.config.peer_queue_ids_max;
        let Some(p) = self.peers.get_mut(&peer) else { return };
        if !p.connected || ids.is_empty() {
            return;
        }
        let ids: Vec<EventId> = ids.into_iter().filter(|id| !p.queued_ids.contains(id)).collect();
        if ids.is_empty() {
            return;
        }
        let room = max.saturating_sub(p.n_queued_ids);
        if push && ids.len() > room {
            p.next_sync_ms = 0;
            return;
        }
        let take = ids.len().min(room);
        if take < ids.len() {
            p.next_sync_ms = 0;
        }
        p.n_queued_ids += take;
        p.queued_ids.extend(ids.iter().take(take).copied());
        if let Some(Outgoing::Events(queue)) = p.outbox.back_mut() {
            queue.extend(ids.into_iter().take(take));
        } else {
            p.outbox.push_back(Outgoing::Events(ids.into_iter().take(take).collect()));
        }
    }
}
