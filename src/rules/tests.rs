//! Routing end to end: shipped rule files, one pinned request per preset, the
//! semantics of when / rename / privacy / rendering, preview, and a property test
//! that nothing outside `allow` ever reaches a partner.

use super::*;
use chrono::{TimeZone, Utc};
use serde_json::json;
use std::collections::HashMap;

fn no_env() -> HashMap<String, String> {
    HashMap::new()
}

fn event(v: Value) -> Event {
    let received = Utc
        .with_ymd_and_hms(2026, 11, 25, 12, 0, 0)
        .single()
        .unwrap_or_default();
    Event::from_value(v, received).expect("valid test event")
}

fn typical(network: &str) -> Event {
    event(json!({
        "event_id": "evt_01JD8X",
        "event_name": "purchase",
        "click_id": "clk_9f2c",
        "timestamp": "2026-11-25T10:00:00Z",
        "attribution": {"network": network, "campaign": "c1"},
        "page": {"url": "https://shop.example/checkout"},
        "user": {"email": " Person@Example.com", "phone": "+1 (650) 253-0000", "ip": "203.0.113.7",
                 "user_agent": "UA/1.0", "external_id": "u42", "first_name": "Mary Ann",
                 "last_name": "O'Brien", "city": "Menlo Park", "state": "California",
                 "zip": "94025-1234", "country": "United States"},
        "device": {"idfa": "IDFA-1", "gaid": "GAID-1", "os": "ios", "os_version": "17.4",
                   "att_status": "authorized", "appsflyer_id": "af-1", "adid": "adj-1"},
        "consent": {"ad_user_data": true, "ad_personalization": false, "gpc": false},
        "properties": {"value": 9.99, "currency": "USD", "order_id": "o-1"}
    }))
}

/// One rule from text (enabled or not), as `name.toml`.
fn rule(name: &str, text: &str) -> Destination {
    match load::load_text(
        Path::new(&format!("rules/{name}.toml")),
        text.to_string(),
        &no_env(),
    ) {
        Ok((d, _)) => d,
        Err(e) => panic!("{}", crate::diag::Diagnostics(e)),
    }
}

/// A shipped example file, loaded with no environment variables set.
fn shipped(name: &str) -> Destination {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("rules/{name}.toml"));
    let text = std::fs::read_to_string(&path).expect("shipped rule file");
    match load::load_text(&path, text, &no_env()) {
        Ok((d, _)) => d,
        Err(e) => panic!("{}", crate::diag::Diagnostics(e)),
    }
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What a shipped preset rule file sends for the typical event of `network`: checks
/// its batch size, where it goes and (unless `None`) its headers, and returns it.
fn preset_request(
    file: &str,
    network: &str,
    max_events: Option<usize>,
    url: &str,
    want_headers: Option<&[(&str, &str)]>,
) -> (Destination, crate::outbound::OutboundRequest) {
    let d = shipped(file);
    assert_eq!(
        d.delivery.batch.as_ref().map(|b| b.max_events),
        max_events,
        "{file}"
    );
    let req = d.render(&typical(network)).unwrap();
    assert_eq!(req.url, url, "{file}");
    if let Some(want) = want_headers {
        assert_eq!(req.headers, headers(want), "{file}");
    }
    (d, req)
}

#[test]
fn the_shipped_rules_directory_loads_with_no_environment() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let rules = match RuleSet::load_dir(&dir, &no_env()) {
        Ok(r) => r,
        Err(e) => panic!("{}", crate::diag::Diagnostics(e)),
    };
    // Only the loopback example is enabled: an offline demo sends nothing anywhere.
    let names: Vec<&str> = rules
        .destinations()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, ["example-aff"]);
    let disabled: Vec<&str> = rules.disabled().iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        disabled,
        [
            "adjust",
            "appsflyer",
            "google-ads",
            "google-data-manager",
            "linkedin",
            "meta",
            "pinterest",
            "reddit",
            "snapchat",
            "tiktok"
        ]
    );
    assert!(rules.destinations()[0]
        .render(&typical("example-aff"))
        .unwrap()
        .url
        .starts_with("http://127.0.0.1:9999/"));
}

#[test]
fn example_affiliate_get_postback() {
    let d = shipped("example-aff");
    assert_eq!(
        d.delivery.rate_limit.map(|r| (r.count, r.per.as_secs())),
        Some((50, 1))
    );
    // No `concurrency` in the example: the adaptive controller, under the default ceiling.
    assert_eq!(d.delivery.concurrency, crate::outbound::DEFAULT_CONCURRENCY);
    assert_eq!(d.delivery.retry.max_backoff.as_secs(), 3600);
    let req = d.render(&typical("example-aff")).unwrap();
    assert_eq!(
        req,
        OutboundRequest {
            method: Method::Get,
            url: "http://127.0.0.1:9999/postback?clickid=clk_9f2c&goal=purchase&payout=9.99".into(),
            headers: vec![],
            body: None,
            event_time_ms: Some(1_795_600_800_000),
        }
    );
    assert_eq!(
        d.render(&typical("other")).unwrap_err().to_string(),
        "attribution.network is not \"example-aff\" as [when] requires"
    );
}

fn h(s: &str) -> String {
    sha256_hex(s)
}

#[test]
fn meta_capi_preset_request() {
    // Meta customer-information parameters (M3), normalised as Meta's own
    // capi-param-builder does (M5): "Mary Ann" -> maryann, state and country names to
    // codes, ZIP+4 cut; phone with country code, no "+"; the real IP and user agent
    // in clear (M3: "always provide the real IP"); event_source_url for website (M2).
    let d = shipped("meta");
    let req = d.render(&typical("any")).unwrap();
    assert_eq!(req.method, Method::Post);
    assert_eq!(
        req.url,
        "https://graph.facebook.com/v27.0/123456789012345/events"
    );
    assert_eq!(
        req.headers,
        headers(&[
            ("Authorization", "Bearer replace-me"),
            ("Content-Type", "application/json")
        ])
    );
    let expected = json!({"data": [{
        "event_name": "Purchase", "event_time": 1795600800, "event_id": "evt_01JD8X",
        "action_source": "website", "event_source_url": "https://shop.example/checkout",
        "user_data": {"em": h("person@example.com"), "ph": h("16502530000"),
                      "fn": h("maryann"), "ln": h("obrien"), "ct": h("menlopark"),
                      "st": h("ca"), "zp": h("94025"), "country": h("us"),
                      "external_id": h("u42"),
                      "client_ip_address": "203.0.113.7", "client_user_agent": "UA/1.0"},
        "custom_data": {"value": 9.99, "currency": "USD", "order_id": "o-1"}
    }]});
    assert_eq!(req.body, Some(expected.to_string()));
    assert_eq!(req.event_time_ms, Some(1_795_600_800_000));
    // M1: Meta refuses events over 7 days old; its answers are read as Meta's.
    assert_eq!(
        d.delivery.max_event_age,
        Some(std::time::Duration::from_secs(7 * 86400))
    );
    assert_eq!(
        d.delivery.success,
        crate::outbound::SuccessRule::Partner(crate::outbound::PartnerAnswers::MetaCapi)
    );
}

