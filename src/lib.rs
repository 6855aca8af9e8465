//! postback-relay: signed S2S events in, privacy-filtered partner postbacks out.
//!
//! Most users run the binary (`postback-relay serve`); this library is what it is
//! built from, and what embeds a relay in another program or test:
//! - [`app::start`] / [`app::run`] run a relay from a [`config::Config`];
//! - [`webhooks`] signs and verifies Standard Webhooks requests (what a Rust app
//!   backend needs to send events);
//! - [`event::Event`] is the event format, [`parse_events`] reads request bodies;
//! - [`rules::RuleSet`] loads partner rule files and previews what they send;
//! - [`store::Store`] is the durable queue and dedupe contract, with its backends;
//! - [`cli`] is the command line.
//!
//! The layout follows the flow: `http` (listeners, limits, routes, admin API) ->
//! `ingest` (body parsing, `accept`) with `webhooks` (Standard Webhooks: secrets,
//! signing, verification) -> `event` (validation) -> `dedupe` (keys) -> `rules`
//! (when / rename / privacy / render per destination) -> `store` (durable queue +
//! dedupe state, one trait) -> `deliver` (per-destination workers). `relay` is the
//! shared state the handlers use, `metrics` its counters; `config` and `toml_reader`
//! read the TOML files, `diag` points at mistakes, `app` wires it all, `cli` holds
//! the commands. The modules not listed above are the crate's own.

pub mod app;
pub mod cli;
pub mod config;
pub mod diag;
pub mod event;
pub mod outbound;
pub mod rules;
pub mod store;
pub mod webhooks;

mod dedupe;
mod deliver;
mod http;
mod ingest;
mod metrics;
mod private_file;
mod relay;
mod sync;
mod toml_reader;

pub use ingest::body::{parse_events, BodyError, Framing};
pub use ingest::{AcceptReport, EventResult, Status};

/// A real, tiny HTTP server standing in for a partner: records what it receives,
/// answers from a script. For tests and benches (the `testing` feature); never in a
/// release build.
#[cfg(any(test, feature = "testing"))]
pub mod fake_partner;

/// A real `redis-server --sentinel` on loopback for the Sentinel tests (the `testing`
/// feature); never in a release build.
#[cfg(any(test, feature = "testing"))]
pub mod own_sentinel;

/// The delivery engine on its own, for the delivery bench, the dedupe key, for the
/// per-stage bench, and an HTTP/2 frame writer, for the edge tests (the `testing`
/// feature).
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::dedupe::DedupeRule;
    pub use crate::deliver::{DeliverOptions, Deliverer};
    pub use crate::http::frames::encode as h2_frame;
}
