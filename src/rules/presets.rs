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

use std::time::Duration;

use serde_json::{Map, Value};

use crate::outbound::{Method, PartnerAnswers};

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
    /// Fields the partner takes hashed or in clear; any other field the preset sends
    /// is wanted in clear, and hashing it draws a warning (`load::lint`).
    pub may_hash: &'static [&'static str],
    pub hash_style: HashStyle,
    /// How the partner's answers are read (see `deliver::answer`).
    pub answers: PartnerAnswers,
    /// The partner's name in messages.
    pub partner: &'static str,
    /// Fields the partner can match a conversion on: with none of them left after
    /// privacy (consent, allow, hashing), the event is skipped, not sent to fail.
    pub identifiers: &'static [&'static str],
    /// Fields the partner takes only as IPv4: an IPv6 value is dropped.
    pub ipv4_only: &'static [&'static str],
    /// Oldest event the partner accepts.
    pub max_event_age: Option<Duration>,
    /// Partner rules a template cannot say, applied to the rendered JSON body.
    pub finish: Option<fn(&mut Value)>,
    /// The partner's batch API: the array in the body that holds the events, and the
    /// most events one request may carry (its documented maximum). `None`: one event
    /// per request.
    pub batch: Option<(&'static str, usize)>,
    /// Keys of a form body whose value may be a table in `[body]`: sent as a JSON
    /// object of strings, URL-encoded (Adjust's `callback_params` / `partner_params`).
    pub form_objects: &'static [&'static str],
}

/// The customer-information lists Snapchat's and Pinterest's Conversions APIs took
/// from Meta's, key for key, each a list of normalised SHA-256 hashes (docs/partners.md
/// S2, P1); what goes in them is `USER_LISTS_HASHED`.
macro_rules! user_lists {
    () => {
        r#"em = ["{user.email}"]
ph = ["{user.phone}"]
fn = ["{user.first_name}"]
ln = ["{user.last_name}"]
ct = ["{user.city}"]
st = ["{user.state}"]
zp = ["{user.zip}"]
country = ["{user.country}"]
external_id = ["{user.external_id}"]
"#
    };
}

/// The customer information Meta takes only hashed (M3; `external_id` it takes either way).
const META_HASHED: [&str; 8] = [
    "user.email",
    "user.phone",
    "user.first_name",
    "user.last_name",
    "user.city",
    "user.state",
    "user.zip",
    "user.country",
];

