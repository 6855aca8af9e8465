//! Every kind of rule-file mistake, each with its `FILE:LINE:COL` and message.

use super::*;
use std::collections::HashMap;
use std::time::Duration;

fn errors_with_env(text: &str, env: &[(&str, &str)]) -> Vec<String> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match load_text(Path::new("rules/x.toml"), text.to_string(), &env) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|d| d.to_string()).collect(),
    }
}

fn errors(text: &str) -> Vec<String> {
    errors_with_env(text, &[])
}

/// Asserts exactly one error, at `place` (`LINE:COL`), containing `needle`.
#[track_caller]
fn one_error(text: &str, place: &str, needle: &str) {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let prefix = format!("rules/x.toml:{place}: ");
    assert!(
        errs[0].starts_with(&prefix) && errs[0].contains(needle),
        "expected `{prefix}...{needle}...`, got {:?}",
        errs[0]
    );
}

const GET: &str = "[destination]\nurl = \"https://a.example/p?c={click_id}\"\nmethod = \"GET\"\n";
const ALLOW: &str = "[privacy]\nallow = [\"click_id\"]\n";

fn get_rule(extra_dest: &str, rest: &str) -> String {
    format!("{GET}{extra_dest}{ALLOW}{rest}")
}

#[test]
fn a_valid_file_loads() {
    assert_eq!(errors(&get_rule("", "")), Vec::<String>::new());
}

#[test]
fn unknown_keys_are_reported_with_a_hint() {
    one_error(
        &format!("descripton = \"x\"\n{}", get_rule("", "")),
        "1:1",
        "unknown key `descripton` at the top level; did you mean `description`?",
    );
    one_error(
        &get_rule("rate_limt = \"5/s\"\n", ""),
        "4:1",
        "did you mean `rate_limit`?",
    );
    one_error(
        &get_rule(
            "",
            "[privacy.consent]\nrequire = \"consent.ok\"\ndrop = [\"click_id\"]\ndorp = []\n",
        ),
        "9:1",
        "unknown key `dorp` in [privacy.consent]",
    );
    one_error(
        &get_rule("retry = { max_attempts = 3, backoff = \"1s\" }\n", ""),
        "4:29",
        "unknown key `backoff` in [destination.retry]",
    );
}

#[test]
fn destination_and_url_are_required_and_checked() {
    one_error(ALLOW, "1:1", "missing `destination` at the top of the file");
    one_error(
        &format!("[destination]\nmethod = \"GET\"\n{ALLOW}"),
        "1:1",
        "missing `url` in [destination]",
    );
    one_error(
        &format!("[destination]\nurl = \"ftp://a.example/{{click_id}}\"\n{ALLOW}"),
        "2:8",
        "`url` must start with https:// or http://",
    );
    one_error(
        &format!("[destination]\nurl = \"https://{{click_id}}.example/p\"\n{ALLOW}"),
        "2:16",
        "the host of `url` must be written out",
    );
    one_error(
        &format!("[destination]\nurl = \"https:///p\"\n{ALLOW}"),
        "2:16",
        "`url` has no host",
    );
}

#[test]
fn placeholders_must_name_allowed_fields_and_point_at_the_brace() {
    one_error(
        &format!("[destination]\nurl = \"https://a.example/p?c={{click_id}}&e={{user.email}}\"\n{ALLOW}"),
        "2:43",
        "`{user.email}` names a field that [privacy] does not allow, so it would never be sent; add \"user.email\" to `allow` in [privacy]",
    );
    one_error(
        &get_rule("headers = { X-Mail = \"{user.email}\" }\n", ""),
        "4:23",
        "add \"user.email\" to `allow`",
    );
    one_error(
        &format!("[destination]\nurl = \"https://a.example/\"\n{ALLOW}[body]\nclick = \"{{click_id}}\"\nnested = {{ mail = \"x-{{user.phone}}\" }}\n"),
        "7:22",
        "`{user.phone}` names a field that [privacy] does not allow",
    );
    // Derived placeholders and params need no allow.
    assert_eq!(
        errors(&format!(
            "[params]\nk = \"v\"\n[destination]\nurl = \"https://a.example/?t={{timestamp.unix}}&k={{params.k}}\"\n{ALLOW}"
        )),
        Vec::<String>::new()
    );
}

#[test]
fn template_syntax_errors_point_inside_the_string() {
    one_error(
        &format!("[destination]\nurl = \"https://a.example/p?c={{click_id\"\n{ALLOW}"),
        "2:30",
        "a `{` that is never closed",
    );
    one_error(
        &format!("[destination]\nurl = \"https://a.example/p?c={{click_id|upper}}\"\n{ALLOW}"),
        "2:30",
        "unknown filter `|upper`",
    );
    one_error(
        &format!("[destination]\nurl = \"https://a.example/p?t={{timestamp.ms}}\"\n{ALLOW}"),
        "2:30",
        "unknown time format",
    );
    one_error(
        &format!("[destination]\nurl = \"https://a.example/p?k={{params.key}}\"\n{ALLOW}"),
        "2:30",
        "add it under [params]",
    );
}

