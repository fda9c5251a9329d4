//! Real `cairnd` processes on loopback: replication of every key type, siblings from
//! concurrent writes, the watch stream, durability across `kill -9`, a clean SIGTERM, own-seq
//! safety after a lost store, and the refusal of non-members. Every wait is a poll with a
//! deadline; a failing test prints every node's log.

mod common;

use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cairn_crypto::{PublicKey, SecretKey};
use cairn_daemon::client::{Client, ClientError};
use cairn_daemon::tls;
use cairn_daemon::transport::hello;
use common::{Cluster, DEADLINE, wait_exit};
use hyper::{Method, StatusCode};
use nix::sys::signal::Signal;
use quinn::ConnectionError;
use serde_json::json;

#[test]
fn writes_replicate_to_every_node() {
    let c = Cluster::start(3);

    // A register written on node 0 is read on 1 and 2.
    let ack = c.put(0, "greeting", "hello");
    assert_eq!(ack["seq"], 1, "{ack}");
    c.wait_for("nodes 1 and 2 read the register", |c| {
        (1..3).all(|i| c.register_value(i, "greeting").as_deref() == Some("hello"))
    });

    // Counters incremented on all three sum everywhere.
    for i in 0..3 {
        c.incr(i, "hits", 10 * (i as i64 + 1));
    }
    c.incr(1, "hits", -5);
    c.wait_for("every node counts 55 hits", |c| (0..3).all(|i| c.counter(i, "hits") == 55));

    // A set: added on one node, removed on another.
    c.set_op(0, "add", "team", "alice");
    c.set_op(0, "add", "team", "bob");
    c.wait_for("node 2 sees both members", |c| c.set_members(2, "team") == ["alice", "bob"]);
    c.set_op(2, "remove", "team", "alice");
    c.wait_for("every node sees only bob", |c| (0..3).all(|i| c.set_members(i, "team") == ["bob"]));

    // A delete on node 1 empties the register everywhere.
    c.delete(1, "greeting");
    c.wait_for("the register is empty everywhere", |c| {
        (0..3).all(|i| c.register(i, "greeting")["siblings"].as_array().is_some_and(Vec::is_empty))
    });

    c.wait_converged();
    let n_events: Vec<_> = (0..3).map(|i| c.status(i)["n_events"].clone()).collect();
    assert!(n_events.iter().all(|n| *n == json!(9)), "events per node: {n_events:?}");
    for i in 0..3 {
        assert!(c.evidence(i).is_empty(), "node {i} holds evidence");
    }

    // Every node says who wrote what it holds: 4, 3 and 2 events, in its status and metrics.
    let expected = [("alice", 4), ("bob", 3), ("carol", 2)];
    for i in 0..3 {
        let status = c.status(i);
        let authors = status["authors"].as_array().expect("authors");
        // In genesis order, which is key order.
        let mut figures: Vec<(&str, u64)> =
            authors.iter().map(|a| (a["name"].as_str().unwrap(), a["events"].as_u64().unwrap())).collect();
        figures.sort_unstable();
        assert_eq!(figures, expected, "node {i}: {status}");
        assert!(authors.iter().all(|a| a["bytes"].as_u64().unwrap() > 100 * a["events"].as_u64().unwrap()));
        let metrics = c.block_on(c.client(i).metrics()).expect("metrics");
        for (name, n) in expected {
            let line = format!("cairn_author_events_total{{author=\"{name}\"}} {n}");
            assert!(metrics.lines().any(|l| l == line), "node {i} lacks {line:?}:\n{metrics}");
        }
    }
}

