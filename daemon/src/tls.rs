//! The node's TLS identity and the rustls configurations of the QUIC transport.
//!
//! A node's TLS identity is its ed25519 node key, presented as an RFC 7250 raw public key: the
//! "certificate" on the wire is the key's 44-byte SubjectPublicKeyInfo (RFC 8410), and there is
//! no X.509 and no certificate authority. Both sides authenticate:
//!
//! - the server (the accepting node) admits only genesis members' keys ([`MemberKeys`]), never
//!   its own key, and client authentication is mandatory;
//! - the client (the dialing node) has one configuration per target peer, whose verifier accepts
//!   exactly that peer's key.
//!
//! The custom verifiers decide *which* key is acceptable; they still check the handshake
//! signature with `verify_tls13_signature_with_raw_key`, so a node that copied a member's public
//! key but lacks its secret key fails the handshake.
//!
//! Only TLS 1.3 with the ring provider, ALPN [`ALPN`]. Session resumption is off in both
//! directions (resumed sessions skip the custom verifiers) and there is no early data.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};

use cairn_crypto::{PublicKey, SecretKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, OtherError,
    SignatureScheme,
};

/// The ALPN protocol name of Cairn's peer protocol, version 1.
pub const ALPN: &[u8] = b"cairn/1";

/// The server name the dialer puts in its ClientHello. The verifiers ignore it (the peer is
/// identified by its key), but QUIC needs a syntactically valid name, and a 64-digit hex key is
/// not one (a DNS label holds at most 63 characters).
pub const SERVER_NAME: &str = "cairn";

/// Length of an ed25519 SubjectPublicKeyInfo in DER.
pub const ED25519_SPKI_BYTES: usize = 44;

/// The DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410):
/// `SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING 0x00 ‖ key }`.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The DER prefix of a PKCS#8 v1 ed25519 private key (RFC 8410):
/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }`.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

const _: () = assert!(ED25519_SPKI_PREFIX.len() + 32 == ED25519_SPKI_BYTES);

/// The SubjectPublicKeyInfo DER of an ed25519 public key: what a node presents as its raw public
/// key.
pub fn ed25519_spki(key: &PublicKey) -> Vec<u8> {
    [&ED25519_SPKI_PREFIX[..], key.as_bytes()].concat()
}

/// The ed25519 key inside a SubjectPublicKeyInfo, if `der` is exactly one: any other algorithm,
/// length or padding gives `None`.
pub fn ed25519_key_from_spki(der: &[u8]) -> Option<PublicKey> {
    if der.len() != ED25519_SPKI_BYTES || der[..ED25519_SPKI_PREFIX.len()] != ED25519_SPKI_PREFIX {
        return None;
    }
    let bytes: [u8; 32] = der[ED25519_SPKI_PREFIX.len()..].try_into().ok()?;
    Some(PublicKey(bytes))
}

/// The crypto provider of every Cairn TLS configuration: ring, with its default TLS 1.3 suites.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The signature algorithms the verifiers accept for handshake signatures.
fn verification_algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// A node's TLS identity: its raw public key and the matching signing key.
#[derive(Clone, Debug)]
pub struct Identity {
    certified: Arc<CertifiedKey>,
}

impl Identity {
    /// The TLS identity of the node key `key`.
    pub fn new(key: &SecretKey) -> Self {
        let mut pkcs8 = [0u8; ED25519_PKCS8_V1_PREFIX.len() + 32];
        pkcs8[..ED25519_PKCS8_V1_PREFIX.len()].copy_from_slice(&ED25519_PKCS8_V1_PREFIX);
        let mut seed = key.seed_bytes();
        pkcs8[ED25519_PKCS8_V1_PREFIX.len()..].copy_from_slice(&seed);
        wipe(&mut seed);
        // Borrowed, so that our copy of the seed can be wiped; ring keeps its own.
        let loaded = rustls::crypto::ring::sign::any_eddsa_type(&PrivatePkcs8KeyDer::from(&pkcs8[..]));
        wipe(&mut pkcs8);
        // ring accepts every 32-byte seed in a v1 PKCS#8 document, so this fails only if the
        // prefix above is wrong, which is a bug.
        let signing_key = loaded.expect("ring loads every ed25519 seed in PKCS#8 v1 form");
        let spki = ed25519_spki(&key.public());
        // A broken local invariant, not peer input: ring's view of the key must be ours.
        let ring_spki = signing_key.public_key();
        assert_eq!(
            ring_spki.as_ref().map(|der| der.as_ref()),
            Some(&spki[..]),
            "ring derived another public key from the seed"
        );
        Self { certified: Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki)], signing_key)) }
    }

    /// An identity from a ready-made rustls key. Nothing checks that the presented key (the
    /// SubjectPublicKeyInfo in `certified.cert[0]`) belongs to the signing key: this exists so
    /// that tests can build impostors, which the peers' verifiers must reject.
    pub fn from_certified_key(certified: Arc<CertifiedKey>) -> Self {
        Self { certified }
    }

    /// The rustls key: the presented raw public key and the signing key.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

/// The label under which the QUIC stateless-reset key is derived from the node key.
const RESET_KEY_LABEL: &[u8] = b"cairn/quic-stateless-reset/v1";
/// The label under which the key of the QUIC connection-id check is derived from the node key.
const CID_KEY_LABEL: &[u8] = b"cairn/quic-connection-id/v1";

/// `HMAC-SHA256(key = the node key's seed, label)`: a secret of this node's that stays the same
/// across restarts and reveals nothing of the seed.
fn derive(key: &SecretKey, label: &[u8]) -> ring::hmac::Tag {
    let mut seed = key.seed_bytes();
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed), label);
    wipe(&mut seed);
    tag
}

