//! The notes under the bench's table: for each shape, the CPU each process used, the
//! machine's busy, idle, I/O-wait and stolen time, the relay's group commits and the
//! bytes it wrote, Redis's own accounting, and what the load's outcome says (deliveries left, open-loop
//! latency, a pool that ran out).

use crate::load;
use crate::OwnRedis;
use crate::Shape;

/// What Redis held and spent in a Redis shape: its memory per queued delivery, and
/// (accept-only shapes, where every event is still queued) the time its scripts ran
/// per event, which is what says whether Redis's commands or its script calls cost.
pub fn redis_notes(
    name: &str,
    redis: &OwnRedis,
    left: Option<u64>,
    sh: &Shape<'_>,
    notes: &mut Vec<String>,
) {
    if let (Some(bytes), Some(q)) = (redis.used_memory(), left) {
        notes.push(format!(
            "({name}) Redis used_memory {} MiB with {q} deliveries queued",
            bytes >> 20
        ));
    }
    let Some((calls, usec)) = redis.script_time().filter(|(calls, _)| *calls > 0) else {
        return;
    };
    let mut note = format!(
        "({name}) Redis ran {calls} script calls, {:.0} us each on average",
        usec as f64 / calls as f64
    );
    let events = left.filter(|_| !sh.partners_up && sh.destinations > 0);
    if let Some(events) = events
        .map(|q| q / sh.destinations as u64)
        .filter(|e| *e > 0)
    {
        note += &format!(
            "; {:.1} events per call, {:.0} us of script time per event (whole shape, warm-up included)",
            events as f64 / calls as f64,
            usec as f64 / events as f64
        );
    }
    notes.push(note);
}

/// CPU seconds: relays, this process, Redis (server alone, with its children).
pub type Cpu = Option<(f64, f64, Option<(f64, f64)>)>;

/// The CPU each process used in the window, in cores and, at `eps` events a second,
/// in microseconds per event (what says whether the relay or Redis is the cost).
pub fn cpu_note(name: &str, from: Cpu, to: Cpu, span: f64, eps: f64, notes: &mut Vec<String>) {
    if let (Some((r0, b0, x0)), Some((r1, b1, x1)), true) = (from, to, span > 0.0) {
        let per_event = |cores: f64| cores / eps * 1e6;
        let relay = (r1 - r0) / span;
        let mut each = format!("relay {:.0} us", per_event(relay));
        let redis = match (x0, x1) {
            (Some((a, ac)), Some((b, bc))) => {
                let (server, children) = ((b - a) / span, ((bc - ac) - (b - a)).max(0.0) / span);
                each += &format!(
                    ", redis-server {:.0} us (+ {:.0} us in AOF rewrites)",
                    per_event(server),
                    per_event(children)
                );
                format!(
                    ", redis-server {server:.2} cores (+ {children:.2} in its forked children: AOF rewrites)"
                )
            }
            _ => String::new(),
        };
        let each = if eps > 0.0 {
            format!("; CPU per event: {each}")
        } else {
            String::new()
        };
        notes.push(format!(
            "({name}) CPU in the window: relay {relay:.2} cores, load generator + fake partners {:.2} cores{redis}{each}",
            (b1 - b0) / span
        ));
    }
}

/// Above this share of stolen time, a window's figures say more about the host's other
/// guests than about the relay.
const STOLEN_WARN_PCT: f64 = 2.0;

/// The first relay's group commits in the window: how well accepts are grouped, each
/// group one `fdatasync`. (Larger groups were measured not to lower the CPU per event:
/// an `fdatasync` costs with the bytes it writes back; see `written_note`.)
pub fn commit_note(
    name: &str,
    from: (u64, u64),
    to: (u64, u64),
    span: f64,
    notes: &mut Vec<String>,
) {
    let commits = to.0.saturating_sub(from.0);
    let ops = to.1.saturating_sub(from.1);
    if commits == 0 || span <= 0.0 {
        return;
    }
    notes.push(format!(
        "({name}) group commits in the window: {:.0} a second, {:.1} operations each",
        commits as f64 / span,
        ops as f64 / commits as f64
    ));
}