#[test]
fn concurrent_writes_on_both_sides_of_a_relay_become_siblings() {
    // Nodes 0 and 1 do not know each other: node 2 is their only link. With node 2 frozen,
    // neither can see the other's write, so the two writes are concurrent. They listen on
    // 0.0.0.0, so they publish no address record (`advertise` is unset) and cannot learn each
    // other's address through node 2 either.
    let mut c = Cluster::write(3, common::TIMING);
    c.remove_peer(0, 1);
    c.remove_peer(1, 0);
    for i in 0..2 {
        let port = c.nodes[i].address.port();
        c.edit_config(i, |text| {
            text.replacen(
                &format!("listen = \"127.0.0.1:{port}\""),
                &format!("listen = \"0.0.0.0:{port}\""),
                1,
            )
        });
    }
    c.spawn_all();
    c.wait_connected(2, 2);
    c.wait_connected(0, 1);
    c.wait_connected(1, 1);

    c.signal(2, Signal::SIGSTOP);
    c.put(0, "color", "red");
    c.put(1, "color", "blue");
    for i in 0..2 {
        let siblings = c.register(i, "color")["siblings"].as_array().unwrap().len();
        assert_eq!(siblings, 1, "node {i} saw the other side's write with the relay frozen");
    }
    c.signal(2, Signal::SIGCONT);

    c.wait_for("every node holds both writes as siblings", |c| {
        (0..3).all(|i| c.register(i, "color")["siblings"].as_array().unwrap().len() == 2)
    });
    c.wait_converged();
    let visible: Vec<_> = (0..3).map(|i| c.register_value(i, "color")).collect();
    assert!(visible.iter().all(|v| *v == visible[0]), "visible values differ: {visible:?}");
    assert!(matches!(visible[0].as_deref(), Some("red" | "blue")), "{visible:?}");

    // A write that has seen both supersedes both.
    c.put(2, "color", "green");
    c.wait_for("every node has the one resolved value", |c| {
        (0..3).all(|i| {
            let register = c.register(i, "color");
            register["value"] == "green" && register["siblings"].as_array().unwrap().len() == 1
        })
    });
    c.wait_converged();
}

#[test]
fn watch_stream_delivers_a_remote_write() {
    let c = Cluster::start(3);
    let (tx, rx) = mpsc::channel::<(String, serde_json::Value)>();
    let watcher = c.client(2);
    c.runtime().spawn(async move {
        let _ = watcher
            .watch("/v1/watch", |name, data| {
                let data = serde_json::from_str(data).unwrap_or(serde_json::Value::Null);
                tx.send((name.to_owned(), data)).is_ok()
            })
            .await;
    });

    // The stream subscribes when the request arrives, which the client does not report: write
    // a local marker until the stream shows one, then the stream is live.
    let deadline = Instant::now() + DEADLINE;
    let mut live = false;
    while !live {
        assert!(Instant::now() < deadline, "the watch stream showed no local write");
        c.incr(2, "watch-marker", 1);
        live = rx.recv_timeout(Duration::from_millis(500)).is_ok();
    }

    c.put(0, "remote", "from node 0");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (name, data) = rx.recv_timeout(left).expect("the watch stream did not show the remote write");
        if name == "change" && data["key"] == "remote" {
            assert_eq!(data["kind"], "register", "{data}");
            assert_eq!(data["value"], "from node 0", "{data}");
            break;
        }
    }
}

/// A writer thread: sequential puts of distinct keys to `client`, each recorded once it was
/// acknowledged, until a put fails.
fn spawn_writer(
    client: Client,
    prefix: &'static str,
) -> (Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<String>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&acked);
    let writer = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for n in 0.. {
            let key = format!("{prefix}-{n}");
            let path = format!("/v1/registers/{key}");
            match runtime.block_on(client.send_json(Method::PUT, &path, &json!({ "value": key }))) {
                Ok(_) => record.lock().unwrap().push(key),
                Err(error) => return error.to_string(),
            }
        }
        unreachable!()
    });
    (acked, writer)
}

