//! The end-to-end load bench of postback-relay. Run it with `scripts/loadbench.sh`,
//! which builds this and the relay in release mode and cleans up after it; see
//! `benches/README.md` for the method and the shapes.
//!
//! `loadbench run ...`      drives a bare hyper baseline and then the relay, prints one table
//! `loadbench baseline ...` the bare hyper 1.x baseline server (reads the body, answers 202)

mod events;
mod load;
mod relay;
mod report;
mod servers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use relay::{Proc, RelaySetup};
use report::Row;
use servers::Partners;

#[derive(Parser)]
#[command(about = "End-to-end load bench of postback-relay (use scripts/loadbench.sh)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The bare hyper 1.x baseline: reads each POST body, answers 202, nothing else.
    Baseline {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Runs every shape against the baseline and the relay; prints one table.
    Run(RunArgs),
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// The release-built relay binary.
    #[arg(long)]
    relay: PathBuf,
    /// A scratch directory on a real disk (data dirs, configs, logs).
    #[arg(long)]
    work: PathBuf,
    /// Measured seconds per shape.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds before each measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Concurrent keep-alive connections of the load generator.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Deliveries to queue for the drain shape (f).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Memory budget (MiB) for one pool of pre-signed requests.
    #[arg(long, default_value_t = 1024)]
    pool_mb: usize,
    /// Shapes to run (letters a-f); the baselines always run.
    #[arg(long, default_value = "abcdef")]
    shapes: String,
    /// Give up on filling or draining the backlog after this many seconds.
    #[arg(long, default_value_t = 420.0)]
    drain_timeout: f64,
    /// Also write the table (Markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Baseline { listen } => servers::baseline(listen),
        Cmd::Run(args) => run(args),
    };
    if let Err(e) = result {
        eprintln!("loadbench: error: {e}");
        std::process::exit(1);
    }
}

struct Ctx {
    args: RunArgs,
    run_id: String,
    pids: PathBuf,
    logs: PathBuf,
    partner_ports: Vec<u16>,
    threads: usize,
    warmup: Duration,
    duration: Duration,
}

impl Ctx {
    fn wants(&self, shape: char) -> bool {
        self.args.shapes.contains(shape)
    }

    /// How many requests of `per_request` events fit the memory budget.
    fn pool_cap(&self, per_request: u64) -> usize {
        (self.args.pool_mb << 20) / events::request_size(per_request).max(1)
    }

    fn spec(&self, addr: SocketAddr, pool: Arc<Vec<bytes::Bytes>>, wrap: bool) -> load::Spec {
        load::Spec {
            addr,
            connections: self.args.connections,
            warmup: self.warmup,
            duration: Some(self.duration),
            rate: None,
            pool,
            wrap,
            deadline: self.warmup + self.duration + Duration::from_secs(60),
        }
    }
}

fn secs(s: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s).map_err(|e| format!("bad duration {s}: {e}"))
}

