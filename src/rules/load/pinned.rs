//! The partner API version a preset rule pins, judged against the table of versions
//! (`rules::versions`): past its sunset an error, near it a warning.

use crate::toml_reader::Doc;

use super::super::presets::Preset;
use super::super::versions;
use super::destination::Request;
use super::partner::literal_text;

/// The partner API version a preset rule pins (in its URL, `{params.api_version}`
/// filled in, or LinkedIn's version header), judged on `today`: past its sunset an
/// error, within 60 days of it a warning, each naming the date and the version to
/// use (`versions`). Returns the pinned version for `serve`'s daily reminder.
pub fn check_version(
    doc: &Doc<'_>,
    preset: &Preset,
    req: &Request<'_>,
    today: chrono::NaiveDate,
) -> Option<(&'static versions::Api, String)> {
    let api = versions::api_of(preset.name)?;
    let url = literal_text(req.url.as_ref()?);
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(n, t)| (n.clone(), literal_text(t)))
        .collect();
    let version = versions::pinned_version(api, &url, &headers)?;
    let raw_url = req.url_field.as_ref().and_then(|f| f.item.as_str());
    let from_params = raw_url.is_some_and(|u| !u.contains(&version) && u.contains("{params."));
    let params_field = doc
        .root()
        .and_then(|r| r.get("params"))
        .and_then(|f| f.item.as_table_like().map(|_| f))
        .and_then(|f| f.as_section("").and_then(|s| s.get("api_version")));
    let (place, span) = match (&api.pinned, from_params, params_field) {
        (versions::Pinned::Header(h), _, _) => (
            format!("header {h}"),
            req.url_field.as_ref().and_then(|f| f.span.clone()),
        ),
        (_, true, Some(f)) => ("`params.api_version`".to_string(), f.span.clone()),
        (_, true, None) => (
            "the preset's default `api_version`".to_string(),
            req.url_field.as_ref().and_then(|f| f.span.clone()),
        ),
        _ => (
            "`url`".to_string(),
            req.url_field.as_ref().and_then(|f| f.span.clone()),
        ),
    };
    match versions::judge(api, &version, today) {
        versions::Verdict::Fine => {}
        versions::Verdict::Warn(m) => doc.warn(span, format!("{place} pins {m}")),
        versions::Verdict::Refuse(m) => doc.error(span, format!("{place} pins {m}")),
    }
    Some((api, version))
}