fn n_acked(acked: &Mutex<Vec<String>>) -> usize {
    acked.lock().unwrap().len()
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let mut c = Cluster::start(3);
    let (acked, writer) = spawn_writer(c.client(0), "acked");
    c.wait_for("node 0 acknowledged 30 writes", |_| n_acked(&acked) >= 30);
    c.kill9(0);
    let failure = writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} writes acknowledged before kill -9; the next failed: {failure}", acked.len());

    // Meanwhile the others go on.
    c.put(1, "while-down", "from node 1");
    c.incr(2, "while-down-count", 7);
    c.wait_for("nodes 1 and 2 converge", |c| c.converged(&[1, 2]));

    // Freeze the others, so that node 0 can only have what its own store holds.
    c.signal(1, Signal::SIGSTOP);
    c.signal(2, Signal::SIGSTOP);
    c.restart(0);
    let status = c.status(0);
    assert!(
        status["own_seq"].as_u64().unwrap() >= acked.len() as u64,
        "own seq {} after {} acknowledged writes",
        status["own_seq"],
        acked.len()
    );
    for key in &acked {
        assert_eq!(c.register_value(0, key).as_deref(), Some(key.as_str()), "acknowledged {key} lost");
    }
    c.signal(1, Signal::SIGCONT);
    c.signal(2, Signal::SIGCONT);

    // Node 0 catches up, and the others get every acknowledged write.
    c.wait_all_connected();
    c.wait_converged();
    assert_eq!(c.register_value(0, "while-down").as_deref(), Some("from node 1"));
    assert_eq!(c.counter(0, "while-down-count"), 7);
    for i in 1..3 {
        for key in &acked {
            assert_eq!(c.register_value(i, key).as_deref(), Some(key.as_str()), "node {i} lacks {key}");
        }
    }
    // Still writable, with the next seq.
    let own_seq = c.status(0)["own_seq"].as_u64().unwrap();
    assert_eq!(c.put(0, "after", "restart")["seq"], own_seq + 1);
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut c = Cluster::start(3);
    let (acked, writer) = spawn_writer(c.client(0), "drain");
    c.wait_for("node 0 acknowledged 20 writes", |_| n_acked(&acked) >= 20);
    c.stop(0);
    let failure = writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    eprintln!("{} writes acknowledged before SIGTERM; the next failed: {failure}", acked.len());
    assert!(!c.nodes[0].socket.exists(), "the API socket is left behind");
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    assert!(log.contains("stopping: draining writes and connections"), "no stopping line in the log");
    assert!(log.contains("stopped"), "no stopped line in the log");

    // The transport lingers before it closes, so the writes acknowledged last reached the
    // peers before node 0 stopped.
    for i in 1..3 {
        for key in &acked {
            c.wait_for(&format!("node {i} holds {key}, sent before SIGTERM"), |c| {
                c.register_value(i, key).as_deref() == Some(key.as_str())
            });
        }
    }

    // With the others frozen, node 0 restarts with exactly what its own store holds.
    c.signal(1, Signal::SIGSTOP);
    c.signal(2, Signal::SIGSTOP);
    c.restart(0);
    for key in &acked {
        assert_eq!(c.register_value(0, key).as_deref(), Some(key.as_str()), "acknowledged {key} lost");
    }
    c.signal(1, Signal::SIGCONT);
    c.signal(2, Signal::SIGCONT);
    c.wait_all_connected();
    c.wait_converged();
    for i in 1..3 {
        for key in &acked {
            assert_eq!(c.register_value(i, key).as_deref(), Some(key.as_str()), "node {i} lacks {key}");
        }
    }
}

