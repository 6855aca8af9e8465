//! The one table the bench prints (Markdown, so it pastes into docs/performance.md).

use crate::load::{quantile_ms, Outcome};

pub struct Row {
    pub shape: String,
    pub rps: Option<f64>,
    pub eps: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub postbacks: Option<f64>,
    pub rss_kib: Option<u64>,
    pub ratio: Option<f64>,
}

impl Row {
    pub fn from_outcome(
        shape: &str,
        o: &Outcome,
        per_request: u64,
        postbacks: Option<f64>,
        rss_kib: Option<u64>,
        ratio: Option<f64>,
    ) -> Row {
        let rps = o.requests_per_sec();
        Row {
            shape: shape.to_string(),
            rps: Some(rps),
            eps: Some(rps * per_request as f64),
            p50: quantile_ms(&o.latencies_us, 0.50),
            p99: quantile_ms(&o.latencies_us, 0.99),
            postbacks,
            rss_kib,
            ratio,
        }
    }
}

/// 12345.6 -> "12,346".
pub fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.0} MiB", k as f64 / 1024.0))
        .unwrap_or_else(|| "-".into())
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| shape | requests/s | events/s | p50 | p99 | postbacks/s delivered | peak RSS | ratio to bare hyper |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.shape,
            opt(r.rps, thousands),
            opt(r.eps, thousands),
            opt(r.p50, |v| format!("{v:.2} ms")),
            opt(r.p99, |v| format!("{v:.2} ms")),
            opt(r.postbacks, thousands),
            mib(r.rss_kib),
            opt(r.ratio, |v| format!("{v:.3}")),
        ));
    }
    out
}
