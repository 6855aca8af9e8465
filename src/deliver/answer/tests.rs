//! Each partner's answers as its documentation shows them, and what they mean.

use super::*;

fn verdict(rule: &SuccessRule, status: u16, body: &str) -> Verdict {
    judge(rule, status, body).verdict
}

const META: SuccessRule = SuccessRule::Partner(PartnerAnswers::MetaCapi);
const TIKTOK: SuccessRule = SuccessRule::Partner(PartnerAnswers::TikTokEvents);
const ADJUST: SuccessRule = SuccessRule::Partner(PartnerAnswers::Adjust);
const GOOGLE: SuccessRule = SuccessRule::Partner(PartnerAnswers::GoogleAds);
const APPSFLYER: SuccessRule = SuccessRule::Partner(PartnerAnswers::AppsFlyer);

#[test]
fn without_a_rule_any_2xx_is_delivered() {
    let r = SuccessRule::AnyTwoHundred;
    assert_eq!(verdict(&r, 200, "anything"), Verdict::Delivered);
    assert_eq!(verdict(&r, 503, ""), Verdict::Retry);
    assert_eq!(verdict(&r, 400, ""), Verdict::Reject);
}

#[test]
fn meta_counts_events_received() {
    // Meta Conversions API "Using the API" (docs/partners.md M1): a success answers
    // {"events_received": 1, "messages": [], "fbtrace_id": ...}.
    let ok = r#"{"events_received":1,"messages":[],"fbtrace_id":"A1b2"}"#;
    assert_eq!(verdict(&META, 200, ok), Verdict::Delivered);
    let none = r#"{"events_received":0,"messages":[],"fbtrace_id":"A1b2"}"#;
    assert_eq!(verdict(&META, 200, none), Verdict::Reject);
    assert_eq!(verdict(&META, 200, "{}"), Verdict::Reject);
    // Graph API "Handling Errors": code 2 (API Service) and is_transient: retry;
    // code 100 (invalid parameter, e.g. user_data missing) and 190 (token): never.
    let transient = r#"{"error":{"message":"x","type":"OAuthException","code":2,"is_transient":true,"fbtrace_id":"f"}}"#;
    assert_eq!(verdict(&META, 500, transient), Verdict::Retry);
    let rate = r#"{"error":{"message":"x","type":"OAuthException","code":17,"fbtrace_id":"f"}}"#;
    assert_eq!(verdict(&META, 400, rate), Verdict::Retry);
    let invalid = r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,"error_subcode":2804003,"is_transient":false,"fbtrace_id":"f"}}"#;
    let j = judge(&META, 400, invalid);
    assert_eq!(j.verdict, Verdict::Reject);
    assert_eq!(j.reason.as_deref(), Some("Meta error code 100"));
    let token = r#"{"error":{"message":"Invalid OAuth access token.","type":"OAuthException","code":190,"fbtrace_id":"f"}}"#;
    assert_eq!(verdict(&META, 401, token), Verdict::Reject);
}