#[test]
fn hash_and_truncate_ip_must_be_allowed() {
    one_error(
        &get_rule("", "hash = [\"user.email\"]\n"),
        "6:9",
        "\"user.email\" is in `hash` but not in `allow`, so it is never sent; remove it from `hash`, or, to send it hashed, add \"user.email\" to `allow` as well",
    );
    one_error(
        &get_rule("", "truncate_ip = [\"click_id\", \"user.ip\"]\n"),
        "6:28",
        "\"user.ip\" is in `truncate_ip` but not in `allow`",
    );
    one_error(
        &get_rule("", "hash = [\"user..email\"]\n"),
        "6:9",
        "is not a field path",
    );
}

#[test]
fn consent_needs_require_and_valid_drop_paths() {
    one_error(
        &get_rule("", "[privacy.consent]\ndrop = [\"click_id\"]\n"),
        "6:1",
        "missing `require` in [privacy.consent]",
    );
    one_error(
        &get_rule(
            "",
            "[privacy.consent]\nrequire = \"consent.ok\"\ndrop = [\"user email\"]\n",
        ),
        "8:9",
        "\"user email\" in `privacy.consent.drop` is not a field path",
    );
}

#[test]
fn method_format_and_body_must_fit() {
    one_error(
        &get_rule("", "").replace("\"GET\"", "\"PUT\""),
        "3:10",
        "write \"GET\" or \"POST\"",
    );
    one_error(
        &get_rule("format = \"form\"\n", ""),
        "4:10",
        "a GET request has none, so remove `format`",
    );
    one_error(
        &get_rule("", "[body]\nc = \"{click_id}\"\n"),
        "6:2",
        "a GET request has no body",
    );
    one_error(
        &format!("[destination]\nurl = \"https://a.example/\"\nformat = \"xml\"\n{ALLOW}"),
        "3:10",
        "write \"json\" (a JSON body) or \"form\"",
    );
    one_error(
        &format!("[destination]\nurl = \"https://a.example/\"\nformat = \"form\"\n{ALLOW}[body]\nc = {{ d = \"{{click_id}}\" }}\n"),
        "6:2",
        "a form body is flat: `c` must be a single value",
    );
}

#[test]
fn delivery_settings_are_checked() {
    one_error(
        &get_rule("rate_limit = \"fast\"\n", ""),
        "4:14",
        "`destination.rate_limit`: \"fast\" is not a rate",
    );
    one_error(
        &get_rule("rate_limit = \"5/fortnight\"\n", ""),
        "4:14",
        "unknown period",
    );
    one_error(
        &get_rule("concurrency = 0\n", ""),
        "4:15",
        "`destination.concurrency` is 0, but must be between 1 and 1024",
    );
    one_error(
        &get_rule("timeout = \"soon\"\n", ""),
        "4:11",
        "`destination.timeout`",
    );
    one_error(
        &get_rule("sign_secret = \"hunter2\"\n", ""),
        "4:15",
        "must start with whsec_",
    );
    let errs = errors(&get_rule("sign_secret = \"whsec_!!notbase64!!\"\n", ""));
    assert!(errs[0].starts_with("rules/x.toml:4:15: ") && errs[0].contains("not valid base64"));
    assert!(
        !errs[0].contains("notbase64"),
        "secrets are never echoed: {errs:?}"
    );
    one_error(
        &get_rule(
            "retry = { initial_backoff = \"1h\", max_backoff = \"5s\" }\n",
            "",
        ),
        "4:49",
        "`retry.max_backoff` is shorter than `retry.initial_backoff`",
    );
    one_error(
        &get_rule("headers = { \"Bad Header\" = \"x\" }\n", ""),
        "4:13",
        "is not a valid header name",
    );
    one_error(
        &get_rule("headers = { Host = \"x\" }\n", ""),
        "4:13",
        "set by the relay itself",
    );
}

#[test]
fn presets_are_checked() {
    let base = "[destination]\nurl = \"https://a.example/\"\n";
    one_error(
        &format!("{base}preset = \"meta\"\n{ALLOW}"),
        "3:10",
        "unknown preset \"meta\"; the presets are: meta_capi, tiktok_events, appsflyer_s2s, adjust_s2s, google_ads",
    );
    one_error(
        &format!("{base}preset = \"tiktok_events\"\n{ALLOW}"),
        "3:10",
        "preset tiktok_events needs `event_source_id`; add it under [params], like: event_source_id = ",
    );
    one_error(
        &format!("{base}preset = \"meta_capi\"\n[params]\naction_source = \"app\"\n[privacy]\nallow = [\"event_id\", \"user.email\"]\n"),
        "7:22",
        "`user.email` is allowed, but meta_capi only accepts it hashed; add \"user.email\" to `hash` in [privacy]",
    );
    one_error(
        &format!("{base}oauth = {{ client_id = \"i\", client_secret = \"s\", refresh_token = \"r\" }}\npreset = \"google_ads\"\n[params]\nconversion_action = \"c\"\n[privacy]\nallow = [\"user\"]\nhash = [\"user.email\"]\n"),
        "8:10",
        "allowing `user` lets `user.phone` through, but google_ads only accepts it hashed",
    );
    one_error(
        &format!(
            "{base}preset = \"adjust_s2s\"\nmethod = \"GET\"\n[params]\napp_token = \"t\"\n{ALLOW}"
        ),
        "4:10",
        "preset adjust_s2s sends POST",
    );
    // Preset placeholders for fields that are not allowed are fine: they are omitted.
    assert_eq!(
        errors(&format!("{base}preset = \"appsflyer_s2s\"\n{ALLOW}")),
        Vec::<String>::new()
    );
}

