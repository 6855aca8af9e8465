//! The preview page (`GET /ui`) in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them): a wrong
//! token is refused, the right one logs in with an HttpOnly SameSite=Strict cookie
//! and no token in any URL; an event is previewed for two destinations, a consent
//! drop is explained field by field, a pasted broken draft shows its located error
//! under its own file name, and the rule files' current errors are listed with
//! file:line:col. The honest page: banners for disabled and broken destinations, the
//! reason an event reaches no destination, the live view (fates, no values), and a
//! preview-only login that gets 403 on replay.
//!
//! Without chromedriver these tests print why and pass as skipped, except in CI
//! (`CI=true`), where they must run.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use postback_relay::fake_partner::FakePartner;
use serde_json::json;

use common::{free_port, TestRelay, ADMIN_TOKEN};

/// chromedriver on a free loopback port, ended when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_program(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The driver, or `None` (after saying why) when the tests must be skipped.
async fn driver() -> Option<(Driver, Client)> {
    let Some(chromedriver) = find_program("chromedriver") else {
        common::skip(
            "ui_browser",
            "chromedriver not found (apt-get install chromium chromium-driver; .ci/run installs them)",
        );
        return None;
    };
    let port = free_port();
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let mut caps = serde_json::Map::new();
    let mut options = json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
        "--disable-dev-shm-usage", "--window-size=1280,1000"]});
    if let Some(chromium) = find_program("chromium") {
        options["binary"] = json!(chromium);
    }
    caps.insert("goog:chromeOptions".into(), options);
    // chromedriver needs a moment to listen: retry the session for up to 20 s.
    let mut last = String::new();
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&driver.url)
            .await
        {
            Ok(c) => return Some((driver, c)),
            Err(e) => last = e.to_string(),
        }
        // Pacing: the poll interval of a condition wait (bounded tries).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no WebDriver session: {last}");
}

