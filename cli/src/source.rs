//! Where `txn` took its cluster config from: `--config`, `PACT_CONFIG`, a
//! node named by `--endpoints` (or `PACT_ENDPOINTS`), or the embedded
//! default. An error about reaching the cluster says which,
//! since "connection refused" from a config the user did not know was in
//! use (PACT_CONFIG unset, so the built-in 127.0.0.1:7001-7003) is
//! otherwise a puzzle.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::ArgMatches;
use pact_client::ClientError;
use pact_common::{ClusterConfig, ConfigError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    Flag(PathBuf),
    Env(PathBuf),
    /// Asked of these nodes (their routing table).
    Endpoints(Vec<String>),
    Embedded,
}

impl ConfigSource {
    /// From the parsed arguments; `id` is the config argument's id and
    /// `endpoints` the endpoints argument's (which, given, wins).
    pub fn from_matches(m: &ArgMatches, id: &str, endpoints: &str) -> ConfigSource {
        // Given but empty (`--endpoints ""`) is an error later, not the
        // embedded default.
        if let Ok(Some(e)) = m.try_get_many::<String>(endpoints) {
            return ConfigSource::Endpoints(e.filter(|a| !a.is_empty()).cloned().collect());
        }
        let path = m.get_one::<PathBuf>(id).cloned();
        match (path, m.value_source(id)) {
            (Some(p), Some(ValueSource::EnvVariable)) => ConfigSource::Env(p),
            (Some(p), _) => ConfigSource::Flag(p),
            (None, _) => ConfigSource::Embedded,
        }
    }

    pub fn load(&self) -> Result<ClusterConfig, ConfigError> {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Env(p) => ClusterConfig::load(p),
            ConfigSource::Embedded => Ok(ClusterConfig::embedded_default()),
            ConfigSource::Endpoints(_) => Err(ConfigError::Invalid(
                "endpoints give no config file: the routing table is asked of them".into(),
            )),
        }
    }

    /// `config: FILE (from --config)`, and so on.
    pub fn describe(&self) -> String {
        match self {
            ConfigSource::Flag(p) => format!("config: {} (from --config)", p.display()),
            ConfigSource::Env(p) => format!("config: {} (from PACT_CONFIG)", p.display()),
            ConfigSource::Endpoints(e) => {
                format!(
                    "routing table asked of {} (from --endpoints or PACT_ENDPOINTS)",
                    e.join(",")
                )
            }
            ConfigSource::Embedded => {
                "config: the embedded default (no --config given and PACT_CONFIG unset)".into()
            }
        }
    }

    /// `e` with the config's origin added where it helps: when the cluster
    /// could not be reached.
    pub fn annotate(&self, e: ClientError) -> ClientError {
        let hint = match self {
            ConfigSource::Embedded => {
                "; start a cluster there with `txn playground`, or name yours with --config or PACT_CONFIG"
            }
            _ => "",
        };
        match e {
            ClientError::Unreachable(m) => {
                ClientError::Unreachable(format!("{m}; {}{hint}", self.describe()))
            }
            ClientError::Unavailable(m) => {
                ClientError::Unavailable(format!("{m}; {}", self.describe()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn matches(args: &[&str], env: Option<&str>) -> ArgMatches {
        // A private variable: the test must not depend on the caller's
        // PACT_CONFIG.
        let var = "PACT_TEST_SOURCE_CONFIG";
        match env {
            Some(v) => std::env::set_var(var, v),
            None => std::env::remove_var(var),
        }
        Command::new("txn")
            .arg(
                Arg::new("config")
                    .long("config")
                    .env(var)
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .try_get_matches_from(args)
            .unwrap()
    }

    #[test]
    fn tells_flag_environment_and_default_apart() {
        let m = matches(&["txn", "--config", "a.toml"], Some("b.toml"));
        assert_eq!(
            ConfigSource::from_matches(&m, "config", "endpoints"),
            ConfigSource::Flag("a.toml".into())
        );
        let m = matches(&["txn"], Some("b.toml"));
        let env = ConfigSource::from_matches(&m, "config", "endpoints");
        assert_eq!(env, ConfigSource::Env("b.toml".into()));
        assert!(env.describe().contains("PACT_CONFIG"));
        let m = matches(&["txn"], None);
        let def = ConfigSource::from_matches(&m, "config", "endpoints");
        assert_eq!(def, ConfigSource::Embedded);
        assert!(
            def.describe().contains("PACT_CONFIG unset"),
            "{}",
            def.describe()
        );
    }

    #[test]
    fn endpoints_win_and_an_empty_list_stays_endpoints() {
        let cmd = || {
            Command::new("txn")
                .arg(Arg::new("config").long("config"))
                .arg(
                    Arg::new("endpoints")
                        .long("endpoints")
                        .value_delimiter(',')
                        .num_args(1),
                )
        };
        let m = cmd()
            .try_get_matches_from(["txn", "--endpoints", "a:1,b:2"])
            .unwrap();
        let e = ConfigSource::from_matches(&m, "config", "endpoints");
        assert_eq!(e, ConfigSource::Endpoints(vec!["a:1".into(), "b:2".into()]));
        assert!(e.describe().contains("a:1,b:2"), "{}", e.describe());
        assert!(e.load().is_err());
        let m = cmd()
            .try_get_matches_from(["txn", "--endpoints", ""])
            .unwrap();
        assert_eq!(
            ConfigSource::from_matches(&m, "config", "endpoints"),
            ConfigSource::Endpoints(vec![])
        );
        let m = cmd().try_get_matches_from(["txn"]).unwrap();
        assert_eq!(
            ConfigSource::from_matches(&m, "config", "endpoints"),
            ConfigSource::Embedded
        );
    }

    #[test]
    fn only_reachability_errors_are_annotated() {
        let e = ConfigSource::Embedded.annotate(ClientError::Unreachable("x".into()));
        let text = e.to_string();
        assert!(
            text.contains("embedded default") && text.contains("txn playground"),
            "{text}"
        );
        let e = ConfigSource::Flag("c.toml".into()).annotate(ClientError::Unavailable("y".into()));
        assert!(e.to_string().contains("c.toml (from --config)"), "{e}");
        let e = ConfigSource::Embedded.annotate(ClientError::Aborted(pact_client::Abort::new(
            pact_client::AbortKind::Conflict,
            "z",
        )));
        assert_eq!(
            e,
            ClientError::Aborted(pact_client::Abort::new(
                pact_client::AbortKind::Conflict,
                "z"
            ))
        );
    }
}