#[test]
fn tiktok_events_preset_request() {
    // TikTok server tag (T1): email trimmed + lower-cased, external_id hashed with its
    // case kept; phone in E.164 with "+" (T2).
    let req = shipped("tiktok").render(&typical("tiktok")).unwrap();
    assert_eq!(
        req.url,
        "https://business-api.tiktok.com/open_api/v1.3/event/track/"
    );
    assert_eq!(
        req.headers,
        headers(&[
            ("Access-Token", "replace-me"),
            ("Content-Type", "application/json")
        ])
    );
    let expected = json!({
        "event_source": "web", "event_source_id": "CABCD1234567890",
        "data": [{
            "event": "CompletePayment", "event_time": 1795600800, "event_id": "evt_01JD8X",
            "user": {"ttclid": "clk_9f2c", "external_id": h("u42"), "email": h("person@example.com"),
                     "phone": h("+16502530000"), "ip": "203.0.113.7", "user_agent": "UA/1.0"},
            "properties": {"value": 9.99, "currency": "USD"}
        }]
    });
    assert_eq!(req.body, Some(expected.to_string()));
}

#[test]
fn appsflyer_s2s_preset_request() {
    // AppsFlyer S2S API 3 (A1): api3 host; eventValue a JSON string with revenue as
    // af_revenue / af_currency (A4); os for iOS 14+ (A3); att as Apple's raw value
    // (authorized = 3); eventTime "yyyy-MM-dd HH:mm:ss.SSS" UTC.
    let req = shipped("appsflyer").render(&typical("any")).unwrap();
    assert_eq!(req.url, "https://api3.appsflyer.com/inappevent/id123456789");
    assert_eq!(
        req.headers,
        headers(&[
            ("authentication", "replace-me"),
            ("Content-Type", "application/json")
        ])
    );
    let expected = json!({
        "appsflyer_id": "af-1", "customer_user_id": "u42", "idfa": "IDFA-1",
        "advertising_id": "GAID-1", "os": "17.4", "att": 3, "eventName": "af_purchase",
        "eventValue": "{\"af_revenue\":\"9.99\",\"af_currency\":\"USD\"}", "eventCurrency": "USD",
        "ip": "203.0.113.7", "eventTime": "2026-11-25 10:00:00.000", "af_events_api": "true",
        "consent_data": {"manual": {"gdpr_applies": true, "ad_user_data_enabled": true,
                                    "ad_personalization_enabled": false}}
    });
    assert_eq!(req.body, Some(expected.to_string()));
    // A1: eventValue is "" without a value; IDFA and IDFV in upper case.
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/appsflyer.toml"))
            .unwrap();
    let d = rule("af", &text);
    let mut ev = typical("any");
    ev.fields.shift_remove("properties");
    ev.fields["device"]["idfa"] = json!("6d92078a-8246-4ba4-ae5b-76104861e7dc");
    let body: Value = serde_json::from_str(&d.render(&ev).unwrap().body.unwrap()).unwrap();
    assert_eq!(body["eventValue"], json!(""));
    assert_eq!(body["idfa"], json!("6D92078A-8246-4BA4-AE5B-76104861E7DC"));
}

#[test]
fn appsflyer_sends_the_users_consent_choices_as_consent_data() {
    // A7 (AppsFlyer S2S API 3 OpenAPI, `ConsentData` -> `ManualConsent`, and its
    // overview's example): consent_data = {manual: {gdpr_applies, ad_user_data_enabled,
    // ad_personalization_enabled}}, booleans.
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/appsflyer.toml"))
            .unwrap();
    let consent = |d: &Destination, c: Value| {
        let mut ev = typical("any");
        ev.fields["consent"] = c;
        let body: Value = serde_json::from_str(&d.render(&ev).unwrap().body.unwrap()).unwrap();
        body.get("consent_data").cloned()
    };
    let d = rule("af", &text);
    // A denial goes out as such, and the IDs the rule drops without consent are gone.
    let mut ev = typical("any");
    ev.fields["consent"] = json!({"ad_user_data": false, "ad_personalization": false});
    let body: Value = serde_json::from_str(&d.render(&ev).unwrap().body.unwrap()).unwrap();
    assert_eq!(
        body["consent_data"],
        json!({"manual": {"gdpr_applies": true, "ad_user_data_enabled": false,
                          "ad_personalization_enabled": false}})
    );
    assert!(
        body.get("idfa").is_none() && body.get("ip").is_none(),
        "{body}"
    );
    // One choice alone is sent alone; no choice, no consent_data.
    assert_eq!(
        consent(&d, json!({"ad_personalization": true})),
        Some(json!({"manual": {"gdpr_applies": true, "ad_personalization_enabled": true}}))
    );
    assert_eq!(consent(&d, json!({"gpc": true})), None);
    // An app whose users GDPR does not cover says so.
    let outside = rule(
        "af",
        &text.replace("# gdpr_applies = \"false\"", "gdpr_applies = \"false\""),
    );
    assert_eq!(
        consent(&outside, json!({"ad_user_data": true})),
        Some(json!({"manual": {"gdpr_applies": false, "ad_user_data_enabled": true}}))
    );
    // Or per event, from a field of the app's own, through a [body] laid over the preset.
    let per_event = rule(
        "af",
        &format!(
            "{}\n[body.consent_data.manual]\ngdpr_applies = \"{{consent.gdpr_applies}}\"\n",
            text.replace(
                "\"consent.ad_personalization\"]",
                "\"consent.ad_personalization\", \"consent.gdpr_applies\"]"
            )
        ),
    );
    assert_eq!(
        consent(
            &per_event,
            json!({"ad_user_data": false, "gdpr_applies": false})
        ),
        Some(json!({"manual": {"gdpr_applies": false, "ad_user_data_enabled": false}}))
    );
    // Consent fields the rule does not allow are never sent (default deny).
    let unallowed = rule(
        "af",
        &text.replace(
            ",\n         \"consent.ad_user_data\", \"consent.ad_personalization\"]",
            "]",
        ),
    );
    assert_eq!(
        consent(
            &unallowed,
            json!({"ad_user_data": true, "ad_personalization": true})
        ),
        None
    );
    // gdpr_applies is a boolean: anything else does not load.
    let bad = load::load_text(
        Path::new("rules/af.toml"),
        text.replace("# gdpr_applies = \"false\"", "gdpr_applies = \"yes\""),
        &no_env(),
    )
    .err()
    .map(|e| crate::diag::Diagnostics(e).to_string())
    .unwrap_or_default();
    assert!(
        bad.contains("`params.gdpr_applies` must be \"true\""),
        "{bad}"
    );
}

