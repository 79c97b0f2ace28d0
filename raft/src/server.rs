//! Process plumbing shared by the server binaries (participant and
//! coordinator): logging setup, fault-injection arming and the shutdown
//! signal.

/// Log to stderr; `RUST_LOG` overrides the default (info, openraft quiet).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on Ctrl-C or SIGTERM: the signal to stop serving and shut the
/// replicas down cleanly.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Check `PACT_FAULTS` (see [`pact_common::faults`]) and arm what it asks
/// for. Must run inside the tokio runtime. A bad list is an error, so a typo
/// cannot make the suite test the real build by accident; every active fault
/// is logged as a warning, because it breaks guarantees on purpose.
pub fn arm_faults() -> Result<(), String> {
    let faults = pact_common::faults::configured()?;
    let offset = pact_common::faults::clock_offset_ms();
    if offset != 0 {
        tracing::warn!(
            offset_ms = offset,
            "wall clock skewed by PACT_CLOCK_OFFSET_MS"
        );
    }
    if faults.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        ?faults,
        "FAULT INJECTION ON: this process breaks Pact's guarantees on purpose"
    );
    if pact_common::faults::enabled("crash-before-fsync") {
        let mut usr1 =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .map_err(|e| format!("cannot watch SIGUSR1: {e}"))?;
        tokio::spawn(async move {
            if usr1.recv().await.is_some() {
                tracing::warn!("SIGUSR1: the storage writer dies before its next fsync");
                crate::store::CRASH_BEFORE_FSYNC.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    Ok(())
}
