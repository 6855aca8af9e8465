//! The partner API versions the presets know, with their release and sunset dates
//! and where those dates come from, so that a pinned version cannot rot silently.
//!
//! Owns: the table, finding the version a rule pins (a `/vN/` or `/vN.N/` segment of
//! its URL, after `{params.*}`; LinkedIn's `LinkedIn-Version` header), and judging it
//! on a given day: past its sunset (refused), within `WARN_DAYS` of it (warned), or
//! fine. Never: reads the clock itself; callers pass the day (`check` and `serve` the
//! clock's, tests their own).
//!
//! Sources (docs/partners.md, "API versions"): Meta's Marketing API versions table;
//! Google's Ads developer blog (sunset reminders and release announcements) and the
//! Google Ads API release notes; each partner's API reference for the others.

use chrono::NaiveDate;

/// How many days before a sunset `check` starts warning.
pub const WARN_DAYS: i64 = 60;

/// One version of a partner API.
#[derive(Debug)]
pub struct Version {
    pub name: &'static str,
    /// Release date (`YYYY-MM-DD`), when the source gives one.
    pub released: Option<&'static str>,
    /// Last day before the partner stops answering it (`YYYY-MM-DD`), when announced.
    pub sunset: Option<&'static str>,
}

/// Where a rule names the version it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    /// A path segment of the URL: `v25.0`, `v26`.
    UrlSegment,
    /// A request header (LinkedIn: `LinkedIn-Version: 202601`).
    Header(&'static str),
}

/// One partner API and its versions, newest first.
#[derive(Debug)]
pub struct Api {
    pub name: &'static str,
    /// The presets that call it.
    pub presets: &'static [&'static str],
    pub pinned: Pinned,
    pub versions: &'static [Version],
    /// Where the dates come from.
    pub source: &'static str,
}

impl Api {
    /// The version to use: the newest this relay knows.
    pub fn current(&self) -> &'static str {
        self.versions[0].name
    }
}

const fn v(
    name: &'static str,
    released: Option<&'static str>,
    sunset: Option<&'static str>,
) -> Version {
    Version {
        name,
        released,
        sunset,
    }
}

pub static APIS: &[Api] = &[
    Api {
        name: "Meta Marketing API (Conversions API)",
        presets: &["meta_capi"],
        pinned: Pinned::UrlSegment,
        versions: &[
            v("v27.0", Some("2026-11-04"), None),
            v("v26.0", Some("2026-07-29"), None),
            v("v25.0", Some("2026-02-18"), Some("2027-02-23")),
            v("v24.0", Some("2025-10-08"), Some("2026-11-10")),
            v("v23.0", Some("2025-05-29"), Some("2026-06-09")),
            v("v22.0", Some("2025-01-21"), Some("2026-02-19")),
            v("v21.0", Some("2024-10-02"), Some("2025-09-09")),
            v("v20.0", Some("2024-05-21"), Some("2025-05-06")),
        ],
        source: "Meta Marketing API versions table, developers.facebook.com/docs/marketing-api/marketing-api-changelog/versions",
    },
    Api {
        name: "Google Ads API",
        presets: &["google_ads"],
        pinned: Pinned::UrlSegment,
        versions: &[
            v("v26", Some("2026-10-14"), None),
            v("v25", Some("2026-07-22"), None),
            v("v24", Some("2026-04-22"), None),
            v("v23", None, None),
            v("v22", None, Some("2026-10-07")),
            v("v21", None, Some("2026-08-05")),
            v("v20", Some("2025-06-04"), Some("2026-06-10")),
            v("v19", Some("2025-02-26"), Some("2026-02-11")),
            v("v18", Some("2024-10-16"), Some("2025-08-20")),
            v("v17", None, Some("2025-06-04")),
        ],
        source: "Google Ads developer blog (sunset reminders for v17-v22, v24 announcement) and the Google Ads API release notes (v25, v26)",
    },
    Api {
        name: "TikTok Business API (Events API 2.0)",
        presets: &["tiktok_events"],
        pinned: Pinned::UrlSegment,
        versions: &[v("v1.3", None, None)],
        source: "TikTok Events API 2.0 (business-api.tiktok.com/open_api/v1.3/event/track/)",
    },
    Api {
        name: "Google Data Manager API",
        presets: &["google_data_manager"],
        pinned: Pinned::UrlSegment,
        versions: &[v("v1", None, None)],
        source: "Data Manager API REST reference, developers.google.com/data-manager/api/reference/rest/v1",
    },
    Api {
        name: "Snapchat Conversions API",
        presets: &["snapchat_capi"],
        pinned: Pinned::UrlSegment,
        // v2 (tr.snapchat.com/v2/conversion) was deprecated in early 2025.
        versions: &[v("v3", None, None)],
        source: "developers.snap.com, Conversions API (Version 3)",
    },
    Api {
        name: "Pinterest API",
        presets: &["pinterest_capi"],
        pinned: Pinned::UrlSegment,
        versions: &[v("v5", None, None)],
        source: "Pinterest API v5 reference (api.pinterest.com/v5)",
    },
    Api {
        name: "Reddit Ads API (Conversions API)",
        presets: &["reddit_capi"],
        pinned: Pinned::UrlSegment,
        // v2.0 is deprecated (not yet sunset on the date of this table).
        versions: &[v("v3", None, None)],
        source: "Reddit Ads API v3 reference, Post Conversion Events",
    },
    Api {
        name: "LinkedIn Marketing API (Conversions API)",
        presets: &["linkedin_capi"],
        pinned: Pinned::Header("LinkedIn-Version"),
        // Monthly versions, each supported at least a year; no 202512 was released.
        versions: &[
            v("202607", Some("2026-07-01"), None),
            v("202603", Some("2026-03-01"), Some("2027-03-16")),
            v("202602", Some("2026-02-01"), Some("2027-02-15")),
            v("202601", Some("2026-01-01"), Some("2027-01-15")),
            v("202511", Some("2025-11-01"), Some("2026-11-16")),
            v("202510", Some("2025-10-01"), Some("2026-10-15")),
            v("202411", Some("2024-11-01"), Some("2025-11-17")),
        ],
        source: "LinkedIn Marketing API migrations table, learn.microsoft.com/linkedin/marketing/integrations/migrations",
    },
];

