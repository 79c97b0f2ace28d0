//! Mutual TLS material for clients and for nodes' internal clients.

use std::path::Path;

use pact_common::{ClusterConfig, NodeId};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ClientError;

/// A CA to trust and a certificate (with its key) to present, PEM-encoded.
/// With it, a [`crate::Client`] dials every node over TLS, checks the
/// node's certificate against the CA (and the address's host name or IP
/// against the certificate), and presents its own certificate, which the
/// node checks against the same CA.
#[derive(Clone)]
pub struct Tls {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

fn read(what: &str, path: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(Path::new(path))
        .map_err(|e| ClientError::InvalidInput(format!("cannot read TLS {what} {path}: {e}")))
}

/// Paths given on a command line; each overrides the config's.
#[derive(Clone, Debug, Default)]
pub struct TlsPaths {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl TlsPaths {
    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

impl Tls {
    /// Reads the three PEM files.
    pub fn load(ca: &str, cert: &str, key: &str) -> Result<Tls, ClientError> {
        Ok(Tls {
            ca: read("CA certificate", ca)?,
            cert: read("certificate", cert)?,
            key: read("key", key)?,
        })
    }

    /// What a client presents: `flags` where given, else the config's
    /// `[tls]` CA and client certificate. `None` (plain connections) if
    /// neither asks for TLS; an error if the material is incomplete.
    pub fn for_client(
        config: &ClusterConfig,
        flags: &TlsPaths,
    ) -> Result<Option<Tls>, ClientError> {
        let section = config.tls.as_ref();
        if section.is_none() && flags.is_empty() {
            return Ok(None);
        }
        let pick = |flag: &Option<String>, cfg: Option<&String>, what: &str, opt: &str| {
            flag.clone().or_else(|| cfg.cloned()).ok_or_else(|| {
                ClientError::InvalidInput(format!(
                    "TLS needs a {what}: pass {opt} (or set it in the config's [tls] section)"
                ))
            })
        };
        let ca = pick(
            &flags.ca,
            section.map(|t| &t.ca),
            "CA certificate",
            "--cacert",
        )?;
        let cert = pick(
            &flags.cert,
            section.and_then(|t| t.client_cert.as_ref()),
            "client certificate",
            "--cert",
        )?;
        let key = pick(
            &flags.key,
            section.and_then(|t| t.client_key.as_ref()),
            "client key",
            "--key",
        )?;
        Tls::load(&ca, &cert, &key).map(Some)
    }

    /// What node `id` serves and presents: `flags` where given, else the
    /// config's `[tls]` CA and node certificate. `None` if neither asks
    /// for TLS.
    pub fn for_node(
        config: &ClusterConfig,
        id: NodeId,
        flags: &TlsPaths,
    ) -> Result<Option<Tls>, ClientError> {
        let section = config.tls.as_ref();
        if section.is_none() && flags.is_empty() {
            return Ok(None);
        }
        let (cert, key) = section.map(|t| t.node_files(id)).unzip();
        let pick = |flag: &Option<String>, cfg: Option<String>, what: &str, opt: &str| {
            flag.clone().or(cfg).ok_or_else(|| {
                ClientError::InvalidInput(format!(
                    "TLS needs a {what}: pass {opt} (or set it in the config's [tls] section)"
                ))
            })
        };
        let ca = pick(
            &flags.ca,
            section.map(|t| t.ca.clone()),
            "CA certificate",
            "--cacert",
        )?;
        let cert = pick(&flags.cert, cert, "node certificate", "--cert")?;
        let key = pick(&flags.key, key, "node key", "--key")?;
        Tls::load(&ca, &cert, &key).map(Some)
    }

    /// The tonic client configuration.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}
