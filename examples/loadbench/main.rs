//! The end-to-end load bench of postback-relay. Run it with `scripts/loadbench.sh`,
//! which builds this and the relay in release mode and cleans up after it; see
//! `benches/README.md` for the method and the shapes.
//!
//! `loadbench run ...`      drives a bare hyper baseline and then the relay, prints one table
//! `loadbench baseline ...` the bare hyper 1.x baseline server (reads the body, answers 202)

mod distance;
mod events;
mod load;
mod notes;
mod relay;
mod report;
mod servers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use notes::{
    commit_note, cpu_note, machine_note, outcome_notes, redis_notes, shape_notes, written_note, Cpu,
};
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
    /// Shapes to run (letters a-o); the baselines always run.
    #[arg(long, default_value = "abcdefghijklmno")]
    shapes: String,
    /// How long the distant partners of shapes (k) to (n) take to answer, ms.
    #[arg(long, default_value_t = 100.0)]
    partner_delay_ms: f64,
    /// Events sent to the distant partners in shape (k) (a tenth of it in (l)).
    #[arg(long, default_value_t = 200_000)]
    distance_events: u64,
    /// `redis-server` to run the Redis shapes (g-j) on; they are skipped without it.
    #[arg(long)]
    redis_server: Option<PathBuf>,
    /// A setting for the bench's `redis-server`, as `NAME=VALUE` (repeatable; after
    /// the bench's own, so it can override them), e.g. `hash-max-listpack-value=1024`.
    #[arg(long = "redis-config", value_name = "NAME=VALUE")]
    redis_config: Vec<String>,
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
            addrs: vec![addr],
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

    embedded_shapes(&ctx, base_single, base_batch, &mut rows, &mut notes)?;
    let mut backlog_lines = Vec::new();
    if ctx.wants('f') {
        let (row, lines) = drain_shape(&ctx, false)?;
        rows.push(row);
        backlog_lines = lines;
    }
    if ctx.wants('o') {
        let (row, lines) = drain_shape(&ctx, true)?;
        rows.push(row);
        backlog_lines.extend(lines.into_iter().map(|l| format!("(o, batches) {l}")));
    }

    redis_shapes(&ctx, base_single, &mut rows, &mut notes)?;

    // Partners at internet distance, with the rule files' default settings.
    if ctx.wants('k') {
        distance::campaign(&ctx, &mut rows, &mut notes)?;
    }
    if ctx.wants('l') {
        distance::rate_limited(&ctx, &mut rows, &mut notes)?;
    }
    if ctx.wants('m') {
        distance::poisoned(&ctx, &mut notes)?;
    }
    if ctx.wants('n') {
        distance::low_traffic(&ctx, &mut notes)?;
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

/// Pre-signed single-event requests for one shape: enough for the warm-up and the
/// window at the baseline's rate, within the memory budget.
fn single_pool_len(ctx: &Ctx, base_single: f64) -> usize {
    let want = base_single * (ctx.warmup + ctx.duration).as_secs_f64() * 1.15;
    (want.ceil() as usize).clamp(10_000, ctx.pool_cap(1).max(10_000))
}

/// A closed-loop shape of single events.
fn single<'a>(
    ctx: &Ctx,
    name: &'a str,
    label: &str,
    dest: usize,
    up: bool,
    base: f64,
    on: On<'a>,
) -> Shape<'a> {
    Shape {
        name,
        label: label.to_string(),
        destinations: dest,
        partners_up: up,
        pool_len: single_pool_len(ctx, base),
        per_request: 1,
        rate: None,
        baseline_rps: base,
        on,
    }
}