#[test]
fn meta_turns_an_fbclid_into_fbc() {
    // M9 (Meta, fbc parameter): fb.1.<creation time in ms>.<fbclid>; an event's own
    // fbc wins; the fbclid itself is not a Meta parameter.
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/meta.toml"))
            .unwrap()
            .replace(
                "allow = [\"event_id\",",
                "allow = [\"event_id\", \"click_id\",",
            );
    let d = rule("m", &text);
    let mut ev = typical("meta");
    ev.fields["click_id"] = json!("IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk");
    let body: Value = serde_json::from_str(&d.render(&ev).unwrap().body.unwrap()).unwrap();
    let user = &body["data"][0]["user_data"];
    assert_eq!(
        user["fbc"],
        json!("fb.1.1795600800000.IwAR2F4-dbP0l7Mn1IawQQGCINEz7PYXQvwjNwB_qa2ofrHyiLjcbCRxTDMgk")
    );
    assert!(user.get("fbclid").is_none(), "{user}");
    ev.fields["user"]["fbc"] = json!("fb.1.1554763741205.AbCdEf");
    let body: Value = serde_json::from_str(&d.render(&ev).unwrap().body.unwrap()).unwrap();
    assert_eq!(
        body["data"][0]["user_data"]["fbc"],
        json!("fb.1.1554763741205.AbCdEf")
    );
}

#[test]
fn adjust_s2s_preset_request() {
    // Adjust S2S (J1): form-encoded POST with s2s=1, app_token, event_token, device
    // IDs including adid; ip_address only as IPv4.
    let d = shipped("adjust");
    let req = d.render(&typical("any")).unwrap();
    assert_eq!(req.url, "https://s2s.adjust.com/event");
    assert_eq!(
        req.headers,
        headers(&[
            ("Authorization", "Bearer replace-me"),
            ("Content-Type", "application/x-www-form-urlencoded")
        ])
    );
    assert_eq!(
        req.body.as_deref(),
        Some("s2s=1&app_token=abc123def456&event_token=abc123&idfa=IDFA-1&gps_adid=GAID-1&adid=adj-1&created_at_unix=1795600800&ip_address=203.0.113.7&revenue=9.99&currency=USD")
    );
    let mut v6 = typical("any");
    v6.fields["user"]["ip"] = json!("2001:db8::7");
    let body = d.render(&v6).unwrap().body.unwrap_or_default();
    assert!(!body.contains("ip_address"), "{body}");
    // J1: events older than 58 days are rejected by Adjust.
    assert_eq!(
        d.delivery.max_event_age,
        Some(std::time::Duration::from_secs(58 * 86400))
    );
}

#[test]
fn adjust_callback_and_partner_params_are_url_encoded_json_objects_of_strings() {
    // J3 (adjust/dev-docs `api/s2s-api/events.mdx`, "callback and partner
    // parameters"): each a URL-encoded JSON object of string key-value pairs, not
    // nested; its example {"f0o":"bar","bar":"baz"}.
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/adjust.toml"))
            .unwrap()
            .replace(
                "\"properties.value\", \"properties.currency\"]",
                "\"properties.value\", \"properties.currency\", \"properties.order_id\", \"attribution.campaign\"]",
            );
    let form = |d: &Destination, ev: &Event| -> Vec<(String, String)> {
        let body = d.render(ev).unwrap().body.unwrap_or_default();
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect()
    };
    let value_of = |pairs: &[(String, String)], key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| serde_json::from_str::<Value>(v).unwrap())
    };
    let example = rule(
        "adj",
        &format!("{text}\n[body.callback_params]\nf0o = \"bar\"\nbar = \"baz\"\n"),
    );
    let body = example.render(&typical("any")).unwrap().body.unwrap();
    assert!(
        body.contains("&callback_params=%7B%22f0o%22%3A%22bar%22%2C%22bar%22%3A%22baz%22%7D"),
        "{body}"
    );
    // From the event: values go as strings (9.99 as "9.99"); a missing one is left out,
    // and an object left empty is not sent at all.
    let d = rule(
        "adj",
        &format!(
            "{text}\n[body.callback_params]\norder_id = \"{{properties.order_id}}\"\nvalue = \"{{properties.value}}\"\nsource = \"relay\"\n[body.partner_params]\ncampaign = \"{{attribution.campaign}}\"\n"
        ),
    );
    let pairs = form(&d, &typical("any"));
    assert_eq!(
        value_of(&pairs, "callback_params"),
        Some(json!({"order_id": "o-1", "value": "9.99", "source": "relay"}))
    );
    assert_eq!(
        value_of(&pairs, "partner_params"),
        Some(json!({"campaign": "c1"}))
    );
    let mut bare = typical("any");
    bare.fields.shift_remove("attribution");
    bare.fields["properties"] = json!({"currency": "USD"});
    let pairs = form(&d, &bare);
    assert_eq!(
        value_of(&pairs, "callback_params"),
        Some(json!({"source": "relay"}))
    );
    assert!(
        pairs.iter().all(|(k, _)| k != "partner_params"),
        "{pairs:?}"
    );
    // Default deny holds inside them, and they are flat (Adjust: "don't nest objects").
    let refused = |extra: &str| {
        load::load_text(
            Path::new("rules/adj.toml"),
            format!("{text}\n{extra}"),
            &no_env(),
        )
        .err()
        .map(|e| crate::diag::Diagnostics(e).to_string())
        .unwrap_or_default()
    };
    let e = refused("[body.callback_params]\nemail = \"{user.email}\"\n");
    assert!(e.contains("user.email"), "{e}");
    let e = refused("[body.callback_params]\nnested = { a = \"b\" }\n");
    assert!(
        e.contains("`callback_params.nested` must be a single value"),
        "{e}"
    );
    let e = refused("[body.custom_params]\na = \"b\"\n");
    assert!(
        e.contains("(only `callback_params` and `partner_params` take a table)"),
        "{e}"
    );
}