/// `META_HASHED` followed by `more`, as one list of `L` fields (`L` = 8 + `more`'s).
const fn meta_hashed_and<const L: usize>(more: &[&'static str]) -> [&'static str; L] {
    let mut out = [""; L];
    let mut i = 0;
    while i < META_HASHED.len() {
        out[i] = META_HASHED[i];
        i += 1;
    }
    while i < L {
        out[i] = more[i - META_HASHED.len()];
        i += 1;
    }
    out
}

/// The fields `user_lists!` sends, which must be hashed.
const USER_LISTS_HASHED: [&str; 9] = meta_hashed_and(&["user.external_id"]);

/// Pinterest hashes the mobile advertising IDs too (`hashed_maids`, P1).
const PINTEREST_HASHED: [&str; 11] =
    meta_hashed_and(&["user.external_id", "device.idfa", "device.gaid"]);

const DAY: u64 = 86400;

/// Meta Conversions API: up to 1,000 events in `data` (docs/partners.md).
pub const META_BATCH_MAX: usize = 1000;
/// TikTok Events API 2.0: up to 1,000 events in `data` (docs/partners.md).
pub const TIKTOK_BATCH_MAX: usize = 1000;
/// Google Ads `uploadClickConversions`: up to 2,000 conversions per request.
pub const GOOGLE_ADS_BATCH_MAX: usize = 2000;
/// Google Data Manager `events:ingest`: "At most 2000 Event resources can be sent in
/// a single request" (`IngestEventsRequest.events`, docs/partners.md D1).
pub const DATA_MANAGER_BATCH_MAX: usize = 2000;
/// Snapchat Conversions API v3: "Maximum 2,000 events per request" in `data` (S1).
pub const SNAPCHAT_BATCH_MAX: usize = 2000;
/// Pinterest API for Conversions v5: up to 1,000 events in `data` (P1).
pub const PINTEREST_BATCH_MAX: usize = 1000;
/// Reddit Conversions API v3: up to 1,000 events in `data.events` (R1).
pub const REDDIT_BATCH_MAX: usize = 1000;
/// LinkedIn Conversions API `BATCH_CREATE`: up to 5,000 events in `elements` (L1).
pub const LINKEDIN_BATCH_MAX: usize = 5000;

pub const NAMES: &[&str] = &[
    "meta_capi",
    "tiktok_events",
    "appsflyer_s2s",
    "adjust_s2s",
    "google_ads",
    "google_data_manager",
    "snapchat_capi",
    "pinterest_capi",
    "reddit_capi",
    "linkedin_capi",
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
ct = "{user.city}"
st = "{user.state}"
zp = "{user.zip}"
country = "{user.country}"
external_id = "{user.external_id}"
client_ip_address = "{user.ip}"
client_user_agent = "{user.user_agent}"
fbc = "{user.fbc}"
fbp = "{user.fbp}"
fbclid = "{click_id}"

[data.custom_data]
value = "{properties.value}"
currency = "{properties.currency}"
order_id = "{properties.order_id}"
"#,
        required_params: &[],
        // The Marketing API version: the newest `versions` knows.
        default_params: &[("action_source", "website"), ("api_version", "v27.0")],
        must_hash: &META_HASHED,
        may_hash: &["user.external_id"],
        hash_style: HashStyle::Meta,
        answers: PartnerAnswers::MetaCapi,
        partner: "Meta",
        // Meta (M2): user_data is required; any customer information parameter.
        identifiers: &[
            "user.email",
            "user.phone",
            "user.external_id",
            "user.first_name",
            "user.last_name",
            "user.city",
            "user.state",
            "user.zip",
            "user.country",
            "user.ip",
            "user.user_agent",
            "user.fbc",
            "user.fbp",
            "click_id",
        ],
        ipv4_only: &[],
        // M1: a request fails if an event is more than 7 days old.
        max_event_age: Some(Duration::from_secs(7 * DAY)),
        finish: Some(meta_finish),
        batch: Some(("data", META_BATCH_MAX)),
        form_objects: &[],
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
        may_hash: &[],
        hash_style: HashStyle::E164,
        answers: PartnerAnswers::TikTokEvents,
        partner: "TikTok",
        identifiers: &[
            "click_id",
            "user.ttp",
            "user.email",
            "user.phone",
            "user.external_id",
            "user.ip",
        ],
        ipv4_only: &[],
        max_event_age: None,
        finish: None,
        batch: Some(("data", TIKTOK_BATCH_MAX)),
        form_objects: &[],
    },
    // AppsFlyer S2S in-app events: POST /inappevent/{APP_ID}, header `authentication`.
    // `eventValue` is a JSON *string*; `eventTime` is "yyyy-MM-dd HH:mm:ss.SSS" UTC.
    // `consent_data.manual` (A7: AppsFlyer's S2S API 3 OpenAPI `ManualConsent`) carries
    // the user's consent choices when the event has them.
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
oaid = "{device.oaid}"
amazon_aid = "{device.fire_adid}"
os = "{device.os_version}"
att = "{device.att_status}"
bundleIdentifier = "{params.bundle_id}"
eventName = "{event_name}"
eventValue = "{properties|json}"
eventCurrency = "{properties.currency}"
ip = "{user.ip}"
eventTime = "{timestamp.datetime_ms}"
af_events_api = "true"

[consent_data.manual]
gdpr_applies = "{params.gdpr_applies}"
ad_user_data_enabled = "{consent.ad_user_data}"
ad_personalization_enabled = "{consent.ad_personalization}"
"#,
        required_params: &[],
        // The user's consent choices count: AppsFlyer and its partners honour a denial.
        default_params: &[("gdpr_applies", "true")],
        must_hash: &[],
        may_hash: &[],
        hash_style: HashStyle::AppsFlyer,
        answers: PartnerAnswers::AppsFlyer,
        partner: "AppsFlyer",
        // A1: appsflyer_id is required.
        identifiers: &["device.appsflyer_id"],
        ipv4_only: &["user.ip"],
        max_event_age: None,
        finish: Some(appsflyer_finish),
        batch: None,
        form_objects: &[],
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
fire_adid = "{device.fire_adid}"
oaid = "{device.oaid}"
web_uuid = "{device.web_uuid}"
adid = "{device.adid}"
android_id = "{device.android_id}"
created_at_unix = "{timestamp.unix}"
ip_address = "{user.ip}"
revenue = "{properties.value}"
currency = "{properties.currency}"
"#,
        required_params: &[("app_token", "\"abc123def456\"")],
        default_params: &[],
        must_hash: &[],
        may_hash: &[],
        hash_style: HashStyle::Digits,
        answers: PartnerAnswers::Adjust,
        partner: "Adjust",
        // J1: a device ID is required (preferred and backup identifiers).
        identifiers: &[
            "device.idfa",
            "device.gaid",
            "device.fire_adid",
            "device.oaid",
            "device.web_uuid",
            "device.adid",
            "device.idfv",
            "device.android_id",
        ],
        // J1: `ip_address` accepts only IPv4 addresses.
        ipv4_only: &["user.ip"],
        // J1: events older than 58 days are rejected.
        max_event_age: Some(Duration::from_secs(58 * DAY)),
        finish: None,
        batch: None,
        // J3: custom data Adjust keeps in raw data (callback) or shares with the
        // network (partner), each a URL-encoded JSON object of string values.
        form_objects: &["callback_params", "partner_params"],
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
consent = { adUserData = "{consent.ad_user_data}" }
"#,
        required_params: &[(
            "conversion_action",
            "\"customers/1234567890/conversionActions/987654321\"",
        )],
        default_params: &[("api_version", "v26")],
        must_hash: &["user.email", "user.phone"],
        may_hash: &[],
        hash_style: HashStyle::Google,
        answers: PartnerAnswers::GoogleAds,
        partner: "Google Ads",
        identifiers: &[
            "click_id",
            "attribution.gbraid",
            "attribution.wbraid",
            "user.email",
            "user.phone",
        ],
        ipv4_only: &[],
        max_event_age: None,
        finish: Some(google_conversion),
        batch: Some(("conversions", GOOGLE_ADS_BATCH_MAX)),
        form_objects: &[],
    },
    // Google Data Manager API: POST https://datamanager.googleapis.com/v1/events:ingest,
    // OAuth (scope datamanager); no developer token: the accounts travel in
    // `destinations` (docs/partners.md D1-D4). Field names: googleapis
    // `google/ads/datamanager/v1/{ingestion_service,event,destination,user_data,consent}.proto`.
    Preset {
        name: "google_data_manager",
        method: Method::Post,
        format: Format::Json,
        body: r#"
encoding = "HEX"
validateOnly = "{params.validate_only}"

[[destinations]]
productDestinationId = "{params.conversion_action_id}"
operatingAccount = { accountType = "GOOGLE_ADS", accountId = "{params.customer_id}" }
loginAccount = { accountType = "GOOGLE_ADS", accountId = "{params.login_customer_id}" }

[[events]]
transactionId = "{properties.order_id}"
eventTimestamp = "{timestamp.iso}"
eventSource = "{params.event_source}"
conversionValue = "{properties.value}"
currency = "{properties.currency}"
adIdentifiers = { gclid = "{click_id}", gbraid = "{attribution.gbraid}", wbraid = "{attribution.wbraid}" }
consent = { adUserData = "{consent.ad_user_data}", adPersonalization = "{consent.ad_personalization}" }
userData = { userIdentifiers = [
  { emailAddress = "{user.email}" },
  { phoneNumber = "{user.phone}" },
] }
"#,
        required_params: &[
            ("customer_id", "\"1234567890\""),
            ("conversion_action_id", "\"987654321\""),
        ],
        default_params: &[("api_version", "v1"), ("event_source", "WEB")],
        must_hash: &["user.email", "user.phone"],
        may_hash: &[],
        hash_style: HashStyle::Google,
        answers: PartnerAnswers::GoogleDataManager,
        partner: "Google Data Manager",
        // NO_IDENTIFIERS_PROVIDED: "Events data contains no user identifiers or ad
        // identifiers" (error.proto).
        identifiers: &[
            "click_id",
            "attribution.gbraid",
            "attribution.wbraid",
            "user.email",
            "user.phone",
        ],
        ipv4_only: &[],
        max_event_age: None,
        finish: Some(data_manager_finish),
        batch: Some(("events", DATA_MANAGER_BATCH_MAX)),
        form_objects: &[],
    },
    // Snapchat Conversions API v3: POST tr.snapchat.com/v3/{PIXEL_ID}/events
    // ?access_token=..., JSON `{"data": [event]}` (S1 "Using the API", S2
    // "Parameters"): em / ph lists of SHA-256 hashes normalised as Meta's, IP and user
    // agent in clear, `sc_click_id` the Snap click ID.
    Preset {
        name: "snapchat_capi",
        method: Method::Post,
        format: Format::Json,
        body: concat!(
            r#"
[[data]]
event_name = "{event_name}"
event_time = "{timestamp.unix}"
event_id = "{event_id}"
action_source = "{params.action_source}"
event_source_url = "{page.url}"

[data.user_data]
"#,
            user_lists!(),
            r#"client_ip_address = "{user.ip}"
client_user_agent = "{user.user_agent}"
sc_click_id = "{click_id}"

[data.custom_data]
value = "{properties.value}"
currency = "{properties.currency}"
order_id = "{properties.order_id}"
"#
        ),
        required_params: &[],
        default_params: &[("action_source", "WEB"), ("api_version", "v3")],
        must_hash: &USER_LISTS_HASHED,
        may_hash: &[],
        hash_style: HashStyle::Digits,
        answers: PartnerAnswers::SnapchatCapi,
        partner: "Snapchat",
        identifiers: &[
            "user.email",
            "user.phone",
            "user.external_id",
            "user.ip",
            "click_id",
        ],
        ipv4_only: &[],
        // S1: "events can have a date (timestamp) of maximum 37 days back".
        max_event_age: Some(Duration::from_secs(37 * DAY)),
        finish: Some(snapchat_finish),
        batch: Some(("data", SNAPCHAT_BATCH_MAX)),
        form_objects: &[],
    },
    // Pinterest API for Conversions v5: POST api.pinterest.com/v5/ad_accounts/{ID}/events,
    // `Authorization: Bearer` (P1: pinterest-python-generated-api-client
    // ConversionEventsApi, ConversionEventsUserData, ConversionApiResponse).
    Preset {
        name: "pinterest_capi",
        method: Method::Post,
        format: Format::Json,
        body: concat!(
            r#"
[[data]]
event_name = "{event_name}"
action_source = "{params.action_source}"
event_time = "{timestamp.unix}"
event_id = "{event_id}"
event_source_url = "{page.url}"

[data.user_data]
"#,
            user_lists!(),
            r#"hashed_maids = ["{device.idfa}", "{device.gaid}"]
client_ip_address = "{user.ip}"
client_user_agent = "{user.user_agent}"

[data.custom_data]
value = "{properties.value}"
currency = "{properties.currency}"
order_id = "{properties.order_id}"
"#
        ),
        required_params: &[],
        default_params: &[("action_source", "web"), ("api_version", "v5")],
        must_hash: &PINTEREST_HASHED,
        may_hash: &[],
        hash_style: HashStyle::Digits,
        answers: PartnerAnswers::PinterestCapi,
        partner: "Pinterest",
        // P1: "at least one of 1) em, 2) hashed_maids or 3) pair client_ip_address +
        // client_user_agent".
        identifiers: &["user.email", "device.idfa", "device.gaid", "user.ip"],
        ipv4_only: &[],
        max_event_age: None,
        finish: Some(pinterest_finish),
        batch: Some(("data", PINTEREST_BATCH_MAX)),
        form_objects: &[],
    },
    // Reddit Conversions API v3: POST ads-api.reddit.com/api/v3/pixels/{PIXEL_ID}/
    // conversion_events, `Authorization: Bearer` (R1: Reddit Ads API v3
    // "Post Conversion Events"): `{"data": {"test_id"?, "events": [...]}}`,
    // `event_at` in milliseconds, `type.tracking_type` (PURCHASE, SIGN_UP, ...).
    Preset {
        name: "reddit_capi",
        method: Method::Post,
        format: Format::Json,
        body: r#"
[data]
test_id = "{params.test_id}"

[[data.events]]
event_at = "{timestamp.unix_ms}"
action_source = "{params.action_source}"
event_source_url = "{page.url}"
click_id = "{click_id}"
type = { tracking_type = "{event_name}" }
metadata = { conversion_id = "{event_id}", value = "{properties.value}", currency = "{properties.currency}" }
user = { email = "{user.email}", external_id = "{user.external_id}", ip_address = "{user.ip}", user_agent = "{user.user_agent}", idfa = "{device.idfa}", aaid = "{device.gaid}" }
"#,
        required_params: &[],
        default_params: &[("action_source", "WEBSITE"), ("api_version", "v3")],
        must_hash: &[
            "user.email",
            "user.external_id",
            "user.ip",
            "device.idfa",
            "device.gaid",
        ],
        may_hash: &[],
        hash_style: HashStyle::Digits,
        answers: PartnerAnswers::RedditCapi,
        partner: "Reddit",
        identifiers: &[
            "click_id",
            "user.email",
            "user.external_id",
            "user.ip",
            "device.idfa",
            "device.gaid",
        ],
        ipv4_only: &[],
        max_event_age: None,
        finish: None,
        batch: Some(("data.events", REDDIT_BATCH_MAX)),
        form_objects: &[],
    },
    // LinkedIn Conversions API: POST api.linkedin.com/rest/conversionEvents with
    // `X-RestLi-Method: BATCH_CREATE`, `LinkedIn-Version`, OAuth (L1, L2):
    // `{"elements": [{conversion, conversionHappenedAt (ms), eventId, conversionValue,
    // user: {userIds: [{idType, idValue}], userInfo}}]}`.
    Preset {
        name: "linkedin_capi",
        method: Method::Post,
        format: Format::Json,
        body: r#"
[[elements]]
conversion = "urn:lla:llaPartnerConversion:{params.conversion_rule_id}"
conversionHappenedAt = "{timestamp.unix_ms}"
eventId = "{event_id}"
conversionValue = { currencyCode = "{properties.currency}", amount = "{properties.value}" }

[elements.user]
userIds = [
  { idType = "SHA256_EMAIL", idValue = "{user.email}" },
  { idType = "LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID", idValue = "{click_id}" },
]
userInfo = { firstName = "{user.first_name}", lastName = "{user.last_name}", countryCode = "{user.country}" }
"#,
        required_params: &[("conversion_rule_id", "\"104012\"")],
        default_params: &[],
        must_hash: &["user.email"],
        may_hash: &[],
        hash_style: HashStyle::Digits,
        answers: PartnerAnswers::LinkedInCapi,
        partner: "LinkedIn",
        // L1: at least one user ID (SHA256_EMAIL, LINKEDIN_FIRST_PARTY_ADS_TRACKING_UUID,
        // ...) or userInfo with first and last name.
        identifiers: &["user.email", "click_id", "user.first_name"],
        ipv4_only: &[],
        // L1: events older than 90 days are refused.
        max_event_age: Some(Duration::from_secs(90 * DAY)),
        finish: Some(linkedin_finish),
        batch: Some(("elements", LINKEDIN_BATCH_MAX)),
        form_objects: &[],
    },
];

