//! Generated gRPC types for Pact.
//!
//! This crate is a leaf: it holds the `.proto` definitions and the code tonic
//! and prost generate from them, nothing else. Conversion between these wire
//! types and the domain types of the other crates lives in one `convert`
//! module per consuming crate, so core logic never sees a prost struct.
//!
//! The protos are compiled by protox at build time, so building needs no
//! system `protoc`.

#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("pact.v1");
}

pub use v1::*;

/// The error convention on the wire: a gRPC status whose details carry a
/// `google.rpc.ErrorInfo` (domain `pact.v1`, `reason` a stable code name,
/// metadata for the particulars) and, for errors worth retrying, a
/// `google.rpc.RetryInfo`. Names only, no domain types: the codes
/// themselves are defined by `pact_common::codes` (and `ErrorCode` in the
/// proto, for other languages).
pub mod status {
    use std::collections::HashMap;
    use std::time::Duration;

    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    pub const DOMAIN: &str = "pact.v1";

    /// A status with `code`, the human `message`, and the machine-readable
    /// `reason` and `metadata`; `retry_after` adds a RetryInfo.
    pub fn error(
        code: Code,
        reason: &str,
        message: String,
        metadata: Vec<(&str, String)>,
        retry_after: Option<Duration>,
    ) -> Status {
        let meta: HashMap<String, String> = metadata
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut details = ErrorDetails::with_error_info(reason, DOMAIN, meta);
        if let Some(d) = retry_after {
            details.set_retry_info(Some(d));
        }
        Status::with_error_details(code, message, details)
    }

    /// The code and metadata a Pact server put on `s`, if it carries them
    /// (a status made by the transport, such as a refused connection, or
    /// by a server of another domain, does not).
    pub fn info(s: &Status) -> Option<(String, HashMap<String, String>)> {
        let details = s.get_error_details();
        let info = details.error_info()?;
        (info.domain == DOMAIN).then(|| (info.reason.clone(), info.metadata.clone()))
    }

    /// The pause `s` asks for before a retry (its RetryInfo), if any.
    pub fn retry_after(s: &Status) -> Option<Duration> {
        s.get_error_details().retry_info()?.retry_delay
    }
}
