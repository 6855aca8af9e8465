//! The parts of a rule file about the partner's side: `[success]` (what counts as
//! delivered), `[destination] oauth` (credentials that renew), and the checks and
//! delivery settings a preset brings (age limit, answers, IPv4-only fields, app IDs).

use toml_edit::Value as TomlValue;

use crate::outbound::{DeclaredSuccess, DeliverySettings, OAuthSettings, StatusCheck, SuccessRule};
use crate::toml_reader::{parse_duration, Doc, Field, Section};

use super::super::apply::{Coverage, Privacy};
use super::super::normalize::parse_country;
use super::super::presets::Preset;
use super::super::template::{Params, Segment, Template};
use super::super::versions;

pub const SUCCESS_EXAMPLE: &str = "{ status = [200], json = { code = 0 } }";
pub const OAUTH_EXAMPLE: &str = "{ client_id = \"${GOOGLE_ADS_CLIENT_ID}\", client_secret = \"${GOOGLE_ADS_CLIENT_SECRET}\", refresh_token = \"${GOOGLE_ADS_REFRESH_TOKEN}\" }";
/// Google's OAuth 2.0 token endpoint.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// `[success]`: which answers mean the partner took the event.
pub fn read_success(sec: &Section<'_>) -> DeclaredSuccess {
    let mut d = DeclaredSuccess {
        status: statuses(sec.get("status"), "status", "[200, 202]"),
        retry_status: statuses(sec.get("retry_status"), "retry_status", "[409]"),
        ..DeclaredSuccess::default()
    };
    if let Some(f) = sec.get("contains") {
        match f.as_str("\"OK\"") {
            Some("") => f.error("`success.contains` is empty, so every answer has it; write the text a success answer holds, like \"OK\""),
            Some(s) => d.contains = Some(s.to_string()),
            None => {}
        }
    }
    if let Some(f) = sec.get("json") {
        if let Some(table) = f.as_section("{ code = 0 }") {
            for (path, v) in table.entries() {
                match v.item.as_value().and_then(json_scalar) {
                    Some(value) if super::super::is_valid_path(&path) => d.json.push((path, value)),
                    Some(_) => v.error(format!("\"{path}\" in `success.json` is not a field path; write dotted names like \"data.status\"")),
                    None => v.error(format!("`success.json.{path}` must be a plain value the answer's field must equal: a string, number or true/false, like {path} = 0")),
                }
            }
            table.finish();
        }
    }
    if let Some(f) = sec.get("otherwise") {
        match f.as_str("\"dead_letter\"") {
            Some("retry") => d.retry_otherwise = true,
            Some("dead_letter") => {}
            Some(other) => f.error(format!("`success.otherwise` is \"{other}\"; write \"retry\" (try again later) or \"dead_letter\" (stop, keep it for replay)")),
            None => {}
        }
    }
    d
}

fn json_scalar(v: &TomlValue) -> Option<serde_json::Value> {
    match v {
        TomlValue::String(s) => Some(serde_json::Value::String(s.value().clone())),
        TomlValue::Integer(i) => Some(serde_json::Value::from(*i.value())),
        TomlValue::Float(f) => {
            serde_json::Number::from_f64(*f.value()).map(serde_json::Value::Number)
        }
        TomlValue::Boolean(b) => Some(serde_json::Value::Bool(*b.value())),
        _ => None,
    }
}