#[test]
fn when_and_rename_are_checked() {
    one_error(
        &get_rule("", "[when]\nevent_name = []\n"),
        "7:14",
        "lists nothing, so no event would match",
    );
    one_error(
        &get_rule("", "[when]\n\"a..b\" = \"x\"\n"),
        "7:1",
        "is not a field path",
    );
    one_error(
        &get_rule("", "[when]\nhas = [\"a b\"]\n"),
        "7:8",
        "in `when.has` is not a field path",
    );
    one_error(
        &get_rule("", "[rename.event_name]\npurchase = 5\n"),
        "7:12",
        "[rename.event_name] maps old values to new ones in quotes",
    );
    assert_eq!(
        errors(&get_rule(
            "",
            "[when]\nevent_name = \"purchase\"\nattribution.network = \"x\"\n\"consent.gpc\" = false\n[rename.attribution.network]\nx = \"y\"\n"
        )),
        Vec::<String>::new()
    );
}

#[test]
fn unset_environment_variables_and_syntax_errors_are_reported() {
    let text = "[destination]\nurl = \"https://a.example/p\"\nheaders = { Authorization = \"Bearer ${TOKEN_NOT_SET}\" }\n";
    one_error(
        text,
        "3:37",
        "environment variable TOKEN_NOT_SET is not set",
    );
    assert_eq!(
        errors_with_env(text, &[("TOKEN_NOT_SET", "t")]),
        Vec::<String>::new()
    );
    one_error("[destination\nurl = 1\n", "1:13", "TOML syntax error");
}

#[test]
fn a_bad_file_name_is_reported() {
    let env: HashMap<String, String> = HashMap::new();
    let e = load_text(Path::new("rules/my partner.toml"), get_rule("", ""), &env).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(e[0].to_string().starts_with(
        "rules/my partner.toml:1:1: the file name gives the destination name \"my partner\""
    ));
}

#[test]
fn every_error_of_every_file_comes_in_one_pass() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.toml"),
        get_rule("concurrency = 5000\n", "hash = [\"user.email\"]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.toml"),
        format!("[destination]\nurl = \"https://b.example/?m={{user.email}}\"\nmethd = \"GET\"\n{ALLOW}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("c.toml"), get_rule("", "")).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a rule").unwrap();
    let env: HashMap<String, String> = HashMap::new();
    let errs: Vec<String> = RuleSet::load_dir(dir.path(), &env)
        .unwrap_err()
        .iter()
        .map(|d| {
            let s = d.to_string();
            s.strip_prefix(&format!("{}/", dir.path().display()))
                .unwrap_or(&s)
                .to_string()
        })
        .collect();
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(errs[0].starts_with("a.toml:4:15: `destination.concurrency` is 5000"));
    assert!(errs[1].starts_with("a.toml:7:9: \"user.email\" is in `hash` but not in `allow`"));
    assert!(errs
        .iter()
        .any(|e| e.starts_with("b.toml:2:29: `{user.email}` names a field")));
    assert!(errs
        .iter()
        .any(|e| e.starts_with("b.toml:3:1: unknown key `methd` in [destination]")));
}

#[test]
fn rates() {
    assert_eq!(
        parse_rate("50/s").map(|r| (r.count, r.per.as_secs())),
        Ok((50, 1))
    );
    assert_eq!(
        parse_rate("1000/m").map(|r| (r.count, r.per.as_secs())),
        Ok((1000, 60))
    );
    assert_eq!(
        parse_rate("10/h").map(|r| (r.count, r.per.as_secs())),
        Ok((10, 3600))
    );
    assert_eq!(
        parse_rate("30/10s").map(|r| (r.count, r.per.as_secs())),
        Ok((30, 10))
    );
    assert!(parse_rate("0/s").is_err());
    assert!(parse_rate("5").is_err());
}

