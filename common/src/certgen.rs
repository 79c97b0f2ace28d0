//! Certificates for a local cluster's mutual TLS (feature `certgen`): a CA,
//! one certificate per node, one for clients. Used by `txn playground
//! --tls` and the tests; production clusters bring their own PKI.
//!
//! Node certificates are good for both TLS roles, because a node is a
//! server on its ports and a client of its peers, and carry the node's
//! identity (`pact://node/<id>`, see [`crate::identity`]); the client
//! certificate carries none, so peer ports refuse it. They never expire (the
//! rcgen default validity), which suits a throwaway playground only.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::config::{ClusterConfig, TlsConfig};
use crate::NodeId;
use rcgen::string::Ia5String;

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Pem").finish_non_exhaustive()
    }
}

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate certificate: {0}")]
    Generate(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn gen<E: std::fmt::Display>(e: E) -> CertError {
    CertError::Generate(e.to_string())
}

/// A certificate authority that can sign node and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: Pem,
}

impl Ca {
    /// A fresh self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Ca, CertError> {
        let mut params = CertificateParams::new(Vec::new()).map_err(gen)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().map_err(gen)?;
        let cert = params.self_signed(&key).map_err(gen)?;
        let pem = Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA's own certificate (what every party trusts) and key.
    pub fn pem(&self) -> &Pem {
        &self.pem
    }

    /// A certificate for `common_name`, valid for the host names or IP
    /// addresses in `hosts`, usable as TLS server and client. It names no
    /// node, so it is a client's: peer ports refuse it.
    pub fn issue(&self, common_name: &str, hosts: &[String]) -> Result<Pem, CertError> {
        self.issue_with(common_name, hosts, None)
    }

    /// Node `id`'s certificate: like [`Ca::issue`], plus the node's
    /// identity ([`crate::identity::node_uri`]), which peer ports require
    /// and bind Raft messages to.
    pub fn issue_node(&self, id: NodeId, hosts: &[String]) -> Result<Pem, CertError> {
        self.issue_with(&format!("pact node {id}"), hosts, Some(id))
    }

    fn issue_with(
        &self,
        common_name: &str,
        hosts: &[String],
        node: Option<NodeId>,
    ) -> Result<Pem, CertError> {
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(gen)?;
        if let Some(id) = node {
            let uri = Ia5String::try_from(crate::identity::node_uri(id)).map_err(gen)?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().map_err(gen)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(gen)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The host part of `host:port`, without IPv6 brackets.
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// Writes `text` to `path`; `secret` files are readable by the owner only.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// Makes a CA, a certificate for every node of `config` (valid for the
/// hosts of its two addresses and `localhost`) and a client certificate,
/// writes them as PEM files into `dir` (`ca.pem`, `node-<id>.pem`,
/// `node-<id>.key`, `client.pem`, `client.key`), and returns the `[tls]`
/// section naming them, with paths relative to `relative_to` where `dir`
/// lies under it (so a config file there can move with its folder).
pub fn write_cluster_certs(
    config: &ClusterConfig,
    dir: &Path,
    relative_to: &Path,
) -> Result<TlsConfig, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let ca = Ca::new("Pact cluster CA")?;
    write(&dir.join("ca.pem"), &ca.pem().cert, false)?;
    for n in &config.nodes {
        let mut hosts = vec![host_of(&n.addr), host_of(&n.peer_addr), "localhost".into()];
        hosts.sort();
        hosts.dedup();
        let pem = ca.issue_node(n.id, &hosts)?;
        write(&dir.join(format!("node-{}.pem", n.id)), &pem.cert, false)?;
        write(&dir.join(format!("node-{}.key", n.id)), &pem.key, true)?;
    }
    let client = ca.issue("pact client", &["localhost".to_string()])?;
    write(&dir.join("client.pem"), &client.cert, false)?;
    write(&dir.join("client.key"), &client.key, true)?;
    let shown = |name: &str| {
        let p = dir.join(name);
        p.strip_prefix(relative_to)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    Ok(TlsConfig {
        ca: shown("ca.pem"),
        cert: shown("node-{id}.pem"),
        key: shown("node-{id}.key"),
        client_cert: Some(shown("client.pem")),
        client_key: Some(shown("client.key")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_file_the_tls_section_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ClusterConfig::local_with_coordinators(2, 1, 2, 1, 7001).unwrap();
        let tls = write_cluster_certs(&cfg, &dir.path().join("certs"), dir.path()).unwrap();
        assert_eq!(tls.ca, "certs/ca.pem");
        cfg.tls = Some(tls);
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, cfg.to_toml_string()).unwrap();
        let loaded = ClusterConfig::load(&path).unwrap();
        let t = loaded.tls.unwrap();
        for id in 1..=3 {
            let (cert, key) = t.node_files(crate::NodeId(id));
            let pem = std::fs::read(cert).unwrap();
            // Each node's certificate names that node.
            assert_eq!(crate::identity::node_of_pem(&pem), Ok(crate::NodeId(id)));
            assert!(std::fs::read_to_string(key)
                .unwrap()
                .contains("PRIVATE KEY"));
        }
        // The client's names none: it cannot pass for a node.
        let client = std::fs::read(t.client_cert.as_ref().unwrap()).unwrap();
        assert_eq!(
            crate::identity::node_of_pem(&client),
            Err(crate::identity::IdentityError::NoNode)
        );
        for p in [t.ca, t.client_cert.unwrap(), t.client_key.unwrap()] {
            assert!(Path::new(&p).is_absolute(), "{p} resolved against the file");
            assert!(std::fs::metadata(&p).is_ok(), "{p}");
        }
        assert_eq!(host_of("[::1]:7001"), "::1");
        assert_eq!(host_of("db1.example:7001"), "db1.example");
    }
}