/// A list of HTTP statuses (100-599); one number is a list of one.
fn statuses(f: Option<Field<'_>>, key: &str, example: &str) -> Vec<u16> {
    let Some(f) = f else { return Vec::new() };
    let values: Vec<&TomlValue> = match f.item.as_value() {
        Some(TomlValue::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for v in values {
        match v.as_integer().and_then(|n| u16::try_from(n).ok()).filter(|n| (100..600).contains(n)) {
            Some(n) => out.push(n),
            None => f.doc.error(v.span().or(f.span.clone()), format!("`success.{key}` lists HTTP statuses as numbers from 100 to 599, like {key} = {example}")),
        }
    }
    if out.is_empty() && f.item.as_array().is_some_and(|a| a.is_empty()) {
        f.error(format!("`success.{key}` lists nothing; write statuses like {key} = {example}, or remove the line"));
    }
    out
}

/// `[destination] oauth = { client_id, client_secret, refresh_token, token_url }`.
pub fn read_oauth(f: &Field<'_>) -> Option<OAuthSettings> {
    let sec = f.as_section(OAUTH_EXAMPLE)?;
    let get = |key: &str, example: &str| {
        let v = sec.require(key, example)?;
        let s = v.as_str(example)?;
        if s.trim().is_empty() {
            v.error(format!("`destination.oauth.{key}` is empty; set it, usually from the environment, like {key} = {example}"));
            return None;
        }
        Some(s.to_string())
    };
    let client_id = get("client_id", "\"${GOOGLE_ADS_CLIENT_ID}\"");
    let client_secret = get("client_secret", "\"${GOOGLE_ADS_CLIENT_SECRET}\"");
    let refresh_token = get("refresh_token", "\"${GOOGLE_ADS_REFRESH_TOKEN}\"");
    let token_url = match sec.get("token_url") {
        Some(v) => v.as_str(&format!("\"{GOOGLE_TOKEN_URL}\"")).and_then(|s| {
            let ok = s.starts_with("https://") || s.starts_with("http://");
            if !ok {
                v.error(format!("`destination.oauth.token_url` must be a web address, like \"{GOOGLE_TOKEN_URL}\""));
            }
            ok.then(|| s.to_string())
        }),
        None => Some(GOOGLE_TOKEN_URL.to_string()),
    };
    sec.finish();
    Some(OAuthSettings {
        token_url: token_url?,
        client_id: client_id?,
        client_secret: client_secret?,
        refresh_token: refresh_token?,
    })
}

/// What a rule's preset brings to delivery and privacy, and the checks only a
/// preset can make. `success` is the rule's own `[success]`, if any.
pub struct PresetCheck<'x> {
    pub doc: &'x Doc<'x>,
    pub preset: &'x Preset,
    pub preset_field: &'x Field<'x>,
    pub params: &'x Params,
    pub url_text: Option<&'x str>,
    pub has_auth_header: bool,
    /// `headers` as compiled (name, template).
    pub headers: &'x [(String, Template)],
    /// `oauth` is written (even if it had mistakes, reported where they are).
    pub oauth_written: bool,
}

impl PresetCheck<'_> {
    pub fn apply(
        &self,
        delivery: &mut DeliverySettings,
        privacy: &Privacy,
        success: Option<&Field<'_>>,
    ) {
        let p = self.preset;
        if let Some(f) = success {
            self.doc.error(
                f.key_span.clone().or(f.span.clone()),
                format!(
                    "preset {} reads {}'s answers itself (see README-RULES.md); remove [success]",
                    p.name, p.partner
                ),
            );
        }
        delivery.success = SuccessRule::Partner(p.answers);
        delivery.max_event_age = p.max_event_age;
        match p.name {
            "appsflyer_s2s" => {
                self.appsflyer_app_id();
                self.appsflyer_gdpr_applies();
            }
            "google_ads" => self.google_credentials(delivery),
            "google_data_manager" => {
                self.google_credentials(delivery);
                delivery.status_check = self.data_manager_status_check();
            }
            "meta_capi" => self.meta_source_url(privacy),
            "linkedin_capi" => self.linkedin_headers(delivery),
            _ => {}
        }
    }

    /// AppsFlyer answers 200 and drops the event when an iOS app ID lacks its "id".
    fn appsflyer_app_id(&self) {
        let Some(url) = self.url_text else { return };
        let path = url.split(['?', '#']).next().unwrap_or(url);
        let app_id = path.rsplit('/').next().unwrap_or_default();
        if !app_id.is_empty() && app_id.bytes().all(|b| b.is_ascii_digit()) {
            self.preset_field.error(format!("the AppsFlyer app ID \"{app_id}\" is only digits: iOS app IDs start with \"id\" (id{app_id}), and AppsFlyer answers 200 but drops events sent to the wrong ID"));
        }
    }

    /// `params.gdpr_applies` fills AppsFlyer's boolean `consent_data.manual.gdpr_applies`.
    fn appsflyer_gdpr_applies(&self) {
        if let Some(v) = self.params.values.get("gdpr_applies") {
            if v != "true" && v != "false" {
                self.preset_field.error("`params.gdpr_applies` must be \"true\" (the user's consent choices count: the default) or \"false\" (GDPR does not apply to this app's users): AppsFlyer takes a boolean");
            }
        }
    }

    /// Google Data Manager processes uploads later and says how through
    /// `requestStatus:retrieve` (D7): Google asks to wait 30 minutes, then to back off
    /// exponentially; it may take up to 24 hours. Six checks from 30 minutes on,
    /// each twice as late, reach past 31 hours. `params.status_check_after` and
    /// `params.status_checks` change that ("0" checks: none).
    fn data_manager_status_check(&self) -> Option<StatusCheck> {
        let value = |k: &str, default: &'static str| {
            self.params
                .values
                .get(k)
                .map_or(default.to_string(), Clone::clone)
        };
        let first_after = match parse_duration(&value("status_check_after", "30m")) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                self.preset_field.error("`params.status_check_after` must be a duration, like \"30m\" (Google's advice) or \"2h\"");
                return None;
            }
        };
        let tries = match value("status_checks", "6").parse::<u32>() {
            Ok(n) if n <= 20 => n,
            _ => {
                self.preset_field.error("`params.status_checks` must be a whole number from 0 (no checks) to 20, like \"6\"");
                return None;
            }
        };
        (tries > 0).then_some(StatusCheck { first_after, tries })
    }

    /// Google access tokens last an hour: they come from `oauth`, renewed at send time.
    fn google_credentials(&self, delivery: &DeliverySettings) {
        match (&delivery.oauth, self.has_auth_header) {
            (Some(_), true) => self.preset_field.error(format!("preset {} gets its access token from `oauth`; remove the Authorization header from `headers`", self.preset.name)),
            (None, _) if !self.oauth_written => self.preset_field.error(format!("preset {} needs OAuth credentials (an access token lasts one hour); add to [destination]: oauth = {OAUTH_EXAMPLE}", self.preset.name)),
            _ => {}
        }
        if let Some(v) = self.params.values.get("api_version") {
            let ok = v
                .strip_prefix('v')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                self.preset_field.error(format!(
                    "`params.api_version` is \"{v}\"; write an API version like \"{}\"",
                    self.preset
                        .default_params
                        .iter()
                        .find(|(k, _)| *k == "api_version")
                        .map_or("v26", |(_, d)| d)
                ));
            }
        }
    }

    /// LinkedIn (L1, L2): every call names its API version (`LinkedIn-Version`), and
    /// the preset's body is a `BATCH_CREATE` (`X-RestLi-Method`); a token comes from
    /// `oauth` or an Authorization header.
    fn linkedin_headers(&self, delivery: &DeliverySettings) {
        let value = |name: &str| {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, t)| literal_text(t))
        };
        if value("LinkedIn-Version").is_none() {
            self.preset_field.error(format!("LinkedIn requires the API version in every call; add to `headers`: LinkedIn-Version = \"{}\"", versions::api_of("linkedin_capi").map_or("202607", |a| a.current())));
        }
        if value("X-RestLi-Method").as_deref() != Some("BATCH_CREATE") {
            self.preset_field.error("preset linkedin_capi sends conversions as a batch: add to `headers`: X-RestLi-Method = \"BATCH_CREATE\"");
        }
        if delivery.oauth.is_none() && !self.has_auth_header && !self.oauth_written {
            self.preset_field.error(format!("preset linkedin_capi needs a token: add `oauth = {OAUTH_EXAMPLE}` with LinkedIn's token_url, or headers Authorization = \"Bearer ${{LINKEDIN_ACCESS_TOKEN}}\""));
        }
    }

    /// Meta requires `event_source_url` for website events.
    fn meta_source_url(&self, privacy: &Privacy) {
        let source = self.params.meta_action_source();
        if source == "website" && privacy.allow.coverage("page.url") != Coverage::Allowed {
            self.preset_field.error("Meta requires event_source_url for action_source \"website\"; add \"page.url\" to `allow` in [privacy] (or set params.action_source to where the conversions happen)");
        }
    }
}