/// Shapes (a) to (e): one relay on the embedded store.
fn embedded_shapes(
    ctx: &Ctx,
    base_single: f64,
    base_batch: f64,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let mut rate_a = None;
    if ctx.wants('a') {
        let label = "(a) accept only: single events, 3 dest., partners down";
        let r = relay_shape(
            ctx,
            single(ctx, "a", label, 3, false, base_single, On::Embedded),
            notes,
        )?;
        rate_a = r.rps;
        rows.push(r);
    }
    if ctx.wants('b') {
        let label = "(b) end to end: single events, 1 dest. delivering";
        rows.push(relay_shape(
            ctx,
            single(ctx, "b", label, 1, true, base_single, On::Embedded),
            notes,
        )?);
    }
    if ctx.wants('c') {
        let label = "(c) end to end: single events, 3 dest. delivering";
        rows.push(relay_shape(
            ctx,
            single(ctx, "c", label, 3, true, base_single, On::Embedded),
            notes,
        )?);
    }
    if ctx.wants('d') {
        let want = base_batch * (ctx.warmup + ctx.duration).as_secs_f64() * 1.15;
        let len = (want.ceil() as usize).clamp(200, ctx.pool_cap(100).max(200));
        let mut sh = single(
            ctx,
            "d",
            "(d) accept only: batches of 100, 3 dest., partners down",
            3,
            false,
            base_batch,
            On::Embedded,
        );
        sh.pool_len = len;
        sh.per_request = 100;
        rows.push(relay_shape(ctx, sh, notes)?);
    }
    if ctx.wants('e') {
        match rate_a {
            Some(a) if a > 0.0 => {
                let rate = a / 2.0;
                let label = format!("(e) latency at half of (a)'s rate ({rate:.0} req/s), as (a)");
                let mut sh = single(ctx, "e", &label, 3, false, base_single, On::Embedded);
                sh.pool_len = (rate * (ctx.warmup + ctx.duration).as_secs_f64() * 1.05).ceil()
                    as usize
                    + ctx.args.connections;
                sh.rate = Some(rate);
                let mut r = relay_shape(ctx, sh, notes)?;
                r.ratio = None;
                rows.push(r);
                rows.push(baseline_at_rate(ctx, rate, notes)?);
            }
            _ => notes.push("(e) skipped: it needs the rate shape (a) reached".into()),
        }
    }
    Ok(())
}

/// Shapes (g) to (j): one and two relays on one Redis (the bench's own
/// `redis-server`, AOF with `appendfsync everysec`).
fn redis_shapes(
    ctx: &Ctx,
    base_single: f64,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    if !"ghij".chars().any(|c| ctx.wants(c)) {
        return Ok(());
    }
    let Some(bin) = &ctx.args.redis_server else {
        notes.push(
            "(g)-(j) skipped: no redis-server (install it, or set LOADBENCH_REDIS_SERVER)".into(),
        );
        return Ok(());
    };
    let redis = OwnRedis::start(ctx, bin)?;
    let shapes = [
        (
            'g',
            "(g) Redis, 1 relay: accept only, single events, 3 dest., partners down",
            3,
            false,
            1,
        ),
        (
            'h',
            "(h) Redis, 1 relay: end to end, single events, 1 dest. delivering",
            1,
            true,
            1,
        ),
        (
            'i',
            "(i) Redis, 2 relays: accept only, single events, 3 dest., partners down",
            3,
            false,
            2,
        ),
        (
            'j',
            "(j) Redis, 2 relays: end to end, single events, 1 dest. delivering",
            1,
            true,
            2,
        ),
    ];
    for (c, label, dest, up, relays) in shapes {
        if ctx.wants(c) {
            let name: &str = match c {
                'g' => "g",
                'h' => "h",
                'i' => "i",
                _ => "j",
            };
            let on = On::Redis {
                redis: &redis,
                relays,
            };
            rows.push(relay_shape(
                ctx,
                single(ctx, name, label, dest, up, base_single, on),
                notes,
            )?);
        }
    }
    if let Some(n) = redis_vs_embedded(rows) {
        notes.push(n);
    }
    Ok(())
}

