//! Rule hot-reload against a running relay and real partners: a broken file keeps
//! its last good version in force (file watch and `POST /admin/reload`) while the
//! other files' changes apply, and keeps it, reporting the same, after a restart; a fix is picked
//! up without a restart, SIGHUP reloads the real binary, and destinations added or
//! removed by a reload gain or lose their delivery workers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use postback_relay::fake_partner::FakePartner;

use common::{
    config_text, event, eventually, metric, post_json_to, GetRule, RelayProcess, TestRelay,
};

/// A GET rule to `url` (which may use `{click_id}` and `{event_name}`).
fn get_rule(url: &str, extra: &str) -> String {
    GetRule::new(url)
        .allow(&["click_id", "event_name"])
        .extra(extra)
        .text()
}

fn targets(p: &FakePartner) -> Vec<String> {
    p.requests().into_iter().map(|r| r.target).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_change_keeps_the_old_rules_and_the_fix_is_picked_up_without_restart() {
    let partner = FakePartner::start().await.unwrap();
    let old_rule = get_rule(&partner.url("/v1/postback?c={click_id}&e={event_name}"), "");
    let relay = TestRelay::start(&[("aff", &old_rule)], "").await;
    let rules = relay.running.as_ref().unwrap().rules();
    let aff = relay.rules_dir().join("aff.toml");

    let (s, v) = relay
        .post_json("m1", &event("e1", "purchase", "clk1"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(partner.wait_for_requests(1, Duration::from_secs(10)).await);
    assert_eq!(targets(&partner), ["/v1/postback?c=clk1&e=purchase"]);

    // A broken edit: an unknown key, and a placeholder naming a field not allowed.
    let broken_url = partner.url("/v2/postback?c={click_id}&e={event_name}&m={user.email}");
    // `url = "` is 7 characters: the placeholder's column in the file.
    let col = 8 + broken_url.find("{user.email}").unwrap();
    let broken = get_rule(&broken_url, "").replace("method = \"GET\"", "methd = \"GET\"");
    std::fs::write(&aff, &broken).unwrap();
    // The watcher sees it and keeps the last good version: the reload counter moves
    // (`partial`: the other files applied, this one's errors reported).
    let partial = r#"postback_relay_rule_reloads_total{result="partial"}"#;
    let (client, base) = (&relay.client, &relay.base);
    assert!(
        eventually(
            10,
            || async move { metric(client, base, partial).await >= 1.0 }
        )
        .await,
        "the file watcher did not report the broken rule within 10 s"
    );
    let in_force = rules.current().get("aff").cloned().expect("aff in force");
    let same_aff = |rules: &postback_relay::rules::RulesHandle| {
        rules
            .current()
            .get("aff")
            .is_some_and(|d| Arc::ptr_eq(d, &in_force))
    };

    // The old rule is still in force: the next event goes out as before.
    let (s, v) = relay
        .post_json("m2", &event("e2", "purchase", "clk2"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(partner.wait_for_requests(2, Duration::from_secs(10)).await);
    assert_eq!(
        targets(&partner),
        [
            "/v1/postback?c=clk1&e=purchase",
            "/v1/postback?c=clk2&e=purchase"
        ]
    );

    // An explicit reload reports every error, located; the last good version stays.
    let (s, v) = relay
        .admin_post("/admin/reload", serde_json::json!({}))
        .await;
    assert_eq!(s, 422, "{v}");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let f = aff.display();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    // The unknown key (a cause) first, then the rest top to bottom.
    assert!(
        errors[0].starts_with(&format!("{f}:3:1: unknown key `methd` in [destination]")),
        "{errors:#?}"
    );
    assert!(
        errors[1].starts_with(&format!(
            "{f}:2:{col}: `{{user.email}}` names a field that [privacy] does not allow"
        )),
        "{errors:#?}"
    );
    assert!(
        same_aff(&rules),
        "a broken file replaced its last good version"
    );
    assert_eq!(v["broken"][0]["last_good_in_force"], true, "{v}");

    // The fix, with a new path and a renamed event: the watcher applies it.
    let fixed = get_rule(
        &partner.url("/v2/postback?c={click_id}&e={event_name}"),
        "\n[rename.event_name]\npurchase = \"sale\"\n",
    );
    std::fs::write(&aff, &fixed).unwrap();
    assert!(
        eventually(10, || {
            let changed = !same_aff(&rules);
            async move { changed }
        })
        .await,
        "the file watcher did not apply the fixed rule within 10 s"
    );

    let (s, v) = relay
        .post_json("m3", &event("e3", "purchase", "clk3"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    // And nothing else: a later marker event arrives right after it.
    let (s, v) = relay
        .post_json("m4", &event("e4", "purchase", "clk4"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(partner.wait_for_requests(4, Duration::from_secs(10)).await);
    // e3 and e4 are sent concurrently: either may arrive first.
    let mut sent = targets(&partner);
    sent[2..].sort();
    assert_eq!(
        sent,
        [
            "/v1/postback?c=clk1&e=purchase",
            "/v1/postback?c=clk2&e=purchase",
            "/v2/postback?c=clk3&e=sale",
            "/v2/postback?c=clk4&e=sale"
        ]
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_added_by_reload_get_workers_and_removed_ones_get_nothing_new() {
    let a = FakePartner::start().await.unwrap();
    let b = FakePartner::start().await.unwrap();
    let relay = TestRelay::start(&[("a", &get_rule(&a.url("/a?c={click_id}"), ""))], "").await;

    let (s, v) = relay
        .post_json("m1", &event("e1", "purchase", "clk1"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(a.wait_for_requests(1, Duration::from_secs(10)).await);

    // Added through the file watcher: b appears, and its deliveries go out.
    std::fs::write(
        relay.rules_dir().join("b.toml"),
        get_rule(&b.url("/b?c={click_id}"), ""),
    )
    .unwrap();
    assert!(
        eventually(10, || async {
            relay
                .admin_get("/admin/destinations")
                .await
                .to_string()
                .contains("\"b\"")
        })
        .await,
        "b was not added: {}",
        relay.admin_get("/admin/destinations").await
    );
    let (s, v) = relay
        .post_json("m2", &event("e2", "purchase", "clk2"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(
        b.wait_for_requests(1, Duration::from_secs(10)).await,
        "the new destination has no delivery worker"
    );
    assert!(a.wait_for_requests(2, Duration::from_secs(10)).await);
    assert_eq!(targets(&b), ["/b?c=clk2"]);

    // Removed, then reloaded explicitly: a gets nothing new, b goes on.
    std::fs::remove_file(relay.rules_dir().join("a.toml")).unwrap();
    let (s, v) = relay
        .admin_post("/admin/reload", serde_json::json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["destinations"], serde_json::json!(["b"]));
    let (s, v) = relay
        .post_json("m3", &event("e3", "purchase", "clk3"))
        .await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    // One delivery was made for it (b's), none for a: a delivery exists only if it
    // was committed before the 202, so no stray one can follow later.
    let ids = v["results"][0]["delivery_ids"].as_array().map(Vec::len);
    assert_eq!(ids, Some(1), "{v}");
    assert!(b.wait_for_requests(2, Duration::from_secs(10)).await);
    assert_eq!(targets(&a), ["/a?c=clk1", "/a?c=clk2"]);
    assert_eq!(targets(&b), ["/b?c=clk2", "/b?c=clk3"]);
    relay.stop().await;
}

/// Waits up to 10 s for the real binary's log to contain `needle`.
async fn log_shows(relay: &RelayProcess, needle: &str) -> bool {
    eventually(10, || {
        let seen = relay.log().contains(needle);
        async move { seen }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rules_of_the_real_binary() {
    let a = FakePartner::start().await.unwrap();
    let b = FakePartner::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // `rules` is a symlink swapped atomically (as a Kubernetes ConfigMap is): the
    // watcher keeps watching the old directory, so only SIGHUP can apply the new one.
    let v1 = root.join("rules.v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("a.toml"), get_rule(&a.url("/a?c={click_id}"), "")).unwrap();
    std::os::unix::fs::symlink("rules.v1", root.join("rules")).unwrap();
    std::fs::write(root.join("postback-relay.toml"), config_text("")).unwrap();
    let relay = RelayProcess::spawn(&root.join("postback-relay.toml"), "info");
    let client = reqwest::Client::new();

    let (s, v) = post_json_to(&client, &relay.base, "m1", &event("e1", "purchase", "clk1")).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(
        a.wait_for_requests(1, Duration::from_secs(10)).await,
        "{}",
        relay.log()
    );

    let v2 = root.join("rules.v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::copy(v1.join("a.toml"), v2.join("a.toml")).unwrap();
    std::fs::write(v2.join("b.toml"), get_rule(&b.url("/b?c={click_id}"), "")).unwrap();
    std::os::unix::fs::symlink("rules.v2", root.join("rules.tmp")).unwrap();
    std::fs::rename(root.join("rules.tmp"), root.join("rules")).unwrap();

    // Before SIGHUP: the swap is not seen, b gets nothing. Pacing: the window under
    // test, four times the watcher's debounce (200 ms), in which a watcher that saw
    // the swap would have applied it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (s, v) = post_json_to(&client, &relay.base, "m2", &event("e2", "purchase", "clk2")).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    // One delivery (a's): b had none committed before the 202, so none can follow.
    let ids = v["results"][0]["delivery_ids"].as_array().map(Vec::len);
    assert_eq!(
        ids,
        Some(1),
        "reloaded without SIGHUP: {v}\n{}",
        relay.log()
    );
    assert!(a.wait_for_requests(2, Duration::from_secs(10)).await);
    assert_eq!(b.request_count(), 0, "{}", relay.log());

    relay.signal(libc::SIGHUP);
    assert!(
        log_shows(&relay, "rules reloaded (SIGHUP)").await,
        "{}",
        relay.log()
    );
    let (s, v) = post_json_to(&client, &relay.base, "m3", &event("e3", "purchase", "clk3")).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(
        b.wait_for_requests(1, Duration::from_secs(10)).await,
        "the destination added by SIGHUP got nothing:\n{}",
        relay.log()
    );
    assert!(a.wait_for_requests(3, Duration::from_secs(10)).await);
    assert_eq!(targets(&b), ["/b?c=clk3"]);

    // A broken file on SIGHUP: logged with its place, its last good version stays in
    // force, the process lives on.
    std::fs::write(v2.join("b.toml"), "[destination]\nurl = 5\n").unwrap();
    relay.signal(libc::SIGHUP);
    let b_file = format!("{}:2:7", root.join("rules/b.toml").display());
    assert!(
        log_shows(&relay, &b_file).await,
        "want {b_file} in:\n{}",
        relay.log()
    );
    let (s, v) = post_json_to(&client, &relay.base, "m4", &event("e4", "purchase", "clk4")).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert!(
        b.wait_for_requests(2, Duration::from_secs(10)).await,
        "old b rule stays in force"
    );
    assert_eq!(targets(&b), ["/b?c=clk3", "/b?c=clk4"]);

    let mut relay = relay;
    relay.signal(libc::SIGTERM);
    let (code, relay) = tokio::task::spawn_blocking(move || {
        let code = relay.wait_exit(Duration::from_secs(30));
        (code, relay)
    })
    .await
    .expect("join");
    assert_eq!(code, Some(0), "{}", relay.log());
}

/// A TOML file with a syntax error: `[privacy` misses its `]`.
fn syntax_error(url: &str) -> String {
    get_rule(url, "").replace("[privacy]", "[privacy")
}

/// What the relay says about its rule files, everywhere it says it.
#[derive(Debug, PartialEq)]
struct Reported {
    /// `/admin/destinations`: (name, state, rule_errors) of each destination.
    admin: Vec<(String, String, Vec<String>)>,
    /// The `rule_file_errors` lines of `/metrics`.
    metric: Vec<String>,
    /// `/ui/api/state`: (name, rule_errors) of each file with errors, and `errors`.
    ui: (Vec<(String, Vec<String>)>, Vec<String>),
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads what `base` reports; also returns the raw `/admin/destinations` answer.
async fn reported(client: &reqwest::Client, base: &str) -> (Reported, serde_json::Value) {
    let dests = common::admin_get_at(client, base, "/admin/destinations").await;
    let admin = dests["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| {
            let name = d["name"].as_str().unwrap_or("").to_string();
            let state = d["state"].as_str().unwrap_or("").to_string();
            (name, state, strings(&d["rule_errors"]))
        })
        .collect();
    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let metric = metrics
        .lines()
        .filter(|l| l.starts_with("postback_relay_rule_file_errors{"))
        .map(str::to_string)
        .collect();
    let state = ui_state(base).await;
    let broken = state["broken"]
        .as_array()
        .expect("broken")
        .iter()
        .map(|b| {
            let name = b["name"].as_str().unwrap_or("").to_string();
            (name, strings(&b["rule_errors"]))
        })
        .collect();
    let ui = (broken, strings(&state["errors"]));
    (Reported { admin, metric, ui }, dests)
}

/// `/ui/api/state` after logging in with the admin token.
async fn ui_state(base: &str) -> serde_json::Value {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let login = client
        .post(format!("{base}/ui/login"))
        .form(&[("token", common::ADMIN_TOKEN)])
        .send()
        .await
        .expect("login");
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().expect("cookie");
    let session = cookie.split(';').next().unwrap_or("").to_string();
    client
        .get(format!("{base}/ui/api/state"))
        .header("cookie", session)
        .send()
        .await
        .expect("state")
        .json()
        .await
        .expect("state json")
}

fn entry<'a>(dests: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    dests["destinations"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in {dests}"))
}

/// Stops the real binary with SIGTERM; asserts a clean exit.
async fn terminate(relay: RelayProcess) -> String {
    relay.signal(libc::SIGTERM);
    let mut relay = relay;
    let (code, log) = tokio::task::spawn_blocking(move || {
        let code = relay.wait_exit(Duration::from_secs(30));
        (code, relay.log())
    })
    .await
    .expect("join");
    assert_eq!(code, Some(0), "{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_file_lives_on_its_own_after_a_reload_and_after_a_restart() {
    let meta = FakePartner::start().await.unwrap();
    let aff = FakePartner::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rules = root.join("rules");
    std::fs::create_dir(&rules).unwrap();
    let meta_file = rules.join("mymeta.toml");
    std::fs::write(&meta_file, get_rule(&meta.url("/m1?c={click_id}"), "")).unwrap();
    std::fs::write(
        rules.join("aff.toml"),
        get_rule(&aff.url("/a1?c={click_id}"), ""),
    )
    .unwrap();
    let config = root.join("postback-relay.toml");
    std::fs::write(&config, config_text("")).unwrap();
    let relay = RelayProcess::spawn(&config, "info");
    let client = reqwest::Client::new();

    // One file breaks (a TOML syntax error), another changes validly; SIGHUP.
    std::fs::write(&meta_file, syntax_error(&meta.url("/m2?c={click_id}"))).unwrap();
    std::fs::write(
        rules.join("aff.toml"),
        get_rule(&aff.url("/a2?c={click_id}"), ""),
    )
    .unwrap();
    relay.signal(libc::SIGHUP);
    assert!(
        log_shows(&relay, "rules reloaded (SIGHUP)").await,
        "{}",
        relay.log()
    );
    let (after_reload, dests) = reported(&client, &relay.base).await;
    let m = entry(&dests, "mymeta");
    assert_eq!(m["state"], "broken", "{m}");
    assert_eq!(m["last_good_in_force"], true, "{m}");
    assert_eq!(m["enabled"], true, "the last good version routes: {m}");
    let errors = strings(&m["rule_errors"]);
    let at = format!("{}:", meta_file.display());
    assert!(
        errors.len() == 1 && errors[0].starts_with(&at) && errors[0].contains("expected"),
        "a located syntax error: {errors:?}"
    );
    let located = errors[0].split(": ").next().unwrap_or("").to_string();
    assert_eq!(
        after_reload.metric,
        ["postback_relay_rule_file_errors{destination=\"mymeta\"} 1"]
    );
    assert_eq!(
        after_reload.ui,
        (vec![("mymeta".to_string(), errors.clone())], errors.clone())
    );
    assert_eq!(entry(&dests, "aff")["rule_errors"], serde_json::json!([]));
    assert!(
        log_shows(
            &relay,
            "rule file has errors: its last good version stays in force"
        )
        .await
            && relay.log().contains(&located),
        "want the located error ({located}) in the log:\n{}",
        relay.log()
    );

    // The valid change applies; the broken file's last good version stays in force.
    let (s, v) = post_json_to(&client, &relay.base, "m1", &event("e1", "purchase", "clk1")).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert_eq!(
        v["results"][0]["delivery_ids"].as_array().map(Vec::len),
        Some(2),
        "{v}"
    );
    assert!(aff.wait_for_requests(1, Duration::from_secs(10)).await);
    assert!(meta.wait_for_requests(1, Duration::from_secs(10)).await);
    assert_eq!(targets(&aff), ["/a2?c=clk1"]);
    assert_eq!(targets(&meta), ["/m1?c=clk1"]);
    terminate(relay).await;

    // A restart with the same files: the same state everywhere. The broken file's
    // last good version was kept in the data directory, so it stays in force as it
    // did after the reload (the outcome never depends on uptime).
    let relay = RelayProcess::spawn(&config, "info");
    let (after_restart, dests) = reported(&client, &relay.base).await;
    assert_eq!(after_restart, after_reload);
    let m = entry(&dests, "mymeta");
    assert_eq!(
        (&m["last_good_in_force"], &m["enabled"]),
        (&serde_json::json!(true), &serde_json::json!(true)),
        "{m}"
    );
    assert!(
        relay.log().contains(&located)
            && relay
                .log()
                .contains("rule file has errors: its last good version stays in force"),
        "{}",
        relay.log()
    );
    let (s, v) = post_json_to(&client, &relay.base, "m2", &event("e2", "purchase", "clk2")).await;
    assert_eq!((s, v["accepted"].as_u64()), (202, Some(1)), "{v}");
    assert_eq!(
        v["results"][0]["delivery_ids"].as_array().map(Vec::len),
        Some(2),
        "{v}"
    );
    assert!(aff.wait_for_requests(2, Duration::from_secs(10)).await);
    assert!(meta.wait_for_requests(2, Duration::from_secs(10)).await);
    assert_eq!(targets(&aff), ["/a2?c=clk1", "/a2?c=clk2"]);
    assert_eq!(
        targets(&meta),
        ["/m1?c=clk1", "/m1?c=clk2"],
        "the last good version after the restart, as after the reload"
    );
    terminate(relay).await;
}