#[test]
fn success_tables_are_read_and_checked() {
    let ok = format!(
        "{}{ALLOW}[success]\nstatus = [200, 202]\njson = {{ code = 0, \"data.ok\" = true }}\ncontains = \"OK\"\nretry_status = 409\notherwise = \"retry\"\n",
        "[destination]\nurl = \"https://a.example/\"\n"
    );
    let (d, _) = load_text(
        Path::new("rules/x.toml"),
        ok,
        &HashMap::<String, String>::new(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        d.delivery.success,
        SuccessRule::Declared(crate::outbound::DeclaredSuccess {
            status: vec![200, 202],
            json: vec![
                ("code".into(), serde_json::json!(0)),
                ("data.ok".into(), serde_json::json!(true)),
            ],
            contains: Some("OK".into()),
            retry_status: vec![409],
            retry_otherwise: true,
        })
    );
    one_error(
        &get_rule("", "[success]\nstatus = [200, 700]\n"),
        "7:16",
        "`success.status` lists HTTP statuses as numbers from 100 to 599",
    );
    one_error(
        &get_rule("", "[success]\notherwise = \"skip\"\n"),
        "7:13",
        "`success.otherwise` is \"skip\"; write \"retry\"",
    );
    one_error(
        &get_rule("", "[success]\njson = { code = [0] }\n"),
        "7:17",
        "`success.json.code` must be a plain value",
    );
    one_error(
        &get_rule("", "[success]\nstatuses = [200]\n"),
        "7:1",
        "statuses",
    );
    one_error(
        &format!("[destination]\nurl = \"https://a.example/\"\npreset = \"appsflyer_s2s\"\n{ALLOW}[success]\nstatus = 200\n"),
        "6:2",
        "preset appsflyer_s2s reads AppsFlyer's answers itself",
    );
}

#[test]
fn partner_requirements_are_checked_where_written() {
    let base = "[destination]\nurl = \"https://a.example/\"\n";
    one_error(
        &format!("{base}preset = \"google_ads\"\n[params]\nconversion_action = \"c\"\n{ALLOW}"),
        "3:10",
        "preset google_ads needs OAuth credentials",
    );
    one_error(
        &format!("{base}oauth = {{ client_id = \"i\", client_secret = \"\", refresh_token = \"r\" }}\npreset = \"google_ads\"\n[params]\nconversion_action = \"c\"\n{ALLOW}"),
        "3:44",
        "`destination.oauth.client_secret` is empty",
    );
    one_error(
        &format!("{base}oauth = {{ client_id = \"i\", client_secret = \"s\", refresh_token = \"r\" }}\nheaders = {{ Authorization = \"Bearer x\" }}\npreset = \"google_ads\"\n[params]\nconversion_action = \"c\"\n{ALLOW}"),
        "5:10",
        "remove the Authorization header",
    );
    one_error(
        &format!("{base}oauth = {{ client_id = \"i\", client_secret = \"s\", refresh_token = \"r\" }}\npreset = \"google_ads\"\n[params]\nconversion_action = \"c\"\napi_version = \"26\"\n{ALLOW}"),
        "4:10",
        "`params.api_version` is \"26\"; write an API version like \"v26\"",
    );
    one_error(
        &format!("[destination]\nurl = \"https://api3.appsflyer.com/inappevent/123456789\"\npreset = \"appsflyer_s2s\"\n{ALLOW}"),
        "3:10",
        "the AppsFlyer app ID \"123456789\" is only digits: iOS app IDs start with \"id\"",
    );
    one_error(
        &format!("{base}preset = \"meta_capi\"\n{ALLOW}"),
        "3:10",
        "Meta requires event_source_url for action_source \"website\"; add \"page.url\" to `allow`",
    );
    one_error(
        &get_rule("", "[params]\ndefault_country = \"Narnia\"\n"),
        "7:19",
        "`params.default_country` is \"Narnia\"; write a two-letter country code",
    );
}

#[test]
fn fields_under_hashed_names_must_be_hashed() {
    let base = "[destination]\nurl = \"https://a.example/\"\n[privacy]\nallow = [\"user.email\", \"user.phone\"]\nhash = [\"user.phone\"]\n";
    one_error(
        &format!("{base}[body]\nemail_sha256 = \"{{user.email}}\"\nphone_sha256 = \"{{user.phone}}\"\n"),
        "7:16",
        "`email_sha256` is sent as a hash, but `user.email` is not in `hash`, so it would go out in clear",
    );
    one_error(
        &format!("{base}[body]\nids = [{{ hashedEmail = \"{{user.email}}\" }}]\n"),
        "7:24",
        "`hashedEmail` is sent as a hash, but `user.email` is not in `hash`",
    );
}

/// Errors and warnings of one file, as printed, with `custom` declared.
fn report(text: &str, custom: &[&str]) -> (Vec<String>, Vec<String>) {
    let options = LoadOptions {
        custom_fields: custom.iter().map(|c| c.to_string()).collect(),
        ..LoadOptions::default()
    };
    let env: HashMap<String, String> = HashMap::new();
    let out = load_file(Path::new("rules/x.toml"), text.to_string(), &env, &options);
    let errors = match out.result {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|d| d.to_string()).collect(),
    };
    (errors, out.warnings.iter().map(|d| d.to_string()).collect())
}

#[test]
fn when_typos_load_but_warn_with_what_was_meant() {
    let (errs, warns) = report(
        &get_rule(
            "",
            "[when]\nevent_nme = [\"purchase\"]\nnetwork = \"acme\"\nevent_name = [\"Purchase\"]\n",
        ),
        &[],
    );
    assert_eq!(errs, Vec::<String>::new());
    assert_eq!(
        warns,
        [
            "rules/x.toml:7:1: `event_nme` in [when] is not a field of the event (docs/event.schema.json), so no event matches this rule; did you mean `event_name`? if your events do carry it, add \"event_nme\" to [rules] custom_fields in the config",
            "rules/x.toml:8:1: `network` in [when] is not a field of the event (docs/event.schema.json), so no event matches this rule; did you mean `attribution.network`? if your events do carry it, add \"network\" to [rules] custom_fields in the config",
            "rules/x.toml:9:15: \"Purchase\" differs from the usual event_name \"purchase\" only by case, and [when] compares exactly: events with event_name \"purchase\" do not match; write \"purchase\" if that is what your app sends",
        ]
    );
    // Declared custom fields are known.
    let (_, warns) = report(
        &get_rule("", "[when]\n\"properties.tier\" = \"gold\"\n"),
        &["properties.tier"],
    );
    assert_eq!(warns, Vec::<String>::new());
}

