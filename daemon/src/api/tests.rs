//! Tests of the API over a real Unix socket, driven with [`Client`] and raw hyper requests,
//! against a fake service loop that answers [`Command`]s from an in-memory model.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use cairn_crypto::SecretKey;
use cairn_protocol::{Event, PeerStats, SignedHeader};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::*;
use crate::client::{Client, ClientError, path_segment};
use crate::metrics::Metrics;
use crate::service::Command;

const DEADLINE: Duration = Duration::from_secs(10);
/// What the fake service refuses writes to `refuse` with: own-seq safety, as a fresh node says.
pub(crate) fn refused() -> WriteError {
    WriteError::OwnSeqUnknown { heard: 0, needed: 1, held: 0, reported: 3 }
}
const FULL_MESSAGE: &str = "the file system holding the data directory /var/lib/cairn is full";

/// The in-memory model behind the fake service.
struct Fake {
    own: PublicKey,
    peer: PublicKey,
    members: Vec<Member>,
    registers: BTreeMap<Vec<u8>, RegisterRead>,
    counters: BTreeMap<Vec<u8>, i128>,
    sets: BTreeMap<Vec<u8>, BTreeSet<Vec<u8>>>,
    events: Vec<EventInfo>,
    evidence: Vec<Evidence>,
    changes: broadcast::Sender<ChangeNotice>,
    seq: u64,
    position: u64,
}

pub(crate) fn own_secret() -> SecretKey {
    SecretKey::from_seed(&[1; 32])
}

pub(crate) fn peer_secret() -> SecretKey {
    SecretKey::from_seed(&[2; 32])
}

/// A signed event as the service describes it, with a made-up encoded size.
fn event_info(
    secret: &SecretKey,
    name: &str,
    (seq, lamport): (u64, u64),
    deps: Vec<EventId>,
    ops: Vec<Op>,
    n_bytes: usize,
) -> EventInfo {
    let event = Event::sign(secret, seq, lamport, deps, ops);
    EventInfo {
        id: event.id(),
        author: event.header.author,
        author_name: name.into(),
        seq,
        lamport,
        deps: event.header.deps,
        ops: event.ops,
        sig: event.sig,
        n_bytes,
        excluded: false,
    }
}

/// The peer's first event, which the fake holds from the start: it put the register `binary`.
pub(crate) fn peer_event() -> EventInfo {
    let ops = vec![Op::Put { key: b"binary".to_vec(), value: vec![0xff, 0xfe] }];
    event_info(&peer_secret(), "beta", (1, 1), vec![], ops, 200)
}

/// Two events by the peer with the same seq: an equivocation.
fn peer_evidence() -> Evidence {
    let peer = peer_secret();
    let a = Event::sign(&peer, 1, 1, vec![], vec![Op::Del { key: b"a".to_vec() }]);
    let b = Event::sign(&peer, 1, 1, vec![], vec![Op::Del { key: b"b".to_vec() }]);
    Evidence::new(
        SignedHeader { header: a.header, sig: a.sig },
        SignedHeader { header: b.header, sig: b.sig },
    )
}

impl Fake {
    fn new(changes: broadcast::Sender<ChangeNotice>) -> Self {
        let own = own_secret().public();
        let peer = peer_secret().public();
        let mut members =
            vec![Member { key: own, name: "alpha".into() }, Member { key: peer, name: "beta".into() }];
        members.sort_by_key(|m| m.key);
        let mut fake = Self {
            own,
            peer,
            members,
            registers: BTreeMap::new(),
            counters: BTreeMap::new(),
            sets: BTreeMap::new(),
            events: Vec::new(),
            evidence: vec![peer_evidence()],
            changes,
            seq: 0,
            position: 0,
        };
        // A register with two concurrent values, one of them not UTF-8, written by the peer
        // and by this node.
        let peer_idx = fake.idx(&peer);
        let own_idx = fake.idx(&own);
        let first = peer_event();
        let low = Sibling {
            value: vec![0xff, 0xfe],
            value_held: true,
            author: peer_idx,
            lamport: 1,
            event_id: first.id,
            op_idx: 0,
        };
        let high = Sibling {
            value: b"text".to_vec(),
            value_held: true,
            author: own_idx,
            lamport: 2,
            event_id: EventId([8; 32]),
            op_idx: 1,
        };
        fake.registers.insert(
            b"multi".to_vec(),
            RegisterRead { visible: Some(high.clone()), siblings: vec![low.clone(), high] },
        );
        fake.registers
            .insert(b"binary".to_vec(), RegisterRead { visible: Some(low.clone()), siblings: vec![low] });
        fake.events.push(first);
        fake
    }

    fn idx(&self, key: &PublicKey) -> usize {
        self.members.iter().position(|m| m.key == *key).unwrap()
    }

    fn notify(&mut self, kind: KeyKind, key: &[u8]) {
        self.position += 1;
        // Nobody may be watching.
        let _ = self.changes.send(ChangeNotice { kind, key: key.to_vec(), position: self.position });
    }

    fn write(&mut self, ops: Vec<Op>) -> Result<WriteAck, ServiceError> {
        if ops.iter().any(|op| op.key() == b"refuse") {
            return Err(ServiceError::NotReady(refused()));
        }
        if ops.iter().any(|op| op.key() == b"disk") {
            return Err(ServiceError::Storage { reason: "No space left on device".into() });
        }
        if ops.iter().any(|op| op.key() == b"full") {
            return Err(ServiceError::NoSpace { message: FULL_MESSAGE.into() });
        }
        self.seq += 1;
        let lamport = self.seq + 1;
        // Every event of this node depends on the peer's first, as if nothing else had come.
        let info = event_info(&own_secret(), "alpha", (self.seq, lamport), vec![self.events[0].id], ops, 300);
        let (id, ops) = (info.id, info.ops.clone());
        let own_idx = self.idx(&self.own);
        for (op_idx, op) in ops.iter().enumerate() {
            match op {
                Op::Put { key, value } | Op::PutSeen { key, value, .. } => {
                    let sibling = Sibling {
                        value: value.clone(),
                        value_held: true,
                        author: own_idx,
                        lamport,
                        event_id: id,
                        op_idx: op_idx as u32,
                    };
                    self.registers.insert(
                        key.clone(),
                        RegisterRead { visible: Some(sibling.clone()), siblings: vec![sibling] },
                    );
                    self.notify(KeyKind::Register, key);
                }
                Op::Del { key } | Op::DelSeen { key, .. } => {
                    self.registers.remove(key);
                    self.notify(KeyKind::Register, key);
                }
                Op::Incr { key, delta } => {
                    *self.counters.entry(key.clone()).or_default() += i128::from(*delta);
                    self.notify(KeyKind::Counter, key);
                }
                Op::Add { key, element } | Op::AddSeen { key, element, .. } => {
                    self.sets.entry(key.clone()).or_default().insert(element.clone());
                    self.notify(KeyKind::Set, key);
                }
                Op::Remove { key, element } | Op::RemoveSeen { key, element, .. } => {
                    if let Some(set) = self.sets.get_mut(key) {
                        set.remove(element);
                    }
                    self.notify(KeyKind::Set, key);
                }
                // The API writes document ops only.
                Op::Propose { .. } | Op::Approve { .. } | Op::Rotate(_) => {}
            }
        }
        self.events.push(info);
        Ok(WriteAck { id, seq: self.seq, lamport })
    }

