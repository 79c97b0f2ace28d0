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
        Self::from_section(config.tls.as_ref(), flags)
    }

    /// What a client with no config file presents and trusts: `flags`
    /// only (`None` if they are empty).
    pub fn from_flags(flags: &TlsPaths) -> Result<Option<Tls>, ClientError> {
        Self::from_section(None, flags)
    }

    fn from_section(
        section: Option<&pact_common::TlsConfig>,
        flags: &TlsPaths,
    ) -> Result<Option<Tls>, ClientError> {
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
    /// for TLS. The certificate must name node `id`
    /// ([`pact_common::identity`]): peers refuse any other, so a node with
    /// the wrong one is stopped at start rather than left unheard.
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
        let tls = Tls::load(&ca, &cert, &key)?;
        match pact_common::identity::node_of_pem(&tls.cert) {
            Ok(named) if named == id => Ok(Some(tls)),
            Ok(named) => Err(ClientError::InvalidInput(format!(
                "node certificate {cert} is node {named}'s ({}), not node {id}'s",
                pact_common::identity::node_uri(named)
            ))),
            Err(e) => Err(ClientError::InvalidInput(format!(
                "node certificate {cert}: {e}; the peers of node {id} accept only a \
                 certificate naming {}",
                pact_common::identity::node_uri(id)
            ))),
        }
    }

    /// The tonic client configuration.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_starts_only_with_a_certificate_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ClusterConfig::local(3, 1, 3, 7001).unwrap();
        // Relative to a folder the files are not in: absolute paths.
        let tls =
            pact_common::certgen::write_cluster_certs(&cfg, dir.path(), Path::new("/nonexistent"))
                .unwrap();
        let client = (tls.client_cert.clone(), tls.client_key.clone());
        cfg.tls = Some(tls);
        let none = TlsPaths::default();
        assert!(Tls::for_node(&cfg, NodeId(2), &none).unwrap().is_some());

        let file = |name: &str| Some(dir.path().join(name).display().to_string());
        let other = TlsPaths {
            cert: file("node-1.pem"),
            key: file("node-1.key"),
            ..TlsPaths::default()
        };
        let err = Tls::for_node(&cfg, NodeId(2), &other).unwrap_err();
        assert!(
            err.to_string()
                .contains("is node 1's (pact://node/1), not node 2's"),
            "{err}"
        );
        let as_client = TlsPaths {
            cert: client.0,
            key: client.1,
            ..TlsPaths::default()
        };
        let err = Tls::for_node(&cfg, NodeId(2), &as_client).unwrap_err();
        assert!(err.to_string().contains("names no node"), "{err}");
        // A client may present its own: nothing is asked of its identity.
        assert!(Tls::for_client(&cfg, &none).unwrap().is_some());
    }
}