#[test]
fn a_misspelt_placeholder_is_matched_against_known_fields_first() {
    let text = "[destination]\nurl = \"https://a.example/p?cid={clickid}\"\nmethod = \"GET\"\n[privacy]\nallow = [\"click_id\"]\n";
    let (errs, _) = report(text, &[]);
    assert_eq!(
        errs,
        ["rules/x.toml:2:32: `{clickid}` names no field of the event; did you mean `{click_id}`?"]
    );
    // Allowing the typo makes it load, with warnings at both places.
    let (errs, warns) = report(&text.replace("[\"click_id\"]", "[\"clickid\"]"), &[]);
    assert_eq!(errs, Vec::<String>::new());
    assert_eq!(
        warns,
        [
            "rules/x.toml:2:32: `{clickid}` is not a field of the event (docs/event.schema.json), so it renders empty unless your events carry it; did you mean `{click_id}`?",
            "rules/x.toml:5:10: `clickid` in `privacy.allow` is not a field of the event (docs/event.schema.json); did you mean `click_id`? if your events do carry it, add \"clickid\" to [rules] custom_fields in the config",
        ]
    );
}

#[test]
fn a_partner_doc_placeholder_in_the_url_gets_the_brace_syntax() {
    one_error(
        &format!("[destination]\nurl = \"https://a.example/p?cid=<click id>\"\nmethod = \"GET\"\n{ALLOW}"),
        "2:32",
        "`<click id>` in `url` looks like a placeholder from the partner's documentation, but the relay would send it as text; write the event field in braces instead, like {click_id} (see Placeholders in README-RULES.md)",
    );
}

#[test]
fn a_misspelt_allow_is_the_one_error_reported_first() {
    let text = "[destination]\nurl = \"https://a.example/p?c={click_id}&e={event_name}&v={properties.value}\"\nmethod = \"GET\"\n[privacy]\nalow = [\"click_id\", \"event_name\", \"properties.value\"]\nhash = [\"click_id\"]\n";
    let (errs, _) = report(text, &[]);
    assert_eq!(
        errs,
        ["rules/x.toml:5:1: unknown key `alow` in [privacy]; did you mean `allow`? allowed keys: allow, consent, hash, truncate_ip"]
    );
}

#[test]
fn causes_come_before_what_they_cause() {
    // An unknown key further down is listed before an error above it.
    let text = format!(
        "[destination]\nurl = \"https://a.example/p?c={{click_id}}&m={{user.email}}\"\nmethod = \"GET\"\n{ALLOW}hsah = []\n"
    );
    let (errs, _) = report(&text, &[]);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(
        errs[0].starts_with("rules/x.toml:6:1: unknown key `hsah`"),
        "{errs:#?}"
    );
    assert!(
        errs[1].starts_with("rules/x.toml:2:43: `{user.email}`"),
        "{errs:#?}"
    );
}

#[test]
fn a_duplicate_key_names_the_key_and_its_first_place() {
    one_error(
        &format!("{GET}[privacy]\nallow = [\"click_id\"]\nallow = [\"event_name\"]\n"),
        "6:1",
        "duplicate key `allow` in [privacy]: it is already written at line 5, column 1; keep one of the two",
    );
}

fn delivery_of(text: &str) -> crate::outbound::DeliverySettings {
    match load_text(Path::new("rules/x.toml"), text.to_string(), &HashMap::new()) {
        Ok((d, _)) => d.delivery,
        Err(e) => panic!("{e:#?}"),
    }
}

#[test]
fn batch_presets_batch_by_default_and_batch_can_be_tuned_or_turned_off() {
    let meta = "[destination]\nurl = \"https://a.example/\"\npreset = \"meta_capi\"\n[privacy]\nallow = [\"event_id\", \"page.url\"]\n";
    let b = delivery_of(meta).batch.expect("meta_capi batches");
    assert_eq!((b.path.as_str(), b.max_events), ("data", 1000));
    // Batches in flight hold their events in memory: a lower default ceiling.
    assert_eq!(delivery_of(meta).concurrency, 16);
    let meta_64 = meta.replace("preset =", "concurrency = 64\npreset =");
    assert_eq!(delivery_of(&meta_64).concurrency, 64);
    assert_eq!(b.max_wait, Duration::from_secs(1));
    let tuned = delivery_of(&format!(
        "{meta}[batch]\nmax_events = 200\nmax_wait = \"250ms\"\n"
    ))
    .batch
    .expect("still batching");
    assert_eq!(
        (tuned.max_events, tuned.max_wait),
        (200, Duration::from_millis(250))
    );
    assert_eq!(
        delivery_of(&format!("{meta}[batch]\nmax_events = 1\n")).batch,
        None
    );
    one_error(
        &format!("{meta}[batch]\nmax_events = 5000\n"),
        "7:14",
        "between 1 and 1000",
    );
    one_error(
        &format!("{meta}[batch]\npath = \"events\"\n"),
        "7:8",
        "preset meta_capi puts its events in `data`; remove `path`",
    );
    let af = "[destination]\nurl = \"https://a.example/\"\npreset = \"appsflyer_s2s\"\n[privacy]\nallow = [\"event_id\"]\n";
    assert_eq!(delivery_of(af).batch, None);
    one_error(
        &format!("{af}[batch]\nmax_events = 10\n"),
        "6:1",
        "preset appsflyer_s2s sends one event per request",
    );
    assert_eq!(
        delivery_of(&get_rule("", "")).batch,
        None,
        "GET postbacks never batch"
    );
    // The adaptive controller's ceiling: 512 unless the rule says.
    assert_eq!(delivery_of(&get_rule("", "")).concurrency, 512);
    assert_eq!(
        delivery_of(&get_rule("concurrency = 64\n", "")).concurrency,
        64
    );
}