/// AppsFlyer counts revenue only from `af_revenue` with `af_currency` (A4): the
/// event's `value` / `currency` inside `eventValue` are sent under those names.
fn appsflyer_revenue(body: &mut Value) {
    let Some(Value::String(text)) = body.get("eventValue") else {
        return;
    };
    let Ok(Value::Object(mut props)) = serde_json::from_str::<Value>(text) else {
        return;
    };
    for (ours, theirs) in [("value", "af_revenue"), ("currency", "af_currency")] {
        if props.contains_key(theirs) {
            continue;
        }
        if let Some(v) = props.shift_remove(ours) {
            let text = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            props.insert(theirs.to_string(), Value::String(text));
        }
    }
    body["eventValue"] = Value::String(Value::Object(props).to_string());
}

/// Meta's click ID: an allowed `click_id` (the fbclid of a Meta ad click) becomes
/// `fbc` = `fb.1.<ms>.<fbclid>` (M9: the fbc format, with the event time as its
/// creation time) unless the event carries its own `user.fbc`; `fbclid` itself is
/// no Meta parameter and is never sent.
fn meta_finish(body: &mut Value) {
    let Some(Value::Array(events)) = body.get_mut("data") else {
        return;
    };
    for e in events.iter_mut() {
        let time = e.get("event_time").and_then(Value::as_i64);
        let Some(Value::Object(user)) = e.get_mut("user_data") else {
            continue;
        };
        let fbclid = match user.shift_remove("fbclid") {
            Some(Value::String(s)) if !s.is_empty() => s,
            _ => continue,
        };
        if !user.contains_key("fbc") {
            if let Some(t) = time {
                user.insert(
                    "fbc".into(),
                    Value::String(format!("fb.1.{}.{fbclid}", t * 1000)),
                );
            }
        }
    }
}