fn run(args: RunArgs) -> Result<(), String> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.work).map_err(|e| format!("{}: {e}", args.work.display()))?;
    let logs = args.work.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    if !args.relay.is_file() {
        return Err(format!("no relay binary at {}", args.relay.display()));
    }
    let partner_ports = (0..3)
        .map(|_| relay::free_port())
        .collect::<Result<_, _>>()?;
    let ctx = Ctx {
        run_id: format!("{:08x}", rand::random::<u32>()),
        pids: args.work.join("pids"),
        logs,
        partner_ports,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        warmup: secs(args.warmup)?,
        duration: secs(args.duration)?,
        args,
    };
    eprintln!(
        "loadbench: {} connections, {:?} warm-up + {:?} per shape, backlog {} deliveries, scratch {}",
        ctx.args.connections,
        ctx.warmup,
        ctx.duration,
        ctx.args.backlog,
        ctx.args.work.display()
    );

    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // Baselines: the same generator, the same requests, a server that does nothing.
    let (base_single, base_batch) = baselines(&ctx, &mut rows)?;

    let single_pool_len = |ctx: &Ctx| {
        let want = base_single * (ctx.warmup + ctx.duration).as_secs_f64() * 1.15;
        (want.ceil() as usize).clamp(10_000, ctx.pool_cap(1).max(10_000))
    };

    // (a) accept only: single events, 3 destinations, partners down.
    let mut rate_a = None;
    if ctx.wants('a') {
        let r = relay_shape(
            &ctx,
            "a",
            "(a) accept only: single events, 3 dest., partners down",
            3,
            false,
            single_pool_len(&ctx),
            1,
            None,
            base_single,
            &mut notes,
        )?;
        rate_a = r.rps;
        rows.push(r);
    }
    if ctx.wants('b') {
        rows.push(relay_shape(
            &ctx,
            "b",
            "(b) end to end: single events, 1 dest. delivering",
            1,
            true,
            single_pool_len(&ctx),
            1,
            None,
            base_single,
            &mut notes,
        )?);
    }
    if ctx.wants('c') {
        rows.push(relay_shape(
            &ctx,
            "c",
            "(c) end to end: single events, 3 dest. delivering",
            3,
            true,
            single_pool_len(&ctx),
            1,
            None,
            base_single,
            &mut notes,
        )?);
    }
    if ctx.wants('d') {
        let want = base_batch * (ctx.warmup + ctx.duration).as_secs_f64() * 1.15;
        let len = (want.ceil() as usize).clamp(200, ctx.pool_cap(100).max(200));
        rows.push(relay_shape(
            &ctx,
            "d",
            "(d) accept only: batches of 100, 3 dest., partners down",
            3,
            false,
            len,
            100,
            None,
            base_batch,
            &mut notes,
        )?);
    }
    if ctx.wants('e') {
        match rate_a {
            Some(a) if a > 0.0 => {
                let rate = a / 2.0;
                let len = (rate * (ctx.warmup + ctx.duration).as_secs_f64() * 1.05).ceil() as usize
                    + ctx.args.connections;
                let mut r = relay_shape(
                    &ctx,
                    "e",
                    &format!("(e) latency at half of (a)'s rate ({rate:.0} req/s), as (a)"),
                    3,
                    false,
                    len,
                    1,
                    Some(rate),
                    base_single,
                    &mut notes,
                )?;
                r.ratio = None;
                rows.push(r);
                rows.push(baseline_at_rate(&ctx, rate, &mut notes)?);
            }
            _ => notes.push("(e) skipped: it needs the rate shape (a) reached".into()),
        }
    }
    let mut backlog_lines = Vec::new();
    if ctx.wants('f') {
        let (row, lines) = drain_shape(&ctx)?;
        rows.push(row);
        backlog_lines = lines;
    }

    let table = report::table(&rows);
    let mut text = String::new();
    text.push_str(&table);
    if !backlog_lines.is_empty() {
        text.push('\n');
        for l in &backlog_lines {
            text.push_str(&format!("- {l}\n"));
        }
    }
    if !notes.is_empty() {
        text.push('\n');
        for n in &notes {
            text.push_str(&format!("- note: {n}\n"));
        }
    }
    text.push_str(&format!(
        "\n{} connections, one load-generator thread; {:.1} s warm-up + {:.1} s measured per shape; \
         {} cores; total bench time {:.0} s.\n",
        ctx.args.connections,
        ctx.warmup.as_secs_f64(),
        ctx.duration.as_secs_f64(),
        ctx.threads,
        started.elapsed().as_secs_f64()
    ));
    println!("\n{text}");
    if let Some(out) = &ctx.args.out {
        std::fs::write(out, &text).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(())
}

