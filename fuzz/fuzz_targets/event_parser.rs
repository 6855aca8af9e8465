//! Request bodies as a sender (or an attacker) writes them: JSON (one event or an
//! array) and NDJSON, parsed and validated. Nothing may panic, and the event count
//! bound holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postback_relay::{parse_events, BodyError, Framing};

fuzz_target!(|data: &[u8]| {
    let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("time");
    for framing in [Framing::Json, Framing::Ndjson] {
        match parse_events(data, framing, 100, now) {
            Ok(events) => assert!(events.len() <= 100, "more events than max_batch"),
            Err(BodyError::TooManyEvents { count, max }) => assert!(count > max),
            Err(BodyError::Unparseable(_)) => {}
        }
    }
});
