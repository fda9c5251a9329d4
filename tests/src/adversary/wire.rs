//! The adversary's side of the wire (`docs/PROTOCOL.md` section 15): QUIC with the raw-public-key
//! TLS of `cairn_daemon::tls`, one bidirectional stream, length-prefixed frames, the hello.
//! Unlike the daemon's transport it sends whatever it is told: frames whose length prefix lies,
//! bytes that are no frame at all, any cluster id in the hello, any TLS identity.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_crypto::{PublicKey, SecretKey};
use cairn_daemon::tls;
use cairn_daemon::transport::{FRAME_LENGTH_BYTES, HELLO_BYTES, hello};
use cairn_protocol::Message;
use cairn_protocol::codec::{decode_message, encode_message};
use cairn_protocol::limits::MESSAGE_BYTES_MAX;
use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream};
use tokio::sync::mpsc;

/// How long a connection attempt, a hello or a close may take before the adversary gives up.
pub const WIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a target may take to handle what was sent before [`Link::flush`] gives up: an
/// orphan flood keeps a node verifying for a while.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// Frames read from a target and not yet taken by the scenario; later ones are dropped (the
/// adversary owes nobody a complete read).
pub const INBOX_FRAMES_MAX: usize = 4_096;

/// A node to attack: its genesis name, key and QUIC address.
#[derive(Clone, Debug)]
pub struct Target {
    /// Genesis name.
    pub name: String,
    /// Public key (the server's TLS identity).
    pub key: PublicKey,
    /// QUIC address.
    pub address: SocketAddr,
}

/// `payload` framed: its length as `u32` little-endian, then the payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(FRAME_LENGTH_BYTES + payload.len());
    framed.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_le_bytes());
    framed.extend_from_slice(payload);
    framed
}

/// A TLS identity that presents `presented`'s public key but signs its handshakes with
/// `signer`: a copied public key without the matching private key.
pub fn impostor_identity(presented: &PublicKey, signer: &SecretKey) -> tls::Identity {
    // PKCS#8 v1 wrapping of an ed25519 seed (RFC 8410).
    const PKCS8_V1_PREFIX: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let pkcs8 = [&PKCS8_V1_PREFIX[..], &signer.seed_bytes()].concat();
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from(pkcs8);
    // The prefix and a 32-byte seed always make a valid ed25519 PKCS#8 document.
    let signing_key = rustls::crypto::ring::sign::any_eddsa_type(&der).expect("a well-formed ed25519 key");
    let spki = tls::ed25519_spki(presented);
    tls::Identity::from_certified_key(std::sync::Arc::new(rustls::sign::CertifiedKey::new(
        vec![rustls::pki_types::CertificateDer::from(spki)],
        signing_key,
    )))
}

/// How a connection attempt ended.
#[derive(Debug)]
pub enum Dialed {
    /// The hello exchange completed.
    Linked(Box<Link>),
    /// The target refused us in the TLS handshake or closed before answering the hello.
    Refused(String),
}

/// One connection to a target, with its stream open and the hellos exchanged.
pub struct Link {
    /// The target.
    pub target: Target,
    endpoint: Endpoint,
    connection: Connection,
    send: SendStream,
    inbox: mpsc::Receiver<Vec<u8>>,
    /// Messages sent on this connection (the target's `heard` when it has read them all).
    pub sent: u64,
    /// Messages taken from the inbox.
    pub heard: u64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("target", &self.target.name).field("sent", &self.sent).finish()
    }
}

/// Opens a QUIC connection to `target` with `identity`; the inner `Err` says why the TLS
/// handshake failed.
async fn connect(
    identity: &tls::Identity,
    target: &Target,
) -> anyhow::Result<Result<(Endpoint, Connection), String>> {
    let bind: SocketAddr = if target.address.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let endpoint = Endpoint::client(bind).context("cannot open a UDP socket")?;
    let config = tls::client_config(identity, &target.key);
    let connecting = endpoint
        .connect_with(config, target.address, tls::SERVER_NAME)
        .with_context(|| format!("cannot dial {}", target.address))?;
    match tokio::time::timeout(WIRE_TIMEOUT, connecting).await {
        Err(_) => bail!("{} ({}) did not answer within {WIRE_TIMEOUT:?}", target.name, target.address),
        Ok(Err(error)) => Ok(Err(describe(&error))),
        Ok(Ok(connection)) => Ok(Ok((endpoint, connection))),
    }
}

/// A close reason for people, with the application close code when there is one.
pub fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ApplicationClosed(close) => format!(
            "closed by the target with code {} ({})",
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason)
        ),
        ConnectionError::ConnectionClosed(close) => format!("refused in the handshake: {close}"),
        other => other.to_string(),
    }
}

/// The application close code of `error`, if the peer closed the connection itself.
pub fn close_code(error: &ConnectionError) -> Option<u64> {
    match error {
        ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
        _ => None,
    }
}

