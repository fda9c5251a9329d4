//! Every `cairn-adversary` scenario against a real cluster: three `cairnd` processes on loopback
//! and the adversary as the fourth genesis member, over QUIC with mutual TLS. After each attack
//! the test asserts:
//! - the honest nodes converge: equal document digests, sync digests and event counts;
//! - every invalid event was rejected with the expected reason, counted per peer and in the
//!   metrics, and no honest node holds it;
//! - honest writes kept being acknowledged during the attack (no gap over [`WRITE_GAP_MAX`]),
//!   and each is on every node afterwards;
//! - each honest node's peak resident memory stayed under [`RSS_MAX_KIB`] (the configured
//!   causal-buffer bound plus the node's own working set);
//! - after an equivocation, every honest node holds the evidence and refuses the adversary;
//!   after a double approval, every honest node shows it and refuses the adversary; otherwise
//!   nobody holds evidence and nobody is refused.
//!
//! The scenarios run one at a time (a lock): each brings its own cluster, and several at once
//! on two cores would turn timing-sensitive ones (slowloris, floods) into a test of the
//! machine.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_daemon::client::{ClientError, path_segment};
use cairn_tests::adversary::cluster::{ADVERSARY_NAME, AttackCluster, FAST_TIMING};
use cairn_tests::adversary::{Adversary, scenarios};
use hyper::Method;
use serde_json::{Value, json};

/// Causal-buffer bounds of the honest nodes in these tests.
const LIMITS: &str = "[limits]\nbuffer_bytes_per_peer_max = 8388608\nbuffer_bytes_total_max = 33554432\n";
/// The peak resident memory an honest node may reach: the buffer bound (32 MiB) plus 128 MiB
/// for the node itself (runtime, QUIC, the store's cache, messages in flight).
const RSS_MAX_KIB: u64 = (32 + 128) * 1024;
/// The longest an honest write may wait for its acknowledgement while the attack runs.
const WRITE_GAP_MAX: Duration = Duration::from_secs(5);
/// Pause between the honest writer's writes: a steady trickle, so each can be checked later.
const WRITE_PAUSE: Duration = Duration::from_millis(25);
/// How long convergence and the counters may take after the attack.
const SETTLE: Duration = Duration::from_secs(60);
/// How long the cluster may take to start and connect.
const START: Duration = Duration::from_secs(30);

/// One scenario at a time (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

/// Acknowledged writes: (key, when acknowledged).
type Acks = Arc<Mutex<Vec<(String, Instant)>>>;

/// Writes `honest/N` on node `i` every [`WRITE_PAUSE`] until `stop`; records the acks.
fn spawn_writer(
    cluster: &AttackCluster,
    i: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Acks, tokio::task::JoinHandle<()>) {
    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let record = acks.clone();
    let client = cluster.client(i);
    let task = tokio::spawn(async move {
        for n in 0.. {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let key = format!("honest/{n}");
            let path = format!("/v1/registers/{}", path_segment(&key));
            if client.send_json(Method::PUT, &path, &json!({ "value": key })).await.is_ok() {
                record.lock().unwrap().push((key, Instant::now()));
            }
            tokio::time::sleep(WRITE_PAUSE).await;
        }
    });
    (acks, task)
}

/// `name`'s counter `reason` in a peer's stats (0 when absent).
fn rejected(peer: &Value, reason: &str) -> u64 {
    peer["stats"]["rejected"][reason].as_u64().unwrap_or(0)
}

/// Parses OpenMetrics text into `name{labels}` → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
        .collect()
}

/// The three nodes' (digest, sync digest, event count), if every node answers.
async fn states(cluster: &AttackCluster) -> Option<Vec<(Value, Value, Value)>> {
    let mut states = Vec::new();
    for i in 0..cluster.honest.len() {
        let s = cluster.status(i).await.ok()?;
        states.push((s["digest"].clone(), s["sync_digest"].clone(), s["n_events"].clone()));
    }
    Some(states)
}

