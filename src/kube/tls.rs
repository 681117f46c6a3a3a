//! rustls client configuration for the upstream: trust roots from the kubeconfig CA (or the system store),
//! `insecure-skip-tls-verify`, `tls-server-name`, and the client certificate, served through a resolver so
//! exec plugins and file reloads can swap it. [`TlsState`] re-reads certificate, key and CA files when
//! they change on disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::kube::kubeconfig::{PemSource, TlsSettings};

/// Why TLS material could not be loaded. Messages name the file, never its contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {source_desc}: {err}")]
    Read {
        /// Which material.
        what: &'static str,
        /// Where it was.
        source_desc: String,
        /// The I/O error.
        err: std::io::Error,
    },
    /// The material is not valid PEM of the expected kind.
    #[error("{what} {source_desc} holds no valid PEM {expected}: {detail}")]
    Pem {
        /// Which material.
        what: &'static str,
        /// Where it was.
        source_desc: String,
        /// The PEM block kind expected.
        expected: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The client key does not belong to the client certificate.
    #[error("client key {key} does not match client certificate {cert}: check that both come from the same pair")]
    KeyMismatch {
        /// The certificate's source.
        cert: String,
        /// The key's source.
        key: String,
    },
    /// `tls-server-name` is not a valid DNS name or IP address.
    #[error("tls-server-name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider kproxy uses everywhere (ring: small and fast to build), offering AES-128-GCM
/// before AES-256-GCM, as client-go (Go's crypto/tls on hardware with AES instructions) does.
///
/// Servers that follow the client's order (OpenSSL's default, so nginx, HAProxy and most TLS
/// terminators in front of API servers) then pick the cipher kubectl gets: four fewer AES rounds per
/// block on both ends, which shows in the CPU per byte of LISTs and downloads (bench/README.md). Go
/// servers, the API server among them, choose AES-128-GCM on such hardware whatever the client offers.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::ring::default_provider();
    // A stable sort: TLS 1.3 suites stay ahead of TLS 1.2 ones, and the rest keep ring's order.
    provider.cipher_suites.sort_by_key(|s| {
        let aes128 = matches!(
            s.suite(),
            S::TLS13_AES_128_GCM_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (s.tls13().is_none(), !aes128)
    });
    Arc::new(provider)
}

/// The client certificate presented to the API server; swappable at run time (file reloads and exec
/// plugins that return certificates both go through [`ClientIdentity::set`]).
///
/// Every change bumps a generation counter; the upstream connection pool watches it and retires
/// connections made with the previous certificate (see [`crate::upstream::Upstream`]).
#[derive(Debug, Default)]
pub struct ClientIdentity {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    generation: AtomicU64,
}

impl ClientIdentity {
    /// An identity presenting `key`.
    pub fn new(key: Option<Arc<CertifiedKey>>) -> Self {
        Self {
            current: RwLock::new(key),
            generation: AtomicU64::new(0),
        }
    }

    /// Replaces the presented certificate; new handshakes use it. Returns whether it changed (the same
    /// chain again is no change, so no connection is retired for it).
    pub fn set(&self, key: Option<Arc<CertifiedKey>>) -> bool {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let same = match (&*current, &key) {
            (None, None) => true,
            (Some(a), Some(b)) => a.cert == b.cert,
            _ => false,
        };
        if same {
            return false;
        }
        *current = key;
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// The certificate currently presented.
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Incremented on every change of the presented certificate.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.get()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// How often, at most, certificate, key and CA *files* are checked for changes. client-go re-reads
/// client certificate files at most once a second (per handshake) and polls CA files every 5 minutes;
/// kproxy checks all of them at most once a second, on the request path, so an idle kproxy does no work
/// and the first request after a rotation already uses the new material.
pub const TLS_FILE_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// The server verification in force.
#[derive(Debug, Clone)]
enum Trust {
    /// `insecure-skip-tls-verify`.
    Insecure,
    /// The kubeconfig CA (the only root) or the system roots.
    Roots(Arc<RootCertStore>),
}

/// The upstream TLS material, reloaded from disk when its files change.
///
/// Inline `*-data` material is fixed. File material is checked at most every
/// [`TLS_FILE_CHECK_PERIOD`] by [`TlsState::maybe_reload`]: the client certificate only when both
/// certificate and key are files (as in client-go), the CA when it is a file. A change that does not
/// parse, or a key that does not match its certificate (a pair caught half-written), keeps the previous
/// material; an unusable CA is logged once per content.
#[derive(Debug)]
pub struct TlsState {
    provider: Arc<CryptoProvider>,
    server_name: Option<ServerName<'static>>,
    identity: Arc<ClientIdentity>,
    trust: RwLock<Trust>,
    /// Bumped when the trust roots change (certificate changes bump the identity's counter).
    generation: AtomicU64,
    /// `None` when no TLS material is a file.
    reload: Option<Mutex<Reload>>,
    period: Duration,
}

/// The files to watch and what they held when last loaded.
#[derive(Debug)]
struct Reload {
    due: Instant,
    ca: Option<Watched>,
    /// Certificate and key, watched as a pair.
    pair: Option<(Watched, Watched)>,
}

#[derive(Debug)]
struct Watched {
    path: PathBuf,
    /// The bytes last loaded (or, for the CA, last found unusable, so a bad file is reported once).
    seen: Vec<u8>,
}

impl Watched {
    fn new(source: &PemSource) -> Option<Watched> {
        match source {
            PemSource::File(path) => Some(Watched {
                path: path.clone(),
                seen: std::fs::read(path).unwrap_or_default(),
            }),
            PemSource::Data(_) => None,
        }
    }

    /// The file's bytes when they differ from the last seen. A read error keeps the old material: a
    /// secret volume swaps its symlink atomically, but a hand-run `cp` can race us, and the next check
    /// sees the file again.
    fn changed(&self) -> Option<Vec<u8>> {
        match std::fs::read(&self.path) {
            Ok(bytes) if bytes != self.seen => Some(bytes),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "TLS file not readable; keeping the loaded material");
                None
            }
        }
    }
}

impl TlsState {
    /// Reads and checks the TLS material. `period` is [`TLS_FILE_CHECK_PERIOD`] outside tests.
    pub fn new(settings: &TlsSettings, period: Duration) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let key = match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => Some(Arc::new(load_identity(&provider, cert, key)?)),
            _ => None,
        };
        let server_name = settings
            .server_name
            .as_ref()
            .map(|n| ServerName::try_from(n.clone()).map_err(|_| TlsError::ServerName(n.clone())))
            .transpose()?;
        let trust = if settings.insecure {
            Trust::Insecure
        } else {
            Trust::Roots(Arc::new(root_store(settings.ca.as_ref())?))
        };
        let ca = match (&trust, &settings.ca) {
            (Trust::Roots(_), Some(source)) => Watched::new(source),
            _ => None,
        };
        let pair = match (&settings.client_cert, &settings.client_key) {
            (Some(c), Some(k)) => Watched::new(c).zip(Watched::new(k)),
            _ => None,
        };
        let reload = (ca.is_some() || pair.is_some()).then(|| {
            Mutex::new(Reload {
                due: Instant::now() + period,
                ca,
                pair,
            })
        });
        Ok(Arc::new(Self {
            provider,
            server_name,
            identity: Arc::new(ClientIdentity::new(key)),
            trust: RwLock::new(trust),
            generation: AtomicU64::new(0),
            reload,
            period,
        }))
    }

    /// `tls-server-name`, when set.
    pub fn server_name(&self) -> Option<&ServerName<'static>> {
        self.server_name.as_ref()
    }

    /// The swappable client certificate.
    pub fn identity(&self) -> &Arc<ClientIdentity> {
        &self.identity
    }

    /// Changes whenever the material changes: a connection pool built at another generation is stale.
    pub fn generation(&self) -> u64 {
        self.generation
            .load(Ordering::Acquire)
            .wrapping_add(self.identity.generation())
    }

    /// A client configuration from the current material, without ALPN (each connector sets the
    /// protocols it speaks). Each call gets a fresh TLS session cache: resuming a session made with an
    /// earlier client certificate would authenticate a new connection as the old identity.
    pub fn client_config(&self) -> ClientConfig {
        let trust = self.trust.read().unwrap_or_else(|e| e.into_inner()).clone();
        let builder = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions");
        let builder = match trust {
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(InsecureVerifier(
                    self.provider.clone(),
                ))),
            Trust::Roots(roots) => builder.with_root_certificates(roots),
        };
        builder.with_client_cert_resolver(self.identity.clone())
    }

    /// Re-reads changed certificate, key and CA files, at most once per period. Cheap when not due, and
    /// never waits for another caller's check.
    pub fn maybe_reload(&self) {
        let Some(reload) = &self.reload else { return };
        let Ok(mut r) = reload.try_lock() else { return };
        let now = Instant::now();
        if now < r.due {
            return;
        }
        r.due = now + self.period;
        if let Some(ca) = &mut r.ca {
            if let Some(bytes) = ca.changed() {
                let source = PemSource::File(ca.path.clone());
                match roots_from(&source, &bytes) {
                    Ok(roots) => {
                        *self.trust.write().unwrap_or_else(|e| e.into_inner()) =
                            Trust::Roots(Arc::new(roots));
                        self.generation.fetch_add(1, Ordering::AcqRel);
                        tracing::info!(path = %ca.path.display(), "certificate-authority changed on disk; new upstream connections trust it");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping the previous certificate-authority")
                    }
                }
                ca.seen = bytes;
            }
        }
        if let Some((cert, key)) = &mut r.pair {
            let (new_cert, new_key) = (cert.changed(), key.changed());
            if new_cert.is_some() || new_key.is_some() {
                let cert_bytes = new_cert.unwrap_or_else(|| cert.seen.clone());
                let key_bytes = new_key.unwrap_or_else(|| key.seen.clone());
                let loaded = load_identity(
                    &self.provider,
                    &PemSource::Data(cert_bytes.clone()),
                    &PemSource::Data(key_bytes.clone()),
                );
                match loaded {
                    Ok(k) => {
                        cert.seen = cert_bytes;
                        key.seen = key_bytes;
                        if self.identity.set(Some(Arc::new(k))) {
                            tracing::info!(path = %cert.path.display(), "client certificate changed on disk; new upstream connections present it");
                        }
                    }
                    // Usually a pair caught between its two writes: not recorded, so the next check
                    // tries again; logged at debug only.
                    Err(e) => tracing::debug!(
                        cert = %cert.path.display(),
                        error = %e,
                        "client certificate and key on disk are not a usable pair yet; keeping the loaded pair"
                    ),
                }
            }
        }
    }
}