/// AppsFlyer fields a template cannot shape: revenue names, `eventValue` "" when
/// there is no value (A1), IDFA / IDFV in upper case (AppsFlyer's pattern), and the
/// ATT status as Apple's `ATTrackingManager.AuthorizationStatus` raw value.
fn appsflyer_finish(body: &mut Value) {
    appsflyer_revenue(body);
    appsflyer_consent(body);
    if body.get("eventValue").and_then(Value::as_str) == Some("{}") {
        body["eventValue"] = Value::String(String::new());
    }
    for key in ["idfa", "idfv"] {
        if let Some(Value::String(id)) = body.get_mut(key) {
            *id = id.to_ascii_uppercase();
        }
    }
    let att = match body.get("att") {
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "notdetermined" | "not_determined" | "0" => Some(0),
            "restricted" | "1" => Some(1),
            "denied" | "2" => Some(2),
            "authorized" | "3" => Some(3),
            _ => None,
        },
        Some(Value::Number(n)) => n.as_u64().filter(|n| *n <= 3),
        _ => return,
    };
    match att {
        Some(n) => body["att"] = Value::from(n),
        None => {
            if let Some(o) = body.as_object_mut() {
                o.shift_remove("att");
            }
        }
    }
}

/// AppsFlyer's manual consent object (A7): `gdpr_applies`, `ad_user_data_enabled`,
/// `ad_personalization_enabled`, all booleans. Sent only when the event carries a
/// consent choice (`consent.ad_user_data` or `consent.ad_personalization`, allowed);
/// `gdpr_applies` is `params.gdpr_applies` ("true" unless the rule says otherwise).
fn appsflyer_consent(body: &mut Value) {
    let Some(root) = body.as_object_mut() else {
        return;
    };
    let Some(Value::Object(manual)) = root
        .get_mut("consent_data")
        .and_then(|c| c.get_mut("manual"))
    else {
        root.shift_remove("consent_data");
        return;
    };
    for key in ["ad_user_data_enabled", "ad_personalization_enabled"] {
        if !matches!(manual.get(key), Some(Value::Bool(_))) {
            manual.shift_remove(key);
        }
    }
    let chosen = manual.contains_key("ad_user_data_enabled")
        || manual.contains_key("ad_personalization_enabled");
    let applies = match manual.get("gdpr_applies") {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if s == "true" => Some(true),
        Some(Value::String(s)) if s == "false" => Some(false),
        _ => None,
    };
    match (chosen, applies) {
        (true, Some(b)) => {
            manual.insert("gdpr_applies".into(), Value::Bool(b));
        }
        (true, None) => {
            manual.shift_remove("gdpr_applies");
        }
        (false, _) => {
            root.shift_remove("consent_data");
        }
    }
}