/// Dials `target` with `identity`, sends the hello for `cluster_id` and waits for the target's.
pub async fn dial(
    identity: &tls::Identity,
    target: &Target,
    cluster_id: &[u8; 32],
) -> anyhow::Result<Dialed> {
    let (endpoint, connection) = match connect(identity, target).await? {
        Ok(pair) => pair,
        Err(reason) => return Ok(Dialed::Refused(reason)),
    };
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&frame(&hello(cluster_id))).await?;
        let mut answer = [0u8; FRAME_LENGTH_BYTES + HELLO_BYTES];
        recv.read_exact(&mut answer).await?;
        anyhow::Ok((send, recv, answer))
    };
    let Ok(Ok((send, recv, answer))) = tokio::time::timeout(WIRE_TIMEOUT, exchange).await else {
        let closed = tokio::time::timeout(WIRE_TIMEOUT, connection.closed()).await;
        let reason = closed.map_or_else(|_| "no hello and no close".to_owned(), |e| describe(&e));
        return Ok(Dialed::Refused(reason));
    };
    if answer[FRAME_LENGTH_BYTES..] != hello(cluster_id) {
        bail!("{} answered with another hello: {}", target.name, hex::encode(answer));
    }
    let (inbox_tx, inbox) = mpsc::channel(INBOX_FRAMES_MAX);
    tokio::spawn(read_frames(recv, inbox_tx));
    Ok(Dialed::Linked(Box::new(Link {
        target: target.clone(),
        endpoint,
        connection,
        send,
        inbox,
        sent: 0,
        heard: 0,
    })))
}

/// Dials `target` as a member with `key` and expects the hellos to complete.
pub async fn link(key: &SecretKey, target: &Target, cluster_id: &[u8; 32]) -> anyhow::Result<Link> {
    match dial(&tls::Identity::new(key), target, cluster_id).await? {
        Dialed::Linked(link) => Ok(*link),
        Dialed::Refused(reason) => bail!("{} refused the connection: {reason}", target.name),
    }
}

/// Reads frames into `inbox` until the stream ends; frames that do not fit are dropped.
async fn read_frames(mut recv: RecvStream, inbox: mpsc::Sender<Vec<u8>>) {
    loop {
        let mut length = [0u8; FRAME_LENGTH_BYTES];
        if recv.read_exact(&mut length).await.is_err() {
            return;
        }
        let n = u32::from_le_bytes(length) as usize;
        if n > MESSAGE_BYTES_MAX {
            return;
        }
        let mut payload = vec![0u8; n];
        if recv.read_exact(&mut payload).await.is_err() {
            return;
        }
        if inbox.try_send(payload).is_err() && inbox.is_closed() {
            return;
        }
    }
}

impl Link {
    /// Sends one message as a frame.
    pub async fn send(&mut self, message: &Message) -> anyhow::Result<()> {
        self.send_frame(&encode_message(message)).await
    }

    /// Sends `payload` as one frame (any bytes; the length prefix is true).
    pub async fn send_frame(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        self.sent += 1;
        self.send_raw(&frame(payload)).await
    }

    /// Writes `bytes` to the stream as they are: no framing.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.send.write_all(bytes).await.with_context(|| format!("writing to {}", self.target.name))?;
        Ok(())
    }

    /// Ends the adversary's side of the stream (a clean FIN, wherever the frames stand).
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.send.finish().with_context(|| format!("ending the stream to {}", self.target.name))
    }

    /// The next frame from the target, or `None` if none comes within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let frame = tokio::time::timeout(wait, self.inbox.recv()).await.ok().flatten()?;
        self.heard += 1;
        Some(frame)
    }

    /// The next frame that decodes as a message.
    pub async fn recv_message(&mut self, wait: Duration) -> Option<Message> {
        decode_message(&self.recv(wait).await?).ok()
    }

    /// Waits until the target closes the connection; returns how, or `None` if it stays open.
    pub async fn closed(&self, wait: Duration) -> Option<ConnectionError> {
        tokio::time::timeout(wait, self.connection.closed()).await.ok()
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    /// The QUIC connection (for scenarios that open more streams).
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Waits until the target has handled everything sent so far: sends a `Summary` (which
    /// no set matches) and reads until the answer comes, since a node handles a connection's
    /// messages in order. Closing without this would drop what is still in flight.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.send(&Message::Summary { digest: [0; 32] }).await?;
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("{} did not answer within {FLUSH_TIMEOUT:?}", self.target.name);
            }
            let Some(bytes) = self.recv(left).await else {
                // `recv` returns at once when the reader has stopped: the stream or the
                // connection is gone, and no answer will come.
                if self.is_open() && !self.inbox.is_closed() {
                    continue;
                }
                bail!("{} closed the connection before answering", self.target.name);
            };
            if matches!(decode_message(&bytes), Ok(Message::Tips { .. } | Message::InSync { .. })) {
                return Ok(());
            }
        }
    }

    /// Closes the connection at once, dropping whatever is still in flight.
    pub async fn abort(self) {
        self.connection.close(0u32.into(), b"adversary gone");
        let _ = tokio::time::timeout(WIRE_TIMEOUT, self.endpoint.wait_idle()).await;
    }

    /// Flushes (if the connection is open) and closes the connection.
    pub async fn close(mut self) {
        if self.is_open() {
            let _ = self.flush().await;
        }
        self.connection.close(0u32.into(), b"adversary done");
        let _ = tokio::time::timeout(WIRE_TIMEOUT, self.endpoint.wait_idle()).await;
    }
}
