//! The QUIC transport over real UDP on 127.0.0.1: connection, framing, hello, authentication,
//! refusal, backpressure and restarts. Every wait is for a condition with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_crypto::{PublicKey, SecretKey};
use cairn_daemon::tls;
use cairn_daemon::transport::{
    CloseCode, SendError, Transport, TransportConfig, TransportCounters, TransportEvent, hello,
};
use cairn_protocol::limits::MESSAGE_BYTES_MAX;
use quinn::{Connection, ConnectionError, RecvStream, SendStream};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::mpsc;
use tokio::time::Instant;

const CLUSTER: [u8; 32] = [0xc1; 32];
const DEADLINE: Duration = Duration::from_secs(15);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// `n` keys from the seeds `base..base + n`, sorted by public key (the smallest dials).
fn keys(base: u8, n: u8) -> Vec<SecretKey> {
    let mut keys: Vec<SecretKey> = (base..base + n).map(|i| SecretKey::from_seed(&[i; 32])).collect();
    keys.sort_by_key(SecretKey::public);
    keys
}

fn publics(keys: &[&SecretKey]) -> Vec<PublicKey> {
    keys.iter().map(|key| key.public()).collect()
}

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(members: Vec<PublicKey>, peers: Vec<(PublicKey, SocketAddr)>) -> TransportConfig {
    let mut config = TransportConfig::new(local(), CLUSTER, members, peers);
    config.reconnect_backoff_min = Duration::from_millis(20);
    config.reconnect_backoff_max = Duration::from_millis(200);
    config.handshake_timeout = Duration::from_secs(3);
    config.idle_timeout = Duration::from_secs(10);
    config
}

struct Node {
    key: PublicKey,
    transport: Transport,
    events: mpsc::Receiver<TransportEvent>,
}

async fn start(key: &SecretKey, config: TransportConfig) -> Node {
    start_with_capacity(key, config, 1024).await
}

async fn start_with_capacity(key: &SecretKey, config: TransportConfig, capacity: usize) -> Node {
    let (sender, events) = mpsc::channel(capacity);
    let transport = Transport::start(key, config, sender).await.unwrap();
    Node { key: key.public(), transport, events }
}

impl Node {
    fn address(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    async fn next_event(&mut self) -> TransportEvent {
        tokio::time::timeout(DEADLINE, self.events.recv())
            .await
            .expect("no transport event before the deadline")
            .expect("the transport dropped its event sender")
    }

    async fn expect_connected(&mut self, peer: &PublicKey) {
        match self.next_event().await {
            TransportEvent::Connected { peer: connected, .. } => assert_eq!(&connected, peer),
            other => panic!("expected Connected from {peer:?}, got {other:?}"),
        }
    }

    async fn expect_disconnected(&mut self, peer: &PublicKey) -> String {
        match self.next_event().await {
            TransportEvent::Disconnected { peer: lost, reason, .. } => {
                assert_eq!(&lost, peer);
                reason
            }
            other => panic!("expected Disconnected from {peer:?}, got {other:?}"),
        }
    }

    async fn expect_message(&mut self, peer: &PublicKey) -> Vec<u8> {
        match self.next_event().await {
            TransportEvent::Message { peer: from, bytes, .. } => {
                assert_eq!(&from, peer);
                bytes
            }
            other => panic!("expected a message from {peer:?}, got {other:?}"),
        }
    }

    /// Asserts that no event is waiting.
    fn assert_no_event(&mut self) {
        if let Ok(event) = self.events.try_recv() {
            panic!("unexpected event {event:?}");
        }
    }

    fn counters(&self) -> TransportCounters {
        self.transport.counters()
    }
}

/// Polls `condition` until it holds; panics with `what` at the deadline.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn message(from: u8, index: u32) -> Vec<u8> {
    let mut bytes = vec![from];
    bytes.extend_from_slice(&index.to_le_bytes());
    bytes.resize(5 + (index as usize % 300), from);
    bytes
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// Starts `n` transports of one cluster; each smaller key knows the addresses of the larger
/// ones. Returns them sorted by key, after every pair connected.
async fn mesh(base: u8, n: u8) -> Vec<Node> {
    let keys = keys(base, n);
    let members = publics(&keys.iter().collect::<Vec<_>>());
    let mut nodes: Vec<Node> = Vec::new();
    // Start the largest first, so that every dialer knows its targets' addresses.
    for key in keys.iter().rev() {
        let peers = nodes.iter().map(|node| (node.key, node.address())).collect();
        nodes.insert(0, start(key, config(members.clone(), peers)).await);
    }
    for node in &mut nodes {
        let mut expected: Vec<PublicKey> = members.iter().copied().filter(|key| *key != node.key).collect();
        while !expected.is_empty() {
            match node.next_event().await {
                TransportEvent::Connected { peer, .. } => {
                    let position = expected.iter().position(|key| *key == peer).expect("an expected peer");
                    expected.remove(position);
                }
                other => panic!("expected Connected, got {other:?}"),
            }
        }
    }
    nodes
}

/// A quinn client outside the transport, for sending raw frames.
struct RawClient {
    _endpoint: quinn::Endpoint,
    connection: Connection,
}

async fn raw_connect(identity: &tls::Identity, server: &PublicKey, address: SocketAddr) -> RawClient {
    try_raw_connect(identity, server, address).await.unwrap()
}

/// Like [`raw_connect`], but the TLS handshake may fail on the client's side already.
async fn try_raw_connect(
    identity: &tls::Identity,
    server: &PublicKey,
    address: SocketAddr,
) -> Result<RawClient, ConnectionError> {
    let endpoint = quinn::Endpoint::client(local()).unwrap();
    let config = tls::client_config(identity, server);
    let connection = endpoint.connect_with(config, address, tls::SERVER_NAME).unwrap().await?;
    Ok(RawClient { _endpoint: endpoint, connection })
}

impl RawClient {
    /// Opens the stream, sends `first_frame`, and returns the stream.
    async fn open(&self, first_frame: &[u8]) -> (SendStream, RecvStream) {
        let (mut send, recv) = self.connection.open_bi().await.unwrap();
        send.write_all(first_frame).await.unwrap();
        (send, recv)
    }

