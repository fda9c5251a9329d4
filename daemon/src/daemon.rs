//! Start-up, the run loop's surroundings and shutdown of `cairnd`: load and check the config,
//! the key and the genesis; open and restore the store; bind the transport and the API; tell
//! systemd; run the service until SIGTERM or SIGINT; drain and stop.

use std::path::Path;

use anyhow::{Context as _, bail};
use cairn_crypto::{PublicKey, SecretKey};
use cairn_protocol::{Evidence, Genesis, Node, StoredEvent, codec};
use sd_notify::NotifyState;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::archive::StoreArchive;
use crate::config::{Config, Peer, load_genesis};
use crate::driver::{Driver, DriverParts, TRANSPORT_EVENTS_MAX};
use crate::store::{PageCheck, Store};

/// Events read per page when the document is rebuilt from the store at start.
const REPLAY_PAGE_EVENTS: usize = 4_096;
/// How much longer than its own drain bound the daemon waits for the web console to stop,
/// once the service has stopped, before it aborts it.
const CONSOLE_STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);
use crate::transport::{Transport, TransportConfig};

/// Everything `check-config` verifies, and `run` needs before it opens anything.
pub struct Checked {
    /// The config.
    pub config: Config,
    /// The node's key.
    pub key: SecretKey,
    /// The genesis.
    pub genesis: Genesis,
    /// The peers to dial.
    pub peers: Vec<Peer>,
}

/// Loads the config and the files it names, and checks that they fit together.
pub fn check(config_path: &Path) -> anyhow::Result<Checked> {
    let config = Config::load(config_path)?;
    let key = SecretKey::read_file(&config.key_file).context("key_file")?;
    let genesis = load_genesis(&config.genesis_file)?;
    let me = key.public();
    let new_store = !config.store_path().try_exists().unwrap_or(false);
    if genesis.member_idx(&me).is_none() && ((config.new_cluster && new_store) || config.peers.is_empty()) {
        let why = if config.new_cluster && new_store {
            "but the config says `new_cluster = true`: a new cluster's members are its genesis's"
        } else {
            "and no peer is configured to learn the membership from"
        };
        bail!(
            "this node's key {me} (from {}) is not a member of the genesis {}, {why}. A host that joins a running \
             cluster (added by `cairnctl member add` on a member, or a replacing key) needs at least one peer and \
             no `new_cluster`. A changed genesis is a new cluster (its id is the hash of the genesis): the old \
             cluster's stores are refused under it",
            config.key_file.display(),
            config.genesis_file.display()
        );
    }
    let peers = config
        .resolve_peers(&genesis, &me)
        .with_context(|| format!("config file {}", config_path.display()))?;
    Ok(Checked { config, key, genesis, peers })
}

/// Finishes or undoes a key rotation a stop interrupted (`cairnd rotate-key`): the new key waits
/// in `<key_file>.next` until the store names it. If the store names it, the rotation was stored
/// and the new key replaces the key file; if the store names the key file's key, it was not, and
/// the new key is thrown away.
pub fn finish_key_rotation(config: &Config) -> anyhow::Result<()> {
    let next_file = crate::driver::next_key_file(&config.key_file);
    if !next_file.try_exists().unwrap_or(false) {
        return Ok(());
    }
    let next = SecretKey::read_file(&next_file).context("the key rotation's new key")?;
    let stored = crate::store::stored_node_key(&config.store_path()).with_context(|| {
        format!("cannot read the node key of the store {}", config.store_path().display())
    })?;
    let current = SecretKey::read_file(&config.key_file).context("key_file")?;
    if stored == Some(next.public().0) {
        std::fs::rename(&next_file, &config.key_file).with_context(|| {
            format!("cannot move {} over {}", next_file.display(), config.key_file.display())
        })?;
        warn!(key = %next.public(), "finished a key rotation that a stop interrupted: the new key replaced the key file");
    } else if stored == Some(current.public().0) {
        std::fs::remove_file(&next_file).with_context(|| format!("cannot remove {}", next_file.display()))?;
        warn!(file = %next_file.display(), "a key rotation was not stored before the stop: its new key was thrown away");
    } else {
        // No store, or one of another key: nothing says which key is the node's now, and
        // throwing either away could lose the seat. The operator decides.
        bail!(
            "{} holds the new key of a key rotation, but the store {} {}: cairnd cannot tell whether the rotation \
             was stored. If the store is on a volume that is not mounted, mount it and start again; otherwise keep \
             both key files and see deploy/GUIDE.md (\"Rotate a host's key\")",
            next_file.display(),
            config.store_path().display(),
            if stored.is_some() { "names neither key" } else { "is missing" }
        );
    }
    Ok(())
}