/// A template's literal text, each placeholder as `{}` (never a version).
pub fn literal_text(t: &Template) -> String {
    t.segments
        .iter()
        .map(|s| match s {
            Segment::Lit(l) => l.as_str(),
            _ => "{}",
        })
        .collect()
}

/// `params.default_country`: where phone numbers without a country code are from
/// (checked by `read_params`).
pub fn default_country(params: &Params) -> Option<phonenumber::country::Id> {
    params
        .values
        .get("default_country")
        .and_then(|c| parse_country(c))
}

/// A `[body]` key named as a hash (`sha256_email`, `email_sha256`, `hashedPhone`,
/// `em_hashed`) promises the partner a digest: every field its value names must be
/// in `hash`, or a clear value would go out under a hashed name.
pub fn check_hashed_names(doc: &Doc<'_>, item: &toml_edit::Item, privacy: &Privacy) {
    let Some(table) = item.as_table_like() else {
        return;
    };
    for (key, value) in table.iter() {
        let lower = key.to_ascii_lowercase();
        let hashed_name = lower.contains("sha256") || lower.contains("hashed");
        match value {
            toml_edit::Item::Value(TomlValue::String(s)) if hashed_name => {
                hashed_value(doc, key, s.value(), value.span(), privacy)
            }
            toml_edit::Item::Value(TomlValue::Array(a)) => {
                for v in a.iter() {
                    if let TomlValue::InlineTable(t) = v {
                        check_inline(doc, t, privacy);
                    }
                }
            }
            toml_edit::Item::Value(TomlValue::InlineTable(t)) => check_inline(doc, t, privacy),
            toml_edit::Item::Table(_) => check_hashed_names(doc, value, privacy),
            toml_edit::Item::ArrayOfTables(a) => {
                for t in a.iter() {
                    check_hashed_names(doc, &toml_edit::Item::Table(t.clone()), privacy);
                }
            }
            _ => {}
        }
    }
}

fn check_inline(doc: &Doc<'_>, t: &toml_edit::InlineTable, privacy: &Privacy) {
    for (key, v) in t.iter() {
        let lower = key.to_ascii_lowercase();
        if let TomlValue::String(s) = v {
            if lower.contains("sha256") || lower.contains("hashed") {
                hashed_value(doc, key, s.value(), v.span(), privacy);
            }
        }
    }
}

fn hashed_value(
    doc: &Doc<'_>,
    key: &str,
    text: &str,
    span: Option<std::ops::Range<usize>>,
    privacy: &Privacy,
) {
    let lenient = Params {
        lenient: true,
        ..Params::default()
    };
    let Ok(t) = super::super::template::Template::parse(text, &lenient) else {
        return;
    };
    for p in t.placeholders() {
        if let super::super::template::PlaceholderSource::Field(path) = &p.source {
            if !privacy.hash.iter().any(|(h, _)| h == path) {
                doc.error(
                    span.clone(),
                    format!("`{key}` is sent as a hash, but `{path}` is not in `hash`, so it would go out in clear; add \"{path}\" to `hash` in [privacy]"),
                );
            }
        }
    }
}