#[test]
fn google_ads_preset_request() {
    // Google Ads API v26 (G5), "Normalization and hashing": trim, lower-case, phone
    // in E.164; consent.adUserData (G7); one click identifier per conversion.
    // No Authorization here: the access token is attached at send time (oauth).
    let (d, req) = preset_request(
        "google-ads",
        "google",
        Some(2000),
        "https://googleads.googleapis.com/v26/customers/1234567890:uploadClickConversions",
        Some(&[
            ("developer-token", "replace-me"),
            ("Content-Type", "application/json"),
        ]),
    );
    let expected = json!({
        "partialFailure": true,
        "conversions": [{
            "gclid": "clk_9f2c",
            "conversionAction": "customers/1234567890/conversionActions/987654321",
            "conversionDateTime": "2026-11-25 10:00:00+00:00",
            "conversionValue": 9.99, "currencyCode": "USD", "orderId": "o-1",
            "userIdentifiers": [{"hashedEmail": h("person@example.com")},
                                {"hashedPhoneNumber": h("+16502530000")}],
            "consent": {"adUserData": "GRANTED"}
        }]
    });
    assert_eq!(req.body, Some(expected.to_string()));
    let oauth = d.delivery.oauth.clone().expect("oauth settings");
    assert_eq!(oauth.token_url, "https://oauth2.googleapis.com/token");
    assert!(!format!("{:?}", d.delivery).contains("replace-me"));

    // G8: a numeric order ID goes as a string (protobuf JSON refuses a number).
    let mut numeric = typical("google");
    numeric.fields["properties"]["order_id"] = json!(123456);
    let body: Value = serde_json::from_str(&d.render(&numeric).unwrap().body.unwrap()).unwrap();
    assert_eq!(body["conversions"][0]["orderId"], json!("123456"));

    // gclid first, then gbraid, then wbraid: Google rejects more than one.
    let mut ev = typical("google");
    ev.fields["attribution"]["gbraid"] = json!("gb-1");
    ev.fields["attribution"]["wbraid"] = json!("wb-1");
    let body: Value = serde_json::from_str(&d.render(&ev).unwrap().body.unwrap()).unwrap();
    assert_eq!(body["conversions"][0]["gclid"], json!("clk_9f2c"));
    assert!(body["conversions"][0].get("gbraid").is_none());
    assert!(body["conversions"][0].get("wbraid").is_none());
    ev.fields.shift_remove("click_id");
    ev.fields["consent"]["ad_user_data"] = json!(false);
    let body: Value = serde_json::from_str(&d.render(&ev).unwrap().body.unwrap()).unwrap();
    assert_eq!(body["conversions"][0]["gbraid"], json!("gb-1"));
    assert!(body["conversions"][0].get("wbraid").is_none());
    assert_eq!(
        body["conversions"][0]["consent"]["adUserData"],
        json!("DENIED")
    );
    assert!(body["conversions"][0].get("userIdentifiers").is_none());
}

#[test]
fn google_data_manager_preset_request() {
    // Data Manager API v1 events:ingest (docs/partners.md D1-D3): field names from
    // googleapis google/ads/datamanager/v1 (IngestEventsRequest, Destination,
    // ProductAccount, Event, AdIdentifiers, UserData, UserIdentifier, Consent) in
    // proto3 JSON (lowerCamelCase, enums by name); hashing per Google's formatting
    // guide (as google_ads: trim, lower-case, phone E.164), hex encoding.
    // No developer token: OAuth only, attached at send time.
    let (d, req) = preset_request(
        "google-data-manager",
        "google",
        Some(2000),
        "https://datamanager.googleapis.com/v1/events:ingest",
        Some(&[("Content-Type", "application/json")]),
    );
    let expected = json!({
        "encoding": "HEX",
        "destinations": [{
            "productDestinationId": "987654321",
            "operatingAccount": {"accountType": "GOOGLE_ADS", "accountId": "1234567890"}
        }],
        "events": [{
            "transactionId": "o-1",
            "eventTimestamp": "2026-11-25T10:00:00Z",
            "eventSource": "WEB",
            "conversionValue": 9.99,
            "currency": "USD",
            "adIdentifiers": {"gclid": "clk_9f2c"},
            "consent": {"adUserData": "CONSENT_GRANTED", "adPersonalization": "CONSENT_DENIED"},
            "userData": {"userIdentifiers": [{"emailAddress": h("person@example.com")},
                                             {"phoneNumber": h("+16502530000")}]}
        }]
    });
    assert_eq!(req.body, Some(expected.to_string()));
    let oauth = d.delivery.oauth.clone().expect("oauth settings");
    assert_eq!(oauth.token_url, "https://oauth2.googleapis.com/token");

    // Test mode, a manager account, a numeric order ID, an iOS click without gclid
    // and without consent.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/google-data-manager.toml"),
    )
    .unwrap()
    .replace("# validate_only = \"true\"", "validate_only = \"true\"")
    .replace(
        "# login_customer_id = \"${GOOGLE_DM_LOGIN_CUSTOMER_ID}\"",
        "login_customer_id = \"555\"",
    );
    let d = rule("gdm", &text);
    let mut ev = typical("google");
    ev.fields.shift_remove("click_id");
    ev.fields["attribution"]["gbraid"] = json!("gb-1");
    ev.fields["attribution"]["wbraid"] = json!("wb-1");
    ev.fields["consent"]["ad_user_data"] = json!(false);
    ev.fields["properties"]["order_id"] = json!(123456);
    let body: Value = serde_json::from_str(&d.render(&ev).unwrap().body.unwrap()).unwrap();
    assert_eq!(body["validateOnly"], json!(true));
    assert_eq!(
        body["destinations"][0]["loginAccount"],
        json!({"accountType": "GOOGLE_ADS", "accountId": "555"})
    );
    let e = &body["events"][0];
    assert_eq!(e["transactionId"], json!("123456"));
    assert_eq!(e["adIdentifiers"], json!({"gbraid": "gb-1"}));
    assert_eq!(e["consent"]["adUserData"], json!("CONSENT_DENIED"));
    assert!(e.get("userData").is_none(), "{e}");
}

#[test]
fn snapchat_capi_preset_request() {
    // Snap Conversions API v3 "Using the API" (S1): POST tr.snapchat.com/v3/{PIXEL}/
    // events?access_token=..., `{"data": [{event_name, event_time (s), event_id,
    // action_source, event_source_url, user_data: {em: [..], ph: [..]}, custom_data}]}`.
    let (d, req) = preset_request(
        "snapchat",
        "snapchat",
        Some(2000),
        "https://tr.snapchat.com/v3/0f0e0d0c-0b0a-4908-8706-050403020100/events?access_token=replace-me",
        None,
    );
    let expected = json!({"data": [{
        "event_name": "PURCHASE", "event_time": 1795600800, "event_id": "evt_01JD8X",
        "action_source": "WEB", "event_source_url": "https://shop.example/checkout",
        "user_data": {
            "em": [h("person@example.com")], "ph": [h("16502530000")],
            "external_id": [h("u42")],
            "client_ip_address": "203.0.113.7", "client_user_agent": "UA/1.0",
            "sc_click_id": "clk_9f2c"
        },
        "custom_data": {"value": "9.99", "currency": "USD", "order_id": "o-1"}
    }]});
    assert_eq!(req.body, Some(expected.to_string()));
    // S2 "Parameters": Snap's own normalisation examples and their hashes.
    let mut ev = typical("snapchat");
    ev.fields["user"]["email"] = json!("Person@Example.com");
    ev.fields["user"]["phone"] = json!("+44 844 412 4653");
    let body: Value = serde_json::from_str(&d.render(&ev).unwrap().body.unwrap()).unwrap();
    let user = &body["data"][0]["user_data"];
    assert_eq!(
        user["em"][0],
        json!("542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345")
    );
    assert_eq!(
        user["ph"][0],
        json!("dc008fda46e2e64002cf2f82a4906236282d431c4f75e5b60bfe79fc48546383")
    );
}

