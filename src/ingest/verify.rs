//! Standard Webhooks verification for ingest. The protocol itself (secrets, signing,
//! the two-step check) lives in `crate::webhooks`; this re-exports what ingest uses.

pub use crate::webhooks::{sign, SignedHeaders, Verifier, VerifyError, MAX_ID_LEN, MAX_SIGNATURES};