#[test]
fn old_key_with_an_empty_store_learns_its_seq_first() {
    let mut c = Cluster::start(3);
    for n in 1..=5 {
        c.put(0, &format!("k{n}"), "v");
    }
    c.put(1, "other", "v");
    c.wait_converged();
    assert_eq!(c.status(0)["own_seq"], 5);

    // Node 0 loses its store but keeps its key, and is no longer part of a brand-new cluster.
    c.stop(0);
    std::fs::remove_dir_all(&c.nodes[0].data_dir).unwrap();
    c.edit_config(0, |text| {
        assert!(text.contains("new_cluster = true\n"), "{text}");
        text.replace("new_cluster = true\n", "")
    });
    // With its peers frozen, the node cannot learn its latest seq, so it must not sign. (Without
    // the freeze it may learn before the first write arrives, and the refusal goes unseen.)
    c.signal(1, Signal::SIGSTOP);
    c.signal(2, Signal::SIGSTOP);
    c.restart(0);
    let error = c
        .send(0, Method::PUT, "/v1/registers/early", &json!({ "value": "v" }))
        .expect_err("a node that cannot know its latest seq signed a write");
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{error}");
    assert_eq!(error.code(), Some("not_ready"), "{error}");
    assert!(error.to_string().contains("learning its latest seq from peers"), "{error}");
    let status = c.status(0);
    assert!(
        status["writes_refused"].as_str().is_some_and(|why| why.contains("learning its latest seq")),
        "{status}"
    );
    assert_eq!(status["own_seq"], 0, "{status}");
    c.signal(1, Signal::SIGCONT);
    c.signal(2, Signal::SIGCONT);

    // Once a peer has reported, it signs on from the seq after its last one.
    let mut ack = None;
    c.wait_for("node 0 accepts a write", |c| {
        ack = c.send(0, Method::PUT, "/v1/registers/after", &json!({ "value": "v" })).ok();
        ack.is_some()
    });
    let ack = ack.unwrap();
    assert_eq!(ack["seq"], 6, "the first write after the lost store: {ack}");
    let status = c.status(0);
    assert_eq!(status["writes_refused"], serde_json::Value::Null, "{status}");
    assert_eq!(status["own_seq"], 6, "{status}");

    c.wait_converged();
    for i in 0..3 {
        assert!(c.evidence(i).is_empty(), "node {i} holds evidence: {:?}", c.evidence(i));
        assert_eq!(c.status(i)["n_evidence"], 0);
        assert_eq!(c.register_value(i, "after").as_deref(), Some("v"));
    }
}

#[test]
fn a_non_member_cannot_join() {
    let mut c = Cluster::start(3);

    // A cairnd whose key is not in the cluster's genesis refuses to start.
    let outsider_dir = c.dir().join("outsider");
    std::fs::create_dir_all(&outsider_dir).unwrap();
    let outsider = SecretKey::generate();
    let key_file = outsider_dir.join("node.key");
    outsider.write_file(&key_file).unwrap();
    let address = cairn_daemon::demo::free_udp_addresses(1).unwrap()[0];
    let socket = outsider_dir.join("cairnd.sock");
    let config = outsider_dir.join("cairnd.toml");
    std::fs::write(
        &config,
        format!(
            "key_file = {:?}\ngenesis_file = {:?}\nlisten = \"{address}\"\ndata_dir = {:?}\nsocket = {:?}\n\
             new_cluster = true\n\n[[peers]]\nname = {:?}\naddress = \"{}\"\n",
            key_file,
            c.dir().join("genesis.toml"),
            outsider_dir.join("data"),
            socket,
            c.nodes[0].name,
            c.nodes[0].address,
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(common::cairnd())
        .args(["run", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, DEADLINE).expect("the outsider's cairnd did not exit");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is not a member of the genesis"), "{stderr}");
    assert!(stderr.contains(&outsider.public().to_string()), "{stderr}");
    assert!(!socket.exists(), "the outsider opened its API socket");

    // A raw QUIC client with the outsider's key never gets the server's hello.
    let server = (0..3).max_by_key(|&i| c.status(i)["key"].as_str().unwrap().to_owned()).unwrap();
    let status = c.status(server);
    let server_key: PublicKey = status["key"].as_str().unwrap().parse().unwrap();
    let mut cluster_id = [0u8; 32];
    hex::decode_to_slice(status["cluster_id"].as_str().unwrap(), &mut cluster_id).unwrap();
    let address = c.nodes[server].address;

    // Control: a member's key (smaller than the server's, so it may dial) gets the hello.
    let member = (0..3)
        .map(|i| SecretKey::read_file(&c.nodes[i].key_file).unwrap())
        .min_by_key(SecretKey::public)
        .unwrap();
    assert!(member.public() < server_key);
    let got_hello = c.block_on(raw_hello(&tls::Identity::new(&member), &server_key, address, &cluster_id));
    assert!(got_hello.is_ok(), "a member was not admitted: {got_hello:?}");

    let refused = c.block_on(raw_hello(&tls::Identity::new(&outsider), &server_key, address, &cluster_id));
    let error = refused.expect_err("a non-member got the server's hello");
    // QUIC carries TLS alerts as transport error codes 0x100 to 0x1ff.
    let is_tls_alert = matches!(
        &error,
        ConnectionError::ConnectionClosed(close) if (0x100..0x200).contains(&u64::from(close.error_code))
    );
    assert!(is_tls_alert, "expected a TLS alert, got {error:?}");

    // The cluster is unharmed.
    c.wait_all_connected();
    c.put(0, "still", "fine");
    c.wait_for("every node reads the write", |c| {
        (0..3).all(|i| c.register_value(i, "still").as_deref() == Some("fine"))
    });
}

/// Dials `address` with `identity`, sends the hello for `cluster_id` and reads the server's
/// hello. Ok if it came; the connection's error if the server closed the connection first.
async fn raw_hello(
    identity: &tls::Identity,
    server: &PublicKey,
    address: std::net::SocketAddr,
    cluster_id: &[u8; 32],
) -> Result<(), ConnectionError> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = tls::client_config(identity, server);
    let connection = endpoint.connect_with(config, address, tls::SERVER_NAME).unwrap().await?;
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|_| ())?;
        let hello = hello(cluster_id);
        let mut frame = (hello.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&hello);
        send.write_all(&frame).await.map_err(|_| ())?;
        let mut answer = vec![0u8; frame.len()];
        recv.read_exact(&mut answer).await.map_err(|_| ())?;
        assert_eq!(answer, frame, "the server's hello");
        Ok::<(), ()>(())
    };
    let exchanged =
        tokio::time::timeout(DEADLINE, exchange).await.expect("the server neither answered nor closed");
    let result = match exchanged {
        Ok(()) => Ok(()),
        Err(()) => Err(tokio::time::timeout(DEADLINE, connection.closed())
            .await
            .expect("the exchange failed but the connection stays open")),
    };
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    result
}

