//! Template text (URL, header or body value): parsed, then rendered over an event's
//! fields as URL, header and JSON. The input's first line is the template; the rest,
//! if it is a JSON object, is the fields. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, rest) = text.split_once('\n').unwrap_or((text, ""));
    let fields = match serde_json::from_str::<serde_json::Value>(rest) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::json!({
            "click_id": "c 1/ü", "event_name": "purchase",
            "properties": {"value": 9.99, "items": [1, 2]},
            "user": {"email": "0123abcd"}
        })
        .as_object()
        .cloned()
        .unwrap_or_default(),
    };
    postback_relay::rules::fuzzing::template(template, &fields);
});