/// The API a preset calls, if its versions are tracked.
pub fn api_of(preset: &str) -> Option<&'static Api> {
    APIS.iter().find(|a| a.presets.contains(&preset))
}

/// The version a rule pins: in its URL (`url_text` with `{params.*}` already
/// filled in) or in the header the API reads it from.
pub fn pinned_version(api: &Api, url_text: &str, headers: &[(String, String)]) -> Option<String> {
    match api.pinned {
        Pinned::UrlSegment => {
            let after_scheme = url_text.split_once("://").map_or(url_text, |(_, r)| r);
            let path = after_scheme.split(['?', '#']).next().unwrap_or_default();
            path.split('/')
                .skip(1)
                .find(|s| s.starts_with('v') && parse(s).is_some())
                .map(str::to_string)
        }
        Pinned::Header(name) => headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string()),
    }
}

/// `v25.0` -> (25, 0); `v26` -> (26, 0); LinkedIn's `202601` -> (202601, 0).
fn parse(segment: &str) -> Option<(u32, u32)> {
    let rest = segment.strip_prefix('v').unwrap_or(segment);
    let (major, minor) = match rest.split_once('.') {
        Some((a, b)) => (a, b),
        None => (rest, "0"),
    };
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    Some((num(major)?, num(minor)?))
}

/// What a pinned version means on a given day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Within `WARN_DAYS` of its sunset, or a version the table does not list.
    Warn(String),
    /// Past its sunset: the partner refuses requests to it.
    Refuse(String),
}

fn date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// Judges `version` of `api` on `today`. Messages read after "... pins ".
pub fn judge(api: &Api, version: &str, today: NaiveDate) -> Verdict {
    let newest = &api.versions[0];
    let use_current = match newest.released {
        Some(r) => format!(
            "use {} (released {r}), the newest version this relay knows",
            newest.name
        ),
        None => format!("use {}, the newest version this relay knows", newest.name),
    };
    let Some(known) = api.versions.iter().find(|v| v.name == version) else {
        return unknown(api, version, &use_current);
    };
    let Some(sunset) = known.sunset.and_then(date) else {
        return Verdict::Fine;
    };
    let days = (sunset - today).num_days();
    if days <= 0 {
        Verdict::Refuse(format!(
            "{} {version}, which reached its sunset on {sunset}, so requests to it fail ({}); {use_current}",
            api.name, api.source
        ))
    } else if days <= WARN_DAYS {
        Verdict::Warn(format!(
            "{} {version}, which sunsets on {sunset}, in {days} day{} ({}); move to {} before then",
            api.name,
            if days == 1 { "" } else { "s" },
            api.source,
            api.current()
        ))
    } else {
        Verdict::Fine
    }
}

/// A version the table does not list: older than the oldest (whose sunset has
/// passed) is refused; newer than the newest is fine; in between, a warning.
fn unknown(api: &Api, version: &str, use_current: &str) -> Verdict {
    let not_known = || {
        Verdict::Warn(format!(
            "{} \"{version}\", which is not a version this relay knows ({}); {use_current}",
            api.name,
            known_list(api)
        ))
    };
    let Some(n) = parse(version) else {
        return not_known();
    };
    if api
        .versions
        .first()
        .and_then(|v| parse(v.name))
        .is_some_and(|newest| n > newest)
    {
        return Verdict::Fine;
    }
    let oldest = api.versions.last();
    if let Some(old) = oldest.filter(|o| parse(o.name).is_some_and(|o| n < o)) {
        if let Some(sunset) = old.sunset {
            return Verdict::Refuse(format!(
                "{} {version}, older than {}, which reached its sunset on {sunset} ({}); {use_current}",
                api.name, old.name, api.source
            ));
        }
    }
    not_known()
}

