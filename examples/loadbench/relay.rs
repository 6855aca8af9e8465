//! Child processes (the relay and the baseline), their config, readiness, memory,
//! and the small blocking HTTP client the bench uses for `/readyz` and the admin API.
//! Only the relay's public interface is used: its command line, config and rule
//! files, and HTTP.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::events::{NETWORK, SECRET};

pub const ADMIN_TOKEN: &str = "loadbench-admin-token-0123456789";

/// A port that was free a moment ago.
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| format!("addr: {e}"))?.port())
}

/// A child process that is killed (SIGKILL) when dropped, and dies with the bench
/// (PR_SET_PDEATHSIG). Its pid is appended to `pids_file` so that the shell script's
/// EXIT trap can stop it even if the bench itself is killed.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub started: Instant,
}

impl Proc {
    pub fn spawn(
        mut cmd: Command,
        name: &str,
        log: &Path,
        pids_file: &Path,
    ) -> Result<Proc, String> {
        let log_file = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(pids_file)
        {
            let _ = writeln!(f, "{}", child.id());
        }
        Ok(Proc {
            child,
            name: name.to_string(),
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/PID/status` field in KiB (`VmHWM`, `VmRSS`).
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then waits up to `grace` before SIGKILL; whether it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> bool {
        if !self.is_running() {
            return true;
        }
        unsafe {
            libc::kill(self.pid() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "loadbench: {} did not stop within {grace:?} of SIGTERM; killing it",
            self.name
        );
        self.kill9();
        false
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Polls `GET path` (`/readyz`) every millisecond until 2xx; the time since spawn.
    pub fn wait_ready(
        &mut self,
        addr: SocketAddr,
        path: &str,
        limit: Duration,
    ) -> Result<Duration, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok((s, _)) = http(addr, "GET", path, None, Duration::from_secs(2)) {
                if (200..300).contains(&s) {
                    return Ok(self.started.elapsed());
                }
            }
            if !self.is_running() {
                return Err(format!("{} exited before it was ready", self.name));
            }
            if Instant::now() > deadline {
                return Err(format!("{} not ready within {limit:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill9();
        }
    }
}

/// Bytes process `pid` has caused to be written to storage (`write_bytes` in
/// `/proc/PID/io`).
pub fn write_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CPU seconds (user + system) from a `/proc/.../stat` file.
pub fn cpu_secs(stat_path: &str) -> Option<f64> {
    let f = stat_fields(stat_path)?;
    Some(ticks(&f, 11)? + ticks(&f, 12)?)
}

/// CPU seconds of process `pid` and of its children: the ones it has waited for
/// (`cutime`, `cstime`) and the ones still running. Redis's AOF rewrites and
/// snapshots run in forked children, which `cpu_secs` of the server does not see.
pub fn cpu_secs_with_children(pid: u32) -> Option<f64> {
    let f = stat_fields(&format!("/proc/{pid}/stat"))?;
    let mut total = ticks(&f, 11)? + ticks(&f, 12)? + ticks(&f, 13)? + ticks(&f, 14)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let path = entry.path().join("stat");
        let Some(c) = stat_fields(&path.to_string_lossy()) else {
            continue;
        };
        if c.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            total += ticks(&c, 11).unwrap_or(0.0) + ticks(&c, 12).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// The machine's CPU time so far, in ticks, from `/proc/stat`'s `cpu` line: user,
/// nice, system, idle, iowait, irq, softirq, steal.
pub fn machine_ticks() -> Option<[u64; 8]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let mut out = [0u64; 8];
    let mut fields = line.split_whitespace().skip(1);
    for slot in &mut out {
        *slot = fields.next()?.parse().ok()?;
    }
    Some(out)
}

/// The fields of a `/proc/.../stat` file after the command name (which may hold
/// spaces, in parentheses): index 0 is the state, 1 the parent's PID.
fn stat_fields(stat_path: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Field `i` of `stat_fields`, clock ticks as seconds.
fn ticks(f: &[String], i: usize) -> Option<f64> {
    let v: f64 = f.get(i)?.parse().ok()?;
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(v / if tick > 0 { tick as f64 } else { 100.0 })
}

/// One blocking HTTP/1.1 request with `Connection: close`; status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {:?}", text.lines().next()))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The body of a `GET` of the admin API (with the bench's token) that answered 200.
fn admin_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, String> {
    let (status, body) = http(addr, "GET", path, Some(ADMIN_TOKEN), timeout)?;
    if status != 200 {
        return Err(format!("{path} answered {status}: {body}"));
    }
    Ok(body)
}

/// The sum of `queue_depth` over the relay's destinations (admin API).
pub fn queued(addr: SocketAddr) -> Result<u64, String> {
    let body = admin_get(addr, "/admin/destinations", Duration::from_secs(30))?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("/admin/destinations: {e}"))?;
    let list = v["destinations"]
        .as_array()
        .ok_or("/admin/destinations: no `destinations` list")?;
    Ok(list
        .iter()
        .map(|d| {
            d.get("queue_depth")
                .or_else(|| d.get("queued"))
                .and_then(|q| q.as_u64())
                .unwrap_or(0)
        })
        .sum())
}

/// The relay's group commits so far (`store_commit_operations` on `/metrics`): how
/// many, and how many operations they carried in all. `None` when not exported.
pub fn commits(addr: SocketAddr) -> Option<(u64, u64)> {
    let body = admin_get(addr, "/metrics", Duration::from_secs(10)).ok()?;
    let value = |name: &str| -> Option<u64> {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    };
    Some((
        value("postback_relay_store_commit_operations_count")?,
        value("postback_relay_store_commit_operations_sum")?,
    ))
}

/// The bench's config and rules for one relay run, in `dir`.
pub struct RelaySetup {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub data_dir: PathBuf,
}

/// The `[store]` lines of the embedded store.
pub const EMBEDDED: &str = "backend = \"embedded\"";

/// Writes `dir/postback-relay.toml` (with `store`, the `[store]` lines), `dir/rules/` (the first `destinations` of the 3
/// bench destinations, posting to `partner_ports`) and an empty `dir/data/`.
pub fn write_setup(
    dir: &Path,
    listen: SocketAddr,
    partner_ports: &[u16],
    destinations: usize,
    store: &str,
) -> Result<RelaySetup, String> {
    write_setup_with(dir, listen, partner_ports, destinations, store, false)
}

/// `write_setup`, with the bench destinations batching (`[batch]`) when `batching`.
pub fn write_setup_with(
    dir: &Path,
    listen: SocketAddr,
    partner_ports: &[u16],
    destinations: usize,
    store: &str,
    batching: bool,
) -> Result<RelaySetup, String> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let rules = dir.join("rules");
    let data = dir.join("data");
    std::fs::create_dir_all(&rules).map_err(|e| io(&rules, e))?;
    std::fs::create_dir_all(&data).map_err(|e| io(&data, e))?;
    let config = dir.join("postback-relay.toml");
    let text = format!(
        r#"# loadbench: written by scripts/loadbench.sh for one run, then deleted.
listen = "{listen}"
data_dir = "{data}"
rules_dir = "{rules}"

[ingest]
secrets = ["{SECRET}"]
tolerance = "5m"
max_body = "4MiB"
max_batch = 1000

[dedupe]
window = "7d"
key = ["click_id", "event_name"]

[store]
{store}

[delivery]
allow_private_networks = true

[admin]
token = "{ADMIN_TOKEN}"
"#,
        data = data.display(),
        rules = rules.display(),
    );
    std::fs::write(&config, text).map_err(|e| io(&config, e))?;
    let bodies = rule_files(partner_ports);
    for (name, text) in bodies.iter().take(destinations) {
        let p = rules.join(format!("{name}.toml"));
        let text = if batching {
            format!("{text}{}", batch_body(name))
        } else {
            text.clone()
        };
        std::fs::write(&p, text).map_err(|e| io(&p, e))?;
    }
    Ok(RelaySetup {
        dir: dir.to_path_buf(),
        config,
        data_dir: data,
    })
}

/// A `[body]` with the events in a list and `[batch]` for bench destination `name`:
/// the same fields its `allow` lets through, several events per request.
fn batch_body(name: &str) -> &'static str {
    match name {
        "bench-aff" => {
            r#"
[body]
[[body.events]]
event_id = "{event_id}"
event_name = "{event_name}"
click_id = "{click_id}"
value = "{properties.value}"
currency = "{properties.currency}"

[batch]
path = "events"
max_events = 1000
"#
        }
        "bench-capi" => {
            r#"
[body]
[[body.events]]
event_id = "{event_id}"
event_name = "{event_name}"
timestamp = "{timestamp}"
click_id = "{click_id}"
user = { email = "{user.email}", ip = "{user.ip}", user_agent = "{user.user_agent}" }
value = "{properties.value}"
currency = "{properties.currency}"

[batch]
path = "events"
max_events = 1000
"#
        }
        _ => {
            r#"
[body]
[[body.events]]
event_name = "{event_name}"
click_id = "{click_id}"
idfa = "{device.idfa}"
external_id = "{user.external_id}"
value = "{properties.value}"
currency = "{properties.currency}"
order_id = "{properties.order_id}"

[batch]
path = "events"
max_events = 1000
"#
        }
    }
}

/// The 3 bench destinations: JSON POSTs to the fake partners with `allow` lists,
/// one hashing `user.email` and truncating the IP, one renaming the event and
/// sending a header. No rate limit; no `concurrency` (the adaptive controller under
/// its default ceiling); short retry backoff so that a backlog queued while partners
/// were down is due again within a second.
fn rule_files(ports: &[u16]) -> Vec<(&'static str, String)> {
    let port = |i: usize| ports.get(i).copied().unwrap_or(9);
    let common = format!(
        r#"timeout = "5s"
retry = {{ max_attempts = 1000, give_up_after = "1d", initial_backoff = "100ms", max_backoff = "1s" }}

[when]
event_name = ["purchase"]
"attribution.network" = "{NETWORK}"
has = ["click_id"]
"#
    );
    vec![
        (
            "bench-aff",
            format!(
                r#"description = "loadbench: affiliate-style JSON postback"

[destination]
url = "http://127.0.0.1:{}/postback"
method = "POST"
{common}
[privacy]
allow = ["event_id", "event_name", "click_id", "properties.value", "properties.currency"]
"#,
                port(0)
            ),
        ),
        (
            "bench-capi",
            format!(
                r#"description = "loadbench: conversions-API-style JSON, hashed e-mail, truncated IP"

[destination]
url = "http://127.0.0.1:{}/events"
method = "POST"
{common}
[privacy]
allow = ["event_id", "event_name", "timestamp", "click_id", "user.email", "user.ip",
         "user.user_agent", "properties.value", "properties.currency"]
hash = ["user.email"]
truncate_ip = ["user.ip"]

[privacy.consent]
require = "consent.ad_user_data"
drop = ["user.email", "user.ip", "user.user_agent"]
"#,
                port(1)
            ),
        ),
        (
            "bench-mmp",
            format!(
                r#"description = "loadbench: MMP-style JSON with a renamed event and a key header"

[destination]
url = "http://127.0.0.1:{}/s2s/event"
method = "POST"
headers = {{ Authorization = "Bearer loadbench-partner-key" }}
{common}
[rename.event_name]
purchase = "af_purchase"

[privacy]
allow = ["event_name", "click_id", "device.idfa", "user.external_id",
         "properties.value", "properties.currency", "properties.order_id"]
"#,
                port(2)
            ),
        ),
    ]
}

/// A relay child: `postback-relay serve --config FILE`, logs to `log`.
pub fn spawn_relay(
    bin: &Path,
    setup: &RelaySetup,
    log: &Path,
    pids: &Path,
) -> Result<Proc, String> {
    let mut cmd = Command::new(bin);
    cmd.arg("serve").arg("--config").arg(&setup.config).env(
        "RUST_LOG",
        std::env::var("LOADBENCH_RELAY_LOG").unwrap_or_else(|_| "info".into()),
    );
    Proc::spawn(cmd, "the relay", log, pids)
}

/// Bytes used on disk by the files under `dir` (allocated blocks, like `du`).
pub fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        if m.is_dir() {
            total += disk_usage(&e.path());
        } else {
            total += m.blocks() * 512;
        }
    }
    total
}

/// The last lines of a log, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