    fn answer(&mut self, command: Command) {
        // A dropped receiver means the API gave up on the request; nothing to do.
        match command {
            Command::Write(ops, tx) => {
                let _ = tx.send(self.write(ops));
            }
            Command::Register(key, tx) => {
                let _ = tx.send(self.registers.get(&key).cloned().unwrap_or_default());
            }
            Command::Counter(key, tx) => {
                let _ = tx.send(self.counters.get(&key).copied().unwrap_or(0));
            }
            Command::SetMembers(key, tx) => {
                let members =
                    self.sets.get(&key).map(|s| s.iter().map(|m| (m.clone(), Vec::new())).collect());
                let _ = tx.send(members.unwrap_or_default());
            }
            Command::Keys(query, tx) => {
                let keys: Vec<Vec<u8>> = match query.kind {
                    KeyKind::Register => self.registers.keys().cloned().collect(),
                    KeyKind::Counter => self.counters.keys().cloned().collect(),
                    KeyKind::Set => {
                        self.sets.iter().filter(|(_, s)| !s.is_empty()).map(|(k, _)| k.clone()).collect()
                    }
                };
                let page = keys
                    .into_iter()
                    .filter(|key| query.after.as_ref().is_none_or(|after| key > after))
                    .take(query.limit)
                    .collect();
                let _ = tx.send(page);
            }
            Command::Events(query, tx) => {
                let events = self
                    .events
                    .iter()
                    .enumerate()
                    .filter(|(position, e)| match query.author {
                        Some(author) => e.author == author && query.after.is_none_or(|after| e.seq > after),
                        None => query.after.is_none_or(|after| *position as u64 + 1 > after),
                    })
                    .map(|(_, e)| e.clone())
                    .take(query.limit)
                    .collect();
                let _ = tx.send(events);
            }
            Command::Event(id, tx) => {
                let _ = tx.send(self.events.iter().find(|e| e.id == id).cloned());
            }
            Command::Evidence(tx) => {
                let _ = tx.send(self.evidence.clone());
            }
            Command::MemberChange(request, tx) => {
                use crate::service::MemberChange;
                let op = match request {
                    MemberChange::Add { key, name } => Op::Propose {
                        change: cairn_protocol::Change {
                            base: cairn_protocol::MembershipId([3; 32]),
                            kind: cairn_protocol::ChangeKind::Add { key, name },
                        },
                        round: 0,
                    },
                    MemberChange::Approve { change, .. } => Op::Approve { change, round: 0 },
                    // The driver's checks, as a fake: a removal here always needs force.
                    MemberChange::Remove { force: false, .. }
                    | MemberChange::Replace { force: false, .. } => {
                        let _ = tx.send(Err(ServiceError::NeedsForce("beta is connected".into())));
                        return;
                    }
                    MemberChange::Remove { .. } | MemberChange::Replace { .. } => {
                        let _ = tx.send(Err(ServiceError::Membership("no seat".into())));
                        return;
                    }
                };
                let _ = tx.send(self.write(vec![op]));
            }
            Command::Health(tx) => {
                let _ = tx.send(crate::service::Health {
                    store_ok: true,
                    store_problem: None,
                    own_seq_learning: None,
                    peers: 1,
                    peers_connected: 1,
                });
            }
            Command::RotateKey(tx) => {
                let _ = tx.send(Err(ServiceError::Membership("no peer is connected".into())));
            }
            Command::Membership(tx) => {
                // The genesis of this node and its peer, with a pending addition of a third.
                let genesis = cairn_protocol::Genesis::new(vec![
                    Member { key: self.own, name: "alpha".into() },
                    Member { key: self.peer, name: "beta".into() },
                ])
                .unwrap();
                let mut log = cairn_protocol::ChangeLog::new(&genesis, cairn_protocol::Policy::Majority);
                let change = cairn_protocol::Change {
                    base: cairn_protocol::MembershipId(genesis.cluster_id()),
                    kind: cairn_protocol::ChangeKind::Add {
                        key: SecretKey::from_seed(&[7; 32]).public(),
                        name: "gamma".into(),
                    },
                };
                log.propose(&cairn_protocol::membership::Proposal {
                    change: change.clone(),
                    round: 0,
                    author: self.own,
                    seq: 1,
                    event: EventId([1; 32]),
                    seen: 0,
                });
                let resolution = log.resolve();
                let pending = vec![(change.id(), 1, Some(change))];
                let _ = tx.send(crate::service::MembershipInfo {
                    resolution,
                    pending,
                    policy: cairn_protocol::Policy::Majority,
                });
            }
            Command::Peers(tx) => {
                let stats = PeerStats {
                    events_in: 3,
                    rejected: [(cairn_protocol::Reject::BadSignature, 2)].into(),
                    ..PeerStats::default()
                };
                let _ = tx.send(vec![PeerInfo {
                    key: self.peer,
                    name: "beta".into(),
                    address: Some("192.0.2.7:7000".parse().unwrap()),
                    state: PeerState::Connected,
                    outbound: true,
                    eager: false,
                    last_seen_ms_ago: Some(12),
                    rtt_ms: Some(0.5),
                    stats,
                    lag_events: Some(4),
                    version_mismatch: None,
                }]);
            }
            Command::Status(tx) => {
                let _ = tx.send(Status {
                    key: self.own,
                    name: "alpha".into(),
                    cluster_id: [3; 32],
                    own_seq: self.seq,
                    digest: [4; 32],
                    sync_digest: [5; 32],
                    n_events: self.events.len(),
                    n_evidence: self.evidence.len(),
                    buffer_events: 0,
                    buffer_bytes: 0,
                    buffer_bytes_max: 1 << 20,
                    writes_refused: None,
                    n_peers_connected: 1,
                    n_peers: 1,
                    // Every indexed key in index order, as the driver gives them.
                    authors: self
                        .members
                        .iter()
                        .map(|member| crate::service::AuthorFigures {
                            key: member.key,
                            name: member.name.clone(),
                            events: if member.key == self.own { self.events.len() as u64 } else { 0 },
                            bytes: if member.key == self.own { 100 } else { 0 },
                            events_per_sec: if member.key == self.own { 0.5 } else { 0.0 },
                            bytes_per_sec: if member.key == self.own { 50.0 } else { 0.0 },
                        })
                        .collect(),
                    membership: crate::service::MembershipBrief {
                        id: [3; 32],
                        n_seats: 2,
                        round: 0,
                        n_pending: 0,
                    },
                });
            }
        }
    }
}

