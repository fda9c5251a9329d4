//! The baselines of `cairn-daemon-bench`, measured in the same run: redb's own commit rates in
//! the bench's directory (the file system the nodes' data directories are on), and raw
//! `verify_strict` per second on one and two threads (as `cairn-bench` measures it).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_crypto::SecretKey;
use redb::{Database, Durability, TableDefinition};

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("bench");

/// Inserts per second (or commits per second with `batch` = 1) into a fresh redb file at
/// `path`: `batch` inserts of `value_bytes`-byte values per write transaction, each commit
/// durable (`Durability::Immediate`) and two-phase (`set_two_phase_commit(true)`), as the
/// daemon's store commits. Runs for about `duration`.
pub(crate) fn redb_rate(
    path: &Path,
    batch: usize,
    value_bytes: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let _ = std::fs::remove_file(path);
    let db = Database::builder().create(path)?;
    let value: Vec<u8> = (0..value_bytes).map(|i| i as u8).collect();
    let mut next = 0u64;
    // One commit first, so the table exists and the file has its first pages.
    let commit = |next: &mut u64| -> anyhow::Result<()> {
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.set_two_phase_commit(true);
        {
            let mut table = tx.open_table(TABLE)?;
            for _ in 0..batch {
                table.insert(*next, value.as_slice())?;
                *next += 1;
            }
        }
        tx.commit()?;
        Ok(())
    };
    commit(&mut next)?;
    let first = next;
    let start = Instant::now();
    while start.elapsed() < duration {
        commit(&mut next)?;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(db);
    let _ = std::fs::remove_file(path);
    Ok((next - first) as f64 / secs)
}

/// The daemon's own `Store::append` with `batch` real events per call (one write transaction
/// with two inserts per event, the duplicate check, and the id check of every event):
/// events per second. `events` are (id, canonical bytes), signed by `key` in `genesis`.
pub(crate) fn store_rate(
    path: &Path,
    genesis: &cairn_protocol::Genesis,
    node_key: [u8; 32],
    events: &[([u8; 32], Vec<u8>)],
    batch: usize,
) -> anyhow::Result<f64> {
    let _ = std::fs::remove_file(path);
    let (mut store, _) = cairn_daemon::store::Store::open_indexed(
        path,
        genesis.cluster_id(),
        node_key,
        cairn_daemon::store::OwnHistory::Complete,
        &cairn_daemon::store::member_keys(genesis),
    )?;
    let refs: Vec<([u8; 32], &[u8])> = events.iter().map(|(id, b)| (*id, b.as_slice())).collect();
    let mut chunks = refs.chunks(batch);
    store.append(chunks.next().unwrap_or_default(), &[], false)?;
    let start = Instant::now();
    let mut n = 0;
    for chunk in chunks {
        store.append(chunk, &[], false)?;
        n += chunk.len();
    }
    let secs = start.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_file(path);
    Ok(n as f64 / secs)
}

/// Signing per second (ed25519 over 32-byte messages, one thread).
pub(crate) fn sign_rate(n: usize) -> f64 {
    let key = SecretKey::from_seed(&[7; 32]);
    let start = Instant::now();
    for i in 0..n {
        let message = cairn_crypto::hash(cairn_crypto::Domain::Event, &(i as u64).to_le_bytes());
        black_box(key.sign(black_box(&message)));
    }
    n as f64 / start.elapsed().as_secs_f64()
}