/// Accept on Redis against the embedded store in the same run: (g) / (a), the same
/// shape on the two backends (goal: at least 0.8).
fn redis_vs_embedded(rows: &[Row]) -> Option<String> {
    let eps = |prefix: &str| {
        rows.iter()
            .find(|r| r.shape.starts_with(prefix))
            .and_then(|r| r.eps)
    };
    let (a, g) = (eps("(a)")?, eps("(g)")?);
    (a > 0.0).then(|| {
        format!(
            "accept on Redis / embedded in this run, (g) / (a): {:.2} (goal: at least 0.80)",
            g / a
        )
    })
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

fn setup_on(ctx: &Ctx, name: &str, destinations: usize, store: &str) -> Result<RelaySetup, String> {
    let dir = ctx.args.work.join(format!("shape-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let listen: SocketAddr = ([127, 0, 0, 1], relay::free_port()?).into();
    relay::write_setup(&dir, listen, &ctx.partner_ports, destinations, store)
}

/// What the relays of a shape store in: their own data dirs, or one Redis.
enum On<'a> {
    Embedded,
    Redis { redis: &'a OwnRedis, relays: usize },
}

/// The relays of one shape, started on `on`, each with its own directory.
fn start_relays(
    ctx: &Ctx,
    name: &str,
    destinations: usize,
    on: &On<'_>,
) -> Result<Vec<(RelaySetup, RunningRelay)>, String> {
    let (store, relays) = match on {
        On::Embedded => (relay::EMBEDDED.to_string(), 1),
        On::Redis { redis, relays } => (redis.store_lines(name), *relays),
    };
    let mut out = Vec::new();
    for k in 0..relays {
        let id = if relays == 1 {
            name.to_string()
        } else {
            format!("{name}{k}")
        };
        let setup = setup_on(ctx, &id, destinations, &store)?;
        let (r, _) = start_relay(ctx, &setup, &format!("relay-{id}.log"))?;
        out.push((setup, r));
    }
    Ok(out)
}

/// A `redis-server` of the bench's own on a free port, with its append-only file in
/// the scratch directory (`appendfsync everysec`, the setting docs/redis.md advises).
struct OwnRedis {
    proc: Proc,
    port: u16,
}

impl OwnRedis {
    fn start(ctx: &Ctx, bin: &Path) -> Result<OwnRedis, String> {
        let port = relay::free_port()?;
        let dir = ctx.args.work.join("redis");
        // A data set left by an earlier run in the same scratch directory would be
        // loaded first (and refused by the relay while Redis loads it).
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cmd = std::process::Command::new(bin);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .arg("--dir")
        .arg(&dir);
        for setting in &ctx.args.redis_config {
            let (name, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("--redis-config {setting}: expected NAME=VALUE"))?;
            cmd.arg(format!("--{name}")).arg(value);
        }
        let log = ctx.logs.join("redis.log");
        let proc = Proc::spawn(cmd, "redis-server", &log, &ctx.pids)?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        for _ in 0..200 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(OwnRedis { proc, port });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!("redis-server did not listen on {addr}"))
    }

    fn store_lines(&self, shape: &str) -> String {
        format!(
            "backend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}\"\nredis_prefix = \"loadbench-{shape}\"",
            self.port
        )
    }

    fn connect(&self) -> Result<redis::Connection, String> {
        let url = format!("redis://127.0.0.1:{}", self.port);
        redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .map_err(|e| format!("redis: {e}"))
    }

    /// Drops everything between shapes (the server is the bench's alone), and its
    /// command statistics with it, so each shape's are its own.
    fn flush(&self) -> Result<(), String> {
        let mut c = self.connect()?;
        redis::cmd("FLUSHALL")
            .query::<()>(&mut c)
            .map_err(|e| format!("redis FLUSHALL: {e}"))?;
        redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query::<()>(&mut c)
            .map_err(|e| format!("redis CONFIG RESETSTAT: {e}"))
    }

    /// One section of `INFO`.
    fn info(&self, section: &str) -> Option<String> {
        redis::cmd("INFO")
            .arg(section)
            .query(&mut self.connect().ok()?)
            .ok()
    }

    /// Redis's `used_memory`, in bytes.
    fn used_memory(&self) -> Option<u64> {
        self.info("memory")?
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Script calls (`EVALSHA` and `EVAL`) since the last flush: how many, and the
    /// microseconds Redis spent running them (the commands they call included).
    fn script_time(&self) -> Option<(u64, u64)> {
        let info = self.info("commandstats")?;
        let mut total = (0, 0);
        for line in info.lines() {
            let Some(stats) = line
                .strip_prefix("cmdstat_evalsha:")
                .or_else(|| line.strip_prefix("cmdstat_eval:"))
            else {
                continue;
            };
            let field = |name: &str| {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            total.0 += field("calls")?;
            total.1 += field("usec")?;
        }
        Some(total)
    }
}

/// One measured shape.
struct Shape<'a> {
    name: &'a str,
    label: String,
    destinations: usize,
    partners_up: bool,
    pool_len: usize,
    per_request: u64,
    /// Open loop at this many requests/s; `None`: closed loop.
    rate: Option<f64>,
    baseline_rps: f64,
    on: On<'a>,
}

/// CPU seconds used so far by the relays, this process, and Redis (if any): its
/// server process, then the same with its forked children (AOF rewrites).
fn cpu_now(stats: &[String], redis: Option<u32>) -> Cpu {
    let mut relays = 0.0;
    for s in stats {
        relays += relay::cpu_secs(s)?;
    }
    let me = relay::cpu_secs("/proc/self/stat")?;
    let redis = redis.and_then(|pid| {
        Some((
            relay::cpu_secs(&format!("/proc/{pid}/stat"))?,
            relay::cpu_secs_with_children(pid)?,
        ))
    });
    Some((relays, me, redis))
}

/// One measured shape against freshly started relays (fresh data dirs or prefix).
fn relay_shape(ctx: &Ctx, sh: Shape<'_>, notes: &mut Vec<String>) -> Result<Row, String> {
    let name = sh.name;
    eprintln!("loadbench: {}", sh.label);
    let partners = if sh.partners_up {
        Some(Partners::start(&ctx.partner_ports)?)
    } else {
        None
    };
    let t = Instant::now();
    let pool = events::pool(&ctx.run_id, sh.pool_len, sh.per_request, None, ctx.threads)?;
    eprintln!(
        "  {} pre-signed requests ({} MiB) made in {:.1} s",
        pool.requests.len(),
        pool.bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    let mut relays = start_relays(ctx, name, sh.destinations, &sh.on)?;
    let addrs: Vec<SocketAddr> = relays.iter().map(|(_, r)| r.addr).collect();
    let mut spec = ctx.spec(addrs[0], Arc::new(pool.requests), false);
    spec.addrs = addrs.clone();
    spec.rate = sh.rate;

    // Count what the partners receive inside the measured window, and the CPU the
    // relays, this process (generator + partners) and Redis use in it.
    let counters = partners.as_ref().map(|p| p.counters.clone());
    let warmup = ctx.warmup;
    let stats: Vec<String> = relays
        .iter()
        .map(|(_, r)| format!("/proc/{}/stat", r.proc.pid()))
        .collect();
    let redis_stat = match &sh.on {
        On::Redis { redis, .. } => Some(redis.proc.pid()),
        On::Embedded => None,
    };
    let (stats2, redis_stat2) = (stats.clone(), redis_stat);
    let (first, first_pid) = (addrs[0], relays[0].1.proc.pid());
    let sampler = std::thread::spawn(move || {
        std::thread::sleep(warmup);
        let n: u64 = counters
            .iter()
            .flatten()
            .map(|c| c.requests.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        let machine = relay::machine_ticks();
        let store = (relay::commits(first), relay::write_bytes(first_pid));
        (
            Instant::now(),
            n,
            cpu_now(&stats2, redis_stat2),
            machine,
            store,
        )
    });
    let o = load::run(spec)?;
    let end = (
        Instant::now(),
        partners.as_ref().map_or(0, |p| p.total_requests()),
    );
    let cpu_end = cpu_now(&stats, redis_stat);
    let machine_end = relay::machine_ticks();
    let store_end = (relay::commits(first), relay::write_bytes(first_pid));
    let (from, n0, cpu0, machine0, store0) = sampler.join().map_err(|_| "sampler panicked")?;
    let span = end.0.saturating_duration_since(from).as_secs_f64();
    let eps = o.requests_per_sec() * sh.per_request as f64;
    cpu_note(name, cpu0, cpu_end, span, eps, notes);
    machine_note(name, machine0, machine_end, notes);
    if let On::Embedded = &sh.on {
        if let (Some(a), Some(b)) = (store0.0, store_end.0) {
            commit_note(name, a, b, span, notes);
        }
        if let (Some(a), Some(b)) = (store0.1, store_end.1) {
            written_note(
                name,
                b.saturating_sub(a),
                span,
                eps / relays.len() as f64,
                notes,
            );
        }
    }
    let postbacks = partners.as_ref().map(|_| {
        if span > 0.0 {
            (end.1 - n0) as f64 / span
        } else {
            0.0
        }
    });
    let left = relay::queued(addrs[0]).ok();
    let rss = relays
        .iter()
        .filter_map(|(_, r)| r.proc.status_kib("VmHWM"))
        .max();
    if let On::Redis { redis, .. } = &sh.on {
        redis_notes(name, redis, left, &sh, notes);
    }
    for (setup, r) in &mut relays {
        if !r.proc.is_running() {
            return Err(format!(
                "a relay died during shape ({name}); its log ends with:\n{}",
                relay::log_tail(&r.log, 20)
            ));
        }
        r.proc.terminate(Duration::from_secs(30));
        let _ = std::fs::remove_dir_all(&setup.dir);
    }
    drop(partners);
    if let On::Redis { redis, .. } = &sh.on {
        redis.flush()?;
    }
    let ratio = (sh.baseline_rps > 0.0).then(|| o.requests_per_sec() / sh.baseline_rps);
    let row = Row::from_outcome(&sh.label, &o, sh.per_request, postbacks, rss, ratio);
    shape_notes(name, &o, notes);
    outcome_notes(name, &o, left, sh.partners_up, sh.rate, notes);
    Ok(row)
}

/// (f): queue a backlog with partners down, kill -9, restart (time to ready, RSS),
/// stop cleanly, measure the data dir, start the partners, restart and time the
/// drain at the partners.
fn drain_shape(ctx: &Ctx, batching: bool) -> Result<(Row, Vec<String>), String> {
    let target = ctx.args.backlog.max(3);
    let events = target.div_ceil(3);
    let batches = events.div_ceil(100) as usize;
    let limit = secs(ctx.args.drain_timeout)?;
    let letter = if batching { "o" } else { "f" };
    eprintln!("loadbench: ({letter}) drain: queueing {target} deliveries ({events} events x 3 destinations), partners down");
    let setup = {
        let dir = ctx.args.work.join(format!("shape-{letter}"));
        let _ = std::fs::remove_dir_all(&dir);
        let listen: SocketAddr = ([127, 0, 0, 1], relay::free_port()?).into();
        relay::write_setup_with(
            &dir,
            listen,
            &ctx.partner_ports,
            3,
            relay::EMBEDDED,
            batching,
        )?
    };
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
        addrs: vec![r.addr],
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
        if partners.total(|c| &c.events) >= want {
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
    let delivered = partners.total(|c| &c.events);
    let requests = partners.total_requests();
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
            "drain: {delivered} postbacks in {requests} requests, {:.1} s from ready{}; queue after the drain: {}",
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
            "({letter}) drain of a {}-delivery backlog to 3 partners{}",
            report::thousands(queued_after_kill as f64),
            if batching {
                ", batches of up to 1,000"
            } else {
                ", one per request"
            }
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
