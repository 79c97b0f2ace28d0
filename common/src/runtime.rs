//! The runtime flag every server binary takes (`#[command(flatten)]`):
//! how many worker threads its tokio runtime runs.
//!
//! One node per machine wants one worker per core, tokio's default. Several
//! nodes on one machine (the playground) want fewer each: three processes
//! with a worker per core each, plus their storage writers and fjall's
//! flush threads, on two cores spent their time switching between threads
//! (docs/performance.md, "Worker threads per node").

/// `--worker-threads`, or `PACT_WORKER_THREADS`.
#[derive(clap::Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// Worker threads of this process's async runtime (default: one per
    /// core; `TOKIO_WORKER_THREADS` is honoured too when this is unset).
    #[arg(
        long,
        env = "PACT_WORKER_THREADS",
        value_name = "N",
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub worker_threads: Option<u16>,
}

impl RuntimeArgs {
    /// The server's multi-threaded runtime, with the worker count asked
    /// for (tokio's default otherwise); a bad `TOKIO_WORKER_THREADS` is an
    /// `InvalidInput` error, where tokio would panic.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        let workers = self
            .worker_threads()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        if let Some(n) = workers {
            rt.worker_threads(n);
        }
        rt.enable_all().build()
    }

    /// The worker count to configure, if not tokio's default. tokio would
    /// panic on a bad `TOKIO_WORKER_THREADS`; this reports it instead.
    fn worker_threads(&self) -> Result<Option<usize>, String> {
        if let Some(n) = self.worker_threads {
            return Ok(Some(n.into()));
        }
        match std::env::var("TOKIO_WORKER_THREADS") {
            Err(_) => Ok(None),
            Ok(v) => parse_count(&v).map(Some).ok_or_else(|| {
                format!("TOKIO_WORKER_THREADS={v:?}: expected a number from 1 to 1024")
            }),
        }
    }
}

fn parse_count(v: &str) -> Option<usize> {
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=1024).contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_counts_parse_within_bounds() {
        assert_eq!(parse_count("1"), Some(1));
        assert_eq!(parse_count(" 4 "), Some(4));
        assert_eq!(parse_count("0"), None);
        assert_eq!(parse_count("1025"), None);
        assert_eq!(parse_count("two"), None);
        let flag = RuntimeArgs {
            worker_threads: Some(3),
        };
        assert_eq!(flag.worker_threads(), Ok(Some(3)), "the flag wins");
    }
}