#[test]
fn tiktok_reads_code_inside_a_200() {
    // TikTok Events API answers HTTP 200 with {"code": 0, "message": "OK", ...};
    // errors come as non-zero codes in a 200 (docs/partners.md: reported by third
    // parties; TikTok's reference pages could not be retrieved).
    let ok = r#"{"code":0,"message":"OK","request_id":"r","data":{}}"#;
    assert_eq!(verdict(&TIKTOK, 200, ok), Verdict::Delivered);
    let bad = r#"{"code":40002,"message":"Invalid parameters","request_id":"r","data":{}}"#;
    let j = judge(&TIKTOK, 200, bad);
    assert_eq!(j.verdict, Verdict::Reject);
    assert_eq!(j.reason.as_deref(), Some("TikTok answered code 40002"));
    let busy = r#"{"code":40100,"message":"Too many requests","request_id":"r","data":{}}"#;
    assert_eq!(verdict(&TIKTOK, 200, busy), Verdict::Retry);
    assert_eq!(verdict(&TIKTOK, 200, r#"{"code":50000}"#), Verdict::Retry);
    // docs/partners.md T3: maintenance, too many requests, frequency limited.
    for code in [60001, 61000, 40132] {
        let body = format!(r#"{{"code":{code},"message":"x","request_id":"r","data":{{}}}}"#);
        assert_eq!(verdict(&TIKTOK, 200, &body), Verdict::Retry, "{code}");
    }
    assert_eq!(verdict(&TIKTOK, 200, "OK"), Verdict::Reject);
    assert_eq!(verdict(&TIKTOK, 503, ""), Verdict::Retry);
}

#[test]
fn adjust_202_means_a_bad_token_not_delivered() {
    // adjust/dev-docs api/s2s-api/security.mdx: 200 OK accepted; 202 "Missing
    // authentication token" / "Wrong authentication token".
    assert_eq!(
        verdict(&ADJUST, 200, r#"{"status":"OK"}"#),
        Verdict::Delivered
    );
    let j = judge(&ADJUST, 202, "Wrong authentication token");
    assert_eq!(j.verdict, Verdict::Reject);
    assert!(j.reason.unwrap_or_default().contains("S2S token"));
    // api/s2s-api/index.mdx "Event submission responses".
    let dup = r#"{"error":"Event request failed (Ignoring event, earlier unique event tracked)"}"#;
    assert_eq!(verdict(&ADJUST, 400, dup), Verdict::Delivered);
    let device = r#"{"error":"Event request failed (Device not found)"}"#;
    assert_eq!(verdict(&ADJUST, 404, device), Verdict::Retry);
    let opted_out = r#"{"error":"Event request failed (Device is opted out)"}"#;
    assert_eq!(verdict(&ADJUST, 451, opted_out), Verdict::Reject);
    let token = r#"{"error":"Event request failed (Invalid event token)"}"#;
    assert_eq!(verdict(&ADJUST, 400, token), Verdict::Reject);
    assert_eq!(verdict(&ADJUST, 500, "Internal error"), Verdict::Retry);
}

#[test]
fn appsflyer_is_judged_by_status() {
    // AppsFlyer S2S (A1/A3): 200 "ok"; 400 bad request; 401 wrong dev key. Its 200
    // for an iOS app ID without "id" cannot be seen in the answer: the rule loader
    // refuses such an app ID instead.
    assert_eq!(verdict(&APPSFLYER, 200, "ok"), Verdict::Delivered);
    assert_eq!(verdict(&APPSFLYER, 401, "Unauthorized"), Verdict::Reject);
    assert_eq!(verdict(&APPSFLYER, 503, ""), Verdict::Retry);
}

fn google_partial(category: &str, code: &str) -> String {
    format!(
        r#"{{"partialFailureError":{{"code":3,"message":"This operation failed.",
        "details":[{{"@type":"type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure",
        "errors":[{{"errorCode":{{"{category}":"{code}"}},"message":"m",
        "location":{{"fieldPathElements":[{{"fieldName":"conversions","index":0}}]}}}}],
        "requestId":"r"}}]}},"results":[{{}}],"jobId":"1"}}"#
    )
}

#[test]
fn google_partial_failures_are_read_per_conversion() {
    // google-ads-python v25 conversion_upload_service.py / conversion_upload_error.py
    // (docs/partners.md G1, G6): with partialFailure the answer is HTTP 200 and the
    // conversion's error is in partialFailureError.details[].errors[].errorCode.
    let ok = r#"{"results":[{"gclid":"g","conversionAction":"customers/1/conversionActions/2","conversionDateTime":"2026-11-25 10:00:00+00:00"}],"jobId":"1"}"#;
    assert_eq!(verdict(&GOOGLE, 200, ok), Verdict::Delivered);
    // TOO_RECENT_EVENT: "Retry after 6 hours have passed."
    let j = judge(
        &GOOGLE,
        200,
        &google_partial("conversionUploadError", "TOO_RECENT_EVENT"),
    );
    assert_eq!(j.verdict, Verdict::Retry);
    assert_eq!(j.retry_after, Some(GOOGLE_TOO_RECENT_WAIT));
    let j = judge(
        &GOOGLE,
        200,
        &google_partial("conversionUploadError", "UNPARSEABLE_GCLID"),
    );
    assert_eq!(j.verdict, Verdict::Reject);
    assert_eq!(
        j.reason.as_deref(),
        Some("Google Ads: conversionUploadError UNPARSEABLE_GCLID")
    );
    // G8: CLICK_NOT_FOUND is a warning to ignore, not a failure.
    assert_eq!(
        verdict(
            &GOOGLE,
            200,
            &google_partial("conversionUploadError", "CLICK_NOT_FOUND")
        ),
        Verdict::Delivered
    );
    let dup = google_partial("conversionUploadError", "CLICK_CONVERSION_ALREADY_EXISTS");
    assert_eq!(verdict(&GOOGLE, 200, &dup), Verdict::Delivered);
    let both = google_partial("conversionUploadError", "GBRAID_WBRAID_BOTH_SET");
    assert_eq!(verdict(&GOOGLE, 200, &both), Verdict::Reject);
}