pub(crate) struct Server {
    pub(crate) client: Client,
    socket: std::path::PathBuf,
    pub(crate) changes: broadcast::Sender<ChangeNotice>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<io::Result<()>>,
    _dir: tempfile::TempDir,
}

pub(crate) async fn start() -> Server {
    start_with(64, |_| {}).await
}

async fn start_with_watch_buffer(watch_buffer: usize) -> Server {
    start_with(watch_buffer, |_| {}).await
}

/// A server whose fake service `setup` changed first.
async fn start_with(watch_buffer: usize, setup: impl FnOnce(&mut Fake)) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let (commands, mut command_rx) = mpsc::channel::<Command>(64);
    let (changes, _) = broadcast::channel(watch_buffer);
    let mut fake = Fake::new(changes.clone());
    setup(&mut fake);
    tokio::spawn(async move {
        while let Some(command) = command_rx.recv().await {
            fake.answer(command);
        }
    });
    let handle = ServiceHandle {
        commands,
        changes: changes.clone(),
        metrics: Arc::new(Metrics::new()),
        // No store thread: a backup fails at once.
        store: std::sync::mpsc::channel().0,
        backup_slot: Arc::default(),
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let listener = bind(&socket).unwrap();
    let task = tokio::spawn(serve(listener, handle, shutdown_rx));
    Server { client: Client::new(&socket), socket, changes, shutdown, task, _dir: dir }
}