#[test]
fn pinterest_capi_preset_request() {
    // Pinterest's official client (P1): POST /v5/ad_accounts/{id}/events, Bearer
    // token, `{"data": [{event_name, action_source, event_time, event_id,
    // event_source_url, user_data: {em: [..], ph: [..], client_ip_address,
    // client_user_agent, ...}, custom_data: {currency, value (a string), order_id}}]}`.
    let (_, req) = preset_request(
        "pinterest",
        "pinterest",
        Some(1000),
        "https://api.pinterest.com/v5/ad_accounts/549755885175/events",
        Some(&[
            ("Authorization", "Bearer replace-me"),
            ("Content-Type", "application/json"),
        ]),
    );
    let expected = json!({"data": [{
        "event_name": "checkout", "action_source": "web", "event_time": 1795600800,
        "event_id": "evt_01JD8X", "event_source_url": "https://shop.example/checkout",
        "user_data": {
            "em": [h("person@example.com")], "ph": [h("16502530000")],
            "external_id": [h("u42")],
            "client_ip_address": "203.0.113.7", "client_user_agent": "UA/1.0"
        },
        "custom_data": {"value": "9.99", "currency": "USD", "order_id": "o-1"}
    }]});
    assert_eq!(req.body, Some(expected.to_string()));
}

#[test]
fn reddit_capi_preset_request() {
    // Reddit Ads API v3 "Post Conversion Events" (R1): `{"data": {"events": [{event_at
    // (ms), action_source, event_source_url, click_id, type: {tracking_type},
    // metadata: {conversion_id, value, currency}, user: {email, external_id,
    // ip_address (hashed), user_agent}}]}}`.
    let d = shipped("reddit");
    assert_eq!(
        d.delivery
            .batch
            .as_ref()
            .map(|b| (b.path.as_str(), b.max_events)),
        Some(("data.events", 1000))
    );
    let req = d.render(&typical("reddit")).unwrap();
    assert_eq!(
        req.url,
        "https://ads-api.reddit.com/api/v3/pixels/a2_example123/conversion_events"
    );
    let expected = json!({"data": {"events": [{
        "event_at": 1795600800000_i64, "action_source": "WEBSITE",
        "event_source_url": "https://shop.example/checkout", "click_id": "clk_9f2c",
        "type": {"tracking_type": "PURCHASE"},
        "metadata": {"conversion_id": "evt_01JD8X", "value": 9.99, "currency": "USD"},
        "user": {"email": h("person@example.com"), "external_id": h("u42"),
                 "ip_address": h("203.0.113.7"), "user_agent": "UA/1.0"}
    }]}});
    assert_eq!(req.body, Some(expected.to_string()));
}

#[test]
fn linkedin_capi_preset_request() {
    // LinkedIn Conversions API (L1): POST /rest/conversionEvents, headers
    // LinkedIn-Version, X-RestLi-Method: BATCH_CREATE; each element {conversion:
    // "urn:lla:llaPartnerConversion:{id}", conversionHappenedAt (ms), eventId,
    // conversionValue: {currencyCode, amount (a string)}, user: {userIds: [{idType:
    // SHA256_EMAIL | LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID, idValue}], userInfo}}.
    let (d, req) = preset_request(
        "linkedin",
        "linkedin",
        Some(5000),
        "https://api.linkedin.com/rest/conversionEvents",
        Some(&[
            ("LinkedIn-Version", "202607"),
            ("X-RestLi-Method", "BATCH_CREATE"),
            ("X-Restli-Protocol-Version", "2.0.0"),
            ("Content-Type", "application/json"),
        ]),
    );
    let expected = json!({"elements": [{
        "conversion": "urn:lla:llaPartnerConversion:104012",
        "conversionHappenedAt": 1795600800000_i64, "eventId": "evt_01JD8X",
        "conversionValue": {"currencyCode": "USD", "amount": "9.99"},
        "user": {
            "userIds": [{"idType": "SHA256_EMAIL", "idValue": h("person@example.com")},
                        {"idType": "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", "idValue": "clk_9f2c"}],
            "userInfo": {"firstName": "Mary Ann", "lastName": "O'Brien"}
        }
    }]});
    assert_eq!(req.body, Some(expected.to_string()));
    // Without consent: no e-mail, no names; the click ID alone still matches.
    let mut ev = typical("linkedin");
    ev.fields["consent"]["ad_user_data"] = json!(false);
    let body: Value = serde_json::from_str(&d.render(&ev).unwrap().body.unwrap()).unwrap();
    assert_eq!(
        body["elements"][0]["user"],
        json!({"userIds": [{"idType": "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", "idValue": "clk_9f2c"}]})
    );
}

#[test]
fn every_preset_compiles() {
    for p in presets::PRESETS {
        let params = template::Params {
            lenient: true,
            ..Default::default()
        };
        assert!(load::compile_preset(p, &params).is_some(), "{}", p.name);
    }
}

#[test]
fn every_batching_preset_takes_nothing_from_the_event_outside_its_list() {
    // A batch shares the first event's envelope: only its list may vary per event.
    let mut batching = 0;
    for p in presets::PRESETS {
        let Some((path, max)) = p.batch else {
            continue;
        };
        batching += 1;
        assert!(max > 1, "{}", p.name);
        let params = template::Params {
            lenient: true,
            ..Default::default()
        };
        let node = load::compile_preset(p, &params).expect("compiles");
        assert_eq!(
            load::check_batch_body(&Body::Json(node), path),
            Ok(()),
            "{}",
            p.name
        );
    }
    assert_eq!(
        batching, 8,
        "meta_capi, tiktok_events, google_ads, google_data_manager, snapchat_capi, pinterest_capi, reddit_capi, linkedin_capi"
    );
}

#[test]
fn without_consent_meta_gets_nothing_and_the_event_is_skipped_not_sent() {
    // Meta (M2): user_data is required. Without consent every identifier is dropped,
    // so the event is skipped with a reason instead of being sent to be refused.
    let mut ev = typical("any");
    ev.fields["consent"]["ad_user_data"] = json!(false);
    let skip = shipped("meta").evaluate(&ev).unwrap_err();
    assert_eq!(skip.kind(), "no_consent");
    let text = skip.to_string();
    assert!(
        text.starts_with("nothing Meta can match this conversion on is left"),
        "{text}"
    );
    assert!(
        text.contains("consent.ad_user_data is not true, so user.email, user.phone"),
        "{text}"
    );
    // With a click ID left, TikTok still gets the conversion without personal data.
    let mut ev = typical("tiktok");
    ev.fields["consent"]["ad_user_data"] = json!(false);
    let r = shipped("tiktok").evaluate(&ev).unwrap();
    let body: Value = serde_json::from_str(r.request.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["data"][0]["user"], json!({"ttclid": "clk_9f2c"}));
    // Adjust: without consent the advertising IDs go, Adjust's own adid stays.
    let mut ev = typical("any");
    ev.fields["consent"]["ad_user_data"] = json!(false);
    let body = shipped("adjust")
        .render(&ev)
        .unwrap()
        .body
        .unwrap_or_default();
    assert!(
        body.contains("adid=adj-1") && !body.contains("idfa"),
        "{body}"
    );
    ev.fields["device"] = json!({"idfa": "IDFA-1"});
    assert_eq!(
        shipped("adjust").render(&ev).unwrap_err().kind(),
        "no_consent"
    );
}

