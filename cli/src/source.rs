//! Where `txn` took its cluster config from: `--config`, `PACT_CONFIG`, a
//! node named by `--endpoints` (or `PACT_ENDPOINTS`), or the embedded
//! default. An error about reaching the cluster says which,
//! since "connection refused" from a config the user did not know was in
//! use (PACT_CONFIG unset, so the built-in 127.0.0.1:7001-7003) is
//! otherwise a puzzle.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::ArgMatches;
use pact_client::{prefer_endpoints, ClientError, Given};
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
    /// `endpoints` the endpoints argument's. A flag beats an environment
    /// variable (so an exported PACT_CONFIG does not block `--endpoints`);
    /// both as flags, or both from the environment, is an error. Endpoints
    /// given but empty (`--endpoints ""`) or not `host:port` are an error
    /// too, not the embedded default.
    pub fn from_matches(m: &ArgMatches, id: &str, endpoints: &str) -> Result<ConfigSource, String> {
        let path = m.get_one::<PathBuf>(id).cloned();
        let eps: Option<Vec<String>> = m
            .try_get_many::<String>(endpoints)
            .ok()
            .flatten()
            .map(|e| e.filter(|a| !a.trim().is_empty()).cloned().collect());
        let given = |arg: &str, present: bool| match m.value_source(arg) {
            _ if !present => Given::Not,
            Some(ValueSource::EnvVariable) => Given::Env,
            _ => Given::Flag,
        };
        let use_endpoints =
            prefer_endpoints(given(id, path.is_some()), given(endpoints, eps.is_some()))?;
        if use_endpoints {
            let eps = eps.unwrap_or_default();
            if eps.is_empty() {
                return Err("no endpoints given: --endpoints HOST:PORT[,HOST:PORT...]".into());
            }
            if let Some(bad) = eps.iter().find(|e| !looks_like_host_port(e)) {
                return Err(format!("endpoint {bad:?} is not HOST:PORT"));
            }
            return Ok(ConfigSource::Endpoints(eps));
        }
        Ok(match (path, m.value_source(id)) {
            (Some(p), Some(ValueSource::EnvVariable)) => ConfigSource::Env(p),
            (Some(p), _) => ConfigSource::Flag(p),
            (None, _) => ConfigSource::Embedded,
        })
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

/// `host:port` with a port number (the host is checked when connecting).
fn looks_like_host_port(e: &str) -> bool {
    match e.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    /// Only a config argument, its variable set to `env` (or unset).
    fn matches(args: &[&str], env: Option<&str>) -> ArgMatches {
        command(
            ("PACT_TEST_SOURCE_ONE_C", "PACT_TEST_SOURCE_ONE_E"),
            args,
            env,
            None,
        )
    }

    #[test]
    fn tells_flag_environment_and_default_apart() {
        let m = matches(&["txn", "--config", "a.toml"], Some("b.toml"));
        assert_eq!(
            ConfigSource::from_matches(&m, "config", "endpoints"),
            Ok(ConfigSource::Flag("a.toml".into()))
        );
        let m = matches(&["txn"], Some("b.toml"));
        let env = ConfigSource::from_matches(&m, "config", "endpoints").unwrap();
        assert_eq!(env, ConfigSource::Env("b.toml".into()));
        assert!(env.describe().contains("PACT_CONFIG"));
        let m = matches(&["txn"], None);
        let def = ConfigSource::from_matches(&m, "config", "endpoints").unwrap();
        assert_eq!(def, ConfigSource::Embedded);
        assert!(
            def.describe().contains("PACT_CONFIG unset"),
            "{}",
            def.describe()
        );
    }

    /// `--config` and `--endpoints`, each with its own private variable
    /// (set to the given value, or unset): the tests must not depend on
    /// the caller's PACT_CONFIG or PACT_ENDPOINTS.
    fn both(args: &[&str], config_env: Option<&str>, endpoints_env: Option<&str>) -> ArgMatches {
        let vars = ("PACT_TEST_SOURCE_BOTH_C", "PACT_TEST_SOURCE_BOTH_E");
        command(vars, args, config_env, endpoints_env)
    }

    /// Tests run in parallel: each names its own variables (`vars`).
    fn command(
        (cv, ev): (&'static str, &'static str),
        args: &[&str],
        config_env: Option<&str>,
        endpoints_env: Option<&str>,
    ) -> ArgMatches {
        for (var, v) in [(cv, config_env), (ev, endpoints_env)] {
            match v {
                Some(v) => std::env::set_var(var, v),
                None => std::env::remove_var(var),
            }
        }
        Command::new("txn")
            .arg(
                Arg::new("config")
                    .long("config")
                    .env(cv)
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .arg(
                Arg::new("endpoints")
                    .long("endpoints")
                    .env(ev)
                    .value_delimiter(',')
                    .num_args(1),
            )
            .try_get_matches_from(args)
            .unwrap()
    }

    #[test]
    fn a_flag_beats_the_environment_and_bad_endpoints_are_refused() {
        let pick = |m: &ArgMatches| ConfigSource::from_matches(m, "config", "endpoints");
        let e = pick(&both(&["txn", "--endpoints", "a:1,b:2"], None, None)).unwrap();
        assert_eq!(e, ConfigSource::Endpoints(vec!["a:1".into(), "b:2".into()]));
        assert!(e.describe().contains("a:1,b:2"), "{}", e.describe());
        assert!(e.load().is_err());
        // An exported config does not block --endpoints, nor exported
        // endpoints --config.
        let m = both(&["txn", "--endpoints", "a:1"], Some("c.toml"), None);
        assert_eq!(pick(&m), Ok(ConfigSource::Endpoints(vec!["a:1".into()])));
        let m = both(&["txn", "--config", "c.toml"], None, Some("a:1"));
        assert_eq!(pick(&m), Ok(ConfigSource::Flag("c.toml".into())));
        let m = both(&["txn"], None, Some("a:1"));
        assert_eq!(pick(&m), Ok(ConfigSource::Endpoints(vec!["a:1".into()])));
        // Two flags, or two variables: name one.
        let m = both(
            &["txn", "--config", "c.toml", "--endpoints", "a:1"],
            None,
            None,
        );
        assert!(pick(&m).unwrap_err().contains("name one"));
        let m = both(&["txn"], Some("c.toml"), Some("a:1"));
        assert!(pick(&m).is_err());
        // Empty or malformed endpoints: an error, not the default.
        for bad in ["", ",", "nohost", "h:notaport", ":7001", "h:70000"] {
            let m = both(&["txn", "--endpoints", bad], None, None);
            assert!(pick(&m).is_err(), "{bad:?}");
        }
        assert_eq!(
            pick(&both(&["txn"], None, None)),
            Ok(ConfigSource::Embedded)
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