impl Server {
    /// A request the client would never send: any method, content type and body.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, String, Vec<u8>) {
        let stream = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Full<bytes::Bytes>,
        >(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
        tokio::spawn(connection);
        let mut request = hyper::Request::builder().method(method).uri(path).header(header::HOST, "cairnd");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, content_type, body)
    }

    async fn get(&self, path: &str) -> Value {
        self.client.get_json(path).await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    async fn send(&self, method: Method, path: &str, body: Value) -> Value {
        self.client
            .send_json(method.clone(), path, &body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub(crate) async fn wait_for_watchers(&self, n: usize) {
        let start = Instant::now();
        while self.changes.receiver_count() < n {
            assert!(start.elapsed() < DEADLINE, "no watcher subscribed within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Sends a raw request and checks that the answer is a JSON error with `status` and `code`;
/// returns the message.
async fn check_error(
    server: &Server,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    status: StatusCode,
    code: &str,
) -> String {
    let (got_status, got_type, got_body) = server.raw(method, path, content_type, body.to_vec()).await;
    let what = format!("{method} {path} {}", String::from_utf8_lossy(&body[..body.len().min(80)]));
    assert_eq!(got_status, status, "{what}: {}", String::from_utf8_lossy(&got_body));
    assert_eq!(got_type, "application/json", "{what}");
    let error: Value = serde_json::from_slice(&got_body).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"));
    assert_eq!(error["error"]["code"], code, "{what}: {error}");
    let message = error["error"]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty(), "{what}");
    message
}

const JSON: Option<&str> = Some("application/json");

#[tokio::test]
async fn status_and_peers() {
    let server = start().await;
    let status = server.get("/v1/status").await;
    assert_eq!(status["name"], "alpha");
    assert_eq!(status["key"], own_secret().public().to_string());
    assert_eq!(status["cluster_id"], hex::encode([3; 32]));
    assert_eq!(status["writes_refused"], Value::Null);
    assert_eq!(status["n_peers_connected"], 1);

    let peers = server.get("/v1/peers").await;
    let peer = &peers["peers"][0];
    assert_eq!(peer["name"], "beta");
    assert_eq!(peer["key"], peer_secret().public().to_string());
    assert_eq!(peer["address"], "192.0.2.7:7000");
    assert_eq!(peer["state"], "connected");
    assert_eq!(peer["outbound"], true);
    assert_eq!(peer["eager"], false);
    assert_eq!(peer["rtt_ms"], 0.5);
    assert_eq!(peer["lag_events"], 4);
    assert_eq!(peer["stats"]["events_in"], 3);
    assert_eq!(peer["stats"]["rejected"], json!({"bad_signature": 2}));
}

#[tokio::test]
async fn members_shows_the_membership_in_force_and_pending_changes() {
    let server = start().await;
    let members = server.get("/v1/members").await;
    let seats = members["seats"].as_array().unwrap();
    assert_eq!(seats.len(), 2);
    let names: BTreeSet<&str> = seats.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["alpha", "beta"]));
    for seat in seats {
        assert_eq!(seat["key"], seat["founder"], "no seat rotated");
    }
    assert_eq!(members["n_changes"], 0, "{members}");
    assert_eq!(members["round"], 0);
    assert_eq!(members["threshold"], 2, "a majority of two seats is both");
    let pending = &members["pending"][0];
    assert_eq!(pending["action"], "add");
    assert_eq!(pending["seat"], "gamma");
    assert_eq!(pending["key"], SecretKey::from_seed(&[7; 32]).public().to_string());
    assert_eq!(pending["votes"], 1);
    assert_eq!(pending["cut"], Value::Null);
    assert_eq!(members["double_approvals"], json!([]));
}

#[tokio::test]
async fn membership_changes_are_proposed_and_approved_and_bad_ones_refused() {
    let server = start().await;
    let key = SecretKey::from_seed(&[8; 32]).public().to_string();
    let ack = server
        .send(Method::POST, "/v1/members/changes", json!({"action": "add", "key": key, "name": "delta"}))
        .await;
    let change = cairn_protocol::Change {
        base: cairn_protocol::MembershipId([3; 32]),
        kind: cairn_protocol::ChangeKind::Add { key: key.parse().unwrap(), name: "delta".into() },
    };
    assert_eq!(ack["change"], change.id().to_string(), "the id of the change as signed: {ack}");
    assert!(ack["event"]["seq"].as_u64().is_some(), "{ack}");
    let path = format!("/v1/members/changes/{}/approve", change.id());
    let approved = server.send(Method::POST, &path, json!(null)).await;
    assert_eq!(approved["change"], change.id().to_string());
    assert_ne!(approved["event"]["id"], ack["event"]["id"]);

    let bad_bodies = [
        (json!({"action": "add", "key": key}), "needs `name`"),
        (json!({"action": "add", "name": "x"}), "needs `key`"),
        (json!({"action": "add", "key": "zz", "name": "x"}), "not a public key"),
        (json!({"action": "add", "key": key, "name": "x", "cut": 3}), "no `cut`"),
        (json!({"action": "remove"}), "needs `seat`"),
        (json!({"action": "remove", "seat": "beta", "key": key}), "no `key`"),
        (json!({"action": "replace", "seat": "beta"}), "needs `key`"),
        (json!({"action": "evict", "seat": "beta"}), "unknown action"),
    ];
    for (body, says) in bad_bodies {
        let bytes = serde_json::to_vec(&body).unwrap();
        let message = check_error(
            &server,
            "POST",
            "/v1/members/changes",
            JSON,
            &bytes,
            StatusCode::BAD_REQUEST,
            "bad_change",
        )
        .await;
        assert!(message.contains(says), "{body}: {message}");
    }
    let body = serde_json::to_vec(&json!({"action": "remove", "seat": "beta"})).unwrap();
    let message =
        check_error(&server, "POST", "/v1/members/changes", JSON, &body, StatusCode::CONFLICT, "needs_force")
            .await;
    assert!(message.contains("connected"), "{message}");
    let body = serde_json::to_vec(&json!({"action": "remove", "seat": "beta", "force": true})).unwrap();
    check_error(
        &server,
        "POST",
        "/v1/members/changes",
        JSON,
        &body,
        StatusCode::CONFLICT,
        "membership_refused",
    )
    .await;
    check_error(
        &server,
        "POST",
        "/v1/members/changes/nothex/approve",
        None,
        b"",
        StatusCode::BAD_REQUEST,
        "bad_change",
    )
    .await;
}

#[tokio::test]
async fn registers_put_get_delete() {
    let server = start().await;
    let ack = server.send(Method::PUT, "/v1/registers/greeting", json!({"value": "hello"})).await;
    let ops = vec![Op::Put { key: b"greeting".to_vec(), value: b"hello".to_vec() }];
    let id = Event::sign(&own_secret(), 1, 2, vec![peer_event().id], ops).id();
    assert_eq!(ack, json!({"id": id.to_string(), "seq": 1, "lamport": 2}));

    let read = server.get("/v1/registers/greeting").await;
    assert_eq!(read["key"], "greeting");
    assert_eq!(read["value"], "hello");
    assert_eq!(read["value_base64"], "aGVsbG8=");
    let sibling = &read["siblings"][0];
    assert_eq!(sibling["value"], "hello");
    assert_eq!(sibling["author"], own_secret().public().to_string());
    assert_eq!(sibling["author_name"], "alpha");
    assert_eq!(sibling["event_id"], id.to_string());
    assert_eq!(sibling["lamport"], 2);
    assert_eq!(sibling["op_index"], 0);

    // Bytes that are not UTF-8, as base64; a key with a slash and a space, percent-encoded.
    let path = format!("/v1/registers/{}", path_segment("dir/a b"));
    server.send(Method::PUT, &path, json!({"value_base64": "/wA="})).await;
    let read = server.get(&path).await;
    assert_eq!(read["key"], "dir/a b");
    assert_eq!(read["value"], Value::Null);
    assert_eq!(read["value_base64"], "/wA=");
    assert_eq!(read["siblings"][0]["value"], Value::Null);

    let ack = server
        .client
        .request_json::<Value>(Method::DELETE, "/v1/registers/greeting", None::<&()>)
        .await
        .unwrap();
    assert_eq!(ack["seq"], 3);
    let read = server.get("/v1/registers/greeting").await;
    assert_eq!(
        read,
        json!({"key": "greeting", "value": null, "value_base64": null, "siblings": [], "context": "AQ=="})
    );
}

#[tokio::test]
async fn register_siblings_name_their_authors() {
    let server = start().await;
    let read = server.get("/v1/registers/multi").await;
    assert_eq!(read["value"], "text");
    let siblings = read["siblings"].as_array().unwrap();
    assert_eq!(siblings.len(), 2);
    assert_eq!(siblings[0]["value"], Value::Null);
    assert_eq!(siblings[0]["value_base64"], "//4=");
    assert_eq!(siblings[0]["author"], peer_secret().public().to_string());
    assert_eq!(siblings[0]["author_name"], "beta");
    assert_eq!(siblings[1]["author_name"], "alpha");
    assert_eq!(siblings[1]["op_index"], 1);
    let binary = server.get("/v1/registers/binary").await;
    assert_eq!(binary["value"], Value::Null);
    assert_eq!(binary["value_base64"], "//4=");
}

#[tokio::test]
async fn counters_and_sets() {
    let server = start().await;
    assert_eq!(server.get("/v1/counters/hits").await, json!({"key": "hits", "value": 0}));
    server.send(Method::POST, "/v1/counters/hits/incr", json!({"delta": 7})).await;
    server.send(Method::POST, "/v1/counters/hits/incr", json!({"delta": -10})).await;
    assert_eq!(server.get("/v1/counters/hits").await, json!({"key": "hits", "value": -3}));

    server.send(Method::POST, "/v1/sets/tags/add", json!({"element": "b"})).await;
    server.send(Method::POST, "/v1/sets/tags/add", json!({"element": "a"})).await;
    server.send(Method::POST, "/v1/sets/tags/add", json!({"element_base64": "/w=="})).await;
    server.send(Method::POST, "/v1/sets/tags/remove", json!({"element": "b"})).await;
    let set = server.get("/v1/sets/tags").await;
    assert_eq!(
        set,
        json!({"key": "tags", "members": [
            {"value": "a", "value_base64": "YQ==", "context": "AQ=="},
            {"value": null, "value_base64": "/w==", "context": "AQ=="},
        ]})
    );
}

#[tokio::test]
async fn keys_by_kind() {
    let server = start().await;
    server.send(Method::POST, "/v1/counters/c1/incr", json!({"delta": 1})).await;
    server.send(Method::POST, "/v1/sets/s1/add", json!({"element": "x"})).await;
    let all = server.get("/v1/keys").await;
    assert_eq!(
        all["keys"],
        json!([
            {"kind": "register", "key": "binary", "key_base64": "YmluYXJ5"},
            {"kind": "register", "key": "multi", "key_base64": "bXVsdGk="},
            {"kind": "counter", "key": "c1", "key_base64": "YzE="},
            {"kind": "set", "key": "s1", "key_base64": "czE="},
        ])
    );
    assert_eq!(all["next"], Value::Null);
    let counters = server.get("/v1/keys?kind=counter").await;
    assert_eq!(counters["keys"], json!([{"kind": "counter", "key": "c1", "key_base64": "YzE="}]));
}

#[tokio::test]
async fn keys_come_in_pages() {
    let n_keys = KEYS_LIMIT_DEFAULT + 5;
    let server = start_with(64, |fake| {
        for idx in 0..n_keys {
            fake.counters.insert(format!("c{idx:05}").into_bytes(), 1);
        }
        fake.sets.insert(vec![0xff, b'/'], [b"e".to_vec()].into());
    })
    .await;
    // Without a limit: the default, and a cursor to go on.
    let first = server.get("/v1/keys").await;
    assert_eq!(first["keys"].as_array().unwrap().len(), KEYS_LIMIT_DEFAULT);
    let cursor = first["next"].as_str().unwrap();
    // Registers come first: the fake holds two.
    assert_eq!(cursor, key_cursor(KeyKind::Counter, format!("c{:05}", KEYS_LIMIT_DEFAULT - 3).as_bytes()));
    let rest = server.get(&format!("/v1/keys?after={cursor}")).await;
    let rest_keys: Vec<&Value> = rest["keys"].as_array().unwrap().iter().collect();
    assert_eq!(rest_keys.len(), 2 + n_keys + 1 - KEYS_LIMIT_DEFAULT);
    // A key that is not UTF-8 pages like any other, and its cursor needs no escaping.
    assert_eq!(*rest_keys.last().unwrap(), &json!({"kind": "set", "key": null, "key_base64": "/y8="}));
    assert_eq!(rest["next"], Value::Null);

    // Page by page, every key once, in order, whatever the page size; across kinds too.
    let whole = server.get(&format!("/v1/keys?limit={KEYS_LIMIT_MAX}")).await;
    assert_eq!(whole["next"], Value::Null);
    for limit in [1, 2, 7, KEYS_LIMIT_DEFAULT + 4, KEYS_LIMIT_DEFAULT + 5] {
        let mut seen = Vec::new();
        let mut path = format!("/v1/keys?limit={limit}");
        loop {
            let page = server.get(&path).await;
            let keys = page["keys"].as_array().unwrap();
            assert!(!keys.is_empty() && keys.len() <= limit, "{limit}: {page}");
            seen.extend(keys.iter().cloned());
            match page["next"].as_str() {
                Some(next) => path = format!("/v1/keys?limit={limit}&after={next}"),
                None => break,
            }
        }
        assert_eq!(Value::Array(seen), whole["keys"], "limit {limit}");
    }

    // A cursor of another kind than the one asked for: before it, all; after it, none.
    let sets_after_a_register = server.get("/v1/keys?kind=set&after=register:bXVsdGk").await;
    assert_eq!(sets_after_a_register["keys"].as_array().unwrap().len(), 1);
    let registers_after_a_set = server.get("/v1/keys?kind=register&after=set:AA").await;
    assert_eq!(registers_after_a_set, json!({"keys": [], "next": null}));

    for (query, phrase) in [
        ("limit=0", "limit must be 1 to 5000"),
        (&format!("limit={}", KEYS_LIMIT_MAX + 1), "limit must be 1 to 5000"),
        ("after=register", "KIND:BASE64URL"),
        ("after=tree:AA", "no key kind"),
        ("after=register:%2B%2B%2B", "not base64"),
        (&format!("after=register:{}", "A".repeat(2000)), "longer than any key"),
    ] {
        let message = check_error(
            &server,
            "GET",
            &format!("/v1/keys?{query}"),
            None,
            b"",
            StatusCode::BAD_REQUEST,
            "bad_query",
        )
        .await;
        assert!(message.contains(phrase), "{query}: {message}");
    }
}

#[tokio::test]
async fn batch_is_one_event() {
    let server = start().await;
    let body = json!({"ops": [
        {"op": "put", "key": "r", "value": "v"},
        {"op": "put", "key": "rb", "value_base64": "AAE="},
        {"op": "del", "key": "multi"},
        {"op": "incr", "key": "c", "delta": -2},
        {"op": "add", "key": "s", "element": "e"},
        {"op": "remove", "key": "s", "element_base64": "ZQ=="},
    ]});
    let ack = server.send(Method::POST, "/v1/batch", body).await;
    assert_eq!(ack["seq"], 1);
    let event = server.get(&format!("/v1/events/{}", ack["id"].as_str().unwrap())).await;
    assert_eq!(
        event["ops"],
        json!([
            {"op": "put", "key": "r", "key_base64": "cg==", "value": "v", "value_base64": "dg=="},
            {"op": "put", "key": "rb", "key_base64": "cmI=", "value": "\u{0}\u{1}", "value_base64": "AAE="},
            {"op": "del", "key": "multi", "key_base64": "bXVsdGk="},
            {"op": "incr", "key": "c", "key_base64": "Yw==", "delta": -2},
            {"op": "add", "key": "s", "key_base64": "cw==", "element": "e", "element_base64": "ZQ=="},
            {"op": "remove", "key": "s", "key_base64": "cw==", "element": "e", "element_base64": "ZQ=="},
        ])
    );
    assert_eq!(server.get("/v1/counters/c").await["value"], -2);
}

#[tokio::test]
async fn events_list_and_one_event() {
    let server = start().await;
    let put_a = server.send(Method::PUT, "/v1/registers/a", json!({"value": "1"})).await;
    let put_b = server.send(Method::PUT, "/v1/registers/b", json!({"value": "2"})).await;

    let all = server.get("/v1/events").await;
    let ids: Vec<&str> =
        all["events"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [peer_event().id.to_string().as_str(), put_a["id"].as_str().unwrap(), put_b["id"].as_str().unwrap()]
    );
    assert_eq!(all["next"], Value::Null);
    let first = &all["events"][0];
    assert_eq!(first["author_name"], "beta");
    assert_eq!(first["n_ops"], 1);
    assert_eq!(first["size"], 200);
    assert_eq!(first["excluded"], false);

    let by_name = server.get("/v1/events?author=alpha&after=1&limit=5").await;
    assert_eq!(by_name["events"].as_array().unwrap().len(), 1);
    assert_eq!(by_name["events"][0]["seq"], 2);
    let by_key = server.get(&format!("/v1/events?author={}", peer_secret().public())).await;
    assert_eq!(by_key["events"].as_array().unwrap().len(), 1);
    let limited = server.get("/v1/events?limit=1").await;
    assert_eq!(limited["events"].as_array().unwrap().len(), 1);
    assert_eq!(limited["next"], 1);
    let on = server.get("/v1/events?limit=1&after=1").await;
    assert_eq!(on["events"][0]["id"], put_a["id"]);
    assert_eq!(on["next"], 2);
    let last = server.get("/v1/events?limit=1&after=2").await;
    assert_eq!(last["events"][0]["id"], put_b["id"]);
    assert_eq!(last["next"], Value::Null);
    let by_author = server.get("/v1/events?author=alpha&limit=1").await;
    assert_eq!(by_author["events"][0]["seq"], 1);
    assert_eq!(by_author["next"], 1);
    assert_eq!(server.get("/v1/events?author=alpha&after=1").await["next"], Value::Null);

    let event = server.get(&format!("/v1/events/{}", put_b["id"].as_str().unwrap())).await;
    assert_eq!(event["author"], own_secret().public().to_string());
    assert_eq!(event["seq"], 2);
    assert_eq!(event["deps"], json!([peer_event().id.to_string()]));
    let ops = vec![Op::Put { key: b"b".to_vec(), value: b"2".to_vec() }];
    assert_eq!(event["ops_hash"], hex::encode(ops_hash(&ops)));
    assert_eq!(event["size"], 300);
    // The canonical bytes: the very event this node signed.
    let bytes = hex::decode(event["encoded_hex"].as_str().unwrap()).unwrap();
    let decoded = cairn_protocol::codec::decode_event(&bytes).unwrap();
    assert_eq!(decoded, Event::sign(&own_secret(), 2, 3, vec![peer_event().id], ops));
}

#[tokio::test]
async fn an_event_is_verified_again_with_the_deps_this_node_holds() {
    let server = start().await;
    let put_a = server.send(Method::PUT, "/v1/registers/a", json!({"value": "1"})).await;
    let put_b = server.send(Method::PUT, "/v1/registers/b", json!({"value": "2"})).await;
    let verdicts = |report: &Value| -> Vec<(String, String)> {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap().to_owned(), c["verdict"].as_str().unwrap().to_owned()))
            .collect()
    };
    // Seq 1 after the peer's first event: every rule holds, membership and the causal rules
    // included, which `cairnctl inspect` alone leaves undecided.
    let report = server.get(&format!("/v1/events/{}/verify", put_a["id"].as_str().unwrap())).await;
    assert_eq!(report["outcome"], "valid", "{report}");
    assert_eq!(report["valid"], true);
    assert_eq!(report["decoded"]["id"], put_a["id"]);
    assert!(verdicts(&report).iter().all(|(_, verdict)| verdict == "pass"), "{report}");
    assert_eq!(verdicts(&report).len(), EventRule::ALL.len());
    // The fake signs seq 2 without its own seq 1 as a dep: the deps it holds show that.
    let report = server.get(&format!("/v1/events/{}/verify", put_b["id"].as_str().unwrap())).await;
    assert_eq!(report["outcome"], "invalid", "{report}");
    let seq = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "seq").unwrap();
    assert_eq!((seq["verdict"].as_str(), seq["reason"].as_str()), (Some("fail"), Some("bad_seq")), "{seq}");
    // Errors: an unknown id, a malformed one.
    let (status, _, _) =
        server.raw("GET", &format!("/v1/events/{}/verify", "ab".repeat(32)), None, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = server.raw("GET", "/v1/events/xyz/verify", None, vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test]
async fn an_event_page_does_not_end_inside_a_forked_seq() {
    // The peer signed seq 1 once (the fake's first event), then seq 2 three times and seq 3.
    let server = start_with(64, |fake| {
        let peer = peer_secret();
        let deps = vec![fake.events[0].id];
        for key in ["x", "y", "z"] {
            let ops = vec![Op::Del { key: key.as_bytes().to_vec() }];
            fake.events.push(event_info(&peer, "beta", (2, 2), deps.clone(), ops, 150));
        }
        let ops = vec![Op::Del { key: b"w".to_vec() }];
        fake.events.push(event_info(&peer, "beta", (3, 3), deps, ops, 150));
    })
    .await;
    let seqs = |page: &Value| {
        page["events"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>()
    };
    // A limit of 2 would cut seq 2: the page ends before it.
    let page = server.get("/v1/events?author=beta&limit=2").await;
    assert_eq!(seqs(&page), [1]);
    assert_eq!(page["next"], 1);
    // A page that seq 2 fills alone cannot end before it: the rest of seq 2 is skipped, as
    // the module documentation says.
    let page = server.get("/v1/events?author=beta&after=1&limit=2").await;
    assert_eq!(seqs(&page), [2, 2]);
    assert_eq!(page["next"], 2);
    let page = server.get("/v1/events?author=beta&after=1&limit=3").await;
    assert_eq!(seqs(&page), [2, 2, 2]);
    assert_eq!(page["next"], 2);
    let page = server.get("/v1/events?author=beta&after=2").await;
    assert_eq!(seqs(&page), [3]);
    assert_eq!(page["next"], Value::Null);
}

#[tokio::test]
async fn counters_beyond_2_53_are_strings() {
    let server = start().await;
    for _ in 0..2 {
        server.send(Method::POST, "/v1/counters/big/incr", json!({"delta": i64::MAX})).await;
    }
    assert_eq!(server.get("/v1/counters/big").await, json!({"key": "big", "value": "18446744073709551614"}));
    let watcher = collect_watch(&server.client, 1);
    server.wait_for_watchers(1).await;
    server.send(Method::POST, "/v1/counters/big/incr", json!({"delta": 1})).await;
    let seen = tokio::time::timeout(DEADLINE, watcher).await.unwrap().unwrap().unwrap();
    assert_eq!(seen[0].1["value"], "18446744073709551615");
}

#[tokio::test]
async fn evidence_carries_its_canonical_bytes() {
    let server = start().await;
    let list = server.get("/v1/evidence").await;
    let item = &list["evidence"][0];
    let expected = peer_evidence();
    assert_eq!(item["author"], peer_secret().public().to_string());
    assert_eq!(item["author_name"], "beta");
    assert_eq!(item["seq"], 1);
    assert_eq!(item["first"]["id"], expected.ids().0.to_string());
    assert_eq!(item["second"]["id"], expected.ids().1.to_string());
    assert_eq!(item["first"]["sig"], hex::encode(expected.first.sig.0));
    let bytes = hex::decode(item["encoded_hex"].as_str().unwrap()).unwrap();
    assert_eq!(cairn_protocol::codec::decode_evidence(&bytes).unwrap(), expected);
}

#[tokio::test]
async fn metrics_are_openmetrics_text() {
    let server = start().await;
    let (status, content_type, body) = server.raw("GET", "/v1/metrics", None, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("cairn_events_accepted_total"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(server.client.get_text("/v1/metrics").await.unwrap(), text);
}

#[tokio::test]
async fn bad_bodies_are_json_errors() {
    let server = start().await;
    let cases: Vec<(Vec<u8>, &str, &str, StatusCode, &str)> = vec![
        (b"{not json".to_vec(), "PUT", "/v1/registers/k", StatusCode::BAD_REQUEST, "bad_json"),
        (b"".to_vec(), "PUT", "/v1/registers/k", StatusCode::BAD_REQUEST, "bad_json"),
        (b"{}".to_vec(), "PUT", "/v1/registers/k", StatusCode::BAD_REQUEST, "bad_value"),
        (
            br#"{"value":"a","value_base64":"YQ=="}"#.to_vec(),
            "PUT",
            "/v1/registers/k",
            StatusCode::BAD_REQUEST,
            "bad_value",
        ),
        (
            br#"{"value_base64":"!!not base64"}"#.to_vec(),
            "PUT",
            "/v1/registers/k",
            StatusCode::BAD_REQUEST,
            "bad_value",
        ),
        (br#"{"value":5}"#.to_vec(), "PUT", "/v1/registers/k", StatusCode::BAD_REQUEST, "bad_request"),
        (
            br#"{"value":"a","extra":1}"#.to_vec(),
            "PUT",
            "/v1/registers/k",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (br#"{"delta":"x"}"#.to_vec(), "POST", "/v1/counters/c/incr", StatusCode::BAD_REQUEST, "bad_request"),
        (
            br#"{"delta":9223372036854775808}"#.to_vec(),
            "POST",
            "/v1/counters/c/incr",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (br#"{}"#.to_vec(), "POST", "/v1/counters/c/incr", StatusCode::BAD_REQUEST, "bad_request"),
        (
            br#"{"element":"a","element_base64":"YQ=="}"#.to_vec(),
            "POST",
            "/v1/sets/s/add",
            StatusCode::BAD_REQUEST,
            "bad_value",
        ),
        (br#"{}"#.to_vec(), "POST", "/v1/sets/s/remove", StatusCode::BAD_REQUEST, "bad_value"),
        (br#"{"ops":[]}"#.to_vec(), "POST", "/v1/batch", StatusCode::BAD_REQUEST, "bad_batch"),
        (
            br#"{"ops":[{"op":"frob","key":"k"}]}"#.to_vec(),
            "POST",
            "/v1/batch",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            br#"{"ops":[{"op":"del","key":"k","value":"x"}]}"#.to_vec(),
            "POST",
            "/v1/batch",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            br#"{"ops":[{"op":"del","key":""}]}"#.to_vec(),
            "POST",
            "/v1/batch",
            StatusCode::BAD_REQUEST,
            "bad_key",
        ),
        (
            br#"{"ops":[{"op":"put","key":"k"}]}"#.to_vec(),
            "POST",
            "/v1/batch",
            StatusCode::BAD_REQUEST,
            "bad_value",
        ),
        (br#"{"opz":[]}"#.to_vec(), "POST", "/v1/batch", StatusCode::BAD_REQUEST, "bad_request"),
    ];
    for (body, method, path, status, code) in cases {
        check_error(&server, method, path, JSON, &body, status, code).await;
    }

    let message = check_error(
        &server,
        "PUT",
        "/v1/registers/k",
        JSON,
        br#"{"value":"a","value_base64":"YQ=="}"#,
        StatusCode::BAD_REQUEST,
        "bad_value",
    )
    .await;
    assert_eq!(message, "give either value or value_base64, not both");
    let message = check_error(
        &server,
        "POST",
        "/v1/batch",
        JSON,
        br#"{"ops":[{"op":"put","key":"k"}, {"op":"put","key":"k","value_base64":"%"}]}"#,
        StatusCode::BAD_REQUEST,
        "bad_value",
    )
    .await;
    assert!(message.starts_with("ops[0]: missing value"), "{message}");
    // Each place in a batch is named in the message: an op's key, an op's context.
    let message = check_error(
        &server,
        "POST",
        "/v1/batch",
        JSON,
        br#"{"ops":[{"op":"incr","key":"c","delta":1}, {"op":"del","key":""}]}"#,
        StatusCode::BAD_REQUEST,
        "bad_key",
    )
    .await;
    assert_eq!(message, "ops[1]: the key is empty");
    let message = check_error(
        &server,
        "POST",
        "/v1/batch",
        JSON,
        br#"{"ops":[{"op":"del","key":"a"}, {"op":"del","key":"b"}, {"op":"del","key":"k","context":"%"}]}"#,
        StatusCode::BAD_REQUEST,
        "bad_context",
    )
    .await;
    assert_eq!(message, "ops[2].context: a context is base64, as a read gave it");
}

#[tokio::test]
async fn sizes_over_the_limits_are_refused() {
    let server = start().await;
    let long_key = "k".repeat(KEY_BYTES_MAX + 1);
    check_error(
        &server,
        "GET",
        &format!("/v1/registers/{long_key}"),
        None,
        b"",
        StatusCode::BAD_REQUEST,
        "bad_key",
    )
    .await;
    check_error(
        &server,
        "GET",
        &format!("/v1/counters/{long_key}"),
        None,
        b"",
        StatusCode::BAD_REQUEST,
        "bad_key",
    )
    .await;
    // The longest key is fine.
    let longest = "k".repeat(KEY_BYTES_MAX);
    server.send(Method::PUT, &format!("/v1/registers/{longest}"), json!({"value": ""})).await;

    let value = BASE64.encode(vec![0u8; VALUE_BYTES_MAX + 1]);
    let body = serde_json::to_vec(&json!({"value_base64": value})).unwrap();
    let message =
        check_error(&server, "PUT", "/v1/registers/k", JSON, &body, StatusCode::BAD_REQUEST, "bad_value")
            .await;
    assert!(message.contains("over the limit of 65536"), "{message}");
    let value = "v".repeat(VALUE_BYTES_MAX);
    server.send(Method::PUT, "/v1/registers/k", json!({"value": value})).await;

    let ops: Vec<Value> = (0..=OPS_MAX).map(|_| json!({"op": "incr", "key": "c", "delta": 1})).collect();
    let body = serde_json::to_vec(&json!({"ops": ops})).unwrap();
    check_error(&server, "POST", "/v1/batch", JSON, &body, StatusCode::BAD_REQUEST, "bad_batch").await;

    let body = vec![b' '; REQUEST_BYTES_MAX + 1];
    check_error(&server, "PUT", "/v1/registers/k", JSON, &body, StatusCode::PAYLOAD_TOO_LARGE, "too_large")
        .await;
}

#[tokio::test]
async fn bad_paths_methods_and_queries() {
    let server = start().await;
    let cases = [
        ("GET", "/v1/registers/", StatusCode::BAD_REQUEST, "bad_key"),
        ("PUT", "/v1/registers/", StatusCode::BAD_REQUEST, "bad_key"),
        ("GET", "/v1/sets/", StatusCode::BAD_REQUEST, "bad_key"),
        ("GET", "/v1/registers/%FF", StatusCode::BAD_REQUEST, "bad_path"),
        ("GET", "/v1/nope", StatusCode::NOT_FOUND, "not_found"),
        ("GET", "/", StatusCode::NOT_FOUND, "not_found"),
        ("GET", "/v1/registers/a/b", StatusCode::NOT_FOUND, "not_found"),
        ("POST", "/v1/status", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        ("DELETE", "/v1/counters/c", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        ("GET", "/v1/keys?kind=frob", StatusCode::BAD_REQUEST, "bad_query"),
        ("GET", "/v1/keys?colour=red", StatusCode::BAD_REQUEST, "bad_query"),
        ("GET", "/v1/events?limit=0", StatusCode::BAD_REQUEST, "bad_query"),
        ("GET", "/v1/events?limit=1001", StatusCode::BAD_REQUEST, "bad_query"),
        ("GET", "/v1/events?after=minus", StatusCode::BAD_REQUEST, "bad_query"),
        ("GET", "/v1/events?author=nobody", StatusCode::BAD_REQUEST, "bad_query"),
        ("GET", "/v1/events/xyz", StatusCode::BAD_REQUEST, "bad_id"),
        ("GET", "/v1/events/00", StatusCode::BAD_REQUEST, "bad_id"),
    ];
    for (method, path, status, code) in cases {
        check_error(&server, method, path, None, b"", status, code).await;
    }
    let unknown = "ab".repeat(32);
    let message = check_error(
        &server,
        "GET",
        &format!("/v1/events/{unknown}"),
        None,
        b"",
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(message.contains(&unknown), "{message}");
    // The client reports the daemon's status and message.
    match server.client.get_json(&format!("/v1/events/{unknown}")).await {
        Err(ClientError::Http { status: StatusCode::NOT_FOUND, code, .. }) => assert_eq!(code, "not_found"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let server = start().await;
    for content_type in [None, Some("text/plain")] {
        check_error(
            &server,
            "PUT",
            "/v1/registers/k",
            content_type,
            br#"{"value":"a"}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
    }
}

#[tokio::test]
async fn service_refusals_are_503_storage_500_and_a_full_disk_507() {
    let server = start().await;
    let message = check_error(
        &server,
        "PUT",
        "/v1/registers/refuse",
        JSON,
        br#"{"value":"a"}"#,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    )
    .await;
    assert_eq!(message, refused().to_string());
    let message = check_error(
        &server,
        "DELETE",
        "/v1/registers/disk",
        None,
        b"",
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage",
    )
    .await;
    assert_eq!(message, "storage failed: No space left on device");
    let message = check_error(
        &server,
        "PUT",
        "/v1/registers/full",
        JSON,
        br#"{"value":"a"}"#,
        StatusCode::INSUFFICIENT_STORAGE,
        "no_space",
    )
    .await;
    assert_eq!(message, FULL_MESSAGE);
}

#[tokio::test]
async fn service_gone_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let (commands, command_rx) = mpsc::channel::<Command>(1);
    drop(command_rx);
    let (changes, _) = broadcast::channel(4);
    let handle = ServiceHandle {
        commands,
        changes,
        metrics: Arc::new(Metrics::new()),
        store: std::sync::mpsc::channel().0,
        backup_slot: Arc::default(),
    };
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let listener = bind(&socket).unwrap();
    tokio::spawn(serve(listener, handle, shutdown_rx));
    match Client::new(&socket).get_json("/v1/status").await {
        Err(ClientError::Http { status: StatusCode::SERVICE_UNAVAILABLE, code, message }) => {
            assert_eq!(code, "shutting_down");
            assert_eq!(message, "the daemon is shutting down");
        }
        other => panic!("{other:?}"),
    }
}

/// Follows the watch stream in a task, collecting `(event, data)` until `n` events came.
fn collect_watch(client: &Client, n: usize) -> JoinHandle<Result<Vec<(String, Value)>, ClientError>> {
    let client = client.clone();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        client
            .watch("/v1/watch", |name, data| {
                seen.push((name.to_owned(), serde_json::from_str(data).unwrap()));
                seen.len() < n
            })
            .await?;
        Ok(seen)
    })
}

#[tokio::test]
async fn watch_delivers_changes_with_their_state() {
    let server = start().await;
    let watcher = collect_watch(&server.client, 3);
    server.wait_for_watchers(1).await;
    server.send(Method::PUT, "/v1/registers/w", json!({"value": "one"})).await;
    server.send(Method::POST, "/v1/counters/n/incr", json!({"delta": 5})).await;
    server.send(Method::POST, "/v1/sets/s/add", json!({"element": "x"})).await;
    let seen = tokio::time::timeout(DEADLINE, watcher).await.unwrap().unwrap().unwrap();
    assert_eq!(seen.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>(), ["change"; 3]);
    let register = &seen[0].1;
    assert_eq!(register["kind"], "register");
    assert_eq!(register["key"], "w");
    assert_eq!(register["position"], 1);
    assert_eq!(register["value"], "one");
    assert_eq!(register["siblings"][0]["author_name"], "alpha");
    assert_eq!(
        seen[1].1,
        json!({"kind": "counter", "key": "n", "key_base64": "bg==", "position": 2, "value": 5})
    );
    assert_eq!(
        seen[2].1,
        json!({
            "kind": "set", "key": "s", "key_base64": "cw==", "position": 3,
            "members": [{"value": "x", "value_base64": "eA==", "context": "AQ=="}],
        })
    );
}

#[tokio::test]
async fn watch_reports_what_a_slow_watcher_missed() {
    let server = start_with_watch_buffer(4).await;
    let watcher = collect_watch(&server.client, 5);
    server.wait_for_watchers(1).await;
    // This test runs on one thread and sends without yielding, so the stream cannot read any
    // of these before the buffer of 4 overflows.
    for position in 1..=10 {
        server.changes.send(ChangeNotice { kind: KeyKind::Counter, key: b"n".to_vec(), position }).unwrap();
    }
    let seen = tokio::time::timeout(DEADLINE, watcher).await.unwrap().unwrap().unwrap();
    assert_eq!(seen[0], ("lagged".to_owned(), json!({"missed": 6})));
    let positions: Vec<&Value> = seen[1..].iter().map(|(_, data)| &data["position"]).collect();
    assert_eq!(positions, [7, 8, 9, 10]);
}

#[tokio::test]
async fn shutdown_ends_the_watch_and_the_server() {
    let server = start().await;
    let watcher = collect_watch(&server.client, 1);
    server.wait_for_watchers(1).await;
    server.shutdown.send(true).unwrap();
    let served = tokio::time::timeout(DEADLINE, server.task).await.expect("serve did not stop").unwrap();
    served.unwrap();
    let watched = tokio::time::timeout(DEADLINE, watcher).await.unwrap().unwrap();
    assert!(matches!(watched, Err(ClientError::Transport(_))), "{watched:?}");
    assert!(!server.socket.exists(), "the socket file is removed");
    assert!(matches!(server.client.get_json("/v1/status").await, Err(ClientError::Connect { .. })));
}

#[tokio::test]
async fn bind_replaces_only_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    // A socket that nothing listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let listener = bind(&socket).unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A live one is reported, not stolen.
    let error = bind(&socket).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
    drop(listener);
    // A regular file is never removed.
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep").unwrap();
    let error = bind(&file).unwrap_err();
    assert!(error.to_string().contains("is not a socket"), "{error}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
}

#[tokio::test]
async fn client_names_the_socket_it_cannot_reach() {
    let error = Client::new("/nonexistent/cairnd.sock").get_json("/v1/status").await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, ClientError::Connect { .. }));
    assert!(message.contains("/nonexistent/cairnd.sock"), "{message}");
    assert!(message.contains("systemctl status cairnd"), "{message}");
}