/// Runs scenario `name` against a fresh cluster and checks everything the module docs list.
/// `setup` may edit the honest nodes' configs before they start.
fn attack(name: &str, orphans: u64, setup: impl FnOnce(&AttackCluster)) {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut cluster = AttackCluster::write(3, &format!("{FAST_TIMING}{LIMITS}")).expect("write the cluster");
    setup(&cluster);
    cluster.start().expect("start the honest nodes");
    runtime.block_on(async {
        let cluster = &mut cluster;
        cluster.wait_connected(START).await.expect("the honest nodes connect");
        // Some history to attack on top of, from every honest node.
        for i in 0..3 {
            for k in 0..3 {
                let path = format!("/v1/registers/seed-{i}-{k}");
                cluster.client(i).send_json(Method::PUT, &path, &json!({ "value": "seed" })).await.unwrap();
            }
        }
        cluster
            .wait_for("the seed writes reach every node", SETTLE, || async {
                states(cluster).await.is_some_and(|s| s.iter().all(|x| x.2 == json!(9)))
            })
            .await
            .unwrap();

        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (acks, writer) = spawn_writer(cluster, 0, stop.clone());
        let attack_started = Instant::now();
        let mut adversary = Adversary::new(
            cairn_crypto::SecretKey::from_seed(&cluster.mallory.seed_bytes()),
            cluster.genesis.clone(),
            cluster.targets(),
        );
        let outcome = scenarios::run(name, &mut adversary, orphans).await;
        let attack_ended = Instant::now();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.await.unwrap();
        if let Err(error) = outcome {
            panic!("scenario {name} failed: {error:#}\n{}", adversary.log.join("\n"));
        }
        for i in 0..3 {
            assert!(cluster.is_alive(i), "{} died during {name}", cluster.honest[i].name);
        }

        // Honest writes kept being acknowledged.
        let acks = acks.lock().unwrap().clone();
        let mut last = attack_started;
        for (_, at) in acks.iter().filter(|(_, at)| *at <= attack_ended) {
            assert!(*at - last <= WRITE_GAP_MAX, "an honest write waited {:?} during {name}", *at - last);
            last = *at;
        }
        assert!(
            attack_ended - last <= WRITE_GAP_MAX,
            "no honest write was acknowledged in the last {:?} of {name}",
            attack_ended - last
        );
        assert!(!acks.is_empty(), "no honest write was acknowledged during {name}");
        eprintln!(
            "{name}: attack took {:.1} s; {} honest writes acknowledged meanwhile",
            (attack_ended - attack_started).as_secs_f64(),
            acks.len()
        );

        // Convergence.
        let converged = Instant::now();
        cluster
            .wait_for("the honest nodes converge", SETTLE, || async {
                states(cluster).await.is_some_and(|s| s.windows(2).all(|w| w[0] == w[1]))
            })
            .await
            .unwrap_or_else(|e| panic!("{e}: {:?}", runtime_states(cluster)));
        eprintln!("{name}: converged {:.2} s after the attack", converged.elapsed().as_secs_f64());
        for i in 0..3 {
            for (key, _) in &acks {
                let register = cluster.register(i, key).await.unwrap();
                assert_eq!(
                    register["value"],
                    json!(key),
                    "{} lacks acknowledged write {key}",
                    cluster.honest[i].name
                );
            }
        }

        let expect = adversary.expect.clone();
        // Rejections: exact per peer, and in the metrics.
        for (node, reason, n) in &expect.rejected {
            let i = cluster.honest.iter().position(|h| &h.name == node).unwrap();
            cluster
                .wait_for(
                    &format!("{node} counts {n} {reason} rejections from {ADVERSARY_NAME}"),
                    SETTLE,
                    || async {
                        cluster.peer(i, ADVERSARY_NAME).await.is_ok_and(|p| rejected(&p, reason) >= *n)
                    },
                )
                .await
                .unwrap();
            let peer = cluster.peer(i, ADVERSARY_NAME).await.unwrap();
            assert_eq!(rejected(&peer, reason), *n, "{node}'s {reason} rejections: {peer}");
            let metrics = parse_metrics(&cluster.client(i).get_text("/v1/metrics").await.unwrap());
            let counted = metrics
                .get(&format!("cairn_events_rejected_total{{reason=\"{reason}\"}}"))
                .copied()
                .unwrap_or(0.0);
            assert!(
                counted >= *n as f64,
                "{node}'s metrics count {counted} {reason} rejections, expected {n}"
            );
        }
        let mut expected_total: BTreeMap<&str, u64> = BTreeMap::new();
        for (node, _, n) in &expect.rejected {
            *expected_total.entry(node.as_str()).or_default() += n;
        }
        for i in 0..3 {
            let peer = cluster.peer(i, ADVERSARY_NAME).await.unwrap();
            let total: u64 = peer["stats"]["rejected"]
                .as_object()
                .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
            let want = expected_total.get(cluster.honest[i].name.as_str()).copied().unwrap_or(0);
            assert_eq!(total, want, "{} rejected other events than expected: {peer}", cluster.honest[i].name);
        }
        for (node, n) in &expect.bad_messages {
            let i = cluster.honest.iter().position(|h| &h.name == node).unwrap();
            cluster
                .wait_for(&format!("{node} counts {n} bad messages"), SETTLE, || async {
                    cluster
                        .peer(i, ADVERSARY_NAME)
                        .await
                        .is_ok_and(|p| p["stats"]["bad_messages"].as_u64() >= Some(*n))
                })
                .await
                .unwrap();
        }
        // Values that must stand as siblings on every node.
        for (key, value) in &expect.kept {
            for i in 0..3 {
                let register = cluster.register(i, key).await.unwrap();
                let held = register["siblings"]
                    .as_array()
                    .is_some_and(|siblings| siblings.iter().any(|s| s["value"] == value.as_str()));
                assert!(
                    held,
                    "{} lacks {value:?} among the siblings of {key}: {register}",
                    cluster.honest[i].name
                );
            }
        }
        // Nothing invalid accepted anywhere.
        for i in 0..3 {
            for id in &expect.forbidden {
                match cluster.client(i).get_json(&format!("/v1/events/{}", hex::encode(id.0))).await {
                    Err(ClientError::Http { status, .. }) if status.as_u16() == 404 => {}
                    other => panic!("{} holds forbidden event {id}: {other:?}", cluster.honest[i].name),
                }
            }
        }
        if expect.orphans > 0 {
            for i in 0..3 {
                let status = cluster.status(i).await.unwrap();
                let (bytes, bound) =
                    (status["buffer_bytes"].as_u64().unwrap(), status["buffer_bytes_max"].as_u64());
                assert!(
                    bound.is_none_or(|b| bytes <= b),
                    "{}'s buffer holds {bytes} bytes: {status}",
                    cluster.honest[i].name
                );
                if !expect.equivocated && expect.rejected.is_empty() {
                    let events = cluster
                        .client(i)
                        .get_json(&format!("/v1/events?author={ADVERSARY_NAME}"))
                        .await
                        .unwrap();
                    assert_eq!(events["events"], json!([]), "{} accepted an orphan", cluster.honest[i].name);
                }
            }
        }
        // Evidence and refusal exactly when the adversary equivocated.
        for i in 0..3 {
            let node = &cluster.honest[i].name;
            if expect.equivocated {
                cluster
                    .wait_for(
                        &format!("{node} holds evidence against {ADVERSARY_NAME} and refuses it"),
                        SETTLE,
                        || async {
                            let evidence = cluster.client(i).get_json("/v1/evidence").await;
                            let peer = cluster.peer(i, ADVERSARY_NAME).await;
                            evidence.is_ok_and(|e| {
                                e["evidence"]
                                    .as_array()
                                    .is_some_and(|l| l.iter().any(|x| x["author_name"] == ADVERSARY_NAME))
                            }) && peer.is_ok_and(|p| p["state"] == "refused")
                        },
                    )
                    .await
                    .unwrap();
            } else {
                let evidence = cluster.client(i).get_json("/v1/evidence").await.unwrap();
                assert_eq!(evidence["evidence"], json!([]), "{node} holds evidence after {name}");
                if expect.double_approval {
                    // Handled like an equivocation: refused for good.
                    cluster
                        .wait_for(
                            &format!("{node} refuses {ADVERSARY_NAME} as a double approver"),
                            SETTLE,
                            || async {
                                cluster.peer(i, ADVERSARY_NAME).await.is_ok_and(|p| p["state"] == "refused")
                            },
                        )
                        .await
                        .unwrap();
                } else {
                    let peer = cluster.peer(i, ADVERSARY_NAME).await.unwrap();
                    assert_ne!(peer["state"], "refused", "{node} refuses {ADVERSARY_NAME} after {name}");
                }
            }
        }
        // Double approvals: shown everywhere, and nothing took effect.
        for i in 0..3 {
            let node = &cluster.honest[i].name;
            if expect.double_approval {
                let mallory = cluster.mallory.public().to_string();
                cluster
                    .wait_for(&format!("{node} shows {ADVERSARY_NAME}'s double approval"), SETTLE, || async {
                        let members = cluster.client(i).get_json("/v1/members").await;
                        let evidence = cluster.client(i).get_json("/v1/evidence").await;
                        members.is_ok_and(|m| {
                            m["double_approvals"]
                                .as_array()
                                .is_some_and(|l| l.iter().any(|d| d.as_str() == Some(mallory.as_str())))
                        }) && evidence.is_ok_and(|e| {
                            e["double_approvals"].as_array().is_some_and(|l| {
                                l.iter().any(|d| {
                                    d["seat"] == mallory.as_str()
                                        && d["name"] == ADVERSARY_NAME
                                        && d["first"]["change"] != d["second"]["change"]
                                })
                            })
                        })
                    })
                    .await
                    .unwrap();
            }
            let members = cluster.client(i).get_json("/v1/members").await.unwrap();
            assert_eq!(members["n_changes"], 0, "{node}: a change took effect during {name}: {members}");
            assert_eq!(members["seats"].as_array().map(Vec::len), Some(4), "{node}: {members}");
        }
        if expect.double_approval {
            // The double approver's second vote counts for nothing: two honest approvals of that
            // change make two votes of the three needed, where counting it would make three.
            let evidence = cluster.client(0).get_json("/v1/evidence").await.unwrap();
            let second = evidence["double_approvals"][0]["second"]["change"].as_str().unwrap().to_owned();
            for i in 0..2 {
                let path = format!("/v1/members/changes/{second}/approve");
                cluster.client(i).send_json(Method::POST, &path, &json!(null)).await.unwrap();
            }
            for i in 0..3 {
                let node = &cluster.honest[i].name;
                cluster
                    .wait_for(&format!("{node} counts two votes for the second change"), SETTLE, || async {
                        cluster.client(i).get_json("/v1/members").await.is_ok_and(|m| {
                            m["pending"].as_array().is_some_and(|p| {
                                p.iter().any(|c| c["change"] == second.as_str() && c["votes"] == 2)
                            })
                        })
                    })
                    .await
                    .unwrap();
                let members = cluster.client(i).get_json("/v1/members").await.unwrap();
                assert_eq!(members["n_changes"], 0, "{node}: the double vote counted: {members}");
            }
        }
        // Memory.
        for i in 0..3 {
            let peak = cluster.peak_rss_kib(i).expect("VmHWM of a live node");
            eprintln!("{name}: {} peak RSS {} MiB", cluster.honest[i].name, peak / 1024);
            assert!(
                peak <= RSS_MAX_KIB,
                "{}'s peak RSS {} KiB is over {RSS_MAX_KIB} KiB",
                cluster.honest[i].name,
                peak
            );
        }
    });
}