/// Runs the bare hyper baseline with single events and with batches; their
/// requests/s (the denominators of the ratios).
fn baselines(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(f64, f64), String> {
    eprintln!("loadbench: bare hyper baseline");
    let port = relay::free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("baseline").arg("--listen").arg(addr.to_string());
    let mut proc = Proc::spawn(
        cmd,
        "the baseline",
        &ctx.logs.join("baseline.log"),
        &ctx.pids,
    )?;
    proc.wait_ready(addr, "/", Duration::from_secs(20))?;

    // The baseline keeps no state, so a small pool cycled is as good as a unique one.
    let single = events::pool(&ctx.run_id, 50_000, 1, None, ctx.threads)?;
    let o = load::run(ctx.spec(addr, Arc::new(single.requests), true))?;
    let base_single = o.requests_per_sec();
    rows.push(Row::from_outcome(
        "bare hyper 1.x baseline: single events (202, no work)",
        &o,
        1,
        None,
        proc.status_kib("VmHWM"),
        Some(1.0),
    ));
    eprintln!("  single events: {base_single:.0} req/s");

    let batch = events::pool(&ctx.run_id, 500, 100, None, ctx.threads)?;
    let o = load::run(ctx.spec(addr, Arc::new(batch.requests), true))?;
    let base_batch = o.requests_per_sec();
    rows.push(Row::from_outcome(
        "bare hyper 1.x baseline: batches of 100",
        &o,
        100,
        None,
        proc.status_kib("VmHWM"),
        Some(1.0),
    ));
    eprintln!("  batches of 100: {base_batch:.0} req/s");
    proc.terminate(Duration::from_secs(5));
    if base_single <= 0.0 || base_batch <= 0.0 {
        return Err(format!(
            "the baseline answered nothing (see {})",
            ctx.logs.join("baseline.log").display()
        ));
    }
    Ok((base_single, base_batch))
}

/// The bare hyper baseline (this program, `baseline`), in its own process.
fn start_baseline(ctx: &Ctx, log: &str) -> Result<(Proc, SocketAddr), String> {
    let addr: SocketAddr = ([127, 0, 0, 1], relay::free_port()?).into();
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("baseline").arg("--listen").arg(addr.to_string());
    let mut proc = Proc::spawn(cmd, "the baseline", &ctx.logs.join(log), &ctx.pids)?;
    proc.wait_ready(addr, "/", Duration::from_secs(20))?;
    Ok((proc, addr))
}

/// The bare hyper baseline at the open-loop rate of (e): the floor of the latency
/// this generator and machine can show at that rate.
fn baseline_at_rate(ctx: &Ctx, rate: f64, notes: &mut Vec<String>) -> Result<Row, String> {
    eprintln!("loadbench: bare hyper baseline at {rate:.0} req/s");
    let (mut proc, addr) = start_baseline(ctx, "baseline-rate.log")?;
    let pool = events::pool(&ctx.run_id, 50_000, 1, None, ctx.threads)?;
    let mut spec = ctx.spec(addr, Arc::new(pool.requests), true);
    spec.rate = Some(rate);
    let o = load::run(spec)?;
    let rss = proc.status_kib("VmHWM");
    proc.terminate(Duration::from_secs(5));
    if let Some(p99) = load::quantile_ms(&o.corrected_us, 0.99) {
        notes.push(format!(
            "(e) bare hyper at the same rate: p99 from each request's due time = {p99:.2} ms"
        ));
    }
    shape_notes("e, bare hyper", &o, notes);
    Ok(Row::from_outcome(
        &format!("bare hyper 1.x baseline at the same {rate:.0} req/s"),
        &o,
        1,
        None,
        rss,
        None,
    ))
}

struct RunningRelay {
    proc: Proc,
    addr: SocketAddr,
    log: PathBuf,
}

fn start_relay(
    ctx: &Ctx,
    setup: &RelaySetup,
    log_name: &str,
) -> Result<(RunningRelay, Duration), String> {
    let addr: SocketAddr = read_listen(&setup.config)?;
    let log = ctx.logs.join(log_name);
    let mut proc = relay::spawn_relay(&ctx.args.relay, setup, &log, &ctx.pids)?;
    let ready = proc
        .wait_ready(addr, "/readyz", Duration::from_secs(300))
        .map_err(|e| format!("{e}; its log ends with:\n{}", relay::log_tail(&log, 20)))?;
    Ok((RunningRelay { proc, addr, log }, ready))
}

fn read_listen(config: &Path) -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.trim_end_matches('"').parse().ok())
        .ok_or_else(|| format!("no listen address in {}", config.display()))
}