#[test]
fn meta_website_events_without_a_page_url_are_skipped() {
    let mut ev = typical("any");
    ev.fields.shift_remove("page");
    let skip = shipped("meta").render(&ev).unwrap_err();
    assert_eq!(
        skip.to_string(),
        "page.url is missing, and Meta needs it: Meta requires event_source_url for action_source \"website\""
    );
}

#[test]
fn a_user_body_extends_a_preset_and_params_fill_it() {
    let d = rule(
        "m",
        "[destination]\nurl = \"https://graph.example/e\"\npreset = \"meta_capi\"\n\
         [params]\naction_source = \"app\"\ntest_event_code = \"TEST1\"\n\
         [[body.data]]\nopt_out = false\n[privacy]\nallow = [\"event_name\", \"user.ip\"]\n",
    );
    let body: Value =
        serde_json::from_str(d.render(&typical("x")).unwrap().body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"test_event_code": "TEST1", "data": [{"event_name": "purchase", "event_time": 1795600800,
               "action_source": "app", "user_data": {"client_ip_address": "203.0.113.7"},
               "opt_out": false}]})
    );
}

#[test]
fn default_bodies_carry_the_filtered_event() {
    let allow = "[privacy]\nallow = [\"event_name\", \"user.email\", \"properties\"]\nhash = [\"user.email\"]\n";
    let json_rule = rule(
        "j",
        &format!("[destination]\nurl = \"https://a.example/\"\n{allow}"),
    );
    assert_eq!(
        json_rule.render(&typical("x")).unwrap().body,
        Some(
            json!({"event_name": "purchase", "user": {"email": h("person@example.com")},
                    "properties": {"value": 9.99, "currency": "USD", "order_id": "o-1"}})
            .to_string()
        )
    );
    let form_rule = rule(
        "f",
        &format!("[destination]\nurl = \"https://a.example/\"\nformat = \"form\"\n{allow}"),
    );
    let req = form_rule.render(&typical("x")).unwrap();
    assert_eq!(
        req.body.as_deref().map(|b| b.replace(&h("person@example.com"), "H")),
        Some("event_name=purchase&user.email=H&properties.value=9.99&properties.currency=USD&properties.order_id=o-1".into())
    );
    assert_eq!(
        req.headers,
        headers(&[("Content-Type", "application/x-www-form-urlencoded")])
    );
}

#[test]
fn missing_fields_are_empty_in_urls_and_omitted_from_bodies() {
    let d = rule(
        "b",
        "[destination]\nurl = \"https://a.example/p?c={click_id}&o={properties.coupon}&t={timestamp.unix}\"\n\
         headers = { X-Coupon = \"c:{properties.coupon}\" }\n\
         [body]\nvalue = \"{properties.value}\"\ncoupon = \"{properties.coupon}\"\nlabel = \"v={properties.value} c={properties.coupon}\"\n\
         list = [\"{properties.coupon}\", \"{click_id}\", 1]\nbraces = \"{{literal}}\"\n\
         [privacy]\nallow = [\"click_id\", \"properties\"]\n",
    );
    let req = d.render(&typical("x")).unwrap();
    assert_eq!(req.url, "https://a.example/p?c=clk_9f2c&o=&t=1795600800");
    assert_eq!(req.headers[0], ("X-Coupon".to_string(), "c:".to_string()));
    assert_eq!(
        req.body,
        Some(json!({"value": 9.99, "list": ["clk_9f2c", 1], "braces": "{literal}"}).to_string())
    );
}

#[test]
fn rename_happens_after_when_and_before_rendering() {
    let d = rule(
        "r",
        "[destination]\nurl = \"https://a.example/?e={event_name}&n={attribution.network}\"\nmethod = \"GET\"\n\
         [when]\nevent_name = \"purchase\"\n\
         [rename.event_name]\npurchase = \"sale\"\n[rename.attribution.network]\nfb = \"facebook\"\n\
         [privacy]\nallow = [\"event_name\", \"attribution.network\"]\n",
    );
    assert_eq!(
        d.render(&typical("fb")).unwrap().url,
        "https://a.example/?e=sale&n=facebook"
    );
    assert_eq!(
        d.render(&typical("tw")).unwrap().url,
        "https://a.example/?e=sale&n=tw"
    );
}

#[test]
fn debug_output_of_a_destination_shows_no_secrets() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/meta.toml"))
            .unwrap()
            .replace("${META_ACCESS_TOKEN:-replace-me}", "${META_ACCESS_TOKEN}");
    let env: HashMap<String, String> =
        [("META_ACCESS_TOKEN".to_string(), "SECRET-TOKEN".to_string())].into();
    let (d, _) = load::load_text(Path::new("rules/meta.toml"), text, &env).unwrap();
    assert!(!format!("{d:?}").contains("SECRET-TOKEN"));
}

#[test]
fn header_injection_through_a_field_is_refused() {
    let d = rule(
        "hdr",
        "[destination]\nurl = \"https://a.example/\"\nmethod = \"GET\"\nheaders = { X-Click = \"{click_id}\" }\n[privacy]\nallow = [\"click_id\"]\n",
    );
    let mut ev = typical("x");
    ev.fields["click_id"] = json!("a\r\nX-Evil: 1");
    assert_eq!(
        d.render(&ev).unwrap_err(),
        Skip::InvalidHeader {
            header: "X-Click".into()
        }
    );
}

#[test]
fn route_gives_every_enabled_destination_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let get = |host: &str| {
        format!("[destination]\nurl = \"https://{host}.example/?c={{click_id}}\"\nmethod = \"GET\"\n[when]\nevent_name = \"install\"\n[privacy]\nallow = [\"click_id\"]\n")
    };
    std::fs::write(dir.path().join("zeta.toml"), get("z")).unwrap();
    std::fs::write(
        dir.path().join("alpha.toml"),
        get("a").replace("\"install\"", "[\"purchase\"]"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("off.toml"),
        format!("enabled = false\n{}", get("o")),
    )
    .unwrap();
    let rules = RuleSet::load_dir(dir.path(), &no_env()).unwrap();
    let routed = rules.route(&typical("x"));
    assert_eq!(routed.len(), 2);
    assert_eq!(routed[0].destination.name, "alpha");
    assert_eq!(
        routed[0].outcome.as_ref().unwrap().url,
        "https://a.example/?c=clk_9f2c"
    );
    assert_eq!(routed[1].destination.name, "zeta");
    assert_eq!(
        routed[1].outcome.as_ref().unwrap_err().to_string(),
        "event_name \"purchase\" is not listed in [when] event_name = [\"install\"]"
    );
}