/// Google Ads takes one click identifier per conversion (`GBRAID_WBRAID_BOTH_SET`
/// and friends): the gclid first, then gbraid, then wbraid. `consent.adUserData`
/// (G7) is "GRANTED" or "DENIED", from the event's `consent.ad_user_data`.
fn google_conversion(body: &mut Value) {
    let Some(Value::Array(conversions)) = body.get_mut("conversions") else {
        return;
    };
    for c in conversions.iter_mut().filter_map(Value::as_object_mut) {
        // G8: `orderId` is a string field; a numeric order ID goes as its text.
        number_as_text(c, "orderId");
        one_click_id(c);
        google_consent(c, &["adUserData"], ("GRANTED", "DENIED"));
    }
}

/// A protobuf string field given a JSON number goes as its text.
fn number_as_text(object: &mut Map<String, Value>, key: &str) {
    if let Some(Value::Number(n)) = object.get(key) {
        let text = n.to_string();
        object.insert(key.into(), Value::String(text));
    }
}

/// Google takes one click identifier per conversion: gclid, else gbraid, else wbraid.
fn one_click_id(ids: &mut Map<String, Value>) {
    let mut found = false;
    for key in ["gclid", "gbraid", "wbraid"] {
        if ids.contains_key(key) {
            if found {
                ids.shift_remove(key);
            }
            found = true;
        }
    }
}