#[test]
fn a_peer_that_keeps_sending_garbage_is_disconnected() {
    let mut c = Cluster::start(3);
    let server = (0..3).max_by_key(|&i| c.status(i)["key"].as_str().unwrap().to_owned()).unwrap();
    let status = c.status(server);
    let server_key: PublicKey = status["key"].as_str().unwrap().parse().unwrap();
    let mut cluster_id = [0u8; 32];
    hex::decode_to_slice(status["cluster_id"].as_str().unwrap(), &mut cluster_id).unwrap();
    let address = c.nodes[server].address;
    // The smallest member dials; stop its node and speak with its key.
    let liar = (0..3).min_by_key(|&i| c.status(i)["key"].as_str().unwrap().to_owned()).unwrap();
    let key = SecretKey::read_file(&c.nodes[liar].key_file).unwrap();
    c.stop(liar);

    let closed = c.block_on(async {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = tls::client_config(&tls::Identity::new(&key), &server_key);
        let connection = endpoint.connect_with(config, address, tls::SERVER_NAME).unwrap().await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        let frame = |payload: &[u8]| {
            let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
            frame.extend_from_slice(payload);
            frame
        };
        send.write_all(&frame(&hello(&cluster_id))).await.unwrap();
        let mut answer = vec![0u8; 4 + 38];
        recv.read_exact(&mut answer).await.unwrap();
        // Far more undecodable messages than the daemon tolerates in its window.
        for i in 0..(cairn_daemon::driver::INVALID_INPUTS_MAX + 50) {
            if send.write_all(&frame(&[0xff, 0xee, (i % 256) as u8])).await.is_err() {
                break;
            }
        }
        tokio::time::timeout(DEADLINE, connection.closed()).await.expect("the daemon kept the connection")
    });
    match closed {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(u64::from(close.error_code), 1, "closed as a protocol violation: {close:?}")
        }
        other => panic!("expected the daemon to close the connection, got {other:?}"),
    }
    let metrics = c.client(server);
    let text = c.block_on(metrics.get_text("/v1/metrics")).unwrap();
    // Counted by the rule broken: three bytes cannot hold a message's 4-byte tag.
    let bad: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("cairn_bad_messages_total{reason=\"truncated\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the bad message counter, by reason:\n{text}"));
    assert!(bad > u64::from(cairn_daemon::driver::INVALID_INPUTS_MAX), "{bad} bad messages counted");
    let log = std::fs::read_to_string(&c.nodes[server].log).unwrap();
    assert!(log.contains("disconnecting it and ignoring it"), "no log line for the disconnect");
    // The daemon keeps serving.
    let other = (0..3).find(|i| *i != server && *i != liar).unwrap();
    c.put(other, "after", "garbage");
    c.wait_for("the server reads the write", |c| {
        c.register_value(server, "after").as_deref() == Some("garbage")
    });
}