/// The text of `css` once it contains `needle` (polled up to 15 s); the text seen
/// last otherwise.
async fn text_with(c: &Client, css: &str, needle: &str) -> String {
    let mut seen = String::new();
    for _ in 0..150 {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            seen = e.text().await.unwrap_or_default();
            if seen.contains(needle) {
                return seen;
            }
        }
        // Pacing: the poll interval of a condition wait (15 s).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

const CRM: &str = r#"description = "CRM: purchases, e-mail only with consent"
[destination]
url = "{url}"
method = "POST"
[when]
event_name = ["purchase"]
[privacy]
allow = ["event_name", "click_id", "user.email"]
hash = ["user.email"]
[privacy.consent]
require = "consent.ad_user_data"
drop = ["user.email"]
"#;

async fn click(c: &Client, id: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click #{id}: {e}"));
}

async fn type_into(c: &Client, id: &str, text: &str) {
    c.find(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("#{id}: {e}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into #{id}: {e}"));
}

async fn click_option(c: &Client, select: &str, value: &str) {
    c.find(Locator::Css(&format!("#{select} option[value='{value}']")))
        .await
        .unwrap_or_else(|e| panic!("option {value} of #{select}: {e}"))
        .click()
        .await
        .expect("select the option");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_page_logs_in_previews_explains_and_checks_a_draft() {
    let Some((_driver, c)) = driver().await else {
        return;
    };
    let partner = FakePartner::start().await.unwrap();
    let aff = format!(
        "[destination]\nurl = \"{}\"\nmethod = \"GET\"\n[privacy]\nallow = [\"click_id\", \"event_name\"]\n",
        partner.url("/p?c={click_id}&e={event_name}")
    );
    let crm = CRM.replace("{url}", &partner.url("/crm"));
    let broken = "[destination]\nurl = \"https://b.example/p\"\nmethd = \"GET\"\n";
    let relay = TestRelay::start(&[("aff", &aff), ("crm", &crm), ("bad", broken)], "").await;
    let ui = format!("{}/ui", relay.base);

    // A wrong token is refused, and opens nothing.
    c.goto(&ui).await.unwrap();
    type_into(&c, "token", "wrong-token-000000000").await;
    click(&c, "login").await;
    let refused = text_with(&c, "#login-error", "Wrong token").await;
    assert!(refused.contains("Wrong token"), "{refused}");
    assert!(c.find(Locator::Id("destination")).await.is_err());
    assert!(c.get_all_cookies().await.unwrap().is_empty());

    // The right token: a session cookie, HttpOnly and SameSite=Strict; no token in URLs.
    type_into(&c, "token", ADMIN_TOKEN).await;
    click(&c, "login").await;
    let errors = text_with(&c, "#rule-errors", "bad.toml:3:1").await;
    let cookies = c.get_all_cookies().await.unwrap();
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert_eq!(cookies[0].http_only(), Some(true));
    assert_eq!(format!("{:?}", cookies[0].same_site()), "Some(Strict)");
    assert!(!cookies[0].value().contains(ADMIN_TOKEN));
    let url = c.current_url().await.unwrap();
    assert_eq!(url.as_str(), ui, "no token in the URL");

    // The rule files' current errors, located.
    let bad_file = relay.rules_dir().join("bad.toml");
    assert!(
        errors.contains(&format!(
            "{}:3:1: unknown key `methd` in [destination]",
            bad_file.display()
        )),
        "{errors}"
    );

    // One event, two destinations.
    click_option(&c, "destination", "aff").await;
    click(&c, "preview").await;
    let request = text_with(&c, "#request", "GET ").await;
    assert!(
        request.contains(&format!("GET {}", partner.url("/p?c=clk_9f2c&e=purchase"))),
        "{request}"
    );
    click_option(&c, "destination", "crm").await;
    click(&c, "preview").await;
    let request = text_with(&c, "#request", "POST ").await;
    assert!(
        request.contains(&format!("POST {}", partner.url("/crm"))),
        "{request}"
    );
    assert!(
        request.contains("\"email\""),
        "consent given: the hashed e-mail is sent: {request}"
    );
    assert!(!request.contains("A@B.com"), "{request}");

    // Without consent: the drop is explained, field by field.
    click_option(&c, "example", "1").await;
    click(&c, "preview").await;
    let consent = text_with(&c, "#consent", "is not true").await;
    assert!(
        consent.contains("consent.ad_user_data is not true"),
        "{consent}"
    );
    let fields = text_with(&c, "#fields", "dropped: no consent").await;
    let fate = |path: &str| {
        fields
            .lines()
            .find(|l| l.starts_with(path))
            .map(|l| l[path.len()..].trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(fate("user.email"), "dropped: no consent", "{fields}");
    assert_eq!(fate("user.phone"), "not allowed", "{fields}");
    assert_eq!(fate("click_id"), "allowed", "{fields}");
    let request = c
        .find(Locator::Id("request"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!request.contains("\"email\""), "{request}");
    assert!(
        !request.contains("\"user\""),
        "no empty object left: {request}"
    );

    // An install is not for crm: the [when] line that failed, located.
    click_option(&c, "example", "2").await;
    click(&c, "preview").await;
    let when = text_with(&c, "#when-failed", "event_name").await;
    let crm_file = relay.rules_dir().join("crm.toml");
    assert!(
        when.starts_with(&format!(
            "[when] at {}:6:1: event_name \"install\"",
            crm_file.display()
        )),
        "{when}"
    );

    // A pasted draft with a mistake: labelled by its own file name (not the partner
    // selected), its located error, and nothing saved.
    let draft = crm.replace("method = \"POST\"", "methd = \"POST\"");
    type_into(&c, "draft-name", "crm-v2.toml").await;
    type_into(&c, "draft", &draft).await;
    click(&c, "preview-draft").await;
    let draft_errors = text_with(&c, "#draft-errors", "methd").await;
    assert!(
        draft_errors.contains(
            "draft/crm-v2.toml:4:1: unknown key `methd` in [destination]; did you mean `method`?"
        ),
        "{draft_errors}"
    );
    let title = text_with(&c, "#result-title", "draft").await;
    assert_eq!(title, "crm-v2.toml (draft, not saved)");
    assert_eq!(
        std::fs::read_to_string(&crm_file).unwrap(),
        crm,
        "the draft was saved"
    );

    c.close().await.unwrap();
    assert_eq!(partner.request_count(), 0, "a preview sent something");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_api_refuses_without_a_session_and_a_wrong_token_gets_no_cookie() {
    // Plain HTTP, no browser needed: what the page's calls get without logging in.
    let relay = TestRelay::start(&[], "").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .post(format!("{}/ui/login", relay.base))
        .form(&[("token", "wrong-token-000000000")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get("set-cookie").is_none());
    for (method, path) in [("GET", "/ui/api/state"), ("POST", "/ui/api/preview")] {
        let resp = client
            .request(method.parse().unwrap(), format!("{}{path}", relay.base))
            .header("content-type", "application/json")
            .header("cookie", format!("pbr_ui={ADMIN_TOKEN}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{method} {path}");
    }
    let resp = client
        .post(format!("{}/ui/login", relay.base))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/ui"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let resp = client
        .post(format!("{}/ui/api/preview", relay.base))
        .header("cookie", &session)
        .header("content-type", "application/json")
        .body(
            json!({"destination": "nope", "event": {"event_id": "e", "event_name": "x"}})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "no destination named \"nope\"");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_listener_the_page_moves_there() {
    // `extra` lands in [admin], after its token.
    let relay = TestRelay::start(&[], "listen = \"127.0.0.1:0\"").await;
    let admin = relay
        .running
        .as_ref()
        .and_then(|r| r.admin_addr)
        .expect("an admin listener");
    let client = reqwest::Client::new();
    let on_admin = client
        .get(format!("http://{admin}/ui"))
        .send()
        .await
        .unwrap();
    assert_eq!(on_admin.status(), 200);
    assert!(on_admin.text().await.unwrap().contains("id=\"token\""));
    let on_ingest = client
        .get(format!("{}/ui", relay.base))
        .send()
        .await
        .unwrap();
    assert_eq!(on_ingest.status(), 404);
    relay.stop().await;
}

const PREVIEW_TOKEN: &str = "test-preview-token-0123456789";

/// Logs in to `/ui` with `token`; the session cookie (`name=value`).
async fn ui_login(client: &reqwest::Client, base: &str, token: &str) -> String {
    let resp = client
        .post(format!("{base}/ui/login"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303, "login with {token}");
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preview_token_looks_and_previews_but_cannot_replay_reload_or_read_deliveries() {
    let partner = FakePartner::start().await.unwrap();
    partner.set_default(postback_relay::fake_partner::Reply::status(400));
    let aff = format!(
        "[destination]\nurl = \"{}\"\nmethod = \"GET\"\n[privacy]\nallow = [\"click_id\"]\n",
        partner.url("/p?c={click_id}")
    );
    // `extra` lands in [admin], after its token.
    let relay = TestRelay::start(
        &[("aff", &aff)],
        &format!("preview_token = \"{PREVIEW_TOKEN}\""),
    )
    .await;
    // One dead letter (the partner answers 400).
    let (s, _) = relay
        .post_json("m1", &common::event("e1", "purchase", "clk1"))
        .await;
    assert_eq!(s, 202);
    assert!(
        common::eventually(10, || async {
            relay.admin_get("/admin/destinations").await["destinations"][0]["dlq_size"] == 1
        })
        .await
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = &relay.base;

    // The admin API: the preview token may look at destinations, nothing else.
    let call = |method: &str, path: &str| {
        client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth(PREVIEW_TOKEN)
            .header("content-type", "application/json")
            .body("{\"all\": true}")
    };
    for path in ["/admin/destinations", "/admin/recent"] {
        let resp = call("GET", path).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    for (method, path) in [
        ("POST", "/admin/dlq/replay"),
        ("POST", "/admin/reload"),
        ("GET", "/admin/dlq"),
        ("GET", "/admin/deliveries/dlv_00000000000000000000000000"),
        ("GET", "/metrics"),
    ] {
        let resp = call(method, path).send().await.unwrap();
        assert_eq!(resp.status(), 403, "{method} {path}");
        let v: serde_json::Value = resp.json().await.unwrap();
        let error = v["error"].as_str().unwrap_or("");
        assert!(
            error.starts_with("the preview token may look and preview only: ")
                && error.ends_with("needs the admin token ([admin] token)"),
            "{method} {path}: {v}"
        );
    }

    // `/ui` with the preview token: state and preview, but replay is 403.
    let session = ui_login(&client, base, PREVIEW_TOKEN).await;
    let api = |method: &str, path: &str, body: serde_json::Value| {
        client
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .header("cookie", &session)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let state: serde_json::Value = api("GET", "/ui/api/state", json!({}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["role"], "preview", "{state}");
    let event = json!({"event_id": "e", "event_name": "purchase", "click_id": "clk_p"});
    let resp = api(
        "POST",
        "/ui/api/preview",
        json!({"destination": "aff", "event": event}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = api("POST", "/ui/api/replay", json!({"destination": "aff"}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        relay.admin_get("/admin/destinations").await["destinations"][0]["dlq_size"],
        1,
        "a preview login replayed"
    );

    // The admin login replays from the page.
    let admin = ui_login(&client, base, ADMIN_TOKEN).await;
    let resp = client
        .post(format!("{base}/ui/api/replay"))
        .header("cookie", &admin)
        .header("content-type", "application/json")
        .body(json!({"destination": "aff"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["replayed"], 1, "{v}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_nothing_is_sent_shows_the_live_view_and_a_preview_login_cannot_replay()
{
    let Some((_driver, c)) = driver().await else {
        return;
    };
    let partner = FakePartner::start().await.unwrap();
    let purchases = format!(
        "[destination]\nurl = \"{}\"\nmethod = \"GET\"\n[when]\nevent_name = [\"purchase\"]\n[privacy]\nallow = [\"click_id\"]\n",
        partner.url("/p?c={click_id}")
    );
    let off = format!("enabled = false\n{purchases}");
    let bad = "[destination]\nurl = \"https://b.example/p\"\nmethd = \"GET\"\n";
    let relay = TestRelay::start(
        &[
            ("aff", &purchases),
            ("meta", &purchases),
            ("off", &off),
            ("bad", bad),
        ],
        &format!("preview_token = \"{PREVIEW_TOKEN}\""),
    )
    .await;
    // meta breaks after it loaded: its last good version stays in force.
    std::fs::write(relay.rules_dir().join("meta.toml"), "[destination\n").unwrap();
    let (s, _) = relay.admin_post("/admin/reload", json!({})).await;
    assert_eq!(s, 422);
    // An event through the relay, with values that must not reach the page.
    let canary = json!({"event_id": "EVTCANARY-9", "event_name": "purchase", "click_id": "CLICKCANARY-9",
                        "user": {"email": "canary.person@example.com"}});
    let (s, v) = relay.post_json("m-canary", &canary.to_string()).await;
    assert_eq!(s, 202, "{v}");

    // The preview token logs in and says what it may do.
    c.goto(&format!("{}/ui", relay.base)).await.unwrap();
    type_into(&c, "token", PREVIEW_TOKEN).await;
    click(&c, "login").await;
    let role = text_with(&c, "#role", "preview token").await;
    assert!(role.contains("look and preview only"), "{role}");

    // Disabled: a banner before and after the preview; never "Sent".
    text_with(&c, "#rule-errors", "bad.toml").await;
    click_option(&c, "destination", "off").await;
    let banner = text_with(&c, "#destination-banner", "Nothing is sent").await;
    assert_eq!(
        banner,
        "Nothing is sent to off, because its rule file off.toml says enabled = false."
    );
    click(&c, "preview").await;
    let banner = text_with(&c, "#banner", "enabled = false").await;
    assert!(
        banner.starts_with("Nothing is sent to off, because"),
        "{banner}"
    );
    let verdict = text_with(&c, "#verdict", "Not sent").await;
    assert!(verdict.starts_with("Not sent: disabled"), "{verdict}");

    // Broken, never loaded: nothing is sent; broken after loading: the last good version.
    click_option(&c, "destination", "bad").await;
    click(&c, "preview").await;
    let banner = text_with(&c, "#banner", "has errors").await;
    assert!(
        banner.starts_with("Nothing is sent to bad, because its rule file bad.toml has errors"),
        "{banner}"
    );
    click_option(&c, "destination", "meta").await;
    let banner = text_with(&c, "#destination-banner", "last good").await;
    assert!(banner.contains("meta.toml has errors"), "{banner}");
    click(&c, "preview").await;
    let banner = text_with(&c, "#banner", "last good").await;
    assert!(
        banner.contains("the last good version is, and that is what is previewed"),
        "{banner}"
    );

    // An install reaches no destination: the page says so, with each reason.
    click_option(&c, "example", "2").await;
    click(&c, "preview-all").await;
    let summary = text_with(&c, "#summary", "reaches no destination").await;
    assert_eq!(
        summary,
        "This event reaches no destination: each one's reason is below."
    );
    let verdicts = text_with(&c, "#verdicts", "aff").await;
    assert!(
        verdicts.contains("aff not sent: event_name \"install\" is not listed in [when]")
            && verdicts.contains("off not sent: disabled")
            && verdicts.contains("bad not sent: its rule file has errors"),
        "{verdicts}"
    );

    // The live view: the relay's event, its fates, and none of its values.
    let live = text_with(&c, "#live", "aff: sent").await;
    assert!(
        live.contains("meta: sent") && live.contains("[") && live.contains("off: disabled"),
        "{live}"
    );
    assert!(live.contains("user.email (not allowed)"), "{live}");
    let page = c.source().await.unwrap();
    for value in ["EVTCANARY", "CLICKCANARY", "canary.person"] {
        assert!(!page.contains(value), "{value} on the page");
    }

    // A preview login cannot replay (the button is not offered; the call is 403).
    let hidden = c
        .find(Locator::Id("replay"))
        .await
        .unwrap()
        .attr("hidden")
        .await
        .unwrap();
    assert!(
        hidden.is_some(),
        "the replay button is offered to a preview login"
    );
    let answer = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               fetch("/ui/api/replay", {method: "POST", credentials: "same-origin",
                 headers: {"Content-Type": "application/json"}, body: JSON.stringify({destination: "aff"})})
                 .then((r) => r.json().then((j) => done([r.status, j.error])));"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(answer[0], 403, "{answer}");
    assert!(
        answer[1]
            .as_str()
            .is_some_and(|e| e.contains("needs the admin token")),
        "{answer}"
    );
    c.close().await.unwrap();
    relay.stop().await;
}