/// The event's consent booleans at `keys` as Google's enum names (`granted`,
/// `denied`); a key with no answer is left out, and so is an empty `consent`.
fn google_consent(object: &mut Map<String, Value>, keys: &[&str], (granted, denied): (&str, &str)) {
    let Some(Value::Object(consent)) = object.get_mut("consent") else {
        return;
    };
    for &key in keys {
        match consent.get(key) {
            Some(Value::Bool(true)) => consent.insert(key.into(), granted.into()),
            Some(Value::Bool(false)) => consent.insert(key.into(), denied.into()),
            _ => consent.shift_remove(key),
        };
    }
    if consent.is_empty() {
        object.shift_remove("consent");
    }
}

/// Data Manager fields a template cannot shape: `validateOnly` as a JSON boolean
/// (only when `params.validate_only` is "true"), `loginAccount` only with its
/// account ID, and per event: the transaction ID as a string, one ad identifier
/// (gclid, else gbraid, else wbraid, as for Google Ads), consent as
/// `CONSENT_GRANTED` / `CONSENT_DENIED` (consent.proto `ConsentStatus`).
fn data_manager_finish(body: &mut Value) {
    let Some(root) = body.as_object_mut() else {
        return;
    };
    let validate = matches!(root.get("validateOnly"), Some(Value::String(s)) if s == "true")
        || root.get("validateOnly") == Some(&Value::Bool(true));
    if validate {
        root.insert("validateOnly".into(), Value::Bool(true));
    } else {
        root.shift_remove("validateOnly");
    }
    if let Some(Value::Array(destinations)) = root.get_mut("destinations") {
        for d in destinations.iter_mut().filter_map(Value::as_object_mut) {
            let has_id = d
                .get("loginAccount")
                .and_then(|l| l.get("accountId"))
                .is_some();
            if !has_id {
                d.shift_remove("loginAccount");
            }
        }
    }
    let Some(Value::Array(events)) = root.get_mut("events") else {
        return;
    };
    for e in events.iter_mut().filter_map(Value::as_object_mut) {
        number_as_text(e, "transactionId");
        if let Some(Value::Object(ids)) = e.get_mut("adIdentifiers") {
            one_click_id(ids);
        }
        google_consent(
            e,
            &["adUserData", "adPersonalization"],
            ("CONSENT_GRANTED", "CONSENT_DENIED"),
        );
    }
}