fn known_list(api: &Api) -> String {
    api.versions
        .iter()
        .map(|v| v.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Today's date (UTC) from the wall clock.
pub fn today() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        date(s).unwrap()
    }

    fn meta() -> &'static Api {
        api_of("meta_capi").unwrap()
    }

    fn google() -> &'static Api {
        api_of("google_ads").unwrap()
    }

    #[test]
    fn every_table_is_newest_first_with_valid_dates() {
        for api in APIS {
            let mut prev: Option<(u32, u32)> = None;
            for v in api.versions {
                let n = parse(v.name).unwrap_or_else(|| panic!("{} {}", api.name, v.name));
                assert!(prev.is_none_or(|p| n < p), "{} not newest first", api.name);
                prev = Some(n);
                for d in [v.released, v.sunset].into_iter().flatten() {
                    assert!(date(d).is_some(), "{} {}: {d}", api.name, v.name);
                }
            }
        }
    }

    #[test]
    fn the_version_is_found_in_the_url_or_header() {
        let url = "https://graph.facebook.com/v21.0/123/events";
        assert_eq!(pinned_version(meta(), url, &[]).as_deref(), Some("v21.0"));
        let url = "https://googleads.googleapis.com/v19/customers/1:uploadClickConversions";
        assert_eq!(pinned_version(google(), url, &[]).as_deref(), Some("v19"));
        // A host or query that looks like a version is not one.
        let url = "https://v2.example/p?v=v3";
        assert_eq!(pinned_version(google(), url, &[]), None);
    }

    #[test]
    fn graph_api_v21_is_refused_with_its_sunset_and_the_version_to_use() {
        let Verdict::Refuse(m) = judge(meta(), "v21.0", day("2026-12-04")) else {
            panic!()
        };
        assert!(m.contains("2025-09-09") && m.contains("use v27.0"), "{m}");
        // Google Ads v19 sunset 2026-02-11 (Google Ads developer blog, 2025-12-15).
        let Verdict::Refuse(m) = judge(google(), "v19", day("2026-12-04")) else {
            panic!()
        };
        assert!(m.contains("2026-02-11") && m.contains("use v26"), "{m}");
    }

    #[test]
    fn a_version_within_sixty_days_of_its_sunset_warns_and_the_day_of_it_is_refused() {
        // Meta v25.0 expires 2027-02-23.
        assert_eq!(judge(meta(), "v25.0", day("2026-12-24")), Verdict::Fine);
        let Verdict::Warn(m) = judge(meta(), "v25.0", day("2026-12-25")) else {
            panic!()
        };
        assert!(m.contains("2027-02-23") && m.contains("in 60 days"), "{m}");
        assert!(matches!(
            judge(meta(), "v25.0", day("2027-02-23")),
            Verdict::Refuse(_)
        ));
    }

    #[test]
    fn unknown_versions_older_newer_and_between() {
        let today = day("2026-12-04");
        // Older than the oldest listed, which is past its sunset.
        let Verdict::Refuse(m) = judge(google(), "v14", today) else {
            panic!()
        };
        assert!(
            m.contains("older than v17") && m.contains("2025-06-04"),
            "{m}"
        );
        // Newer than this relay knows: fine.
        assert_eq!(judge(meta(), "v28.0", today), Verdict::Fine);
        assert_eq!(judge(google(), "v27", today), Verdict::Fine);
        // Between: a warning naming what is known.
        assert!(matches!(judge(meta(), "v24.5", today), Verdict::Warn(_)));
        // LinkedIn's monthly versions, from its header.
        let linkedin = api_of("linkedin_capi").unwrap();
        let headers = [("linkedin-version".to_string(), " 202410 ".to_string())];
        let pinned = pinned_version(linkedin, "https://api.linkedin.com/rest/x", &headers);
        assert_eq!(pinned.as_deref(), Some("202410"));
        assert!(matches!(
            judge(linkedin, "202410", today),
            Verdict::Refuse(_)
        ));
        assert!(matches!(judge(linkedin, "202601", today), Verdict::Warn(_)));
        assert_eq!(judge(linkedin, "202607", today), Verdict::Fine);
        // Current defaults are fine today.
        assert_eq!(judge(meta(), "v27.0", today), Verdict::Fine);
        assert_eq!(judge(google(), "v26", today), Verdict::Fine);
    }
}