/// What the first relay wrote to its disk in the window (`write_bytes` of
/// `/proc/PID/io`: the journal and the engine's tables), a second and per event at
/// `eps` events a second: every byte costs CPU to copy and a share of each fsync.
pub fn written_note(name: &str, bytes: u64, span: f64, eps: f64, notes: &mut Vec<String>) {
    if span <= 0.0 || eps <= 0.0 {
        return;
    }
    let per_sec = bytes as f64 / span;
    notes.push(format!(
        "({name}) the relay wrote {:.0} MB/s to disk in the window, {:.0} bytes per event",
        per_sec / 1e6,
        per_sec / eps
    ));
}

/// Where the whole machine's time went in the window: a shape that leaves cores idle
/// or waiting on the disk is held by something other than CPU (a wait, a lock, the
/// disk), and taking CPU off it will not lift it.
pub fn machine_note(
    name: &str,
    from: Option<[u64; 8]>,
    to: Option<[u64; 8]>,
    notes: &mut Vec<String>,
) {
    let (Some(a), Some(b)) = (from, to) else {
        return;
    };
    let d: Vec<u64> = a.iter().zip(b).map(|(x, y)| y.saturating_sub(*x)).collect();
    let total: u64 = d.iter().sum();
    if total == 0 {
        return;
    }
    let pct = |v: u64| 100.0 * v as f64 / total as f64;
    // user, nice, system, idle, iowait, irq, softirq, steal
    let busy = d[0] + d[1] + d[2] + d[5] + d[6];
    let stolen = pct(d[7]);
    // Time the hypervisor gave to other guests: the shape's figures are lower than the
    // machine's by an unknown amount, so a ratio against a cleaner window misleads.
    let warn = if stolen > STOLEN_WARN_PCT {
        format!(
            " (over {STOLEN_WARN_PCT:.0}% stolen by other guests: run it again before comparing)"
        )
    } else {
        String::new()
    };
    notes.push(format!(
        "({name}) the machine in the window: {:.0}% busy, {:.0}% idle, {:.0}% waiting on I/O, {stolen:.0}% stolen{warn}",
        pct(busy),
        pct(d[3]),
        pct(d[4]),
    ));
}

pub fn outcome_notes(
    name: &str,
    o: &load::Outcome,
    left: Option<u64>,
    partners_up: bool,
    rate: Option<f64>,
    notes: &mut Vec<String>,
) {
    if let (Some(q), true) = (left, partners_up) {
        notes.push(format!(
            "({name}) deliveries still queued when the load stopped: {q}{}",
            if q > 1000 {
                " (delivery fell behind ingest)"
            } else {
                ""
            }
        ));
    }
    if let Some(r) = rate {
        if let Some(p99) = load::quantile_ms(&o.corrected_us, 0.99) {
            notes.push(format!(
                "({name}) open loop at {r:.0} req/s: p99 measured from each request's due time \
                 (coordinated-omission corrected) = {p99:.2} ms; the table's p50/p99 are from the moment it was written"
            ));
        }
    }
    eprintln!(
        "  {:.0} req/s, p99 {:.2} ms, non-2xx {}, io errors {}",
        o.requests_per_sec(),
        load::quantile_ms(&o.latencies_us, 0.99).unwrap_or(0.0),
        o.non_2xx(),
        o.io_errors
    );
}

pub fn shape_notes(name: &str, o: &load::Outcome, notes: &mut Vec<String>) {
    if o.non_2xx() > 0 {
        notes.push(format!(
            "({name}) answers other than 2xx in the window (not counted as throughput): {:?}",
            o.statuses
        ));
    }
    if o.io_errors > 0 {
        notes.push(format!(
            "({name}) {} connection errors; first: {}",
            o.io_errors,
            o.first_io_error.as_deref().unwrap_or("?")
        ));
    }
    if o.exhausted {
        notes.push(format!(
            "({name}) the pool of unique pre-signed requests ran out: measured over {:.1} s only \
             (raise --pool-mb / LOADBENCH_POOL_MB)",
            o.window.as_secs_f64()
        ));
    }
}
