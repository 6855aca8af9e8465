//! Criterion benches of the ingest hot functions: signature verify and event parse.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postback_relay::config::WebhookSecret;
use postback_relay::webhooks::{sign, Verifier};
use postback_relay::{parse_events, Framing};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn event_json(i: usize) -> String {
    format!(
        r#"{{"event_id":"evt_{i}","event_name":"purchase","click_id":"clk_{i}","timestamp":"2026-11-25T10:00:00Z","attribution":{{"network":"example-aff","campaign":"c1"}},"user":{{"email":"A@B.com","phone":"+1 555 0100","ip":"203.0.113.7","user_agent":"Mozilla/5.0","external_id":"u42"}},"consent":{{"ad_user_data":true}},"properties":{{"value":9.99,"currency":"USD","order_id":"o-{i}"}}}}"#
    )
}

fn bench(c: &mut Criterion) {
    let secret = WebhookSecret::parse(SECRET).expect("secret");
    let verifier = Verifier::new(std::slice::from_ref(&secret), Duration::from_secs(300));
    let body = event_json(1);
    let now = chrono::Utc::now().timestamp();
    let sig = sign(&secret, "msg_1", now, body.as_bytes());

    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_signature", |b| {
        b.iter(|| {
            verifier
                .verify(
                    Some("msg_1"),
                    Some(&now.to_string()),
                    Some(&sig),
                    body.as_bytes(),
                    now,
                )
                .is_ok()
        })
    });
    g.bench_function("parse_event", |b| {
        b.iter(|| {
            parse_events(body.as_bytes(), Framing::Json, 1000, chrono::Utc::now()).map(|v| v.len())
        })
    });
    let batch = format!(
        "[{}]",
        (0..100).map(event_json).collect::<Vec<_>>().join(",")
    );
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_batch_100", |b| {
        b.iter(|| {
            parse_events(batch.as_bytes(), Framing::Json, 1000, chrono::Utc::now()).map(|v| v.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
