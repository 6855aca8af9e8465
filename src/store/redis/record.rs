//! A delivery as a Redis hash (`{prefix}:r:<id>`): one field per value, so the
//! scripts can move a delivery between states without decoding it; the rendered
//! request is one postcard-encoded field (`req`), dropped once delivered.
//!
//! | field | value |
//! |---|---|
//! | `dest` | destination name |
//! | `req` | the rendered request (postcard), with credential markers |
//! | `ca`, `na`, `fa`, `la`, `fin` | created, next attempt, first and last attempt, finished (Unix ms) |
//! | `att` | attempts made |
//! | `ls`, `le` | last HTTP status, last error |
//! | `st` | `q` on its stream, `r` waiting to retry, `d` dead, `c` delivered |
//! | `e` | its stream entry while on the stream |
//! | `ps`, `pr`, `pq`, `pc` | a delivered one's partner status: state, reason, the partner's request ID, checked at (Unix ms) |

use std::collections::HashMap;

use crate::outbound::OutboundRequest;
use crate::store::{DeadLetter, Delivery, DeliveryStatus, PartnerStatus};

/// The fields of a record, as Redis returned them.
pub struct Fields(HashMap<String, Vec<u8>>);

impl Fields {
    /// From HGETALL's flat list of field, value pairs.
    pub fn from_pairs(flat: Vec<Vec<u8>>) -> Fields {
        let mut map = HashMap::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            map.insert(String::from_utf8_lossy(&k).into_owned(), v);
        }
        Fields(map)
    }

    fn text(&self, f: &str) -> Option<String> {
        self.0
            .get(f)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn int(&self, f: &str) -> Option<i64> {
        self.text(f).and_then(|t| t.parse().ok())
    }

    pub fn state(&self) -> Option<String> {
        self.text("st")
    }

    /// The stream entry it sits on, while it does.
    pub fn entry(&self) -> Option<String> {
        self.text("e")
    }

    pub fn destination(&self) -> Option<String> {
        self.text("dest")
    }

    /// The whole delivery; `None` when the record is incomplete or its request does
    /// not decode (written by something else).
    pub fn delivery(&self, id: &str) -> Option<Delivery> {
        let request: OutboundRequest = postcard::from_bytes(self.0.get("req")?).ok()?;
        Some(Delivery {
            id: id.to_owned(),
            destination: self.destination()?,
            request,
            attempts: u32::try_from(self.int("att").unwrap_or(0)).unwrap_or(u32::MAX),
            created_at: self.int("ca")?,
            first_attempt_at: self.int("fa"),
            last_attempt_at: self.int("la"),
            next_attempt_at: self.int("na")?,
            last_status: self.int("ls").and_then(|s| u16::try_from(s).ok()),
            last_error: self.text("le"),
        })
    }

    pub fn dead_letter(&self, id: &str) -> Option<DeadLetter> {
        Some(DeadLetter {
            delivery: self.delivery(id)?,
            dead_at: self.int("fin")?,
        })
    }

    /// Where it stands, without its payload.
    pub fn status(&self, id: &str) -> Option<DeliveryStatus> {
        let attempts = u32::try_from(self.int("att").unwrap_or(0)).unwrap_or(u32::MAX);
        let state = match (self.state()?.as_str(), attempts) {
            ("q" | "r", 0) => "queued",
            ("q" | "r", _) => "retrying",
            ("d", _) => "dead",
            ("c", _) => "delivered",
            _ => return None,
        };
        let waiting = matches!(state, "queued" | "retrying");
        Some(DeliveryStatus {
            id: id.to_owned(),
            destination: self.destination()?,
            state,
            attempts,
            created_at: self.int("ca").unwrap_or(0),
            last_attempt_at: self.int("la"),
            next_attempt_at: if waiting { self.int("na") } else { None },
            last_status: self.int("ls").and_then(|s| u16::try_from(s).ok()),
            last_error: self.text("le"),
            finished_at: if waiting { None } else { self.int("fin") },
            partner_status: self.partner_status(),
        })
    }

    fn partner_status(&self) -> Option<PartnerStatus> {
        Some(PartnerStatus {
            state: self.text("ps")?,
            reason: self.text("pr"),
            request_id: self.text("pq").unwrap_or_default(),
            checked_at: self.int("pc"),
        })
    }
}

/// What `retry_later` and `dead_letter` write back: the fields to set and the
/// optional ones to delete (a `None`).
pub fn outcome_fields(d: &Delivery) -> (Vec<(&'static str, String)>, Vec<&'static str>) {
    let mut set = vec![
        ("att", d.attempts.to_string()),
        ("na", d.next_attempt_at.to_string()),
    ];
    let mut del = Vec::new();
    let optional = [
        ("fa", d.first_attempt_at.map(|v| v.to_string())),
        ("la", d.last_attempt_at.map(|v| v.to_string())),
        ("ls", d.last_status.map(|v| v.to_string())),
        ("le", d.last_error.clone()),
    ];
    for (f, v) in optional {
        match v {
            Some(v) => set.push((f, v)),
            None => del.push(f),
        }
    }
    (set, del)
}

/// The request as stored.
pub fn encode_request(r: &OutboundRequest) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(r).map_err(|e| format!("cannot encode a request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Method;

    fn delivery() -> Delivery {
        Delivery {
            id: "dlv_x".into(),
            destination: "a".into(),
            request: OutboundRequest {
                method: Method::Get,
                url: "https://a.example.test/?c=\u{1}TOKEN\u{1}".into(),
                headers: vec![],
                body: None,
                event_time_ms: Some(5),
            },
            attempts: 2,
            created_at: 10,
            first_attempt_at: Some(11),
            last_attempt_at: None,
            next_attempt_at: 20,
            last_status: Some(503),
            last_error: None,
        }
    }

    fn as_fields(d: &Delivery, st: &str) -> Fields {
        let (set, _) = outcome_fields(d);
        let mut flat: Vec<Vec<u8>> = vec![
            b"dest".to_vec(),
            d.destination.clone().into_bytes(),
            b"req".to_vec(),
            encode_request(&d.request).expect("encode"),
            b"ca".to_vec(),
            d.created_at.to_string().into_bytes(),
            b"st".to_vec(),
            st.as_bytes().to_vec(),
        ];
        for (f, v) in set {
            flat.push(f.as_bytes().to_vec());
            flat.push(v.into_bytes());
        }
        Fields::from_pairs(flat)
    }

    #[test]
    fn a_delivery_survives_its_fields() {
        let d = delivery();
        let (_, del) = outcome_fields(&d);
        assert_eq!(
            del,
            vec!["la", "le"],
            "a None is deleted, not written empty"
        );
        assert_eq!(as_fields(&d, "r").delivery("dlv_x"), Some(d));
    }

    #[test]
    fn status_names_the_state_and_hides_the_payload() {
        let d = delivery();
        let st = as_fields(&d, "r").status("dlv_x").expect("status");
        assert_eq!((st.state, st.next_attempt_at), ("retrying", Some(20)));
        let mut fresh = d.clone();
        fresh.attempts = 0;
        assert_eq!(
            as_fields(&fresh, "q").status("i").expect("s").state,
            "queued"
        );
        assert!(as_fields(&d, "?").status("i").is_none());
    }

    #[test]
    fn a_record_that_does_not_decode_is_no_delivery() {
        let f = Fields::from_pairs(vec![b"req".to_vec(), b"\xff\xff".to_vec()]);
        assert!(f.delivery("i").is_none());
    }
}
