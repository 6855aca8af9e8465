//! postback-relay: signed S2S events in, privacy-filtered partner postbacks out.
//!
//! The layout follows the flow:
//! `ingest` (HTTP, Standard Webhooks verification, body parsing) -> `event` (validation)
//! -> `dedupe` (keys) -> `rules` (when / rename / privacy / render per destination)
//! -> `store` (durable queue + dedupe state, one trait) -> `deliver` (per-destination
//! workers). `config` and `settings` read the TOML files, `diag` points at mistakes,
//! `app` wires it all, `cli` holds the commands.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod dedupe;
pub mod deliver;
pub mod diag;
pub mod event;
pub mod ingest;
pub mod outbound;
pub mod rules;
pub mod server;
pub mod settings;
pub mod store;