#[test]
fn google_request_errors_keep_the_status_rules() {
    let quota = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure","errors":[{"errorCode":{"quotaError":"RESOURCE_EXHAUSTED"}}]}]}}"#;
    assert_eq!(verdict(&GOOGLE, 429, quota), Verdict::Retry);
    let auth = r#"{"error":{"code":401,"status":"UNAUTHENTICATED","details":[{"@type":"type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure","errors":[{"errorCode":{"authenticationError":"OAUTH_TOKEN_EXPIRED"}}]}]}}"#;
    assert_eq!(verdict(&GOOGLE, 401, auth), Verdict::Reject);
    let internal = r#"{"error":{"code":500,"details":[{"errors":[{"errorCode":{"internalError":"TRANSIENT_ERROR"}}]}]}}"#;
    assert_eq!(verdict(&GOOGLE, 500, internal), Verdict::Retry);
    assert_eq!(verdict(&GOOGLE, 502, "<html>"), Verdict::Retry);
}

#[test]
fn a_declared_rule_checks_status_json_and_text() {
    let rule = SuccessRule::Declared(DeclaredSuccess {
        status: vec![200],
        json: vec![
            ("code".into(), serde_json::json!(0)),
            ("result.0.ok".into(), serde_json::json!(true)),
        ],
        contains: None,
        retry_status: vec![409],
        retry_otherwise: false,
    });
    assert_eq!(
        verdict(&rule, 200, r#"{"code":0.0,"result":[{"ok":true}]}"#),
        Verdict::Delivered
    );
    let j = judge(&rule, 200, r#"{"code":7,"result":[{"ok":true}]}"#);
    assert_eq!(j.verdict, Verdict::Reject);
    assert_eq!(
        j.reason.as_deref(),
        Some("the answer's `code` is not what [success] json = ... expects")
    );
    assert_eq!(verdict(&rule, 200, "not json"), Verdict::Reject);
    assert_eq!(verdict(&rule, 201, r#"{"code":0}"#), Verdict::Reject);
    assert_eq!(verdict(&rule, 409, ""), Verdict::Retry);
    assert_eq!(verdict(&rule, 503, ""), Verdict::Retry);

    let text = SuccessRule::Declared(DeclaredSuccess {
        contains: Some("OK".into()),
        retry_otherwise: true,
        ..DeclaredSuccess::default()
    });
    assert_eq!(verdict(&text, 204, "OK"), Verdict::Delivered);
    assert_eq!(verdict(&text, 200, "ERROR"), Verdict::Retry);
}

const DATA_MANAGER: SuccessRule = SuccessRule::Partner(PartnerAnswers::GoogleDataManager);

#[test]
fn data_manager_answers_are_judged_by_googles_error_model() {
    // D1: events:ingest answers {"requestId": ...}; validateOnly answers {}.
    assert_eq!(
        verdict(
            &DATA_MANAGER,
            200,
            r#"{"requestId":"126365e1-16d0-4c81-9de9-f362711e250a"}"#
        ),
        Verdict::Delivered
    );
    assert_eq!(verdict(&DATA_MANAGER, 200, "{}"), Verdict::Delivered);
    // D3 "Understand API errors": REST errors carry error.status and details with
    // ErrorInfo.reason and BadRequest.fieldViolations[].reason (error.proto).
    let invalid = r#"{"error":{"code":400,"message":"There was a problem with the request.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"INVALID_ARGUMENT","domain":"datamanager.googleapis.com"},{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"events.events[0].currency","description":"The currency code is not supported.","reason":"INVALID_CURRENCY_CODE"}]}]}}"#;
    let j = judge(&DATA_MANAGER, 400, invalid);
    assert_eq!(j.verdict, Verdict::Reject);
    assert!(!j.credential);
    let reason = j.reason.unwrap_or_default();
    assert!(reason.contains("INVALID_CURRENCY_CODE"), "{reason}");
    assert!(
        !reason.contains("not supported"),
        "never the message text: {reason}"
    );
    // Fast fail: one bad event refuses the whole request, so a batch is judged
    // whole (and bisected by the worker).
    assert!(matches!(
        judge_batch(&DATA_MANAGER, 400, invalid, 3),
        BatchJudgement::Whole(Judgement {
            verdict: Verdict::Reject,
            ..
        })
    ));
    // Temporary: RESOURCE_EXHAUSTED (429), INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED.
    let busy = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"reason":"RESOURCE_EXHAUSTED"}]}}"#;
    assert_eq!(verdict(&DATA_MANAGER, 429, busy), Verdict::Retry);
    let internal =
        r#"{"error":{"code":500,"status":"INTERNAL","details":[{"reason":"INTERNAL_ERROR"}]}}"#;
    assert_eq!(verdict(&DATA_MANAGER, 500, internal), Verdict::Retry);
    // The destination's setup (terms, conversion action, destination): every event
    // would fail the same way, so the destination is held, not emptied.
    let terms = r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"reason":"TERMS_AND_CONDITIONS_NOT_SIGNED"}]}}"#;
    let j = judge(&DATA_MANAGER, 400, terms);
    assert!(j.credential, "{j:?}");
    let action = r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"destinations[0].product_destination_id","reason":"INVALID_CONVERSION_ACTION_ID"}]}]}}"#;
    assert!(judge(&DATA_MANAGER, 400, action).credential);
    // Credentials: 401 UNAUTHENTICATED, 403 PERMISSION_DENIED.
    assert!(
        judge(
            &DATA_MANAGER,
            401,
            r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#
        )
        .credential
    );
    assert!(
        judge(
            &DATA_MANAGER,
            403,
            r#"{"error":{"code":403,"status":"PERMISSION_DENIED"}}"#
        )
        .credential
    );
    // NO_IDENTIFIERS_PROVIDED is the event's fault: a dead letter.
    let none = r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"reason":"NO_IDENTIFIERS_PROVIDED"}]}}"#;
    let j = judge(&DATA_MANAGER, 400, none);
    assert_eq!((j.verdict, j.credential), (Verdict::Reject, false));
}

