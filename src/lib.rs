//! postback-relay: signed S2S events in, privacy-filtered partner postbacks out.
//!
//! The layout follows the flow:
//! `http` (listeners, limits, routes, admin API) -> `ingest` (body parsing, `accept`)
//! with `webhooks` (Standard Webhooks: secrets, signing, verification) -> `event`
//! (validation) -> `dedupe` (keys) -> `rules` (when / rename / privacy / render per
//! destination) -> `store` (durable queue + dedupe state, one trait) -> `deliver`
//! (per-destination workers). `relay` is the shared state the handlers use, `metrics`
//! its counters; `config` and `settings` read the TOML files, `diag` points at
//! mistakes, `app` wires it all, `cli` holds the commands.

pub mod app;
pub mod cli;
pub mod config;
pub mod dedupe;
pub mod deliver;
pub mod diag;
pub mod event;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod outbound;
pub mod relay;
pub mod rules;
pub mod settings;
pub mod store;
mod sync;
pub mod webhooks;