/// The QUIC endpoint configuration of a node, with two secrets derived from its node key so
/// that they survive a restart:
///
/// - the stateless-reset key, so a peer accepts the reset with which a restarted node answers
///   packets of its previous life's connections, and drops that dead connection at once
///   instead of at the idle timeout (no one without the node key can forge such a reset);
/// - the key of quinn's connection-id check, so the restarted node recognizes those packets'
///   connection ids as its own and answers them with the reset rather than dropping them.
pub fn endpoint_config(key: &SecretKey) -> quinn::EndpointConfig {
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derive(key, RESET_KEY_LABEL).as_ref());
    let cid_tag = derive(key, CID_KEY_LABEL);
    // An HMAC-SHA256 tag is 32 bytes, so its first 8 always exist.
    let cid_key = u64::from_le_bytes(cid_tag.as_ref()[..8].try_into().expect("a tag of 32 bytes"));
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

/// Overwrites secret bytes; `black_box` keeps the compiler from dropping the dead store.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

/// Why the server turned a client's key away, in words: the text travels to the client in the
/// QUIC close (as "invalid peer certificate: …") and into both nodes' logs, so an operator on
/// either side reads the cause rather than a TLS alert name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyRefusal {
    /// The key is not a member of this cluster (or is the server's own key).
    #[error("this key is not a member of the cluster (check the genesis file on both nodes)")]
    NotMember,
    /// The key is a proven equivocator: refused for good.
    #[error(
        "this key is refused for good: it signed two events with the same seq (equivocation; the \
         evidence is on the refusing node, see `cairnctl evidence`). A node whose key equivocated \
         must never sign again; it needs a new key and membership"
    )]
    Equivocator,
    /// The key's seat approved two changes of one membership and round: refused for good.
    #[error(
        "this key is refused for good: its seat approved two different changes of one membership and round (a \
         double approval, PROTOCOL.md §17 rule M7; see `cairnctl evidence` on the refusing node)"
    )]
    DoubleApprover,
    /// The key is out of force: a membership change removed its seat or rotated it away.
    #[error(
        "this key is no longer a member: a membership change in force on the refusing node removed its seat, or \
         its seat rotated to another key (see `cairnctl member list` there)"
    )]
    Removed,
}

/// The keys a server admits: the genesis members except the node itself, minus any key refused
/// later (a proven equivocator). Cloning gives another handle to the same set, so a refusal
/// applies to every later handshake of the server that holds it.
#[derive(Clone, Debug)]
pub struct MemberKeys {
    keys: Arc<RwLock<Keys>>,
}

#[derive(Debug, Default)]
struct Keys {
    allowed: BTreeSet<[u8; 32]>,
    /// Keys refused for good, and why.
    refused: std::collections::BTreeMap<[u8; 32], KeyRefusal>,
    removed: BTreeSet<[u8; 32]>,
}