#[test]
fn a_custom_batch_needs_a_list_and_nothing_from_the_event_outside_it() {
    let head = "[destination]\nurl = \"https://a.example/\"\nmethod = \"POST\"\n[privacy]\nallow = [\"click_id\", \"event_name\"]\n";
    let good = format!(
        "{head}[body]\nsource = \"relay\"\n[[body.events]]\nid = \"{{click_id}}\"\n[batch]\npath = \"events\"\nmax_events = 500\n"
    );
    let b = delivery_of(&good).batch.expect("batches");
    assert_eq!((b.path.as_str(), b.max_events), ("events", 500));
    one_error(
        &format!("{head}[body]\nname = \"{{event_name}}\"\n[[body.events]]\nid = \"{{click_id}}\"\n[batch]\npath = \"events\"\n"),
        "11:8",
        "`name` in [body] takes a value from the event outside `events`",
    );
    one_error(
        &format!("{head}[body]\nevents = \"{{click_id}}\"\n[batch]\npath = \"events\"\n"),
        "9:8",
        "`body.events` is not a list",
    );
    one_error(
        &format!("{head}[batch]\npath = \"events\"\n"),
        "7:8",
        "write a [body] with the list at `path`",
    );
    one_error(
        &format!("{head}[body]\n[[body.events]]\nid = \"{{click_id}}\"\n[batch]\nmax_events = 5\n"),
        "9:1",
        "[batch] needs `path`",
    );
}

#[test]
fn a_wrong_value_from_the_environment_is_named_by_its_variable_never_quoted() {
    let secret = "OAUTH-CLIENTSECRET-3f9a77";
    let errs = errors_with_env(
        &get_rule("rate_limit = \"${OAUTH_SECRET}\"\n", ""),
        &[("OAUTH_SECRET", secret)],
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].contains("`destination.rate_limit`: \"${OAUTH_SECRET}\" is not a rate"),
        "{errs:#?}"
    );
    // A short value is named too where it stands.
    let errs = errors_with_env(&get_rule("timeout = \"${T}\"\n", ""), &[("T", "abc")]);
    assert!(errs.iter().all(|e| !e.contains("\"abc\"")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.contains("${T}")), "{errs:#?}");
    assert!(errs.iter().all(|e| !e.contains("CLIENTSECRET")));
}

#[test]
fn an_oauth_token_url_must_be_https_unless_private_networks_are_allowed() {
    let text = get_rule(
        "oauth = { client_id = \"id\", client_secret = \"s\", refresh_token = \"r\", token_url = \"http://tokens.example/token\" }\n",
        "",
    );
    let (errors, _) = report(&text, &[]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("`destination.oauth.token_url` must be https://"),
        "{errors:#?}"
    );
    assert!(errors[0].starts_with("rules/x.toml:4:"), "{errors:#?}");
    let options = LoadOptions {
        allow_private_networks: true,
        ..LoadOptions::default()
    };
    let env: HashMap<String, String> = HashMap::new();
    let out = load_file(Path::new("rules/x.toml"), text.clone(), &env, &options);
    assert!(out.result.is_ok());
    let https = text.replace("http://tokens", "https://tokens");
    assert_eq!(report(&https, &[]).0, Vec::<String>::new());
}

/// Errors and warnings of one file judged on `day` (versions past or near sunset).
fn report_on(text: &str, day: &str) -> (Vec<String>, Vec<String>) {
    let options = LoadOptions {
        today: Some(chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap()),
        ..LoadOptions::default()
    };
    let env: HashMap<String, String> = HashMap::new();
    let out = load_file(Path::new("rules/x.toml"), text.to_string(), &env, &options);
    let errors = match out.result {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|d| d.to_string()).collect(),
    };
    (errors, out.warnings.iter().map(|d| d.to_string()).collect())
}