/// Parses every certificate in a PEM bundle.
pub fn parse_certs(
    what: &'static str,
    source: &PemSource,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = source.load().map_err(|err| TlsError::Read {
        what,
        source_desc: source.describe(),
        err,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            source_desc: source.describe(),
            expected: "CERTIFICATE",
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            source_desc: source.describe(),
            expected: "CERTIFICATE",
            detail: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

/// A root store holding exactly the CAs in `bytes`, which came from `source`.
fn roots_from(source: &PemSource, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let certs = parse_certs("certificate-authority", &PemSource::Data(bytes.to_vec())).map_err(
        |e| match e {
            TlsError::Pem {
                what,
                expected,
                detail,
                ..
            } => TlsError::Pem {
                what,
                source_desc: source.describe(),
                expected,
                detail,
            },
            other => other,
        },
    )?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: "certificate-authority",
            source_desc: source.describe(),
            expected: "CA CERTIFICATE",
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn root_store(ca: Option<&PemSource>) -> Result<RootCertStore, TlsError> {
    match ca {
        Some(source) => {
            let bytes = source.load().map_err(|err| TlsError::Read {
                what: "certificate-authority",
                source_desc: source.describe(),
                err,
            })?;
            roots_from(source, &bytes)
        }
        None => {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for err in &native.errors {
                tracing::warn!(error = %err, "while loading the system trust store");
            }
            roots.add_parsable_certificates(native.certs);
            Ok(roots)
        }
    }
}

/// Loads a certificate chain and its key (PKCS#1 RSA, SEC1 EC or PKCS#8) and checks they match.
pub fn load_identity(
    provider: &CryptoProvider,
    cert: &PemSource,
    key: &PemSource,
) -> Result<CertifiedKey, TlsError> {
    let certs = parse_certs("client-certificate", cert)?;
    let key_bytes = key.load().map_err(|err| TlsError::Read {
        what: "client-key",
        source_desc: key.describe(),
        err,
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Pem {
        what: "client-key",
        source_desc: key.describe(),
        expected: "PRIVATE KEY (RSA, EC or PKCS#8)",
        detail: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Pem {
            what: "client-key",
            source_desc: key.describe(),
            expected: "usable PRIVATE KEY",
            detail: e.to_string(),
        })?;
    let certified = CertifiedKey::new(certs, signing);
    match certified.keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert.describe(),
                key: key.describe(),
            })
        }
        _ => Ok(certified),
    }
}

/// `insecure-skip-tls-verify`: accepts any certificate but still checks handshake signatures, so the
/// connection is at least bound to the presented key.
#[derive(Debug)]
struct InsecureVerifier(Arc<CryptoProvider>);

impl ServerCertVerifier for InsecureVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