#[test]
fn preview_shows_requests_with_secrets_masked_and_skip_reasons() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a-meta.toml"),
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/meta.toml"))
            .unwrap()
            .replace("enabled = false", "enabled = true")
            .replace(
                "/events\"",
                "/events?access_token=${META_ACCESS_TOKEN:-replace-me}\"",
            ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b-aff.toml"),
        "[destination]\nurl = \"http://127.0.0.1:9999/p?c={click_id}\"\nmethod = \"GET\"\n[when]\nevent_name = \"install\"\n[privacy]\nallow = [\"click_id\"]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c-off.toml"),
        "enabled = false\n[destination]\nurl = \"https://c.example/\"\n",
    )
    .unwrap();
    let rules = RuleSet::load_dir(dir.path(), &no_env()).unwrap();
    let mut ev = typical("x");
    ev.fields["consent"]["ad_user_data"] = json!(false);
    let text = preview(&rules, &ev);
    let expected = "\
== a-meta ==
not sent: nothing Meta can match this conversion on is left (it needs one of: user.email, user.phone, user.external_id, user.first_name, user.last_name, user.city, user.state, user.zip, user.country, user.ip, user.user_agent, user.fbc, user.fbp); consent.ad_user_data is not true, so user.email, user.phone, user.first_name, user.last_name, user.city, user.state, user.zip, user.country, user.external_id, user.ip, user.user_agent were dropped

== b-aff ==
not sent: event_name \"purchase\" is not listed in [when] event_name = [\"install\"]

== c-off ==
disabled (enabled = false in its rule file): nothing is sent; while enabled it would be:
POST https://c.example/
Content-Type: application/json

{}
";
    assert_eq!(text, expected);
    assert!(!text.contains("replace-me"));
    // With consent the request is shown, secrets masked.
    let text = preview(&rules, &typical("x"));
    // Environment values are masked wherever they stand (here the pixel ID in the path).
    assert!(text.contains("POST https://graph.facebook.com/v27.0/***/events?access_token=***\nAuthorization: Bearer ***\n"), "{text}");
    // The test event is from 2026-11-25: past Meta's 7 days once that is a week ago.
    let mut old = typical("x");
    old.timestamp = chrono::Utc::now() - chrono::Duration::days(8);
    let text = preview(&rules, &old);
    assert!(text.contains("== a-meta ==\nnot sent: the event is 8 days old and this partner takes events up to 7 days old"), "{text}");
    assert!(!text.contains("replace-me"));
}

mod leaks {
    //! Property: whatever the event and the allow list, nothing outside `allow` (or
    //! dropped for lack of consent) appears anywhere in a rendered request.

    use super::*;
    use proptest::prelude::*;

    const KEYS: &[&str] = &["a", "b", "c", "d"];

    fn path_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(KEYS), 1..=3).prop_map(|p| p.join("."))
    }

    /// Leaves (path, canary) of an event; conflicting paths are skipped when building.
    fn build(leaves: &[String]) -> (Map<String, Value>, Vec<(String, String)>) {
        let mut root = Map::new();
        let mut placed = Vec::new();
        for (i, path) in leaves.iter().enumerate() {
            let canary = format!("CANARY{i:04}X");
            let parts: Vec<&str> = path.split('.').collect();
            if place(&mut root, &parts, &canary) {
                placed.push((path.clone(), canary));
            }
        }
        (root, placed)
    }

    fn place(map: &mut Map<String, Value>, parts: &[&str], canary: &str) -> bool {
        match parts {
            [] => false,
            [last] if map.contains_key(*last) => false,
            [last] => {
                map.insert(last.to_string(), Value::String(canary.to_string()));
                true
            }
            [first, rest @ ..] => match map
                .entry(first.to_string())
                .or_insert_with(|| Value::Object(Map::new()))
            {
                Value::Object(m) => place(m, rest, canary),
                _ => false,
            },
        }
    }

    fn under(path: &str, prefix: &str) -> bool {
        path == prefix || path.starts_with(&format!("{prefix}."))
    }

    fn toml_list(v: &[String]) -> String {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn nothing_outside_allow_is_ever_sent(
            leaves in prop::collection::vec(path_strategy(), 1..12),
            allow in prop::collection::btree_set(path_strategy(), 0..5),
            drop in prop::collection::btree_set(path_strategy(), 0..3),
            consent_given in any::<bool>(),
        ) {
            let (mut fields, placed) = build(&leaves);
            fields.insert("event_id".into(), json!("e1"));
            fields.insert("event_name".into(), json!("n"));
            fields.insert("consent".into(), json!({"ok": consent_given}));
            let ev = event(Value::Object(fields));
            let allow: Vec<String> = allow.into_iter().collect();
            let drop: Vec<String> = drop.into_iter().collect();
            let privacy = format!(
                "[privacy]\nallow = [{}]\n[privacy.consent]\nrequire = \"consent.ok\"\ndrop = [{}]\n",
                toml_list(&allow), toml_list(&drop)
            );
            let query: String = allow.iter().enumerate().map(|(i, p)| format!("&q{i}={{{p}}}")).collect();
            let header = allow.first().map(|p| format!("headers = {{ X-H = \"h{{{p}}}\" }}\n")).unwrap_or_default();
            let body: String = allow.iter().enumerate()
                .map(|(i, p)| format!("k{i} = \"{{{p}}}\"\nj{i} = \"{{{p}|json}}\"\nm{i} = [\"x{{{p}}}\"]\n"))
                .collect();
            let rules = [
                format!("[destination]\nurl = \"https://a.example/?z=1{query}\"\nmethod = \"GET\"\n{header}{privacy}"),
                format!("[destination]\nurl = \"https://a.example/?z=1{query}\"\n{header}{privacy}"),
                format!("[destination]\nurl = \"https://a.example/\"\nformat = \"form\"\n{privacy}"),
                format!("[destination]\nurl = \"https://a.example/\"\n{header}{privacy}[body]\nfixed = 1\n{body}"),
                format!("[destination]\nurl = \"https://a.example/\"\npreset = \"appsflyer_s2s\"\n{privacy}"),
            ];
            for text in &rules {
                let d = rule("p", text);
                // Skipped (no identifier the partner needs is left): nothing is sent.
                let Ok(req) = d.render(&ev) else { continue };
                let sent = format!("{} {:?} {}", req.url, req.headers, req.body.clone().unwrap_or_default());
                for (path, canary) in &placed {
                    let allowed = allow.iter().any(|a| under(path, a));
                    let dropped = !consent_given && drop.iter().any(|d| under(path, d));
                    if !allowed || dropped {
                        prop_assert!(!sent.contains(canary.as_str()),
                            "{path} ({canary}) leaked; allow={allow:?} drop={drop:?} consent={consent_given}\n{text}\n{sent}");
                    }
                }
            }
        }
    }
}