/// For a failing convergence: what each node reports.
fn runtime_states(cluster: &AttackCluster) -> Vec<String> {
    cluster.honest.iter().map(|h| h.log.display().to_string()).collect()
}

fn run(name: &str) {
    attack(name, scenarios::ORPHANS_DEFAULT, |_| {});
}

#[test]
fn s01_forged_signature() {
    run("forged-signature");
}
#[test]
fn s02_author_swapped() {
    run("author-swapped");
}
#[test]
fn s03_wrong_ops_hash() {
    run("wrong-ops-hash");
}
#[test]
fn s04_mutated_header() {
    run("mutated-header");
}
#[test]
fn s05_non_canonical() {
    run("non-canonical");
}
#[test]
fn s06_edge_signatures() {
    run("edge-signatures");
}
#[test]
fn s28_forged_context() {
    run("forged-context");
}
#[test]
fn s07_seq_gap() {
    run("seq-gap");
}
#[test]
fn s08_equivocation() {
    run("equivocation");
}
#[test]
fn s09_fork_branches() {
    run("fork-branches");
}
#[test]
fn s10_wrong_lamport() {
    run("wrong-lamport");
}
#[test]
fn s11_bad_deps() {
    run("bad-deps");
}
#[test]
fn s12_orphan_flood() {
    run("orphan-flood");
}
#[test]
fn s13_lying_length() {
    run("lying-length");
}
#[test]
fn s14_oversize_message() {
    run("oversize-message");
}
#[test]
fn s15_truncated_and_garbage() {
    run("truncated-and-garbage");
}
#[test]
fn s16_forged_evidence() {
    run("forged-evidence");
}
#[test]
fn s17_replay_flood() {
    run("replay-flood");
}
#[test]
fn s18_withholding_relay() {
    // Alice and carol are not peers: what one writes reaches the other through bob, or
    // through the adversary, which forwards nothing.
    attack("withholding-relay", 0, |cluster| {
        cluster.remove_peer(0, 2).unwrap();
        cluster.remove_peer(2, 0).unwrap();
    });
}
#[test]
fn s19_slowloris() {
    run("slowloris");
}
#[test]
fn s20_connection_flood() {
    run("connection-flood");
}
#[test]
fn s21_wrong_cluster() {
    run("wrong-cluster");
}
#[test]
fn s22_non_member() {
    run("non-member");
}
#[test]
fn s23_impostor() {
    run("impostor");
}
#[test]
fn s24_double_approval() {
    run("double-approval");
}
#[test]
fn s25_unapproved_add() {
    run("unapproved-add");
}
#[test]
fn s26_old_key_after_rotation() {
    run("old-key-after-rotation");
}