const META_V: &str = "[destination]\nurl = \"https://graph.facebook.com/VERSION/1/events\"\npreset = \"meta_capi\"\n[privacy]\nallow = [\"page.url\", \"user.ip\", \"user.user_agent\"]\n";
const GOOGLE_V: &str = "[destination]\nurl = \"https://googleads.googleapis.com/{params.api_version}/customers/1:uploadClickConversions\"\noauth = { client_id = \"i\", client_secret = \"s\", refresh_token = \"r\" }\npreset = \"google_ads\"\n[params]\nconversion_action = \"c\"\napi_version = \"VERSION\"\n[privacy]\nallow = [\"click_id\"]\n";

#[test]
fn a_pinned_version_past_its_sunset_is_refused_with_the_date_and_the_version_to_use() {
    // Meta's Marketing API versions table: v21.0 expired 2025-09-09.
    let (errors, _) = report_on(&META_V.replace("VERSION", "v21.0"), "2026-12-04");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("rules/x.toml:2:7: `url` pins Meta Marketing API (Conversions API) v21.0, which reached its sunset on 2025-09-09"), "{errors:#?}");
    assert!(
        errors[0].contains("use v27.0 (released 2026-11-04)"),
        "{errors:#?}"
    );
    // Google Ads developer blog, 2025-12-15: v19 sunsets 2026-02-11. Pointed at the
    // parameter that pins it.
    let (errors, _) = report_on(&GOOGLE_V.replace("VERSION", "v19"), "2026-12-04");
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("rules/x.toml:7:15: `params.api_version` pins Google Ads API v19, which reached its sunset on 2026-02-11"), "{errors:#?}");
    assert!(
        errors[0].contains("use v26 (released 2026-10-14)"),
        "{errors:#?}"
    );
    // The same rules on the newest versions: nothing to say.
    let fine = report_on(&META_V.replace("VERSION", "v27.0"), "2026-12-04");
    assert_eq!(fine, (vec![], vec![]));
    let fine = report_on(&GOOGLE_V.replace("VERSION", "v26"), "2026-12-04");
    assert_eq!(fine, (vec![], vec![]));
}

#[test]
fn a_pinned_version_within_sixty_days_of_its_sunset_loads_with_a_warning() {
    // Meta v25.0 expires 2027-02-23: fine on 2026-12-24, warned from 2026-12-25.
    let text = META_V.replace("VERSION", "v25.0");
    assert_eq!(report_on(&text, "2026-12-24"), (vec![], vec![]));
    let (errors, warnings) = report_on(&text, "2027-01-24");
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("`url` pins Meta Marketing API (Conversions API) v25.0, which sunsets on 2027-02-23, in 30 days"), "{warnings:#?}");
    assert!(warnings[0].contains("move to v27.0"), "{warnings:#?}");
    // On the sunset day it is refused.
    assert_eq!(report_on(&text, "2027-02-23").0.len(), 1);
}

#[test]
fn preset_default_versions_are_the_newest_the_version_table_knows() {
    for name in super::super::presets::NAMES {
        let p = super::super::presets::find(name).unwrap();
        let Some(api) = super::super::versions::api_of(name) else {
            continue;
        };
        if let Some((_, v)) = p.default_params.iter().find(|(k, _)| *k == "api_version") {
            assert_eq!(*v, api.current(), "{name}");
        }
    }
}

#[test]
fn linkedin_needs_its_version_and_batch_headers_and_a_token() {
    let base = "[destination]\nurl = \"https://api.linkedin.com/rest/conversionEvents\"\npreset = \"linkedin_capi\"\n";
    let rest = "[params]\nconversion_rule_id = \"1\"\n[privacy]\nallow = [\"click_id\"]\n";
    let errs = errors(&format!("{base}{rest}"));
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(
        errs[0].contains("add to `headers`: LinkedIn-Version = \"202607\""),
        "{errs:#?}"
    );
    assert!(
        errs[1].contains("X-RestLi-Method = \"BATCH_CREATE\""),
        "{errs:#?}"
    );
    assert!(errs[2].contains("needs a token"), "{errs:#?}");
    let ok = format!("{base}headers = {{ LinkedIn-Version = \"202607\", X-RestLi-Method = \"BATCH_CREATE\", Authorization = \"Bearer t\" }}\n{rest}");
    assert_eq!(errors(&ok), Vec::<String>::new());
    // A retired version in the header is refused, pointed at by name.
    let old = ok.replace("202607", "202411");
    let (errs, _) = report_on(&old, "2026-12-04");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("header LinkedIn-Version pins LinkedIn Marketing API (Conversions API) 202411, which reached its sunset on 2025-11-17"), "{errs:#?}");
}

const META_LINT: &str = "[destination]\nurl = \"https://graph.facebook.com/v27.0/1/events\"\npreset = \"meta_capi\"\n[privacy]\nallow = [\"page.url\", \"user.email\", \"user.ip\", \"user.user_agent\"]\nhash = [\"user.email\"]\n";

/// The one warning `text` loads with (no error), for the lint tests.
fn the_warning(text: &str) -> String {
    let (errors, mut warnings) = report(text, &[]);
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    warnings.remove(0)
}