impl MemberKeys {
    /// Admits `members` except `own`.
    pub fn new(members: &[PublicKey], own: &PublicKey) -> Self {
        let allowed = members.iter().filter(|key| *key != own).map(|key| key.0).collect();
        Self { keys: Arc::new(RwLock::new(Keys { allowed, ..Keys::default() })) }
    }

    /// Admits `key` from now on (a membership change brought it in), unless it is refused for
    /// good or out of force already: a key never comes back into force (PROTOCOL.md §17).
    /// Returns whether it is admitted.
    pub fn allow(&self, key: &PublicKey) -> bool {
        // As in `refuse`: set operations cannot leave the sets half-written.
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if keys.refused.contains_key(&key.0) || keys.removed.contains(&key.0) {
            return false;
        }
        keys.allowed.insert(key.0);
        true
    }

    /// Whether [`MemberKeys::allow`] would admit `key`: it is neither refused for good nor out of
    /// force.
    pub fn may_allow(&self, key: &PublicKey) -> bool {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        !keys.refused.contains_key(&key.0) && !keys.removed.contains(&key.0)
    }

    /// Takes `key` out of force from now on (a membership change removed or rotated it).
    pub fn remove(&self, key: &PublicKey) {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        keys.allowed.remove(&key.0);
        if !keys.refused.contains_key(&key.0) {
            keys.removed.insert(key.0);
        }
    }

    /// Refuses `key` from now on; connections already established are the transport's business.
    pub fn refuse(&self, key: &PublicKey) {
        self.refuse_for(key, KeyRefusal::Equivocator);
    }

    /// Refuses `key` from now on for `why` (a key already out of force stays as it is).
    pub fn refuse_for(&self, key: &PublicKey, why: KeyRefusal) {
        // The sets stay consistent whatever a panicking holder did: inserts and removes of
        // `[u8; 32]` cannot leave them half-written, so a poisoned lock is safe to use.
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if keys.allowed.remove(&key.0) {
            keys.refused.insert(key.0, why);
        }
    }

    /// Whether a handshake presenting `key` would be admitted now.
    pub fn allows(&self, key: &PublicKey) -> bool {
        self.check(key).is_ok()
    }

    /// Whether a handshake presenting `key` would be admitted now, and if not, why.
    pub fn check(&self, key: &PublicKey) -> Result<(), KeyRefusal> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        if keys.allowed.contains(&key.0) {
            Ok(())
        } else if let Some(why) = keys.refused.get(&key.0) {
            Err(*why)
        } else if keys.removed.contains(&key.0) {
            Err(KeyRefusal::Removed)
        } else {
            Err(KeyRefusal::NotMember)
        }
    }
}

/// The server's verifier of client keys: members only, and a valid handshake signature.
#[derive(Debug)]
struct MemberVerifier {
    members: MemberKeys,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for MemberVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let key = admit(end_entity, intermediates, |_| true)?;
        // `Other` is displayed with the refusal's words (rustls prints the inner error of
        // `InvalidCertificate(Other(..))` in its debug form), and those words are the reason
        // phrase of the QUIC close, after a TLS handshake_failure alert.
        self.members.check(&key).map_err(|refusal| TlsError::Other(OtherError(Arc::new(refusal))))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_handshake_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The one key check of both verifiers: in raw-public-key mode `end_entity` is the peer's
/// SubjectPublicKeyInfo; it must be an ed25519 key, alone, and `allowed`.
fn admit(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    allowed: impl FnOnce(&PublicKey) -> bool,
) -> Result<PublicKey, TlsError> {
    let key = ed25519_key_from_spki(end_entity)
        .ok_or(TlsError::InvalidCertificate(CertificateError::BadEncoding))?;
    if !intermediates.is_empty() || !allowed(&key) {
        return Err(TlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure));
    }
    Ok(key)
}

/// The TLS 1.3 handshake signature under the presented raw key: checked by both verifiers, so
/// a copied public key without its private key cannot connect.
fn verify_handshake_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, TlsError> {
    verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        algorithms,
    )
}