/// Values of the abuser's flood: large, each under its own key.
const ABUSE_VALUE_BYTES: usize = 4096;
/// Events of the abuser's flood before the removal is proposed.
const ABUSE_EVENTS: u64 = 400;
/// Events of the abuser's flood while the removal gathers votes (past its cut).
const ABUSE_EVENTS_LATE: u64 = 100;

/// The abuser's writes `abuse/N` for N in `range`, each a valid event of 4 KiB, signed on top
/// of the one before; records each key's seq.
fn abuse(
    adv: &mut Adversary,
    range: std::ops::Range<u64>,
    seq_of_key: &mut BTreeMap<String, u64>,
) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    for n in range {
        let key = format!("abuse/{n}");
        let ops = vec![cairn_protocol::Op::Put {
            key: key.clone().into_bytes(),
            value: vec![b'x'; ABUSE_VALUE_BYTES],
        }];
        let event = adv.next_event(ops);
        adv.keep(&event);
        seq_of_key.insert(key, event.header.seq);
        events.push(event.encode());
    }
    events
}

/// Waits until alice's per-author figures count `n` events of the abuser.
async fn wait_abuser_events(cluster: &AttackCluster, n: u64) {
    cluster
        .wait_for(&format!("alice counts {n} events of the abuser"), SETTLE, || async {
            cluster.status(0).await.is_ok_and(|s| {
                s["authors"].as_array().is_some_and(|authors| {
                    authors.iter().any(|a| a["name"] == ADVERSARY_NAME && a["events"].as_u64() >= Some(n))
                })
            })
        })
        .await
        .unwrap();
}

