//! A marketer's rule file, any text at all: loaded (every check, every error located),
//! and when it loads, applied to a full example event and rendered. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postback_relay::event::Event;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let event = serde_json::json!({
        "event_id": "evt_1", "event_name": "purchase", "click_id": "clk_1",
        "timestamp": "2026-11-25T10:00:00Z",
        "attribution": {"network": "example-aff", "campaign": "c1"},
        "user": {"email": "A@B.com", "phone": "+1 555 0100", "ip": "203.0.113.7",
                 "user_agent": "ua", "external_id": "u42"},
        "device": {"idfa": "x", "gaid": "y", "os": "ios", "att_status": "authorized"},
        "consent": {"ad_user_data": true, "ad_personalization": false},
        "page": {"url": "https://shop.example/checkout"},
        "properties": {"value": 9.99, "currency": "USD", "order_id": "o-1"}
    });
    let now = chrono::DateTime::from_timestamp(1_764_064_800, 0).expect("time");
    let event = Event::from_value(event, now).expect("the example event is valid");
    postback_relay::rules::fuzzing::rule_file(text, &event);
});
