//! The protobuf messages of echodb: what goes over the wire and what lies on disk.
//!
//! The Rust code under `src/gen/` is generated from `proto/*.proto` by `cargo xtask codegen` and
//! checked in, so building needs no protoc; CI runs `cargo xtask codegen --check` to keep it true.
//! Byte fields decode as [`bytes::Bytes`], slices of the received buffer, so decoding a block does
//! not copy its payload.

#![allow(missing_docs, missing_debug_implementations)]

pub use prost::{self, Message};

/// Feed blocks, signed ranges, fork proofs and the store's own records.
#[allow(clippy::all, clippy::pedantic)]
pub mod feed {
    include!("gen/echo.feed.rs");
}

/// Object mutations carried by data blocks, and the stored form of one object.
#[allow(clippy::all, clippy::pedantic)]
pub mod db {
    include!("gen/echo.db.rs");
}

/// HALO credentials: signed claims about identities, devices, feeds and roles in a space.
#[allow(clippy::all, clippy::pedantic)]
pub mod halo {
    include!("gen/echo.halo.rs");
}

/// MESH wire messages: replication, invitations and blob exchange.
#[allow(clippy::all, clippy::pedantic)]
pub mod mesh {
    include!("gen/echo.mesh.rs");
}

/// Epoch snapshots: the reduced state of a space at an epoch's cut.
#[allow(clippy::all, clippy::pedantic)]
pub mod epoch {
    include!("gen/echo.epoch.rs");
}
