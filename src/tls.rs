//! rustls client configuration for the upstream: trust roots from the kubeconfig CA (or the system store),
//! `insecure-skip-tls-verify`, `tls-server-name`, and the client certificate, served through a resolver so
//! credential refresh can swap it without rebuilding the connector.

use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::kubeconfig::{PemSource, TlsSettings};

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

/// The crypto provider kproxy uses everywhere (ring: small and fast to build).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client certificate presented to the API server; swappable at run time.
#[derive(Debug, Default)]
pub struct ClientIdentity {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ClientIdentity {
    /// An identity presenting `key`.
    pub fn new(key: Option<Arc<CertifiedKey>>) -> Self {
        Self {
            current: RwLock::new(key),
        }
    }

    /// Replaces the presented certificate; new handshakes use it.
    pub fn set(&self, key: Option<Arc<CertifiedKey>>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// The certificate currently presented.
    pub fn get(&self) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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

/// Everything the connectors need.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// The client configuration, without ALPN: each connector sets the protocols it speaks
    /// (`h2` + `http/1.1` for ordinary requests, `http/1.1` alone for upgrades).
    pub config: Arc<ClientConfig>,
    /// `tls-server-name`, when set.
    pub server_name: Option<ServerName<'static>>,
    /// The swappable client certificate.
    pub identity: Arc<ClientIdentity>,
}

/// Reads and checks the TLS material and builds the client configurations.
pub fn build(settings: &TlsSettings) -> Result<TlsMaterial, TlsError> {
    let provider = provider();
    let key = match (&settings.client_cert, &settings.client_key) {
        (Some(cert), Some(key)) => Some(Arc::new(load_identity(&provider, cert, key)?)),
        _ => None,
    };
    let identity = Arc::new(ClientIdentity::new(key));
    let server_name = settings
        .server_name
        .as_ref()
        .map(|n| ServerName::try_from(n.clone()).map_err(|_| TlsError::ServerName(n.clone())))
        .transpose()?;

    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if settings.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(InsecureVerifier(provider.clone())))
    } else {
        builder.with_root_certificates(root_store(settings.ca.as_ref())?)
    };
    let config = builder.with_client_cert_resolver(identity.clone());
    Ok(TlsMaterial {
        config: Arc::new(config),
        server_name,
        identity,
    })
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

fn root_store(ca: Option<&PemSource>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(source) => {
            for cert in parse_certs("certificate-authority", source)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    what: "certificate-authority",
                    source_desc: source.describe(),
                    expected: "CA CERTIFICATE",
                    detail: e.to_string(),
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for err in &native.errors {
                tracing::warn!(error = %err, "while loading the system trust store");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }
    Ok(roots)
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
