//! Node identities in certificates: with mutual TLS, a node's certificate
//! carries the URI `pact://node/<id>` in its subject alternative names,
//! and a client's certificate carries none. The peer port serves only
//! certificates with an identity, and a Raft message must come from the
//! node its sender's certificate names. Trust in the identity is trust in
//! the cluster's CA: it must put a node URI only into that node's
//! certificate.

use crate::NodeId;

/// The scheme and path before the node id in a node's identity URI.
pub const NODE_URI_PREFIX: &str = "pact://node/";

/// Why a certificate's node identity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate does not parse: {0}")]
    Unparsable(String),
    #[error("certificate names no node (no subject alternative name {NODE_URI_PREFIX}<id>)")]
    NoNode,
    #[error("certificate's node identity {0:?} is not {NODE_URI_PREFIX}<decimal id>")]
    Malformed(String),
    #[error("certificate names more than one node: {0:?}")]
    Ambiguous(Vec<String>),
}

/// The identity URI of node `id`.
pub fn node_uri(id: NodeId) -> String {
    format!("{NODE_URI_PREFIX}{id}")
}

/// The node a URI names: `None` if it is not a node URI at all, an error
/// if it claims to be one but is not exactly `pact://node/<id>` in
/// canonical decimal (one id has one spelling, so two certificates cannot
/// name the same node in ways a reader would take for different nodes).
pub fn node_of_uri(uri: &str) -> Option<Result<NodeId, IdentityError>> {
    let rest = uri.strip_prefix(NODE_URI_PREFIX)?;
    let canonical = !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
        && (rest == "0" || !rest.starts_with('0'));
    Some(
        rest.parse::<u64>()
            .ok()
            .filter(|_| canonical)
            .map(NodeId)
            .ok_or_else(|| IdentityError::Malformed(uri.to_string())),
    )
}

/// The node a DER-encoded certificate names. Its signature is not checked
/// here: the caller reads only a certificate the TLS handshake verified.
pub fn node_of_certificate(der: &[u8]) -> Result<NodeId, IdentityError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with(NODE_URI_PREFIX) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(IdentityError::NoNode),
        [one] => node_of_uri(one).unwrap_or(Err(IdentityError::NoNode)),
        many => Err(IdentityError::Ambiguous(
            many.iter().map(|u| u.to_string()).collect(),
        )),
    }
}

/// The DER of the first certificate of a PEM file (a node's own
/// certificate, possibly followed by its chain).
pub fn first_certificate_der(pem: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| IdentityError::Unparsable(format!("PEM: {e}")))?;
    Ok(block.contents)
}

/// The node named by the first certificate of a PEM file.
pub fn node_of_pem(pem: &[u8]) -> Result<NodeId, IdentityError> {
    node_of_certificate(&first_certificate_der(pem)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    /// A self-signed certificate with `uris` (and a DNS name) as SANs.
    fn cert(uris: &[&str]) -> rcgen::Certificate {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        for u in uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        p.self_signed(&KeyPair::generate().unwrap()).unwrap()
    }

    fn of(uris: &[&str]) -> Result<NodeId, IdentityError> {
        node_of_certificate(cert(uris).der())
    }

    #[test]
    fn a_node_certificate_names_its_node() {
        assert_eq!(node_uri(NodeId(7)), "pact://node/7");
        assert_eq!(of(&["pact://node/7"]), Ok(NodeId(7)));
        // Other URIs beside it do not matter.
        assert_eq!(
            of(&["spiffe://example.org/x", "pact://node/12"]),
            Ok(NodeId(12))
        );
        assert_eq!(
            node_of_pem(cert(&["pact://node/3"]).pem().as_bytes()),
            Ok(NodeId(3))
        );
    }

    #[test]
    fn certificates_without_exactly_one_valid_node_name_none() {
        // A client's certificate: DNS names only.
        assert_eq!(of(&[]), Err(IdentityError::NoNode));
        assert_eq!(of(&["pact://client/1"]), Err(IdentityError::NoNode));
        assert_eq!(of(&["https://node/1"]), Err(IdentityError::NoNode));
        for bad in [
            "pact://node/",
            "pact://node/x",
            "pact://node/+1",
            "pact://node/01",
            "pact://node/1/2",
            "pact://node/-1",
            "pact://node/18446744073709551616",
        ] {
            assert_eq!(
                of(&[bad]),
                Err(IdentityError::Malformed(bad.to_string())),
                "{bad}"
            );
        }
        assert!(matches!(
            of(&["pact://node/1", "pact://node/2"]),
            Err(IdentityError::Ambiguous(_))
        ));
        // Even the same node twice: a CA that writes that is not trusted
        // to mean one thing.
        assert!(matches!(
            of(&["pact://node/1", "pact://node/1"]),
            Err(IdentityError::Ambiguous(_))
        ));
        assert!(matches!(
            node_of_certificate(b"not a certificate"),
            Err(IdentityError::Unparsable(_))
        ));
        assert!(matches!(
            node_of_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(IdentityError::Unparsable(_))
        ));
        assert_eq!(node_of_uri("pact://node/0"), Some(Ok(NodeId(0))));
        assert_eq!(node_of_uri("other"), None);
    }
}