/// The client's verifier of the server key: exactly the peer it meant to reach, and a valid
/// handshake signature.
#[derive(Debug)]
struct ExpectedServerKey {
    expected: PublicKey,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectedServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        admit(end_entity, intermediates, |key| *key == self.expected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(TlsError::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_handshake_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The QUIC server configuration of a node: presents `identity`, admits the keys in `members`.
/// The QUIC transport parameters are left at quinn's defaults for the caller to set.
pub fn server_config(identity: &Identity, members: &MemberKeys) -> quinn::ServerConfig {
    let verifier =
        Arc::new(MemberVerifier { members: members.clone(), algorithms: verification_algorithms() });
    let resolver =
        Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(identity.certified.clone()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        // Fails only if the provider has no TLS 1.3 suite; ring's default provider has three.
        .expect("ring's default provider supports TLS 1.3")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: a resumed session would skip the verifiers (and so a refusal).
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.max_early_data_size = 0;
    // Fails only without an initial cipher suite (TLS13_AES_128_GCM_SHA256), which ring has.
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .expect("ring's default provider has QUIC's initial cipher suite");
    quinn::ServerConfig::with_crypto(Arc::new(quic))
}

/// The QUIC client configuration for dialing the peer whose key is `peer`, presenting
/// `identity`. The QUIC transport parameters are left at quinn's defaults for the caller to set.
pub fn client_config(identity: &Identity, peer: &PublicKey) -> quinn::ClientConfig {
    let verifier = Arc::new(ExpectedServerKey { expected: *peer, algorithms: verification_algorithms() });
    let resolver =
        Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(identity.certified.clone()));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        // Fails only if the provider has no TLS 1.3 suite; ring's default provider has three.
        .expect("ring's default provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(resolver);
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    // Fails only without an initial cipher suite (TLS13_AES_128_GCM_SHA256), which ring has.
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .expect("ring's default provider has QUIC's initial cipher suite");
    quinn::ClientConfig::new(Arc::new(quic))
}

/// The key the peer of `connection` proved it holds in the TLS handshake; `None` before the
/// handshake completed (or if the peer presented no ed25519 raw public key, which the verifiers
/// never let through).
pub fn peer_key(connection: &quinn::Connection) -> Option<PublicKey> {
    let identity = connection.peer_identity()?;
    let certificates = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    ed25519_key_from_spki(certificates.first()?.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_round_trips_and_rejects_other_lengths() {
        let key = SecretKey::from_seed(&[7; 32]).public();
        let spki = ed25519_spki(&key);
        assert_eq!(spki.len(), ED25519_SPKI_BYTES);
        assert_eq!(ed25519_key_from_spki(&spki), Some(key));
        assert_eq!(ed25519_key_from_spki(&spki[..43]), None);
        assert_eq!(ed25519_key_from_spki(&[&spki[..], &[0]].concat()), None);
        let mut other_algorithm = spki.clone();
        other_algorithm[8] = 0x71; // OID 1.3.101.113 is ed448
        assert_eq!(ed25519_key_from_spki(&other_algorithm), None);
        // rustls builds the same bytes.
        let rustls_spki = rustls::sign::public_key_to_spki(&rustls::pki_types::alg_id::ED25519, key.0);
        assert_eq!(rustls_spki.as_ref(), &spki[..]);
    }

    #[test]
    fn identity_presents_the_node_key() {
        let key = SecretKey::from_seed(&[9; 32]);
        let identity = Identity::new(&key);
        assert_eq!(ed25519_key_from_spki(identity.certified_key().cert[0].as_ref()), Some(key.public()));
    }

    #[test]
    fn member_keys_exclude_own_and_refused() {
        let keys: Vec<PublicKey> = (1..=3u8).map(|i| SecretKey::from_seed(&[i; 32]).public()).collect();
        let members = MemberKeys::new(&keys, &keys[0]);
        assert!(!members.allows(&keys[0]));
        assert!(members.allows(&keys[1]) && members.allows(&keys[2]));
        members.clone().refuse(&keys[1]);
        assert!(!members.allows(&keys[1]));
        assert_eq!(members.check(&keys[1]), Err(KeyRefusal::Equivocator));
        assert!(members.allows(&keys[2]));
        members.refuse_for(&keys[2], KeyRefusal::DoubleApprover);
        assert_eq!(members.check(&keys[2]), Err(KeyRefusal::DoubleApprover), "refused, saying why");
        assert!(!members.allow(&keys[2]), "refused for good");
    }
}