#[test]
fn google_ads_not_allowlisted_holds_the_destination_and_names_the_data_manager_preset() {
    // G9: since 2026-06-15, uploadClickConversions from a developer token without
    // recent offline-conversion imports is refused (google-ads-python
    // errors/types/not_allowlisted_error.py). Dead-lettering would empty the queue.
    let body = r#"{"error":{"code":403,"message":"The caller does not have permission","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.ads.googleads.v26.errors.GoogleAdsFailure","errors":[{"errorCode":{"notAllowlistedError":"CUSTOMER_NOT_ALLOWLISTED_FOR_THIS_FEATURE"},"message":"The customer is not allowlisted for this feature."}],"requestId":"r1"}]}}"#;
    for status in [400, 403] {
        let j = judge(&GOOGLE, status, body);
        assert!(j.credential, "{j:?}");
        let reason = j.reason.unwrap_or_default();
        assert!(reason.contains("google_data_manager"), "{reason}");
    }
}

const PINTEREST: SuccessRule = SuccessRule::Partner(PartnerAnswers::PinterestCapi);
const LINKEDIN: SuccessRule = SuccessRule::Partner(PartnerAnswers::LinkedInCapi);
const SNAPCHAT: SuccessRule = SuccessRule::Partner(PartnerAnswers::SnapchatCapi);
const REDDIT: SuccessRule = SuccessRule::Partner(PartnerAnswers::RedditCapi);

