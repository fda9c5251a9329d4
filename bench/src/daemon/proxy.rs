//! A counting UDP relay for `cairn-daemon-bench`: peers reach a node through it, so the bench
//! sees every QUIC datagram between them (payload bytes and datagram counts per direction).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// Datagrams and UDP payload bytes, keyed by (from node address, to node address).
pub(crate) type Counts = Arc<Mutex<HashMap<(SocketAddr, SocketAddr), (u64, u64)>>>;

/// A relay in front of the node at `target`: it listens on a fresh loopback port; each client
/// (by source address) gets its own upstream socket towards `target`, and replies go back
/// from the listening port.
pub(crate) struct Proxy {
    /// Where peers send to reach the target.
    pub(crate) address: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr, counts: Counts) -> anyhow::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let address = front.local_addr()?;
        let front_task = front.clone();
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let reply_tasks = tasks.clone();
        let task = tokio::spawn(async move {
            let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = front_task.recv_from(&mut buf).await else { break };
                let upstream = match upstreams.get(&client) {
                    Some(u) => u.clone(),
                    None => {
                        let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else { break };
                        let u = Arc::new(u);
                        upstreams.insert(client, u.clone());
                        // Replies from the target to this client.
                        let (u2, front2, counts2) = (u.clone(), front_task.clone(), counts.clone());
                        let reply = tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok((n, _)) = u2.recv_from(&mut buf).await {
                                count(&counts2, target, client, n);
                                let _ = front2.send_to(&buf[..n], client).await;
                            }
                        });
                        lock(&reply_tasks).push(reply.abort_handle());
                        u
                    }
                };
                count(&counts, client, target, n);
                let _ = upstream.send_to(&buf[..n], target).await;
            }
        });
        lock(&tasks).push(task.abort_handle());
        Ok(Self { address, tasks })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in lock(&self.tasks).iter() {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn count(counts: &Counts, from: SocketAddr, to: SocketAddr, n: usize) {
    let mut counts = lock(counts);
    let entry = counts.entry((from, to)).or_insert((0, 0));
    entry.0 += 1;
    entry.1 += n as u64;
}