#[test]
fn concurrent_writes_each_name_the_event_that_holds_them() {
    let c = Cluster::start(1);
    const WRITERS: usize = 64;
    // Every writer sends at once; the node packs what is queued while a commit is in flight.
    let acks: Vec<(String, serde_json::Value)> = c.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let client = c.client(0);
            tasks.spawn(async move {
                let key = format!("w-{w}");
                let path = format!("/v1/registers/{key}");
                let ack = client.send_json(Method::PUT, &path, &json!({ "value": key })).await;
                (key, ack.unwrap_or_else(|e| panic!("PUT {path}: {e}")))
            });
        }
        tasks.join_all().await
    });
    let mut seq_of = std::collections::BTreeMap::new();
    for (key, ack) in &acks {
        let id = ack["id"].as_str().unwrap_or_else(|| panic!("ack without id: {ack}"));
        // The event the ack names holds this write's op, and one id has one seq.
        let event = c.get(0, &format!("/v1/events/{id}"));
        let holds = event["ops"].as_array().is_some_and(|ops| {
            ops.iter().any(|op| op["op"] == "put" && op["key"] == *key && op["value"] == *key)
        });
        assert!(holds, "the ack of {key} names event {id}, which lacks it: {event}");
        assert_eq!(*seq_of.entry(id.to_owned()).or_insert(ack["seq"].clone()), ack["seq"], "{ack}");
        assert_eq!(event["seq"], ack["seq"], "{event}");
    }
    // The events are the node's whole history: nothing signed without an acknowledged write.
    let n_events = c.status(0)["n_events"].as_u64().unwrap();
    assert_eq!(n_events, seq_of.len() as u64);
    let mut seqs: Vec<u64> = seq_of.values().map(|s| s.as_u64().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=n_events).collect::<Vec<_>>());
    eprintln!("{WRITERS} concurrent writes became {n_events} events");
}

/// A node restarted, cleanly or by `kill -9`, opens its store (the events stay on disk, the
/// document is rebuilt from the log) and has the same document and reconciliation digests.
#[test]
fn a_restart_returns_the_same_digests() {
    let mut c = Cluster::start(3);
    for k in 0..30usize {
        c.put(k % 3, &format!("r{}", k % 7), &k.to_string());
        if k % 5 == 0 {
            c.incr(k % 3, "n", k as i64 - 10);
            c.set_op(k % 3, "add", "s", &format!("e{}", k % 4));
        }
        if k % 9 == 0 {
            c.delete(k % 3, "r2");
            c.set_op(k % 3, "remove", "s", "e0");
        }
    }
    c.wait_converged();
    let before = c.digests(1);
    let events = c.status(1)["n_events"].clone();
    c.stop(1);
    c.spawn(1);
    c.wait_ready(1);
    assert_eq!(c.digests(1), before, "after a clean stop");
    assert_eq!(c.status(1)["n_events"], events);
    c.kill9(1);
    c.spawn(1);
    c.wait_ready(1);
    assert_eq!(c.digests(1), before, "after kill -9");
    // And it goes on: a write after the restarts replicates.
    c.put(1, "after", "restart");
    c.wait_converged();
}