#[test]
fn pinterest_answers_are_judged_per_event() {
    // P1 ConversionApiResponse: events[] in request order, status processed / failed;
    // HTTP 400 invalid request, 429 rate limit, 503 "ramped down".
    let ok = r#"{"num_events_received":1,"num_events_processed":1,"events":[{"status":"processed","error_message":null,"warning_message":null}]}"#;
    assert_eq!(verdict(&PINTEREST, 200, ok), Verdict::Delivered);
    let failed = r#"{"num_events_received":1,"num_events_processed":0,"events":[{"status":"failed","error_message":"event_time is too old","warning_message":null}]}"#;
    let j = judge(&PINTEREST, 200, failed);
    assert_eq!(j.verdict, Verdict::Reject);
    assert!(
        !j.reason.unwrap_or_default().contains("too old"),
        "never the partner's text"
    );
    let mixed = r#"{"num_events_received":2,"num_events_processed":1,"events":[{"status":"processed"},{"status":"failed","error_message":"x"}]}"#;
    let BatchJudgement::PerEvent(rows) = judge_batch(&PINTEREST, 200, mixed, 2) else {
        panic!("per event")
    };
    assert_eq!(
        rows.iter().map(|j| j.verdict).collect::<Vec<_>>(),
        [Verdict::Delivered, Verdict::Reject]
    );
    assert_eq!(
        verdict(&PINTEREST, 400, r#"{"code":1,"message":"Invalid"}"#),
        Verdict::Reject
    );
    assert_eq!(verdict(&PINTEREST, 429, ""), Verdict::Retry);
    assert_eq!(verdict(&PINTEREST, 503, ""), Verdict::Retry);
    assert!(judge(&PINTEREST, 401, "").credential);
}

#[test]
fn linkedin_batch_create_answers_are_judged_per_element() {
    // L1: BATCH_CREATE answers 200 with elements[] in request order, each with its
    // own status (201 created).
    let ok = r#"{"elements":[{"status":201},{"status":201}]}"#;
    assert!(matches!(
        judge_batch(&LINKEDIN, 200, ok, 2),
        BatchJudgement::PerEvent(rows) if rows.iter().all(|j| j.verdict == Verdict::Delivered)
    ));
    let mixed =
        r#"{"elements":[{"status":201},{"status":400,"error":{"message":"x"}},{"status":500}]}"#;
    let BatchJudgement::PerEvent(rows) = judge_batch(&LINKEDIN, 200, mixed, 3) else {
        panic!("per element")
    };
    assert_eq!(
        rows.iter().map(|j| j.verdict).collect::<Vec<_>>(),
        [Verdict::Delivered, Verdict::Reject, Verdict::Retry]
    );
    assert_eq!(
        verdict(&LINKEDIN, 200, r#"{"elements":[{"status":422}]}"#),
        Verdict::Reject
    );
    // 426: a retired LinkedIn-Version; 429 throttled.
    assert_eq!(verdict(&LINKEDIN, 426, ""), Verdict::Reject);
    assert_eq!(verdict(&LINKEDIN, 429, ""), Verdict::Retry);
    assert!(judge(&LINKEDIN, 401, "").credential);
}

#[test]
fn snapchat_and_reddit_are_judged_by_status() {
    // S1 / R1 document no per-event answer: 2xx delivered, 429 and 5xx retried, other
    // 4xx dead letters, 401 / 403 hold the destination.
    for rule in [&SNAPCHAT, &REDDIT] {
        assert_eq!(
            verdict(
                rule,
                200,
                r#"{"data":{"message":"Successfully processed 1 conversion events."}}"#
            ),
            Verdict::Delivered
        );
        assert_eq!(verdict(rule, 400, ""), Verdict::Reject);
        assert_eq!(verdict(rule, 429, ""), Verdict::Retry);
        assert_eq!(verdict(rule, 503, ""), Verdict::Retry);
        assert!(judge(rule, 403, "").credential);
    }
}