/// Snap's `custom_data.value` goes as text, as in its example request (S1: "10").
fn snapchat_finish(body: &mut Value) {
    pinterest_finish(body);
}

/// Pinterest's `custom_data.value` is a string ("425325.89" in P1's example).
fn pinterest_finish(body: &mut Value) {
    let Some(Value::Array(events)) = body.get_mut("data") else {
        return;
    };
    for e in events.iter_mut() {
        if let Some(v) = e.pointer_mut("/custom_data/value") {
            if let Value::Number(n) = v {
                *v = Value::String(n.to_string());
            }
        }
    }
}

/// LinkedIn: a user ID without its value is dropped (the list is removed when
/// none is left), `userInfo` goes only with both names (L1: firstName and lastName
/// are required together), and `conversionValue.amount` is a string.
fn linkedin_finish(body: &mut Value) {
    let Some(Value::Array(elements)) = body.get_mut("elements") else {
        return;
    };
    for e in elements.iter_mut().filter_map(Value::as_object_mut) {
        if let Some(cv) = e.get_mut("conversionValue").and_then(Value::as_object_mut) {
            if let Some(Value::Number(n)) = cv.get("amount") {
                let text = n.to_string();
                cv.insert("amount".into(), Value::String(text));
            }
        }
        let Some(Value::Object(user)) = e.get_mut("user") else {
            continue;
        };
        if let Some(Value::Array(ids)) = user.get_mut("userIds") {
            ids.retain(|id| id.get("idValue").is_some());
            if ids.is_empty() {
                user.shift_remove("userIds");
            }
        }
        let named = user
            .get("userInfo")
            .is_some_and(|i| i.get("firstName").is_some() && i.get("lastName").is_some());
        if !named {
            user.shift_remove("userInfo");
        }
        if user.is_empty() {
            e.shift_remove("user");
        }
    }
}
