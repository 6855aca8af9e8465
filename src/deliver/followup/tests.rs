//! Google Data Manager's request IDs and status answers, as its protos and REST
//! reference give them (docs/partners.md D1, D7).

use super::*;

const DM: SuccessRule = SuccessRule::Partner(PartnerAnswers::GoogleDataManager);

#[test]
fn the_request_id_of_a_delivered_ingest_is_kept_and_nothing_else() {
    // IngestEventsResponse {request_id} (ingestion_service.proto), in proto3 JSON.
    let ok = r#"{"requestId":"a8c3f1e2-5b7d-4c19-9e0f-1d2c3b4a5968"}"#;
    assert_eq!(
        request_id(&DM, 200, ok).as_deref(),
        Some("a8c3f1e2-5b7d-4c19-9e0f-1d2c3b4a5968")
    );
    // validateOnly answers {}: nothing to ask about.
    assert_eq!(request_id(&DM, 200, "{}"), None);
    assert_eq!(request_id(&DM, 400, ok), None);
    let google_ads = SuccessRule::Partner(PartnerAnswers::GoogleAds);
    assert_eq!(request_id(&google_ads, 200, ok), None);
    assert_eq!(request_id(&SuccessRule::AnyTwoHundred, 200, ok), None);
    // Only an ID-like text is kept (it is stored and shown).
    assert_eq!(request_id(&DM, 200, r#"{"requestId":"a b"}"#), None);
    assert_eq!(request_id(&DM, 200, r#"{"requestId":""}"#), None);
    let long = format!(r#"{{"requestId":"{}"}}"#, "x".repeat(129));
    assert_eq!(request_id(&DM, 200, &long), None);
    assert_eq!(request_id(&DM, 200, r#"{"requestId":7}"#), None);
    assert_eq!(request_id(&DM, 200, "not json"), None);
}

#[test]
fn the_status_url_sits_next_to_the_ingest_url() {
    // REST reference: POST .../v1/events:ingest, GET .../v1/requestStatus:retrieve
    // ?requestId=...
    assert_eq!(
        status_url("https://datamanager.googleapis.com/v1/events:ingest", "r-1").as_deref(),
        Some("https://datamanager.googleapis.com/v1/requestStatus:retrieve?requestId=r-1")
    );
    // A rule pointed at a test partner is asked there; its own query is not kept.
    assert_eq!(
        status_url("http://127.0.0.1:8081/dm/v1/events:ingest?x=1", "r:2").as_deref(),
        Some("http://127.0.0.1:8081/dm/v1/requestStatus:retrieve?requestId=r%3A2")
    );
    assert_eq!(
        status_url(
            "https://datamanager.googleapis.com/v1/audienceMembers:ingest",
            "r"
        ),
        None
    );
    assert_eq!(status_url("not a url", "r"), None);
}

fn per(destinations: &str) -> String {
    format!(r#"{{"requestStatusPerDestination":[{destinations}]}}"#)
}

const DEST: &str = r#""destination":{"operatingAccount":{"accountType":"GOOGLE_ADS","accountId":"1234567890"},"productDestinationId":"987654321"}"#;

#[test]
fn a_status_answer_is_read_per_destination_worst_first() {
    // RetrieveRequestStatusResponse / RequestStatusPerDestination
    // (request_status_per_destination.proto): requestStatus SUCCESS, PROCESSING,
    // FAILED, PARTIAL_SUCCESS, REQUEST_STATUS_UNKNOWN; errorInfo.errorCounts[]
    // {recordCount (int64: a JSON string), reason (ProcessingErrorReason)}.
    let success = per(&format!(
        r#"{{{DEST},"requestStatus":"SUCCESS","eventsIngestionStatus":{{"recordCount":"3"}}}}"#
    ));
    assert_eq!(
        read_status(&success),
        Some(Reading::Final {
            result: PartnerStatusResult::Success,
            reason: None
        })
    );
    let processing = per(&format!(r#"{{{DEST},"requestStatus":"PROCESSING"}}"#));
    assert_eq!(read_status(&processing), Some(Reading::Processing));
    let unknown = per(&format!(
        r#"{{{DEST},"requestStatus":"REQUEST_STATUS_UNKNOWN"}}"#
    ));
    assert_eq!(read_status(&unknown), Some(Reading::Processing));
    assert_eq!(read_status("{}"), Some(Reading::Processing));

    let failed = per(&format!(
        r#"{{{DEST},"requestStatus":"FAILED","errorInfo":{{"errorCounts":[{{"recordCount":"2","reason":"PROCESSING_ERROR_REASON_INVALID_GCLID"}},{{"recordCount":"1","reason":"PROCESSING_ERROR_REASON_EVENT_TOO_OLD"}}]}},"eventsIngestionStatus":{{"recordCount":"3"}}}}"#
    ));
    assert_eq!(
        read_status(&failed),
        Some(Reading::Final {
            result: PartnerStatusResult::Failure,
            reason: Some(
                "PROCESSING_ERROR_REASON_INVALID_GCLID: 2 events, PROCESSING_ERROR_REASON_EVENT_TOO_OLD: 1 event".into()
            )
        })
    );
    let partial = per(&format!(
        r#"{{{DEST},"requestStatus":"PARTIAL_SUCCESS","errorInfo":{{"errorCounts":[{{"recordCount":1,"reason":"PROCESSING_ERROR_REASON_DUPLICATE_TRANSACTION_ID"}}]}},"warningInfo":{{"warningCounts":[{{"recordCount":"4","reason":"PROCESSING_WARNING_REASON_INTERNAL_ERROR"}}]}}}}"#
    ));
    assert_eq!(
        read_status(&partial),
        Some(Reading::Final {
            result: PartnerStatusResult::PartialSuccess,
            reason: Some("PROCESSING_ERROR_REASON_DUPLICATE_TRANSACTION_ID: 1 event, warning PROCESSING_WARNING_REASON_INTERNAL_ERROR: 4 events".into())
        })
    );
    // Several destinations: final only when each is; then the worst of them.
    let two = |a: &str, b: &str| {
        per(&format!(
            r#"{{"requestStatus":"{a}"}},{{"requestStatus":"{b}"}}"#
        ))
    };
    assert_eq!(
        read_status(&two("SUCCESS", "PROCESSING")),
        Some(Reading::Processing)
    );
    assert!(matches!(
        read_status(&two("SUCCESS", "FAILED")),
        Some(Reading::Final {
            result: PartnerStatusResult::Failure,
            ..
        })
    ));
}

#[test]
fn only_googles_words_are_kept_from_a_status_answer() {
    // A reason that is not an enum word (it could echo something) is left out.
    let odd = per(
        r#"{"requestStatus":"FAILED","errorInfo":{"errorCounts":[{"recordCount":"1","reason":"person@example.com"},{"recordCount":"1","reason":"lower_case"}]}}"#,
    );
    assert_eq!(
        read_status(&odd),
        Some(Reading::Final {
            result: PartnerStatusResult::Failure,
            reason: None
        })
    );
    assert_eq!(read_status("not json"), None);
    assert_eq!(read_status("[]"), None);
    assert_eq!(read_status(r#"{"requestStatusPerDestination":{}}"#), None);
}