#[test]
fn masked_hides_every_environment_value_in_url_headers_and_body() {
    let env: HashMap<String, String> = [
        (
            "PARTNER_TOKEN".to_string(),
            "s3cr3t-token-value".to_string(),
        ),
        ("PIXEL".to_string(), "123456789012".to_string()),
    ]
    .into();
    let text = "[destination]\nurl = \"https://p.example/${PIXEL}/e?c={click_id}\"\nheaders = { X-Key = \"${PARTNER_TOKEN}\" }\n[privacy]\nallow = [\"click_id\"]\n[body]\nkey = \"${PARTNER_TOKEN}\"\nc = \"{click_id}\"\n";
    let (d, _) = load::load_text(Path::new("rules/p.toml"), text.into(), &env).unwrap();
    let r = d.render(&typical("x")).unwrap();
    let m = masked(&d, &r);
    assert_eq!(m.url, "https://p.example/***/e?c=clk_9f2c");
    assert_eq!(m.body.as_deref(), Some(r#"{"key":"***","c":"clk_9f2c"}"#));
    assert!(m
        .headers
        .contains(&("X-Key".to_string(), "***".to_string())));
}

#[test]
fn explain_names_the_failed_when_line_and_each_fields_fate() {
    let d = rule(
        "crm",
        "[destination]\nurl = \"https://a.example/\"\n[when]\nevent_name = [\"purchase\"]\n\"attribution.network\" = \"crm\"\n[privacy]\nallow = [\"click_id\", \"user.email\", \"user.ip\"]\nhash = [\"user.email\"]\ntruncate_ip = [\"user.ip\"]\n[privacy.consent]\nrequire = \"consent.ad_user_data\"\ndrop = [\"user.ip\"]\n",
    );
    let e = d.explain(&typical("other"));
    let failed = e.when_failed.expect("the network does not match");
    assert_eq!((failed.line, failed.col), (5, 1));
    assert_eq!(
        failed.reason,
        "attribution.network is not \"crm\" as [when] requires"
    );
    let mut ev = typical("crm");
    ev.fields["consent"]["ad_user_data"] = json!(false);
    let e = d.explain(&ev);
    assert!(e.when_failed.is_none());
    assert_eq!(e.consent, Some(("consent.ad_user_data".to_string(), false)));
    let fate = |p: &str| e.fields.iter().find(|(f, _)| f == p).map(|(_, x)| *x);
    assert_eq!(fate("click_id"), Some(FieldFate::Allowed));
    assert_eq!(fate("user.email"), Some(FieldFate::Hashed));
    assert_eq!(fate("user.ip"), Some(FieldFate::DroppedForConsent));
    assert_eq!(fate("user.phone"), Some(FieldFate::NotAllowed));
    assert!(e.outcome.is_ok());
}

#[test]
fn preview_masks_environment_values_in_the_url_path_userinfo_and_body() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        "[destination]\nurl = \"https://acct:${P_PASS}@h.example/${P_PATH}/x?c={click_id}\"\nmethod = \"POST\"\n[body]\ntoken = \"${P_BODY}\"\nclick = \"{click_id}\"\n[privacy]\nallow = [\"click_id\"]\n",
    )
    .unwrap();
    let env: HashMap<String, String> = [
        ("P_PASS", "PASSCANARY-1234"),
        ("P_PATH", "PATHCANARY-5678"),
        ("P_BODY", "BODYCANARY/9+0\"q"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let rules = RuleSet::load_dir(dir.path(), &env).unwrap();
    let text = preview(&rules, &typical("x"));
    assert!(!text.contains("CANARY"), "{text}");
    assert!(
        text.contains("POST https://***@h.example/***/x?c=clk_9f2c"),
        "{text}"
    );
    assert!(text.contains("\"token\": \"***\""), "{text}");
}

#[test]
fn serve_hears_daily_of_a_version_nearing_its_sunset() {
    // What `serve` logs once a day (app::version_reminders): loaded today, Meta v25.0
    // is fine; on 2027-01-24 it is 30 days from its sunset (2027-02-23), and past it
    // on 2027-03-01.
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/meta.toml"))
            .unwrap()
            .replace("enabled = false", "enabled = true")
            .replace("api_version = \"v27.0\"", "api_version = \"v25.0\"");
    std::fs::write(dir.path().join("meta.toml"), text).unwrap();
    let options = LoadOptions {
        today: chrono::NaiveDate::from_ymd_opt(2026, 12, 4),
        ..LoadOptions::default()
    };
    let set = RuleSet::load_dir_with(dir.path(), &no_env(), &options).unwrap();
    let day = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
    assert_eq!(set.version_warnings(day(2026, 12, 4)), vec![]);
    let w = set.version_warnings(day(2027, 1, 24));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0, "meta");
    assert!(
        w[0].1
            .contains("v25.0, which sunsets on 2027-02-23, in 30 days"),
        "{w:?}"
    );
    let w = set.version_warnings(day(2027, 3, 1));
    assert!(w[0].1.contains("reached its sunset on 2027-02-23"), "{w:?}");
}

#[test]
fn each_preset_hashes_a_phone_as_its_partner_does() {
    // Issue 19, "each partner's own code is the specification" (tests/vectors/README.md):
    // "+1 (555) 123-4567" is no valid number for libphonenumber (555 is no US area
    // code). Meta's capi-param-builder (M5, phoneUtil.js) hashes its digits, TikTok's
    // server tag (T1) the text as typed, Google's Data Manager library (D5) "+" and the
    // digits; presets without a reference normaliser drop it. Before, all dropped it.
    let body = |file: &str, network: &str| {
        let mut ev = typical(network);
        ev.fields["user"]["phone"] = json!("+1 (555) 123-4567");
        shipped(file)
            .render(&ev)
            .expect("renders")
            .body
            .unwrap_or_default()
    };
    let meta = body("meta", "any");
    assert!(meta.contains(&h("15551234567")), "{meta}");
    let tiktok = body("tiktok", "tiktok");
    assert!(tiktok.contains(&h("+1 (555) 123-4567")), "{tiktok}");
    let google = body("google-data-manager", "google");
    assert!(google.contains(&h("+15551234567")), "{google}");
    let snap = body("snapchat", "snapchat");
    for digits in ["15551234567", "+15551234567"] {
        assert!(!snap.contains(&h(digits)), "{snap}");
    }
    assert!(!snap.contains("\"ph\""), "{snap}");
}
