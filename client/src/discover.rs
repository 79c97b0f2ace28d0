//! A client that knows only some nodes' addresses (`txn --endpoints`, as
//! with etcdctl): ask them in turn for the routing table
//! (`Admin.Topology`) and route by the first answer that holds together.
//!
//! Every node answers from its cluster config and the metadata group's
//! tables, so any reachable node will do; an endpoint that refuses, times out, is not a Pact client port, or
//! sends a table that does not validate is skipped, and the error names
//! what each one said. TLS comes from the caller (the flags), since there
//! is no config to read it from.

use std::time::Duration;

use pact_common::{ClusterConfig, ShardRecord};
use pact_proto as pb;
use tonic::Code;

use crate::convert::{config_from_topology, connection_refused};
use crate::{ClientError, Tls};

/// Where one of a client's two ways to find the cluster (a config file,
/// or endpoints) came from, for [`prefer_endpoints`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Given {
    Not,
    Flag,
    Env,
}

/// Whether to ask endpoints rather than read a config (the `txn` and
/// `bench` rule): a flag beats an environment variable, so an exported
/// PACT_CONFIG does not block `--endpoints`, nor PACT_ENDPOINTS `--config`;
/// two flags, or two variables, are an error naming both.
pub fn prefer_endpoints(config: Given, endpoints: Given) -> Result<bool, String> {
    match (config, endpoints) {
        (_, Given::Not) | (Given::Flag, Given::Env) => Ok(false),
        (Given::Not, _) | (Given::Env, Given::Flag) => Ok(true),
        _ => Err(
            "both a config (--config or PACT_CONFIG) and endpoints (--endpoints or \
                  PACT_ENDPOINTS) are given: name one"
                .into(),
        ),
    }
}

/// How long one endpoint may take to answer.
pub const ASK_WITHIN: Duration = Duration::from_secs(3);

/// The cluster config the first of `endpoints` (`host:port` of client
/// ports) to answer describes. `Unreachable` if every endpoint refused the
/// connection, `Unavailable` (with each endpoint's reason) otherwise.
pub async fn discover(
    endpoints: &[String],
    tls: Option<&Tls>,
) -> Result<ClusterConfig, ClientError> {
    discover_table(endpoints, tls).await.map(|f| f.config)
}

/// What a routing table says: the cluster config it describes, and the
/// metadata group's shard table (empty if the node had none), which a
/// client adopts ([`crate::Client::adopt`]).
#[derive(Clone, Debug)]
pub struct Found {
    pub config: ClusterConfig,
    pub shards: Vec<ShardRecord>,
    pub epoch: u64,
    /// The metadata group's replicas (empty: the config's rule).
    pub meta: Vec<pact_common::NodeId>,
}

/// [`discover`], with the shard table.
pub async fn discover_table(endpoints: &[String], tls: Option<&Tls>) -> Result<Found, ClientError> {
    if endpoints.is_empty() {
        return Err(ClientError::InvalidInput(
            "no endpoints given (host:port[,host:port...])".into(),
        ));
    }
    let mut why = Vec::new();
    let mut refused = 0;
    let mut malformed = 0;
    for addr in endpoints {
        let ch = match crate::channel_to(addr, tls) {
            Ok(ch) => ch,
            Err(e) => {
                malformed += 1;
                why.push(format!("{addr}: {e}"));
                continue;
            }
        };
        let mut c = pb::admin_client::AdminClient::new(ch);
        match tokio::time::timeout(ASK_WITHIN, c.topology(pb::TopologyRequest {})).await {
            Ok(Ok(r)) => match config_from_topology(r.into_inner()) {
                Ok(found) => return Ok(found),
                Err(e) => why.push(format!(
                    "{addr} sent a routing table that does not hold together: {e}"
                )),
            },
            Ok(Err(s)) if connection_refused(&s) => {
                refused += 1;
                why.push(format!("{addr}: connection refused"));
            }
            Ok(Err(s)) => {
                let hint = if s.code() == Code::Unimplemented {
                    " (not a Pact client port? give each node's addr, not its peer_addr)"
                } else {
                    ""
                };
                why.push(format!("{addr}: {}{hint}", s.message()));
            }
            Err(_) => why.push(format!("{addr} did not answer within {ASK_WITHIN:?}")),
        }
    }
    let what = format!("no endpoint gave the routing table: {}", why.join("; "));
    Err(if malformed == endpoints.len() {
        ClientError::InvalidInput(what)
    } else if refused == endpoints.len() {
        ClientError::Unreachable(what)
    } else {
        ClientError::Unavailable(what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_beats_a_variable_and_a_tie_is_an_error() {
        use Given::*;
        assert_eq!(prefer_endpoints(Not, Not), Ok(false));
        assert_eq!(prefer_endpoints(Flag, Not), Ok(false));
        assert_eq!(prefer_endpoints(Env, Not), Ok(false));
        assert_eq!(prefer_endpoints(Not, Flag), Ok(true));
        assert_eq!(prefer_endpoints(Not, Env), Ok(true));
        assert_eq!(prefer_endpoints(Env, Flag), Ok(true));
        assert_eq!(prefer_endpoints(Flag, Env), Ok(false));
        for (c, e) in [(Flag, Flag), (Env, Env)] {
            assert!(prefer_endpoints(c, e).unwrap_err().contains("name one"));
        }
    }
}