    /// Waits for the server to close the connection and returns its application close code.
    async fn closed_with(&self) -> ConnectionError {
        tokio::time::timeout(DEADLINE, self.connection.closed()).await.expect("the server did not close")
    }
}

/// Connects with `identity` and expects the server to reject it in the TLS handshake (a
/// `ConnectionClosed` carrying a TLS alert), not later in the application; returns the reason
/// in words that came with the alert.
async fn expect_tls_rejection(identity: &tls::Identity, server: &PublicKey, address: SocketAddr) -> String {
    // A TLS 1.3 client usually finishes before the server rejects it, but may hear the alert
    // first.
    let error = match try_raw_connect(identity, server, address).await {
        Ok(client) => {
            if let Ok((mut send, _recv)) = client.connection.open_bi().await {
                let _ = send.write_all(&frame(&hello(&CLUSTER))).await;
            }
            client.closed_with().await
        }
        Err(error) => error,
    };
    // QUIC carries TLS alerts as transport error codes 0x100 to 0x1ff.
    let is_tls_alert = matches!(
        &error,
        ConnectionError::ConnectionClosed(close) if (0x100..0x200).contains(&u64::from(close.error_code))
    );
    assert!(is_tls_alert, "expected a TLS alert, got {error:?}");
    match error {
        ConnectionError::ConnectionClosed(close) => String::from_utf8_lossy(&close.reason).into_owned(),
        _ => unreachable!("checked above"),
    }
}

fn application_code(error: &ConnectionError) -> Option<u64> {
    match error {
        ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
        _ => None,
    }
}

/// Reads the server's hello frame.
async fn read_server_hello(recv: &mut RecvStream) -> Vec<u8> {
    let mut buffer = vec![0u8; 4 + 38];
    tokio::time::timeout(DEADLINE, recv.read_exact(&mut buffer)).await.unwrap().unwrap();
    buffer
}

/// An identity that presents `presented`'s public key but signs with `signer`.
fn impostor(presented: &PublicKey, signer: &SecretKey) -> tls::Identity {
    const PKCS8_V1_PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let pkcs8 = [&PKCS8_V1_PREFIX[..], &signer.seed_bytes()].concat();
    let signing_key = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(pkcs8)).unwrap();
    let spki = tls::ed25519_spki(presented);
    tls::Identity::from_certified_key(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(spki)],
        signing_key,
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transports_connect_and_exchange_messages_in_order() {
    init_logs();
    let mut nodes = mesh(10, 2).await;
    let (small, large) = (nodes[0].key, nodes[1].key);
    assert!(nodes[0].transport.has_room(&large));
    assert!(nodes[1].transport.rtt(&small).is_some());
    for index in 0..200 {
        nodes[0].transport.send(&large, message(0, index)).unwrap();
        nodes[1].transport.send(&small, message(1, index)).unwrap();
        if index % 50 == 49 {
            // Let the queues (64 messages) drain between bursts.
            for from in [(1, small, 0), (0, large, 1)] {
                let (node_idx, peer, tag) = from;
                for expected in index - 49..=index {
                    assert_eq!(nodes[node_idx].expect_message(&peer).await, message(tag, expected));
                }
            }
        }
    }
    assert_eq!(nodes[0].transport.send(&small, vec![1]), Err(SendError::NotConnected), "no link to self");
    // An empty message and a maximal one are valid frames.
    nodes[0].transport.send(&large, Vec::new()).unwrap();
    nodes[0].transport.send(&large, vec![7; MESSAGE_BYTES_MAX]).unwrap();
    assert_eq!(nodes[1].expect_message(&small).await, Vec::<u8>::new());
    assert_eq!(nodes[1].expect_message(&small).await, vec![7; MESSAGE_BYTES_MAX]);
    assert_eq!(nodes[0].counters().n_connections_established, 1);
    assert_eq!(nodes[1].counters().n_connections_established, 1);
    for node in &nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_transports_connect_pairwise_and_exchange_messages_in_order() {
    init_logs();
    let mut nodes = mesh(20, 3).await;
    let keys: Vec<PublicKey> = nodes.iter().map(|node| node.key).collect();
    for (from_idx, from) in nodes.iter().enumerate() {
        for to in keys.iter().filter(|key| **key != from.key) {
            for index in 0..20 {
                from.transport.send(to, message(from_idx as u8, index)).unwrap();
            }
        }
    }
    for node in &mut nodes {
        let mut next_index = [0u32; 3];
        for _ in 0..40 {
            match node.next_event().await {
                TransportEvent::Message { peer, bytes, .. } => {
                    let from_idx = keys.iter().position(|key| *key == peer).unwrap();
                    assert_eq!(bytes, message(from_idx as u8, next_index[from_idx]), "in order per peer");
                    next_index[from_idx] += 1;
                }
                other => panic!("expected a message, got {other:?}"),
            }
        }
        node.assert_no_event();
    }
    for node in &nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_member_cannot_connect() {
    init_logs();
    // The smaller key is the outsider, so it dials the member.
    let keys = keys(30, 2);
    let (outsider, member) = (&keys[0], &keys[1]);
    let mut server = start(member, config(publics(&[member]), vec![])).await;
    // The outsider believes it is a member; the member's genesis does not list it.
    let mut dialer =
        start(outsider, config(publics(&[outsider, member]), vec![(member.public(), server.address())]))
            .await;
    wait_until("both sides saw failed handshakes", || {
        dialer.counters().n_outgoing_handshakes_failed >= 3
            && server.counters().n_incoming_handshakes_failed >= 3
    })
    .await;
    dialer.assert_no_event();
    server.assert_no_event();
    assert_eq!(dialer.transport.send(&member.public(), vec![1]), Err(SendError::NotConnected));
    // The server's TLS verifier is what turns the outsider away, and it says why in words.
    let reason =
        expect_tls_rejection(&tls::Identity::new(outsider), &member.public(), server.address()).await;
    assert!(reason.contains(&tls::KeyRefusal::NotMember.to_string()), "{reason}");
    dialer.transport.shutdown().await;
    server.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialer_accepts_only_the_key_it_meant_to_reach() {
    init_logs();
    let keys = keys(40, 3);
    let (dialer_key, expected, other) = (&keys[0], &keys[1], &keys[2]);
    let members = publics(&[dialer_key, expected, other]);
    // `other` listens where the dialer expects `expected`.
    let mut server = start(other, config(members.clone(), vec![])).await;
    let mut dialer = start(dialer_key, config(members, vec![(expected.public(), server.address())])).await;
    wait_until("both sides saw failed handshakes", || {
        dialer.counters().n_outgoing_handshakes_failed >= 3
            && server.counters().n_incoming_handshakes_failed >= 3
    })
    .await;
    dialer.assert_no_event();
    server.assert_no_event();
    dialer.transport.shutdown().await;
    server.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_client_with_a_members_public_key_cannot_connect() {
    init_logs();
    let keys = keys(50, 3);
    let (member, server_key, thief) = (&keys[0], &keys[1], &keys[2]);
    let mut server = start(server_key, config(publics(&[member, server_key]), vec![])).await;

    // Control: the genuine member, speaking raw frames, is admitted.
    let genuine = raw_connect(&tls::Identity::new(member), &server_key.public(), server.address()).await;
    let (_send, mut recv) = genuine.open(&frame(&hello(&CLUSTER))).await;
    assert_eq!(read_server_hello(&mut recv).await, frame(&hello(&CLUSTER)));
    server.expect_connected(&member.public()).await;
    genuine.connection.close(0u32.into(), b"done");
    server.expect_disconnected(&member.public()).await;

    // The thief presents the member's public key but signs with its own secret key.
    expect_tls_rejection(&impostor(&member.public(), thief), &server_key.public(), server.address()).await;
    wait_until("the server counted the failure", || server.counters().n_incoming_handshakes_failed >= 1)
        .await;
    server.assert_no_event();
    server.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_server_with_a_members_public_key_is_not_trusted() {
    init_logs();
    let keys = keys(60, 3);
    let (dialer_key, member, thief) = (&keys[0], &keys[1], &keys[2]);
    // A raw server presents `member`'s public key, signing with the thief's secret key.
    let identity = impostor(&member.public(), thief);
    let members = tls::MemberKeys::new(&publics(&[dialer_key, member]), &member.public());
    let endpoint = quinn::Endpoint::server(tls::server_config(&identity, &members), local()).unwrap();
    let address = endpoint.local_addr().unwrap();
    let accepting = endpoint.clone();
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Behaves like an honest acceptor after TLS, so that only the TLS handshake
            // signature check can keep the dialer out.
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else { return };
                let Ok((mut send, mut recv)) = connection.accept_bi().await else { return };
                let mut dialer_hello = [0u8; 4 + 38];
                if recv.read_exact(&mut dialer_hello).await.is_ok() {
                    let _ = send.write_all(&frame(&hello(&CLUSTER))).await;
                }
                connection.closed().await;
            });
        }
    });
    let mut dialer =
        start(dialer_key, config(publics(&[dialer_key, member]), vec![(member.public(), address)])).await;
    wait_until("the dialer failed several times", || {
        dialer.counters().n_outgoing_handshakes_failed >= 3
            && attempts.load(std::sync::atomic::Ordering::Relaxed) >= 3
    })
    .await;
    dialer.assert_no_event();
    dialer.transport.shutdown().await;
    endpoint.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cluster_id_never_connects() {
    init_logs();
    let keys = keys(70, 2);
    let members = publics(&[&keys[0], &keys[1]]);
    let mut other_cluster = config(members.clone(), vec![]);
    other_cluster.cluster_id = [0xc2; 32];
    let mut server = start(&keys[1], other_cluster).await;
    let mut dialer = start(&keys[0], config(members, vec![(keys[1].public(), server.address())])).await;
    wait_until("both sides saw failed hellos", || {
        dialer.counters().n_outgoing_handshakes_failed >= 3
            && server.counters().n_incoming_handshakes_failed >= 3
    })
    .await;
    dialer.assert_no_event();
    server.assert_no_event();

    // What the dialer hears: the acceptor closes with the cluster mismatch code.
    let raw = raw_connect(&tls::Identity::new(&keys[0]), &keys[1].public(), server.address()).await;
    let (_send, _recv) = raw.open(&frame(&hello(&CLUSTER))).await;
    let error = raw.closed_with().await;
    assert_eq!(application_code(&error), Some(u64::from(CloseCode::ClusterMismatch.code())), "{error:?}");
    assert!(error.to_string().contains("cluster id mismatch"), "{error}");
    dialer.transport.shutdown().await;
    server.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hello_is_rejected() {
    init_logs();
    let keys = keys(80, 2);
    let (client_key, server_key) = (&keys[0], &keys[1]);
    let mut server = start(server_key, config(publics(&[client_key, server_key]), vec![])).await;
    let identity = tls::Identity::new(client_key);
    let mut garbage = hello(&CLUSTER);
    garbage[..6].copy_from_slice(b"CAIRX1");
    let first_frames = [
        frame(&garbage),                 // wrong magic
        frame(&[0u8; 37]),               // wrong length
        frame(&message(0, 1)),           // a message before the hello
        (u32::MAX).to_le_bytes().into(), // a huge length prefix
    ];
    for (attempt_idx, first_frame) in first_frames.iter().enumerate() {
        let raw = raw_connect(&identity, &server_key.public(), server.address()).await;
        let (_send, _recv) = raw.open(first_frame).await;
        let error = raw.closed_with().await;
        assert_eq!(application_code(&error), Some(u64::from(CloseCode::BadHello.code())), "{error:?}");
        wait_until("the server counted the failure", || {
            server.counters().n_incoming_handshakes_failed > attempt_idx as u64
        })
        .await;
    }
    server.assert_no_event();
    // The right magic with another version byte is a version mismatch, not a bad hello.
    let raw = raw_connect(&identity, &server_key.public(), server.address()).await;
    let (_send, _recv) = raw.open(&frame(&cairn_daemon::transport::hello_of_version(&CLUSTER, b'4'))).await;
    let error = raw.closed_with().await;
    assert_eq!(application_code(&error), Some(u64::from(CloseCode::VersionMismatch.code())), "{error:?}");
    match server.next_event().await {
        TransportEvent::VersionMismatch { peer, ours, theirs } => {
            assert_eq!((peer, ours, theirs), (client_key.public(), b'3', Some(b'4')));
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    server.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_length_prefix_disconnects_the_peer() {
    init_logs();
    let keys = keys(90, 2);
    let (client_key, server_key) = (&keys[0], &keys[1]);
    let mut server = start(server_key, config(publics(&[client_key, server_key]), vec![])).await;
    let raw = raw_connect(&tls::Identity::new(client_key), &server_key.public(), server.address()).await;
    let (mut send, mut recv) = raw.open(&frame(&hello(&CLUSTER))).await;
    read_server_hello(&mut recv).await;
    server.expect_connected(&client_key.public()).await;

    send.write_all(&frame(b"fine")).await.unwrap();
    assert_eq!(server.expect_message(&client_key.public()).await, b"fine");
    send.write_all(&((MESSAGE_BYTES_MAX + 1) as u32).to_le_bytes()).await.unwrap();
    let reason = server.expect_disconnected(&client_key.public()).await;
    assert!(reason.contains("exceeds the limit"), "{reason}");
    let error = raw.closed_with().await;
    assert_eq!(application_code(&error), Some(u64::from(CloseCode::ProtocolViolation.code())), "{error:?}");
    assert_eq!(server.counters().n_protocol_violations, 1);
    server.assert_no_event();
    server.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_peer_is_dropped_and_cannot_reconnect() {
    init_logs();
    let mut nodes = mesh(100, 2).await;
    let (small, large) = (nodes[0].key, nodes[1].key);
    // The acceptor refuses the dialer, which keeps trying and keeps failing.
    nodes[1].transport.refuse(&small);
    assert_eq!(nodes[1].expect_disconnected(&small).await, "refused");
    let reason = nodes[0].expect_disconnected(&large).await;
    assert!(reason.contains("refused"), "{reason}");
    let failures = nodes[0].counters().n_outgoing_handshakes_failed;
    wait_until("the refused dialer failed again", || {
        nodes[0].counters().n_outgoing_handshakes_failed >= failures + 3
            && nodes[1].counters().n_incoming_handshakes_failed >= 3
    })
    .await;
    nodes[0].assert_no_event();
    nodes[1].assert_no_event();
    assert_eq!(nodes[1].transport.send(&small, vec![1]), Err(SendError::NotConnected));
    assert!(!nodes[1].transport.has_room(&small));
    assert_eq!(nodes[1].transport.rtt(&small), None);
    let refused_key = keys(100, 2).remove(0);
    assert_eq!(refused_key.public(), small);
    let reason = expect_tls_rejection(&tls::Identity::new(&refused_key), &large, nodes[1].address()).await;
    assert!(reason.contains(&tls::KeyRefusal::Equivocator.to_string()), "{reason}");
    for node in &nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_a_peer_we_dial_stops_dialing() {
    init_logs();
    let mut nodes = mesh(110, 2).await;
    let (small, large) = (nodes[0].key, nodes[1].key);
    nodes[0].transport.refuse(&large);
    assert_eq!(nodes[0].expect_disconnected(&large).await, "refused");
    let reason = nodes[1].expect_disconnected(&small).await;
    assert!(reason.contains("refused"), "{reason}");
    // A negative over a window: 25 backoff periods of the refusing dialer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    nodes[0].assert_no_event();
    nodes[1].assert_no_event();
    assert_eq!(nodes[0].counters().n_outgoing_handshakes_failed, 0);
    assert_eq!(nodes[1].counters().n_incoming_handshakes_failed, 0);
    assert_eq!(nodes[1].counters().n_connections_established, 1);
    for node in &nodes {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_peer_reconnects() {
    init_logs();
    let keys = keys(120, 2);
    let members = publics(&[&keys[0], &keys[1]]);
    let mut large = start(&keys[1], config(members.clone(), vec![])).await;
    let peers = vec![(keys[1].public(), large.address())];
    let mut small = start(&keys[0], config(members.clone(), peers.clone())).await;
    small.expect_connected(&large.key).await;
    large.expect_connected(&small.key).await;

    // The dialer restarts on a new port.
    small.transport.shutdown().await;
    drop(small);
    let reason = large.expect_disconnected(&keys[0].public()).await;
    assert!(reason.contains("shutting down"), "{reason}");
    let mut small = start(&keys[0], config(members, peers)).await;
    small.expect_connected(&large.key).await;
    large.expect_connected(&small.key).await;
    small.transport.send(&large.key, b"after".to_vec()).unwrap();
    large.transport.send(&small.key, b"restart".to_vec()).unwrap();
    assert_eq!(large.expect_message(&small.key).await, b"after");
    assert_eq!(small.expect_message(&large.key).await, b"restart");
    small.transport.shutdown().await;
    large.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connection_from_a_peer_replaces_the_old_one() {
    init_logs();
    let keys = keys(130, 2);
    let members = publics(&[&keys[0], &keys[1]]);
    let mut large = start(&keys[1], config(members.clone(), vec![])).await;
    let peers = vec![(keys[1].public(), large.address())];
    // The old instance will not redial within the test.
    let mut slow = config(members.clone(), peers.clone());
    slow.reconnect_backoff_min = Duration::from_secs(60);
    slow.reconnect_backoff_max = Duration::from_secs(60);
    let mut old = start(&keys[0], slow).await;
    old.expect_connected(&large.key).await;
    large.expect_connected(&old.key).await;

    // A second instance with the same key, as after a crash that left the old connection open.
    let mut new = start(&keys[0], config(members, peers)).await;
    new.expect_connected(&large.key).await;
    let reason = large.expect_disconnected(&keys[0].public()).await;
    assert_eq!(reason, CloseCode::Replaced.reason());
    large.expect_connected(&keys[0].public()).await;
    let reason = old.expect_disconnected(&large.key).await;
    assert!(reason.contains("replaced"), "{reason}");

    large.transport.send(&new.key, b"to the new one".to_vec()).unwrap();
    assert_eq!(new.expect_message(&large.key).await, b"to the new one");
    new.transport.send(&large.key, b"from the new one".to_vec()).unwrap();
    assert_eq!(large.expect_message(&new.key).await, b"from the new one");
    old.assert_no_event();
    for node in [&old, &new, &large] {
        node.transport.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_queue_fills_when_the_peer_does_not_read() {
    init_logs();
    let keys = keys(140, 2);
    let members = publics(&[&keys[0], &keys[1]]);
    let mut small_config = config(members.clone(), vec![]);
    small_config.peer_queue_messages_max = 4;
    // The receiver's service channel is small and not read until the sender is full.
    let mut large = start_with_capacity(&keys[1], config(members, vec![]), 4).await;
    small_config.peers = vec![(keys[1].public(), large.address())];
    let mut small = start(&keys[0], small_config).await;
    small.expect_connected(&large.key).await;
    large.expect_connected(&small.key).await;

    let big = |index: u32| {
        let mut bytes = vec![index as u8; MESSAGE_BYTES_MAX];
        bytes[..4].copy_from_slice(&index.to_le_bytes());
        bytes
    };
    let mut n_sent = 0u32;
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the send queue never filled");
        match small.transport.send(&large.key, big(n_sent)) {
            Ok(()) => n_sent += 1,
            Err(SendError::Full) if !small.transport.has_room(&large.key) && n_sent > 4 => break,
            Err(SendError::Full) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(error) => panic!("{error}"),
        }
    }
    assert!(n_sent < 64, "flow control should stall the sender after a few MiB, sent {n_sent}");
    for index in 0..n_sent {
        assert!(large.expect_message(&small.key).await == big(index), "message {index} in order");
    }
    wait_until("the queue has room again", || small.transport.has_room(&large.key)).await;
    small.transport.shutdown().await;
    large.transport.shutdown().await;
}

#[tokio::test]
async fn start_rejects_inconsistent_configuration() {
    let keys = keys(150, 3);
    let (sender, _events) = mpsc::channel(1);
    let address: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let twice = config(
        publics(&[&keys[0], &keys[1]]),
        vec![(keys[1].public(), address), (keys[1].public(), address)],
    );
    let error = Transport::start(&keys[0], twice, sender.clone()).await.unwrap_err();
    assert!(error.to_string().contains("listed twice"), "{error}");
    let mut zero_queue = config(publics(&[&keys[0], &keys[1]]), vec![]);
    zero_queue.peer_queue_messages_max = 0;
    assert!(Transport::start(&keys[0], zero_queue, sender).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_or_slow_peer_is_closed_at_the_handshake_timeout() {
    init_logs();
    let keys = keys(160, 2);
    let (client_key, server_key) = (&keys[0], &keys[1]);
    let mut server_config = config(publics(&[client_key, server_key]), vec![]);
    server_config.handshake_timeout = Duration::from_millis(300);
    let mut server = start(server_key, server_config).await;
    let identity = tls::Identity::new(client_key);

    // Completes TLS, then opens no stream.
    let silent = raw_connect(&identity, &server_key.public(), server.address()).await;
    let error = silent.closed_with().await;
    assert_eq!(application_code(&error), Some(u64::from(CloseCode::HandshakeTimeout.code())), "{error:?}");

    // Sends half a hello and stalls.
    let slow = raw_connect(&identity, &server_key.public(), server.address()).await;
    let (_send, _recv) = slow.open(&frame(&hello(&CLUSTER))[..20]).await;
    let error = slow.closed_with().await;
    assert_eq!(application_code(&error), Some(u64::from(CloseCode::HandshakeTimeout.code())), "{error:?}");

    wait_until("the server counted both", || server.counters().n_incoming_handshakes_failed >= 2).await;
    server.assert_no_event();
    server.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn larger_key_may_dial() {
    init_logs();
    let keys = keys(170, 2);
    let (server_key, client_key) = (&keys[0], &keys[1]);
    let mut server = start(server_key, config(publics(&[client_key, server_key]), vec![])).await;
    let raw = raw_connect(&tls::Identity::new(client_key), &server_key.public(), server.address()).await;
    let (_send, mut recv) = raw.open(&frame(&hello(&CLUSTER))).await;
    assert_eq!(read_server_hello(&mut recv).await, frame(&hello(&CLUSTER)));
    server.expect_connected(&client_key.public()).await;
    server.transport.shutdown().await;
}

/// Two free UDP ports on 127.0.0.1, for transports that must know each other's address before
/// either starts. (Another process could take a port in between; on loopback in a test run
/// that does not happen in practice, and the test would fail loudly, not pass wrongly.)
fn free_addresses() -> (SocketAddr, SocketAddr) {
    let a = std::net::UdpSocket::bind(local()).unwrap();
    let b = std::net::UdpSocket::bind(local()).unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_that_alone_knows_the_address_dials_whichever_key_is_smaller() {
    init_logs();
    for (base, dialer_is_small) in [(180, true), (182, false)] {
        let keys = keys(base, 2);
        let (dialer_key, listener_key) =
            if dialer_is_small { (&keys[0], &keys[1]) } else { (&keys[1], &keys[0]) };
        let members = publics(&[&keys[0], &keys[1]]);
        let mut listener = start(listener_key, config(members.clone(), vec![])).await;
        let mut dialer =
            start(dialer_key, config(members, vec![(listener_key.public(), listener.address())])).await;
        dialer.expect_connected(&listener.key).await;
        listener.expect_connected(&dialer.key).await;
        listener.transport.send(&dialer.key, b"from the listener".to_vec()).unwrap();
        dialer.transport.send(&listener.key, b"from the dialer".to_vec()).unwrap();
        assert_eq!(dialer.expect_message(&listener.key).await, b"from the listener");
        assert_eq!(listener.expect_message(&dialer.key).await, b"from the dialer");
        dialer.assert_no_event();
        listener.assert_no_event();
        for node in [&dialer, &listener] {
            node.transport.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_know_each_other_keep_one_connection() {
    init_logs();
    let keys = keys(190, 2);
    let members = publics(&[&keys[0], &keys[1]]);
    let (small_address, large_address) = free_addresses();
    let mut small_config = config(members.clone(), vec![(keys[1].public(), large_address)]);
    small_config.listen = small_address;
    let mut large_config = config(members, vec![(keys[0].public(), small_address)]);
    large_config.listen = large_address;
    // Both start at once: both may dial, and both must settle on the same connection.
    let (mut small, mut large) = tokio::join!(start(&keys[0], small_config), start(&keys[1], large_config));
    small.expect_connected(&large.key).await;
    large.expect_connected(&small.key).await;
    // Whatever raced, the connection each side kept is the same one: messages flow both ways,
    // in order, with no disconnection in between.
    for index in 0..50 {
        small.transport.send(&large.key, message(0, index)).unwrap();
        large.transport.send(&small.key, message(1, index)).unwrap();
    }
    for index in 0..50 {
        assert_eq!(large.expect_message(&small.key).await, message(0, index));
        assert_eq!(small.expect_message(&large.key).await, message(1, index));
    }
    small.assert_no_event();
    large.assert_no_event();
    for node in [&small, &large] {
        node.transport.shutdown().await;
    }
}

/// Starts a transport on its own runtime, so that the test can crash it: dropping the runtime
/// stops its tasks and closes its socket without a word to the peers, as `kill -9` would.
fn start_crashable(key: &SecretKey, config: TransportConfig) -> (tokio::runtime::Runtime, Node) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let node = runtime.block_on(start(key, config));
    (runtime, node)
}

fn crash(runtime: tokio::runtime::Runtime, node: Node) {
    // Wait until the runtime's tasks are gone (the endpoint's driver among them), so that
    // dropping the handle afterwards cannot send a close.
    runtime.shutdown_timeout(DEADLINE);
    drop(node);
}

impl Node {
    /// Sends `bytes` to `peer` until it arrives: skips connection events, which may come and go
    /// while duplicate or dead connections are sorted out, and resends after each `Connected`
    /// (a message queued on a connection that was then replaced is lost with it).
    async fn deliver(&mut self, to: &mut Self, bytes: &[u8]) {
        let deadline = Instant::now() + DEADLINE;
        let _ = self.transport.send(&to.key, bytes.to_vec());
        loop {
            let event = tokio::time::timeout_at(deadline, to.events.recv())
                .await
                .expect("the message did not arrive before the deadline")
                .expect("the transport dropped its event sender");
            match event {
                TransportEvent::Message { peer, bytes: got, .. } if peer == self.key && got == bytes => {
                    return;
                }
                TransportEvent::Connected { .. } => {
                    // Drain our own side too, then resend on what is now up.
                    while self.events.try_recv().is_ok() {}
                    let _ = self.transport.send(&to.key, bytes.to_vec());
                }
                _ => {
                    if self.events.try_recv().is_ok() {
                        let _ = self.transport.send(&to.key, bytes.to_vec());
                    }
                }
            }
            if !self.transport.has_room(&to.key) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

#[test]
fn a_crashed_peer_is_reconnected_within_a_second_of_its_restart_whoever_dials() {
    init_logs();
    // The idle timeout is long, so only the new mechanisms can explain a fast reconnection:
    // the restarted node's dial, or a stateless reset answering a keep-alive.
    const IDLE: Duration = Duration::from_secs(30);
    const RECONNECTED_WITHIN: Duration = Duration::from_secs(3);
    let main = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // (seed base, which side crashes, whether the crashed side knows the survivor's address)
    for (base, crash_small, crashed_knows_address) in
        [(200, false, true), (202, true, true), (204, false, false), (206, true, false)]
    {
        let keys = keys(base, 2);
        let members = publics(&[&keys[0], &keys[1]]);
        let (crashed_key, survivor_key) =
            if crash_small { (&keys[0], &keys[1]) } else { (&keys[1], &keys[0]) };
        let (crashed_address, survivor_address) = free_addresses();
        let mut survivor_config = config(members.clone(), vec![(crashed_key.public(), crashed_address)]);
        survivor_config.listen = survivor_address;
        survivor_config.idle_timeout = IDLE;
        let crashed_peers =
            if crashed_knows_address { vec![(survivor_key.public(), survivor_address)] } else { vec![] };
        let mut crashed_config = config(members, crashed_peers);
        crashed_config.listen = crashed_address;
        crashed_config.idle_timeout = IDLE;

        let mut survivor = main.block_on(start(survivor_key, survivor_config));
        let (runtime, mut crashed) = start_crashable(crashed_key, crashed_config.clone());
        main.block_on(async {
            survivor.expect_connected(&crashed_key.public()).await;
        });
        runtime.block_on(crashed.expect_connected(&survivor_key.public()));
        crash(runtime, crashed);

        let case = format!(
            "crashed the {} key; it knows the address: {crashed_knows_address}",
            if crash_small { "smaller" } else { "larger" }
        );
        main.block_on(async {
            // The crashed runtime lets go of the socket as its tasks are dropped, in the
            // background: retry the bind until the port is free.
            let (sender, events) = mpsc::channel(1024);
            let bind_deadline = Instant::now() + DEADLINE;
            let transport = loop {
                match Transport::start(crashed_key, crashed_config.clone(), sender.clone()).await {
                    Ok(transport) => break transport,
                    Err(error) => {
                        assert!(Instant::now() < bind_deadline, "cannot restart: {error:#}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            };
            let restarted_at = Instant::now();
            let mut restarted = Node { key: crashed_key.public(), transport, events };
            // Messages flow both ways again: the survivor let go of the dead connection.
            restarted.deliver(&mut survivor, b"back").await;
            survivor.deliver(&mut restarted, b"welcome").await;
            let took = restarted_at.elapsed();
            eprintln!("{case}: messages flow both ways {took:?} after the restart");
            assert!(took < RECONNECTED_WITHIN, "{case}: reconnected only after {took:?}");
            restarted.transport.shutdown().await;
            survivor.transport.shutdown().await;
        });
    }
}

/// A key a membership change brings in is not admitted before it is in force, then is: the
/// node that knows its address dials it. A key a change takes out of force is closed with
/// `Removed`, its handshakes are refused saying so, and it is not dialed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_admitted_when_a_change_brings_it_in_and_retired_when_one_takes_it_out() {
    init_logs();
    let keys = keys(160, 2);
    let (old, newcomer) = (&keys[0], &keys[1]);
    // The newcomer knows the member (the genesis it was given); the member knows the
    // newcomer's address from its config, but not yet its key as a member.
    let mut joining = start(newcomer, config(publics(&[old]), vec![])).await;
    let mut member = start(old, config(publics(&[old]), vec![(newcomer.public(), joining.address())])).await;
    let reason = expect_tls_rejection(&tls::Identity::new(newcomer), &old.public(), member.address()).await;
    assert!(reason.contains(&tls::KeyRefusal::NotMember.to_string()), "{reason}");
    member.assert_no_event();

    assert!(member.transport.admit(newcomer.public(), None), "a new key is admitted");
    assert!(!member.transport.admit(newcomer.public(), None), "admitting it again changes nothing");
    member.expect_connected(&newcomer.public()).await;
    joining.expect_connected(&old.public()).await;
    member.transport.send(&newcomer.public(), vec![7]).unwrap();
    assert_eq!(joining.expect_message(&old.public()).await, vec![7]);

    member.transport.retire(&newcomer.public());
    let reason = member.expect_disconnected(&newcomer.public()).await;
    assert_eq!(reason, CloseCode::Removed.reason());
    match joining.next_event().await {
        TransportEvent::Disconnected { peer, reason, removed_by_peer } => {
            assert_eq!(peer, old.public());
            assert!(reason.contains("removed from the membership"), "{reason}");
            assert!(removed_by_peer, "the close code says the peer removed us");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let reason = expect_tls_rejection(&tls::Identity::new(newcomer), &old.public(), member.address()).await;
    assert!(reason.contains(&tls::KeyRefusal::Removed.to_string()), "{reason}");
    assert!(!member.transport.admit(newcomer.public(), None), "a key out of force never comes back");
    member.assert_no_event();
    member.transport.shutdown().await;
    joining.transport.shutdown().await;
}

/// Two nodes that speak different protocol versions never connect, and both say so with both
/// versions named: the acceptor reads the dialer's hello and closes with code 9, naming its
/// own version in the reason, which the dialer reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_version_mismatch_is_named_on_both_sides() {
    init_logs();
    let keys = keys(170, 2);
    let (small, large) = (&keys[0], &keys[1]);
    let members = publics(&[small, large]);
    let mut newer = config(members.clone(), vec![]);
    newer.protocol_version = b'4';
    let mut acceptor = start(large, newer).await;
    let mut dialer = start(small, config(members, vec![(large.public(), acceptor.address())])).await;
    let mismatch = |event: TransportEvent| match event {
        TransportEvent::VersionMismatch { peer, ours, theirs } => (peer, ours, theirs),
        other => panic!("expected VersionMismatch, got {other:?}"),
    };
    assert_eq!(mismatch(acceptor.next_event().await), (small.public(), b'4', Some(b'3')));
    assert_eq!(mismatch(dialer.next_event().await), (large.public(), b'3', Some(b'4')));
    assert!(acceptor.counters().n_version_mismatches >= 1 && dialer.counters().n_version_mismatches >= 1);
    assert_eq!(acceptor.counters().n_connections_established, 0);
    dialer.transport.shutdown().await;
    acceptor.transport.shutdown().await;
}