/// Removing an abuser (the point 7), and a removed member that keeps connecting and
/// pushing events (point 6): a member floods valid writes (large values, distinct keys); the
/// per-author figures show it; the three honest members remove it by threshold with a cut (the
/// removal says it needs `force` while the abuser is connected); its connection is closed and
/// every later one refused, saying why; and nothing it signed past the cut is applied anywhere.
#[test]
fn s27_an_abuser_is_removed_by_threshold_with_a_cut() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut cluster = AttackCluster::write(3, &format!("{FAST_TIMING}{LIMITS}")).expect("write the cluster");
    cluster.start().expect("start the honest nodes");
    runtime.block_on(async {
        let cluster = &mut cluster;
        cluster.wait_connected(START).await.expect("the honest nodes connect");
        let mut adv = Adversary::new(
            cairn_crypto::SecretKey::from_seed(&cluster.mallory.seed_bytes()),
            cluster.genesis.clone(),
            cluster.targets(),
        );
        let mallory = adv.key.public().to_string();
        let mut link = scenarios::learned_link(&mut adv, 0).await.expect("the abuser links to alice");

        // The flood: valid events, large values, distinct keys.
        let mut seq_of_key = BTreeMap::new();
        let events = abuse(&mut adv, 0..ABUSE_EVENTS, &mut seq_of_key);
        scenarios::send_events(&mut link, events).await.expect("send the flood");

        // The per-author figures show who fills the disks.
        wait_abuser_events(cluster, ABUSE_EVENTS).await;
        let metrics = parse_metrics(&cluster.client(0).get_text("/v1/metrics").await.unwrap());
        let bytes = metrics.get(&format!("cairn_author_bytes_total{{author=\"{ADVERSARY_NAME}\"}}")).copied();
        assert!(
            bytes.is_some_and(|b| b >= (ABUSE_EVENTS as usize * ABUSE_VALUE_BYTES) as f64),
            "the metrics do not show the abuser's bytes: {bytes:?}"
        );

        // The removal: refused while the abuser is connected unless forced.
        let remove = json!({"action": "remove", "seat": ADVERSARY_NAME});
        match cluster.client(0).send_json(Method::POST, "/v1/members/changes", &remove).await {
            Err(ClientError::Http { status, message, .. }) => {
                assert_eq!(status.as_u16(), 409, "{message}");
                assert!(message.contains("--force"), "{message}");
            }
            other => panic!("a removal of a connected member was not refused: {other:?}"),
        }
        let forced = json!({"action": "remove", "seat": ADVERSARY_NAME, "force": true});
        let ack = cluster.client(0).send_json(Method::POST, "/v1/members/changes", &forced).await.unwrap();
        let change = ack["change"].as_str().unwrap().to_owned();
        // The abuser keeps writing while the removal gathers votes: these are past the cut.
        let events = abuse(&mut adv, ABUSE_EVENTS..ABUSE_EVENTS + ABUSE_EVENTS_LATE, &mut seq_of_key);
        scenarios::send_events(&mut link, events).await.expect("send the flood's second wave");
        wait_abuser_events(cluster, ABUSE_EVENTS + ABUSE_EVENTS_LATE).await;
        let mut cut = None;
        for i in 1..3 {
            cluster
                .wait_for(&format!("{} holds the proposal", cluster.honest[i].name), SETTLE, || async {
                    cluster.client(i).get_json("/v1/members").await.is_ok_and(|m| {
                        m["pending"]
                            .as_array()
                            .is_some_and(|p| p.iter().any(|c| c["change"] == change.as_str()))
                    })
                })
                .await
                .unwrap();
            let members = cluster.client(i).get_json("/v1/members").await.unwrap();
            let pending = members["pending"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["change"] == change.as_str())
                .unwrap()
                .clone();
            cut = pending["cut"].as_u64();
            // An approval cuts as much as the proposal: the same check asks for force.
            let path = format!("/v1/members/changes/{change}/approve");
            match cluster.client(i).send_json(Method::POST, &path, &json!(null)).await {
                Err(ClientError::Http { status, message, .. }) => {
                    assert_eq!(status.as_u16(), 409, "{message}");
                    assert!(message.contains("--force"), "{message}");
                }
                other => panic!("an approval of a connected member's removal was not refused: {other:?}"),
            }
            let path = format!("/v1/members/changes/{change}/approve?force=true");
            cluster.client(i).send_json(Method::POST, &path, &json!(null)).await.unwrap();
        }
        let cut = cut.expect("the removal's cut");
        for i in 0..3 {
            cluster
                .wait_for(&format!("{} has three seats", cluster.honest[i].name), SETTLE, || async {
                    cluster
                        .client(i)
                        .get_json("/v1/members")
                        .await
                        .is_ok_and(|m| m["seats"].as_array().map(Vec::len) == Some(3))
                })
                .await
                .unwrap();
        }

        // Its connection is closed, saying why, and it is refused from then on.
        let closed = link.closed(SETTLE).await.expect("alice closes the abuser's connection");
        assert_eq!(
            cairn_tests::adversary::wire::close_code(&closed),
            Some(u64::from(cairn_daemon::transport::CloseCode::Removed.code())),
            "{closed:?}"
        );
        // It keeps signing and connecting: every node refuses it in the TLS handshake.
        let late = adv
            .next_event(vec![cairn_protocol::Op::Put { key: b"abuse/late".to_vec(), value: b"x".to_vec() }]);
        for target in cluster.targets() {
            match cairn_tests::adversary::wire::dial(
                &cairn_daemon::tls::Identity::new(&adv.key),
                &target,
                &adv.cluster_id(),
            )
            .await
            .unwrap()
            {
                cairn_tests::adversary::wire::Dialed::Refused(reason) => {
                    assert!(reason.contains("no longer a member"), "{}: {reason}", target.name)
                }
                cairn_tests::adversary::wire::Dialed::Linked(mut link) => {
                    let _ = scenarios::send_events(&mut link, vec![late.encode()]).await;
                    panic!("{} let the removed member in", target.name);
                }
            }
        }
        let peer = cluster.peer(1, ADVERSARY_NAME).await.unwrap();
        assert_eq!(peer["state"], "out_of_force", "{peer}");

        // Nothing past the cut is applied anywhere; everything up to it is.
        cluster
            .wait_for("the honest nodes converge", SETTLE, || async {
                states(cluster).await.is_some_and(|s| s.windows(2).all(|w| w[0] == w[1]))
            })
            .await
            .unwrap();
        let mut n_cut = 0;
        for (key, seq) in &seq_of_key {
            for i in 0..3 {
                let register = cluster.register(i, key).await.unwrap();
                let applied = !register["value"].is_null() || !register["value_base64"].is_null();
                assert_eq!(
                    applied,
                    *seq <= cut,
                    "{}: {key} (seq {seq}, cut {cut}): {register}",
                    cluster.honest[i].name
                );
            }
            n_cut += u64::from(*seq > cut);
        }
        assert_eq!(n_cut, ABUSE_EVENTS_LATE, "the flood's second wave is past the cut");
        let late_id = hex::encode(late.id().0);
        for i in 0..3 {
            assert!(cluster.client(i).get_json(&format!("/v1/events/{late_id}")).await.is_err());
        }
        eprintln!(
            "abuser: cut at seq {cut}; {n_cut} of its {} flood events were past it; mallory {mallory}",
            ABUSE_EVENTS + ABUSE_EVENTS_LATE
        );
    });
}