/// Events read back from the log (`reads::log_page`, `reads::log_at`) as the node takes them.
/// Those reads checked every event's bytes, so none is dropped here in practice.
fn stored_events(page: Vec<(u64, cairn_protocol::EventMeta, Vec<u8>)>) -> Vec<StoredEvent> {
    page.into_iter()
        .filter_map(|(_, meta, bytes)| {
            let id = codec::decode_event(&bytes).ok()?.id();
            Some(StoredEvent { id, meta, bytes: bytes.into() })
        })
        .collect()
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(checked: Checked) -> anyhow::Result<()> {
    let Checked { config, key, genesis, peers } = checked;
    let me = key.public();
    let my_name = genesis.member_idx(&me).map_or_else(|| me.short(), |i| genesis.members()[i].name.clone());
    if genesis.member_idx(&me).is_none() {
        info!(
            key = %me,
            "this node's key is not a genesis member: it joins through a membership change (PROTOCOL.md §17), and \
             signs once a change in force that it has received makes its key a seat's (until then writes are refused)"
        );
    }
    let cluster_id = genesis.cluster_id();

    // The store first: a store of another cluster or key, or a corrupt one, stops us here.
    let store_path = config.store_path();
    let members = crate::store::member_keys(&genesis);
    let opening = std::time::Instant::now();
    let pages = if config.verify_store_on_start { PageCheck::Every } else { PageCheck::AfterCrash };
    let (mut store, loaded) = Store::open_for_start(
        &store_path,
        cluster_id,
        me.0,
        config.new_store_own_history(&genesis),
        &members,
        pages,
    )
    .with_context(|| format!("cannot use the store {}", store_path.display()))?;
    let own_history = loaded.own_history;
    let node_config = config.node_config(&genesis, own_history);
    let own_seq_peers_needed = node_config.own_seq_peers_needed;
    let verify_threads = node_config.adapter.verify_threads;
    // The events stay on disk: the node reads them back through its archive.
    let db = store.shared_db();
    let db_to_close = db.clone();
    let (archive, archive_handle) = StoreArchive::new(db.clone(), loaded.n_events, loaded.n_bytes);
    // The document as persisted with the log; a start replays only the events it has not
    // applied (the last commit's own events, or the whole log once after an upgrade).
    let store_open_ms = opening.elapsed().as_millis();
    // The roster: the genesis members, then the keys membership ops named (PROTOCOL.md §17), as
    // the store indexes them.
    let corrupt = |error: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "the store at {} is corrupt ({error}); it is refused, not used. Run `cairnd check-store`",
            store_path.display()
        )
    };
    let later: Vec<PublicKey> = loaded.roster_later.iter().map(|key| PublicKey(*key)).collect();
    let roster = cairn_protocol::Roster::with_later(&genesis, &later).map_err(|error| corrupt(&error))?;
    let document = store
        .load_document(roster.keys())
        .with_context(|| format!("cannot use the store {}", store_path.display()))?;
    let mut node = Node::resume(
        genesis.clone(),
        Some(me),
        node_config,
        Box::new(archive),
        roster,
        loaded.chains.clone(),
        document,
    );
    // What the membership ops of the log resolve to, before the tail's replay: the document
    // admits only what the membership does (rule M9).
    let member_events =
        crate::store::reads::log_at(&db, &loaded.member_events).map_err(|error| corrupt(&error))?;
    node.resume_membership(&stored_events(member_events));
    node.track_document();
    let authored = loaded.authors.clone();
    let mut position = loaded.doc_through;
    let mut n_replayed = 0u64;
    loop {
        let page = crate::store::reads::log_page(&db, position, REPLAY_PAGE_EVENTS).map_err(|error| {
            anyhow::anyhow!(
                "the store at {} is corrupt or not a Cairn store ({error}); it is refused, not used. Run `cairnd \
                 check-store` to see what is damaged, then move it away and restart: the node catches up from its \
                 peers and learns its own last seq before it writes again (remove `new_cluster = true` from the \
                 config first if it is still there)",
                store_path.display()
            )
        })?;
        let Some((last, _, _)) = page.last() else { break };
        position = last + 1;
        n_replayed += page.len() as u64;
        let bad = node.replay_document(&stored_events(page));
        if let Some(first) = bad.first() {
            bail!(
                "the store {} holds {} event(s) that no longer read back as they were stored (first: {first}); it was \
                 altered on disk. It is refused, not used: run `cairnd check-store`, then move it away, and the node \
                 catches up from its peers and learns its own last seq before it writes again",
                store_path.display(),
                bad.len(),
            );
        }
        // Persisted page by page: what the replay covered stays bounded, and a crash in the
        // middle of a long replay (after an upgrade) resumes from here.
        let delta = node.take_document_delta().expect("tracking is on");
        match store.persist_document(&delta, position) {
            Ok(()) => archive_handle.committed_covered(&delta.covered),
            // The next commit that finds room persists it, with its own events.
            Err(error @ crate::store::StoreError::NoSpace { .. }) => {
                warn!(%error, "the document replayed at start could not be persisted yet");
                node.requeue_document_delta(delta);
            }
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context(format!("cannot write the document to the store {}", store_path.display())));
            }
        }
    }
    if position != loaded.n_events {
        bail!(
            "the store at {} is corrupt or not a Cairn store (it says it holds {} events, but its log ends at \
             {position}); it is refused, not used. Run `cairnd check-store`, then move it away and restart: the node \
             catches up from its peers (remove `new_cluster = true` from the config first if it is still there)",
            store_path.display(),
            loaded.n_events
        );
    }
    let document_ms = opening.elapsed().as_millis() - store_open_ms;
    if n_replayed > 0 {
        info!(
            events = n_replayed,
            from = loaded.doc_through,
            "replayed the log's tail into the persisted document"
        );
    }
    let n_restored = loaded.n_events;
    for bytes in loaded.evidence {
        let evidence: Evidence = codec::decode_evidence(&bytes)
            .with_context(|| format!("the store {} holds malformed evidence", store_path.display()))?;
        node.restore_evidence(evidence).with_context(|| {
            format!("the store {} holds evidence that does not verify", store_path.display())
        })?;
    }

    let (transport_tx, transport_rx) = mpsc::channel(TRANSPORT_EVENTS_MAX);
    let transport_config = TransportConfig {
        listen: config.listen,
        peers: peers.iter().map(|p| (p.key, p.address)).collect(),
        // The keys in force as the store's membership events resolve them, not the genesis's.
        members: crate::driver::keys_in_force(&node).into_iter().collect(),
        cluster_id,
        peer_queue_messages_max: config.limits.transport_queue_messages_max,
        inbound_bytes_per_sec: config.limits.peer_inbound_bytes_per_sec,
        reconnect_backoff_min: config.timing.reconnect_backoff_min,
        reconnect_backoff_max: config.timing.reconnect_backoff_max,
        handshake_timeout: config.timing.handshake_timeout,
        idle_timeout: config.timing.idle_timeout,
        protocol_version: crate::transport::PROTOCOL_VERSION,
        // The overlay chooses whom to dial (`crate::overlay`), from the driver's first turn.
        dial_peers: false,
        inbound_max: config.overlay.inbound_max,
    };
    let transport = Transport::start(&key, transport_config, transport_tx)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local_addr = transport.local_addr();
    // This node's signed address record, which the replica sends to every peer: how the
    // members that do not list it as a seed learn where to dial it.
    let advertised = crate::overlay::advertised(config.advertise, local_addr);
    crate::overlay::log_own_address(advertised, local_addr);
    if let Some(address) = advertised {
        node.set_own_addr(crate::overlay::own_record(&cluster_id, &key, address));
    }

    let listener = crate::api::bind(&config.socket)
        .with_context(|| format!("cannot create the API socket {}", config.socket.display()))?;
    let console = match &config.console {
        Some(console) => Some(crate::console::bind(console, &config.data_dir).await?),
        None => None,
    };

    let parts = DriverParts {
        node,
        key,
        genesis: genesis.clone(),
        store,
        transport,
        transport_events: transport_rx,
        commit_writes_max: config.limits.commit_writes_max,
        archive: archive_handle,
        db,
        buffer_bytes_max: config.limits.buffer_bytes_total_max,
        authored,
        key_file: config.key_file.clone(),
        removal_quiet: config.timing.removal_quiet,
        overlay: config.overlay.overlay_config(),
        overlay_seed: crate::overlay::seed()?,
        advertised,
        verify_threads,
    };
    let (service, handle, commands, transport_events) = Driver::new(parts);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let console_url = console.as_ref().map(|console| console.url.clone());
    let console = console.map(|console| {
        info!(listen = %console.url.listen, "web console started; `cairnctl console-url` prints its address");
        tokio::spawn(console.serve(handle.clone(), shutdown_rx.clone()))
    });
    let app =
        crate::api::router(handle, shutdown_rx.clone()).merge(crate::console::socket_router(console_url));
    let api = tokio::spawn(crate::api::serve_app(listener, app, shutdown_rx.clone()));

    info!(
        node = %my_name, key = %me, cluster = %hex::encode(&cluster_id[..8]), listen = %local_addr,
        socket = %config.socket.display(), events = n_restored, peers = peers.len(), store_open_ms,
        document_ms,
        own_seq_learning = own_seq_peers_needed > 0,
        "cairnd started"
    );
    if own_seq_peers_needed > 0 {
        let why = own_history.why_learn().unwrap_or("this node's store may lack events it signed");
        warn!(
            peers_needed = own_seq_peers_needed,
            "{why}: writes are refused until peers report its latest seq and it holds every event of its own they \
             report, so that it never signs a seq twice"
        );
    }
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving {n_restored} events")),
    ]);

    let signals = tokio::spawn(async move {
        wait_for_signal().await;
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
        info!("stopping: draining writes and connections");
        let _ = shutdown_tx.send(true);
    });
    // The service loop runs on this (the main) thread, not on a tokio worker: it blocks while
    // it checks a batch of signatures, and the workers must keep serving the API and the
    // transport meanwhile.
    let result = service.run(commands, transport_events, shutdown_rx, config.timing.shutdown_grace).await;
    signals.abort();
    let _ = api.await;
    if let Some(mut console) = console {
        // The console bounds its own drain (CONSOLE_DRAIN_TIMEOUT) and then closes what is
        // still open; this bound is the backstop, so that the store is closed below whatever
        // a console connection does. Aborting the task drops every connection it still holds.
        let bound = crate::console::CONSOLE_DRAIN_TIMEOUT + CONSOLE_STOP_MARGIN;
        if tokio::time::timeout(bound, &mut console).await.is_err() {
            warn!("the web console did not stop within {bound:?} of shutdown; closing its connections");
            console.abort();
            let _ = console.await;
        }
    }
    // The process may exit before the store's writer thread drops its handle: close the file
    // here, so that the next start finds it closed cleanly (no crash recovery, no full read).
    crate::store::close(&db_to_close);
    let _ = std::fs::remove_file(&config.socket);
    result?;
    info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the daemon can still be killed; wait for ever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
