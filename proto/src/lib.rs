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
