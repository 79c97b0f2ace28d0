//! The coordinator's counters and histograms (Prometheus).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::machine::Outcome;

pub struct Metrics {
    pub registry: Registry,
    /// Commit outcomes told to clients, by outcome and path.
    pub outcomes: IntCounterVec,
    /// Aborts reported to clients (a failed request or commit) or made
    /// here (a transaction expired, or dropped by a leadership change),
    /// by reason; each transaction once.
    pub aborts: IntCounterVec,
    /// Open transactions (sessions) on this replica, by group; only a
    /// leader has any.
    pub sessions: IntGaugeVec,
    /// Duration of each 2PC phase: `one_phase`, `prepare`, `log`, `decide`.
    pub phase_seconds: HistogramVec,
    /// Records in the recovery log by kind (`decision`, `staging`,
    /// `unfinished`), as counted by the leader's last garbage collection.
    pub records: IntGaugeVec,
    /// Off-path records (finished commits, one-phase commits) appended,
    /// by how: in a staging append's entry (`carried`) or in one of the
    /// recorder's own (`alone`).
    pub records_appended: IntCounterVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let outcomes = IntCounterVec::new(
            Opts::new(
                "pact_txn_outcomes_total",
                "Commit outcomes reported to clients",
            ),
            &["outcome"],
        )?;
        let aborts = IntCounterVec::new(
            Opts::new(
                "pact_txn_aborts_total",
                "Transactions the coordinator aborted or reported aborted, by reason",
            ),
            &["reason"],
        )?;
        let phase_seconds = HistogramVec::new(
            HistogramOpts::new("pact_2pc_phase_seconds", "Duration of 2PC phases").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["phase"],
        )?;
        let sessions = IntGaugeVec::new(
            Opts::new(
                "pact_coordinator_sessions",
                "Transactions open at this coordinator (begun, not yet committed or rolled back)",
            ),
            &["group"],
        )?;
        let records = pact_raft::metrics::txn_records()?;
        registry.register(Box::new(records.clone()))?;
        let records_appended = IntCounterVec::new(
            Opts::new(
                "pact_coordinator_records_appended_total",
                "Off-path records proposed to the recovery log: in a staging append's entry (how=carried) or in their own (how=alone)",
            ),
            &["how"],
        )?;
        for how in ["carried", "alone"] {
            records_appended.with_label_values(&[how]);
        }
        registry.register(Box::new(records_appended.clone()))?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(aborts.clone()))?;
        registry.register(Box::new(phase_seconds.clone()))?;
        Ok(Metrics {
            registry,
            outcomes,
            aborts,
            sessions,
            phase_seconds,
            records,
            records_appended,
        })
    }

    pub fn outcome(&self, o: &Outcome) {
        let label = match o {
            Outcome::Committed => "committed",
            Outcome::Aborted(a) => {
                self.abort(a.kind);
                "aborted"
            }
            Outcome::Unknown(_) => "unknown",
            Outcome::Open(_) => "open",
            Outcome::Expired(_) => "expired",
        };
        self.outcomes.with_label_values(&[label]).inc();
    }

    /// Count one abort, by its kind.
    pub fn abort(&self, kind: pact_common::AbortKind) {
        self.aborts.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn phase(&self, phase: &str, started: std::time::Instant) {
        self.phase_seconds
            .with_label_values(&[phase])
            .observe(started.elapsed().as_secs_f64());
    }
}
