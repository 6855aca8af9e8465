//! The embedded store's record decoder, on any bytes (a damaged or foreign store
//! file): an error or a record that encodes back to itself, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postback_relay::store::embedded::EmbeddedStore;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = EmbeddedStore::fuzz_decode_record(data) {
        assert!(!e.contains("does not survive"), "{e}");
    }
});
