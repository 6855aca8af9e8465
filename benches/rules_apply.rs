//! `route()` cost per event: the Meta preset (hashing, truncation, consent, JSON
//! body) and a classic GET affiliate postback, loaded from a temporary rules dir.

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use postback_relay::event::Event;
use postback_relay::rules::RuleSet;

const META: &str = r#"
[destination]
url = "https://graph.facebook.com/v27.0/123/events"
headers = { Authorization = "Bearer token" }
preset = "meta_capi"
[when]
event_name = ["purchase"]
[rename.event_name]
purchase = "Purchase"
[privacy]
allow = ["event_id", "event_name", "user.email", "user.phone", "user.ip",
         "user.user_agent", "properties.value", "properties.currency"]
hash = ["user.email", "user.phone"]
truncate_ip = ["user.ip"]
[privacy.consent]
require = "consent.ad_user_data"
drop = ["user.email", "user.phone", "user.ip", "user.user_agent"]
"#;

const AFF: &str = r#"
[destination]
url = "https://track.example-aff.test/postback?clickid={click_id}&goal={event_name}&payout={properties.value}"
method = "GET"
[when]
event_name = ["install", "purchase"]
"attribution.network" = "example-aff"
has = ["click_id"]
[privacy]
allow = ["click_id", "event_name", "properties.value"]
"#;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("meta.toml"), META).expect("write");
    std::fs::write(dir.path().join("example-aff.toml"), AFF).expect("write");
    let rules = RuleSet::load_dir(dir.path(), &HashMap::<String, String>::new())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let event = Event::from_value(
        serde_json::json!({
            "event_id": "evt_01JD8X", "event_name": "purchase", "click_id": "clk_9f2c",
            "timestamp": "2026-11-25T10:00:00Z",
            "attribution": {"network": "example-aff", "campaign": "c1"},
            "user": {"email": "A@B.com", "phone": "+1 555 0100", "ip": "203.0.113.7",
                     "user_agent": "Mozilla/5.0", "external_id": "u42"},
            "device": {"idfa": "x", "gaid": "y", "os": "ios", "att_status": "authorized"},
            "consent": {"ad_user_data": true, "ad_personalization": false, "gpc": false},
            "properties": {"value": 9.99, "currency": "USD", "order_id": "o-1"}
        }),
        Utc.timestamp_opt(1_795_600_800, 0)
            .single()
            .unwrap_or_default(),
    )
    .expect("valid event");
    let mut group = c.benchmark_group("rules");
    // One element = one event routed to one destination.
    group.throughput(Throughput::Elements(rules.destinations().len() as u64));
    group.bench_function("route_meta_and_affiliate", |b| {
        b.iter(|| black_box(rules.route(black_box(&event))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