/// Causal contexts on real processes (DESIGN "the document's client causal contexts"): two
/// clients that read the same value on one node and both write keep both writes as siblings
/// on every node; a remove made with a context read before a concurrent add leaves that add,
/// on every node, after sync; a context that is not one is refused.
#[test]
fn clients_that_read_before_they_write_never_lose_each_others_writes() {
    let c = Cluster::start(3);
    let contexts_path = "/v1/registers/doc";

    // Node 1 writes the value both clients then read on node 0.
    c.put(1, "doc", "v0");
    c.wait_for("node 0 reads v0", |c| c.register_value(0, "doc").as_deref() == Some("v0"));
    let read = c.register(0, "doc");
    let context = read["context"].as_str().expect("a read gives its context").to_owned();
    for client in ["client 1", "client 2"] {
        c.send(0, Method::PUT, contexts_path, &json!({ "value": client, "context": context }))
            .unwrap_or_else(|e| panic!("PUT with a context: {e}"));
    }
    let values = |c: &Cluster, i: usize| -> Vec<String> {
        let register = c.register(i, "doc");
        let mut values: Vec<String> = register["siblings"]
            .as_array()
            .expect("siblings")
            .iter()
            .map(|s| s["value"].as_str().expect("text").to_owned())
            .collect();
        values.sort();
        values
    };
    c.wait_for("every node holds both clients' writes as siblings", |c| {
        (0..3).all(|i| values(c, i) == ["client 1", "client 2"])
    });
    // Without a context the second write would have superseded the first, which node 0 had.
    c.put(0, "blind", "first");
    c.put(0, "blind", "second");
    assert_eq!(c.register(0, "blind")["siblings"].as_array().map(Vec::len), Some(1));

    // A client that read both resolves them, on another node.
    c.wait_converged();
    let both = c.register(2, "doc")["context"].as_str().expect("context").to_owned();
    c.send(2, Method::PUT, contexts_path, &json!({ "value": "merged", "context": both })).expect("merge");
    c.wait_for("every node has the merged value alone", |c| (0..3).all(|i| values(c, i) == ["merged"]));

    // Sets: node 1 adds x; a client reads the set on node 0 (x with its context); node 2 adds
    // x again, and node 0 receives it; then the client removes x with what it read.
    c.set_op(1, "add", "team", "x");
    c.wait_for("node 0 sees x", |c| c.set_members(0, "team") == ["x"]);
    let member_context = |c: &Cluster, i: usize| -> String {
        let set = c.get(i, "/v1/sets/team");
        set["members"][0]["context"].as_str().expect("a member's context").to_owned()
    };
    let stale = member_context(&c, 0);
    c.set_op(2, "add", "team", "x");
    c.wait_for("node 0 holds node 2's add of x too", |c| member_context(c, 0) != stale);
    c.send(0, Method::POST, "/v1/sets/team/remove", &json!({ "element": "x", "context": stale }))
        .expect("a remove with a stale context");
    c.wait_converged();
    for i in 0..3 {
        assert_eq!(c.set_members(i, "team"), ["x"], "node {i}: the concurrent add stays");
    }
    // The context that names both adds removes x everywhere.
    let fresh = member_context(&c, 0);
    c.send(0, Method::POST, "/v1/sets/team/remove", &json!({ "element": "x", "context": fresh }))
        .expect("a remove with a fresh context");
    c.wait_for("x is gone everywhere", |c| (0..3).all(|i| c.set_members(i, "team").is_empty()));

    // What is not a context is refused, and nothing is written.
    let n_events = c.status(0)["n_events"].clone();
    for (bad, why) in [("not base64!", "base64"), ("Ag==", "version"), ("AQID", "32 bytes")] {
        match c.send(0, Method::PUT, contexts_path, &json!({ "value": "v", "context": bad })) {
            Err(ClientError::Http { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "bad_context"), "{bad} ({why})")
            }
            other => panic!("{bad} ({why}) was not refused: {other:?}"),
        }
    }
    // A well-formed context naming an event this node has not received is refused with 409.
    let mut named = vec![1u8];
    named.extend([0x70; 32]);
    let unknown_context = BASE64.encode(&named);
    match c.send(0, Method::PUT, contexts_path, &json!({ "value": "v", "context": unknown_context })) {
        Err(ClientError::Http { status, code, message }) => {
            assert_eq!((status, code.as_str()), (StatusCode::CONFLICT, "unknown_context"), "{message}");
            assert!(message.contains("has not received"), "{message}");
        }
        other => panic!("a context naming an unknown event was not refused: {other:?}"),
    }
    assert_eq!(c.status(0)["n_events"], n_events, "nothing was written");
}
