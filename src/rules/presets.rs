//! Built-in body templates for the common partners (`preset = "..."`).
//!
//! Owns: each partner's request shape as a `[body]` a user could have written by
//! hand (in TOML, compiled by the same code as user bodies), its method and format,
//! the `[params]` it needs, which fields the partner requires hashed, and whose
//! normalisation conventions apply. Never: holds credentials or URLs; auth stays in
//! the rule file's `url` / `headers`, usually as `${ENV}`.
//!
//! Preset placeholders naming fields the rule does not `allow` are simply omitted,
//! so the rule file's `[privacy]` always has the last word.

use crate::outbound::Method;

use super::normalize::HashStyle;
use super::Format;

pub struct Preset {
    pub name: &'static str,
    pub method: Method,
    pub format: Format,
    /// The body, as the TOML table a user would write under `[body]`.
    pub body: &'static str,
    /// `[params]` the preset cannot do without: (name, example value).
    pub required_params: &'static [(&'static str, &'static str)],
    /// `[params]` with a default: (name, default).
    pub default_params: &'static [(&'static str, &'static str)],
    /// Fields the partner only accepts hashed: allowing one without `hash` is an error.
    pub must_hash: &'static [&'static str],
    pub hash_style: HashStyle,
}

pub const NAMES: &[&str] = &[
    "meta_capi",
    "tiktok_events",
    "appsflyer_s2s",
    "adjust_s2s",
    "google_ads",
];

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

pub static PRESETS: &[Preset] = &[
    // Meta Conversions API: POST {version}/{PIXEL_ID}/events, JSON `{"data": [event]}`.
    // `em`, `ph`, `fn`, `ln` must be normalised + SHA-256; IP and user agent in clear.
    Preset {
        name: "meta_capi",
        method: Method::Post,
        format: Format::Json,
        body: r#"
test_event_code = "{params.test_event_code}"

[[data]]
event_name = "{event_name}"
event_time = "{timestamp.unix}"
event_id = "{event_id}"
action_source = "{params.action_source}"
event_source_url = "{page.url}"

[data.user_data]
em = "{user.email}"
ph = "{user.phone}"
fn = "{user.first_name}"
ln = "{user.last_name}"
external_id = "{user.external_id}"
client_ip_address = "{user.ip}"
client_user_agent = "{user.user_agent}"
fbc = "{user.fbc}"
fbp = "{user.fbp}"

[data.custom_data]
value = "{properties.value}"
currency = "{properties.currency}"
order_id = "{properties.order_id}"
"#,
        required_params: &[],
        default_params: &[("action_source", "website")],
        must_hash: &[
            "user.email",
            "user.phone",
            "user.first_name",
            "user.last_name",
        ],
        hash_style: HashStyle::Digits,
    },
    // TikTok Events API 2.0: POST /open_api/v1.3/event/track/, header Access-Token.
    Preset {
        name: "tiktok_events",
        method: Method::Post,
        format: Format::Json,
        body: r#"
event_source = "{params.event_source}"
event_source_id = "{params.event_source_id}"
test_event_code = "{params.test_event_code}"

[[data]]
event = "{event_name}"
event_time = "{timestamp.unix}"
event_id = "{event_id}"

[data.user]
ttclid = "{click_id}"
ttp = "{user.ttp}"
external_id = "{user.external_id}"
email = "{user.email}"
phone = "{user.phone}"
ip = "{user.ip}"
user_agent = "{user.user_agent}"

[data.page]
url = "{page.url}"
referrer = "{page.referrer}"

[data.properties]
value = "{properties.value}"
currency = "{properties.currency}"
order_id = "{properties.order_id}"
contents = "{properties.contents}"
"#,
        required_params: &[("event_source_id", "\"CABCD1234567890\"")],
        default_params: &[("event_source", "web")],
        must_hash: &["user.email", "user.phone", "user.external_id"],
        hash_style: HashStyle::E164,
    },
    // AppsFlyer S2S in-app events: POST /inappevent/{APP_ID}, header `authentication`.
    // `eventValue` is a JSON *string*; `eventTime` is "yyyy-MM-dd HH:mm:ss.SSS" UTC.
    Preset {
        name: "appsflyer_s2s",
        method: Method::Post,
        format: Format::Json,
        body: r#"
appsflyer_id = "{device.appsflyer_id}"
customer_user_id = "{user.external_id}"
idfa = "{device.idfa}"
idfv = "{device.idfv}"
advertising_id = "{device.gaid}"
eventName = "{event_name}"
eventValue = "{properties|json}"
eventCurrency = "{properties.currency}"
ip = "{user.ip}"
eventTime = "{timestamp.datetime_ms}"
af_events_api = "true"
"#,
        required_params: &[],
        default_params: &[],
        must_hash: &[],
        hash_style: HashStyle::Digits,
    },
    // Adjust S2S events: POST https://s2s.adjust.com/event, form-encoded, header
    // `Authorization: Bearer {S2S_TOKEN}`. The event token comes from `event_name`:
    // map your names to Adjust tokens with `[rename.event_name]`.
    Preset {
        name: "adjust_s2s",
        method: Method::Post,
        format: Format::Form,
        body: r#"
s2s = "1"
app_token = "{params.app_token}"
event_token = "{event_name}"
idfa = "{device.idfa}"
idfv = "{device.idfv}"
gps_adid = "{device.gaid}"
oaid = "{device.oaid}"
web_uuid = "{device.web_uuid}"
created_at_unix = "{timestamp.unix}"
ip_address = "{user.ip}"
revenue = "{properties.value}"
currency = "{properties.currency}"
"#,
        required_params: &[("app_token", "\"abc123def456\"")],
        default_params: &[],
        must_hash: &[],
        hash_style: HashStyle::Digits,
    },
    // Google Ads: POST /v{N}/customers/{CUSTOMER_ID}:uploadClickConversions, headers
    // Authorization (OAuth) and developer-token. The event's click_id is the gclid.
    Preset {
        name: "google_ads",
        method: Method::Post,
        format: Format::Json,
        body: r#"
partialFailure = true

[[conversions]]
gclid = "{click_id}"
gbraid = "{attribution.gbraid}"
wbraid = "{attribution.wbraid}"
conversionAction = "{params.conversion_action}"
conversionDateTime = "{timestamp.datetime_offset}"
conversionValue = "{properties.value}"
currencyCode = "{properties.currency}"
orderId = "{properties.order_id}"
userIdentifiers = [
  { hashedEmail = "{user.email}" },
  { hashedPhoneNumber = "{user.phone}" },
]
"#,
        required_params: &[(
            "conversion_action",
            "\"customers/1234567890/conversionActions/987654321\"",
        )],
        default_params: &[],
        must_hash: &["user.email", "user.phone"],
        hash_style: HashStyle::Google,
    },
];