#[test]
fn a_field_the_partner_wants_in_clear_warns_when_hashed() {
    // Meta (M3): client_ip_address and client_user_agent are sent in clear.
    let text = META_LINT.replace(
        "hash = [\"user.email\"]",
        "hash = [\"user.email\", \"user.ip\"]",
    );
    let warning = the_warning(&text);
    assert!(warning.contains("rules/x.toml:6:23"), "{warning}");
    assert!(
        warning.contains("\"user.ip\" is hashed, but Meta wants `client_ip_address` in clear"),
        "{warning}"
    );
    // external_id: Meta takes it hashed or not, no warning.
    let text = META_LINT
        .replace(
            "\"user.user_agent\"]",
            "\"user.user_agent\", \"user.external_id\"]",
        )
        .replace(
            "hash = [\"user.email\"]",
            "hash = [\"user.email\", \"user.external_id\"]",
        );
    assert_eq!(report(&text, &[]).1, Vec::<String>::new());
    // The shape fits: nothing to say.
    assert_eq!(report(META_LINT, &[]), (vec![], vec![]));
}

#[test]
fn an_allowed_field_the_preset_has_no_place_for_warns() {
    // A Meta web rule has no device IDs in its request.
    let text = META_LINT.replace(
        "\"user.user_agent\"]",
        "\"user.user_agent\", \"device.idfa\"]",
    );
    let warning = the_warning(&text);
    assert!(warning.contains("rules/x.toml:5:"), "{warning}");
    assert!(warning.contains("\"device.idfa\" is allowed, but preset meta_capi's request has no place for it, so it is never sent"), "{warning}");
    // A [body] laid over the preset's gives it a place.
    let placed =
        format!("{text}[[body.data]]\n[body.data.user_data]\nmadid = \"{{device.idfa}}\"\n");
    assert_eq!(report(&placed, &[]).1, Vec::<String>::new());
    // A rule without a preset is not linted this way.
    let custom = "[destination]\nurl = \"https://a.example/\"\n[privacy]\nallow = [\"click_id\", \"user.ip\"]\n[body]\nid = \"{click_id}\"\n";
    assert_eq!(report(custom, &[]), (vec![], vec![]));
}

#[test]
fn a_required_field_the_rule_cannot_fill_warns() {
    // Meta (docs/partners.md M9): website events need client_user_agent...
    let no_ua = META_LINT.replace(", \"user.user_agent\"]", "]");
    let warning = the_warning(&no_ua);
    assert!(
        warning.contains("Meta requires client_user_agent for website events"),
        "{warning}"
    );
    // ... app events need app_data, which only a [body] can give.
    let app = format!("{META_LINT}[params]\naction_source = \"app\"\n");
    let warning = the_warning(&app);
    assert!(
        warning.contains("Meta requires app_data for app events"),
        "{warning}"
    );
    let with_app_data =
        format!("{app}[[body.data]]\napp_data = {{ advertiser_tracking_enabled = 1 }}\n");
    assert_eq!(report(&with_app_data, &[]).1, Vec::<String>::new());
    // Adjust takes event tokens: an event name without a mapping would be sent as is.
    let adjust = "[destination]\nurl = \"https://s2s.adjust.com/event\"\nheaders = { Authorization = \"Bearer t\" }\npreset = \"adjust_s2s\"\n[params]\napp_token = \"abc\"\n[when]\nevent_name = [\"purchase\", \"registration\"]\n[rename.event_name]\npurchase = \"f0ob4r\"\n[privacy]\nallow = [\"event_name\", \"device.idfa\"]\n";
    let warning = the_warning(adjust);
    assert!(
        warning.contains("\"registration\" has no token in [rename.event_name]"),
        "{warning}"
    );
}

#[test]
fn data_manager_reads_its_status_back_from_30_minutes_on_unless_told_otherwise() {
    // D7: Google's diagnostics guide: wait 30 minutes, then back off; up to 24 hours.
    let dm = "[destination]\nurl = \"https://datamanager.googleapis.com/v1/events:ingest\"\noauth = { client_id = \"c\", client_secret = \"s\", refresh_token = \"r\" }\npreset = \"google_data_manager\"\n[params]\ncustomer_id = \"1\"\nconversion_action_id = \"2\"\n";
    let check = |extra: &str| delivery_of(&format!("{dm}{extra}")).status_check;
    assert_eq!(
        check(""),
        Some(crate::outbound::StatusCheck {
            first_after: Duration::from_secs(1800),
            tries: 6
        })
    );
    assert_eq!(
        check("status_check_after = \"2h\"\nstatus_checks = 2\n"),
        Some(crate::outbound::StatusCheck {
            first_after: Duration::from_secs(7200),
            tries: 2
        })
    );
    assert_eq!(check("status_checks = \"0\"\n"), None);
    one_error(
        &format!("{dm}status_check_after = \"soon\"\n"),
        "4:10",
        "`params.status_check_after` must be a duration",
    );
    one_error(
        &format!("{dm}status_checks = \"99\"\n"),
        "4:10",
        "`params.status_checks` must be a whole number from 0 (no checks) to 20",
    );
    // Other presets read nothing back.
    let meta = "[destination]\nurl = \"https://a.example/\"\npreset = \"meta_capi\"\n[privacy]\nallow = [\"event_id\", \"page.url\"]\n";
    assert_eq!(delivery_of(meta).status_check, None);
}