fn fresh_setup(ctx: &Ctx, name: &str, destinations: usize) -> Result<RelaySetup, String> {
    let dir = ctx.args.work.join(format!("shape-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let listen: SocketAddr = ([127, 0, 0, 1], relay::free_port()?).into();
    relay::write_setup(&dir, listen, &ctx.partner_ports, destinations)
}

/// One measured shape against a fresh relay (fresh data dir).
#[allow(clippy::too_many_arguments)]
fn relay_shape(
    ctx: &Ctx,
    name: &str,
    label: &str,
    destinations: usize,
    partners_up: bool,
    pool_len: usize,
    per_request: u64,
    rate: Option<f64>,
    baseline_rps: f64,
    notes: &mut Vec<String>,
) -> Result<Row, String> {
    eprintln!("loadbench: {label}");
    let setup = fresh_setup(ctx, name, destinations)?;
    let partners = if partners_up {
        Some(Partners::start(&ctx.partner_ports)?)
    } else {
        None
    };
    let t = Instant::now();
    let pool = events::pool(&ctx.run_id, pool_len, per_request, None, ctx.threads)?;
    eprintln!(
        "  {} pre-signed requests ({} MiB) made in {:.1} s",
        pool.requests.len(),
        pool.bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    let (mut r, _) = start_relay(ctx, &setup, &format!("relay-{name}.log"))?;
    let mut spec = ctx.spec(r.addr, Arc::new(pool.requests), false);
    spec.rate = rate;

    // Count what the partners receive inside the measured window.
    // and the CPU the relay and this process (generator + partners) use in it.
    let counters = partners.as_ref().map(|p| p.counters.clone());
    let warmup = ctx.warmup;
    let relay_stat = format!("/proc/{}/stat", r.proc.pid());
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(warmup);
        let n: u64 = counters
            .iter()
            .flatten()
            .map(|c| c.requests.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        let cpu = (
            relay::cpu_secs(&relay_stat),
            relay::cpu_secs("/proc/self/stat"),
        );
        (Instant::now(), n, cpu)
    });
    let o = load::run(spec)?;
    let end = (
        Instant::now(),
        partners.as_ref().map_or(0, |p| p.total_requests()),
    );
    let cpu_end = (r.proc.cpu_secs(), relay::cpu_secs("/proc/self/stat"));
    let (from, n0, cpu0) = sampler.join().map_err(|_| "sampler panicked")?;
    let span = end.0.saturating_duration_since(from).as_secs_f64();
    if let (Some(r0), Some(r1), Some(b0), Some(b1), true) =
        (cpu0.0, cpu_end.0, cpu0.1, cpu_end.1, span > 0.0)
    {
        notes.push(format!(
            "({name}) CPU in the window: relay {:.2} cores, load generator + fake partners {:.2} cores",
            (r1 - r0) / span,
            (b1 - b0) / span
        ));
    }
    let postbacks = partners.as_ref().map(|_| {
        if span > 0.0 {
            (end.1 - n0) as f64 / span
        } else {
            0.0
        }
    });
    let left = relay::queued(r.addr).ok();
    let rss = r.proc.status_kib("VmHWM");
    if !r.proc.is_running() {
        return Err(format!(
            "the relay died during shape ({name}); its log ends with:\n{}",
            relay::log_tail(&r.log, 20)
        ));
    }
    r.proc.terminate(Duration::from_secs(30));
    drop(partners);
    let _ = std::fs::remove_dir_all(&setup.dir);

    let ratio = if baseline_rps > 0.0 {
        Some(o.requests_per_sec() / baseline_rps)
    } else {
        None
    };
    let row = Row::from_outcome(label, &o, per_request, postbacks, rss, ratio);
    shape_notes(name, &o, notes);
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
    Ok(row)
}

fn shape_notes(name: &str, o: &load::Outcome, notes: &mut Vec<String>) {
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

/// (f): queue a backlog with partners down, kill -9, restart (time to ready, RSS),
/// stop cleanly, measure the data dir, start the partners, restart and time the
/// drain at the partners.
fn drain_shape(ctx: &Ctx) -> Result<(Row, Vec<String>), String> {
    let target = ctx.args.backlog.max(3);
    let events = target.div_ceil(3);
    let batches = events.div_ceil(100) as usize;
    let limit = secs(ctx.args.drain_timeout)?;
    eprintln!("loadbench: (f) drain: queueing {target} deliveries ({events} events x 3 destinations), partners down");
    let setup = fresh_setup(ctx, "f", 3)?;
    let t = Instant::now();
    let pool = events::pool(&ctx.run_id, batches, 100, Some(events), ctx.threads)?;
    eprintln!(
        "  {} pre-signed batches ({} MiB) made in {:.1} s",
        pool.requests.len(),
        pool.bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    let (mut r, _) = start_relay(ctx, &setup, "relay-f-fill.log")?;
    let spec = load::Spec {
        addr: r.addr,
        connections: ctx.args.connections,
        warmup: Duration::ZERO,
        duration: None,
        rate: None,
        pool: Arc::new(pool.requests),
        wrap: false,
        deadline: limit,
    };
    let fill = load::run(spec)?;
    let fill_eps = fill.ok as f64 * 100.0 / fill.window.as_secs_f64().max(1e-9);
    let queued = relay::queued(r.addr)?;
    eprintln!(
        "  filled in {:.1} s ({fill_eps:.0} events/s accepted): {queued} deliveries queued; non-2xx {}, io errors {}",
        fill.window.as_secs_f64(),
        fill.non_2xx(),
        fill.io_errors
    );
    if queued == 0 {
        return Err("the fill queued nothing; see the relay log".into());
    }
    // kill -9 a relay holding the backlog, then start it again (partners still down).
    r.proc.kill9();
    let (mut r, ready_after_kill) = start_relay(ctx, &setup, "relay-f-after-kill9.log")?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_backlog = r.proc.status_kib("VmRSS");
    let queued_after_kill = relay::queued(r.addr)?;
    eprintln!(
        "  after kill -9: ready in {} ms, {queued_after_kill} queued, RSS {} MiB",
        ready_after_kill.as_millis(),
        rss_backlog.unwrap_or(0) / 1024
    );
    r.proc.terminate(Duration::from_secs(60));
    let disk = relay::disk_usage(&setup.data_dir);

    // Partners up, a clean start, and the drain.
    let partners = Partners::start(&ctx.partner_ports)?;
    let (mut r, ready_clean) = start_relay(ctx, &setup, "relay-f-drain.log")?;
    let ready_at = Instant::now();
    let want = queued_after_kill;
    let deadline = ready_at + limit;
    let mut drained_at = None;
    while Instant::now() < deadline {
        if partners.total_requests() >= want {
            drained_at = Some(Instant::now());
            break;
        }
        if !r.proc.is_running() {
            return Err(format!(
                "the relay died while draining; its log ends with:\n{}",
                relay::log_tail(&r.log, 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let delivered = partners.total_requests();
    let elapsed = drained_at.unwrap_or_else(Instant::now) - ready_at;
    let rate = delivered as f64 / elapsed.as_secs_f64().max(1e-9);
    // The store should agree that nothing is left.
    let mut left = relay::queued(r.addr).unwrap_or(u64::MAX);
    let settle = Instant::now();
    while left > 0 && settle.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
        left = relay::queued(r.addr).unwrap_or(u64::MAX);
    }
    let peak = r.proc.status_kib("VmHWM");
    let avg = |total: u64| total as f64 / delivered.max(1) as f64;
    let body_avg = avg(partners.total(|c| &c.body_bytes));
    let url_avg = avg(partners.total(|c| &c.url_bytes));
    let header_avg = avg(partners.total(|c| &c.rule_header_bytes));
    r.proc.terminate(Duration::from_secs(30));
    drop(partners);
    let _ = std::fs::remove_dir_all(&setup.dir);

    let mut lines = vec![
        format!(
            "backlog: {queued} deliveries queued ({events} events x 3 destinations, batches of 100, \
             partners down) at {fill_eps:.0} events/s"
        ),
        format!(
            "time from start to /readyz 200 with the backlog: {} ms after kill -9 of the relay holding it, \
             {} ms after a clean stop",
            ready_after_kill.as_millis(),
            ready_clean.as_millis()
        ),
        format!(
            "RSS with the backlog queued (relay idle, partners down, 1 s after ready): {}",
            report::mib(rss_backlog)
        ),
        format!(
            "data dir with the backlog: {:.1} MiB = {:.0} bytes per queued delivery; \
             the rendered request averages {:.0} bytes (body {body_avg:.0} + URL {url_avg:.0} + rule headers {header_avg:.0}), \
             so the store takes {:.1}x the rendered size",
            disk as f64 / (1u64 << 20) as f64,
            disk as f64 / queued_after_kill.max(1) as f64,
            body_avg + url_avg + header_avg,
            disk as f64 / queued_after_kill.max(1) as f64 / (body_avg + url_avg + header_avg).max(1.0)
        ),
        format!(
            "drain: {delivered} postbacks in {:.1} s from ready{}; queue after the drain: {}",
            elapsed.as_secs_f64(),
            if drained_at.is_some() {
                String::new()
            } else {
                format!(" (NOT finished within {:.0} s)", limit.as_secs_f64())
            },
            if left == u64::MAX { "?".to_string() } else { left.to_string() }
        ),
    ];
    if queued_after_kill != queued {
        lines.push(format!(
            "WARNING: {queued} deliveries were queued before kill -9 but {queued_after_kill} after the restart"
        ));
    }
    if fill.non_2xx() > 0 || fill.io_errors > 0 {
        lines.push(format!(
            "fill: non-2xx answers {:?}, connection errors {}",
            fill.statuses, fill.io_errors
        ));
    }
    let row = Row {
        shape: format!(
            "(f) drain of a {}-delivery backlog to 3 partners",
            report::thousands(queued_after_kill as f64)
        ),
        rps: None,
        eps: None,
        p50: None,
        p99: None,
        postbacks: Some(rate),
        rss_kib: peak,
        ratio: None,
    };
    Ok((row, lines))
}
