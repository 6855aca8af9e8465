//! Durable dedupe and the raw event never reaching disk, against a real relay.

mod common;

use common::*;

const RULE_HASHING_EMAIL: &str = r#"
[destination]
url = "http://127.0.0.1:9/never"
method = "POST"

[privacy]
allow = ["event_id", "event_name", "user.email"]
hash = ["user.email"]
"#;

#[tokio::test]
async fn duplicate_click_id_within_window_is_refused_after_restart_and_accepted_after_it() {
    // A window shorter than the signature tolerance is refused: shorten both.
    let config = config_text("[dedupe]\nwindow = \"2s\"\n")
        .replace("tolerance = \"5m\"", "tolerance = \"2s\"");
    let relay = TestRelay::start_with_config(&[], &config).await;
    let (s, v) = relay
        .post_json("m1", &event("a1", "install", "clk-restart"))
        .await;
    assert_eq!((s, v["accepted"].clone()), (202, 1.into()));
    let dir = relay.stop().await;

    let relay = TestRelay::start_in_with_config(dir, &[], &config).await;
    let (s, v) = relay
        .post_json("m2", &event("a2", "install", "clk-restart"))
        .await;
    assert_eq!(s, 202);
    assert_eq!(v["duplicates"], 1, "same click + name after restart: {v}");

    // Pacing: the dedupe window is what this test is about. Its expiry is kept in
    // whole seconds, rounded up: wait past the window plus that second.
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    let (s, v) = relay
        .post_json("m3", &event("a3", "install", "clk-restart"))
        .await;
    assert_eq!(s, 202);
    assert_eq!(
        v["accepted"], 1,
        "after the window the click converts again: {v}"
    );
    relay.stop().await;
}

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

#[tokio::test]
async fn the_raw_event_never_reaches_disk() {
    let relay = TestRelay::start(&[("hashing", RULE_HASHING_EMAIL)], "").await;
    let body = serde_json::json!({
        "event_id": "canary-event", "event_name": "purchase",
        "click_id": "canary-click-9d1e",
        "user": {"email": "Canary.Person@Example.com", "phone": "+1 555 0199 4242"},
        "properties": {"secret_note": "canary-note-77aa"}
    })
    .to_string();
    let (s, v) = relay.post_json("m-canary", &body).await;
    assert_eq!((s, v["accepted"].clone()), (202, 1.into()), "{v}");
    let data = relay.data_dir();
    let dir = relay.stop().await;
    for canary in [
        "Canary.Person@Example.com",
        "canary.person@example.com",
        "canary-click-9d1e",
        "555 0199 4242",
        "canary-note-77aa",
    ] {
        let hits = files_containing(&data, canary.as_bytes());
        assert!(hits.is_empty(), "{canary:?} found in {hits:?}");
    }
    // what the rule allows is there, hashed
    use sha2::Digest;
    let hashed: String = sha2::Sha256::digest(b"canary.person@example.com")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        !files_containing(&data, hashed.as_bytes()).is_empty(),
        "the hashed e-mail is queued"
    );
    drop(dir);
}
