//! HTTPS served by ingest-api itself (`--tls-cert`, `--tls-key`): rustls with the aws-lc-rs
//! provider (TLS 1.3 and 1.2; X25519MLKEM768 offered first, then classical key exchanges),
//! the certificate chain and key read from PEM files and swapped while the server runs, so a
//! renewed certificate (cert-manager, certbot) is served without a restart. A new pair applies to
//! new handshakes; connections already open keep the one they began with.
//!
//! Without the flags ingest-api speaks plain HTTP, for a proxy or Ingress that ends TLS in front.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The pair of `--tls-cert`/`--tls-key`, read once; `None` when HTTPS is off.
pub fn from_config(config: &crate::Config) -> Result<Option<Arc<CertificateFiles>>, TlsError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => CertificateFiles::load(cert, key).map(Some),
        _ => Ok(None),
    }
}

/// Why a certificate/key pair could not be used. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: String },
    #[error("{path}: not a PEM certificate chain: {problem}")]
    BadCertificate { path: String, problem: String },
    #[error("{path}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {problem}")]
    BadKey { path: String, problem: String },
    #[error("{key} does not belong to the certificate in {cert}: {problem}")]
    Mismatch {
        cert: String,
        key: String,
        problem: String,
    },
    #[error("TLS settings: {0}")]
    Config(String),
}

/// The certificate files and the pair in force; rustls asks it for the pair at each handshake.
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertificateFiles {
    /// Reads the pair; an error if either file is unreadable or they do not match.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let pair = read_pair(cert, key, &provider)?;
        Ok(Arc::new(CertificateFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(pair)),
        }))
    }

    /// Rereads the files; on success new handshakes get the new pair, on an error the pair in
    /// force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = read_pair(&self.cert, &self.key, &self.provider)?;
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(pair),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(pair),
        }
        Ok(())
    }

    /// The rustls settings of the listener: TLS 1.2 and 1.3, no client certificates, the pair
    /// from `self` at every handshake (actix-web adds the `http/1.1` ALPN protocol).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        Ok(
            rustls::ServerConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(self.clone()),
        )
    }

    fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl std::fmt::Debug for CertificateFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The paths only: never the key.
        f.debug_struct("CertificateFiles")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertificateFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let cert_text = read(cert)?;
    let key_text = read(key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert.display().to_string(),
            problem: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.display().to_string(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| TlsError::BadKey {
        path: key.display().to_string(),
        problem: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::Mismatch {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        problem: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}
