//! Opening the Redis store: connect (TLS and AUTH from the URL), create or read the
//! installation's meta hash (epoch, dedupe secret, format), check the epoch note in
//! `data_dir`, warn about server settings that lose data, take back this consumer's
//! claims, and start renewing claims.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rand::RngCore;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::primary;
use super::wait::{self, Waiter};
use super::{
    settle_later, touch_claims, Inner, RedisOptions, RedisStore, Scripts, CONNECT_TIMEOUT,
    EPOCH_FILE, FORMAT, RESPONSE_TIMEOUT,
};
use crate::sync::lock;

/// The URL without its password, for messages.
pub(super) fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(redis_url)".into(),
    }
}

impl RedisStore {
    /// Connects, creates the installation's keys on first use, checks that Redis
    /// still holds the data this relay used before, and takes back the claims a
    /// previous process of the same consumer name held.
    pub async fn open(opts: RedisOptions) -> Result<RedisStore, String> {
        if opts.prefix.is_empty() || opts.prefix.contains(['{', '}']) {
            return Err("redis_prefix must be non-empty and without { or }".into());
        }
        let (url, client, mut conn) = connect_primary(&opts).await?;
        let where_ = redacted(&url);
        let p = format!("{{{}}}", opts.prefix);
        let scripts = Scripts::new();
        let (epoch, secret) = init_meta_when_loaded(&scripts, &mut conn, &p, &where_).await?;
        if let Some(dir) = &opts.data_dir {
            check_epoch_note(dir, &opts.prefix, &epoch, &where_)?;
        }
        let commits: Option<u64> = redis::cmd("HGET")
            .arg(format!("{p}:meta"))
            .arg("commits")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("Redis at {where_}: {e}"))?;
        let seen = super::mark::Seen::open(
            opts.data_dir.as_deref(),
            &opts.prefix,
            &epoch,
            commits.unwrap_or(0),
            &where_,
        )?;
        warn_about_settings(&mut conn, &where_).await;
        let waiter = waiter(&client, &opts, &p)
            .await
            .map_err(|e| format!("cannot reach Redis at {where_}: {e}"))?;
        let suspect = Arc::new(tokio::sync::Notify::new());
        let inner = Arc::new(Inner {
            conn: Mutex::new(conn),
            url: Mutex::new(url),
            suspect: suspect.clone(),
            opts,
            p,
            epoch,
            secret,
            scripts,
            held: Mutex::new(HashMap::new()),
            waiter: Mutex::new(waiter.map(Arc::new)),
            unsettled: Mutex::new(HashMap::new()),
            lost: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            seen,
            observer: Mutex::new(None),
            combiner: std::sync::OnceLock::new(),
        });
        let (combiner, combining) = super::group::start(Arc::downgrade(&inner));
        let _ = inner.combiner.set(combiner);
        let recovered = inner.recover().await.map_err(|e| e.to_string())?;
        if recovered > 0 {
            tracing::info!(
                deliveries = recovered,
                consumer = %inner.opts.consumer,
                "took back the claims of this consumer's previous process"
            );
        }
        let mut tasks = vec![
            combining,
            tokio::spawn(touch_claims(Arc::downgrade(&inner))),
            tokio::spawn(settle_later(Arc::downgrade(&inner))),
        ];
        if inner.opts.sentinels.is_some() {
            tasks.push(tokio::spawn(follow_primary(
                Arc::downgrade(&inner),
                suspect,
            )));
        }
        Ok(RedisStore {
            inner,
            tasks: Mutex::new(tasks),
        })
    }
}

/// The primary's URL, client and connection: `redis_url`, or with Sentinel the first
/// server the sentinels name that says it is a primary.
async fn connect_primary(
    opts: &RedisOptions,
) -> Result<(String, redis::Client, ConnectionManager), String> {
    let Some(sentinels) = &opts.sentinels else {
        let where_ = redacted(&opts.url);
        let client = client(opts, &opts.url).map_err(|e| format!("redis_url {where_}: {e}"))?;
        let conn = connect(&client, &opts.url, &where_).await?;
        return Ok((opts.url.clone(), client, conn));
    };
    let mut why = Vec::new();
    for url in sentinels.named(&opts.url).await? {
        match connect_verified(opts, &url).await {
            Ok((client, conn)) => return Ok((url, client, conn)),
            Err(e) => why.push(e),
        }
    }
    Err(no_primary(sentinels, &why))
}

fn no_primary(sentinels: &primary::Sentinels, why: &[String]) -> String {
    format!(
        "the sentinels of \"{}\" name no server that answers as the primary: {}",
        sentinels.master,
        why.join("; ")
    )
}

/// A connection to `url`, if the server there says it is a primary.
async fn connect_verified(
    opts: &RedisOptions,
    url: &str,
) -> Result<(redis::Client, ConnectionManager), String> {
    let where_ = redacted(url);
    let client = client(opts, url).map_err(|e| format!("redis_url {where_}: {e}"))?;
    let mut conn = connect(&client, url, &where_).await?;
    match primary::is_primary(&mut conn).await {
        Ok(true) => Ok((client, conn)),
        Ok(false) => Err(format!("{where_} is a replica")),
        Err(e) => Err(format!("cannot reach Redis at {where_}: {e}")),
    }
}

/// With Sentinel: asks the sentinels every second, and at once after a command
/// failed in a way that may mean the primary moved, and moves the connections to the
/// primary they name. Ends when the store is dropped or closed.
async fn follow_primary(inner: Weak<Inner>, suspect: Arc<tokio::sync::Notify>) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(primary::EVERY) => {}
            _ = suspect.notified() => {}
        }
        let Some(i) = inner.upgrade() else { return };
        let Some(sentinels) = i.opts.sentinels.clone() else {
            return;
        };
        if i.closed.load(Ordering::SeqCst) {
            return;
        }
        match follow_once(&i, &sentinels).await {
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot follow the Redis primary through Sentinel; the relay keeps asking");
                failing = true;
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
        drop(i);
        // Many failing commands poke at once: ask at most ten times a second.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One look: stays while the primary in use is one the sentinels name and says it
/// is a primary; else moves to the first named server that does.
async fn follow_once(i: &Inner, sentinels: &primary::Sentinels) -> Result<(), String> {
    let current = lock(&i.url).clone();
    let mut why = Vec::new();
    for url in sentinels.named(&i.opts.url).await? {
        if url == current {
            match primary::is_primary(&mut i.conn()).await {
                Ok(true) => return Ok(()),
                Ok(false) => why.push(format!("{} is a replica now", redacted(&url))),
                Err(e) => why.push(format!("{}: {e}", redacted(&url))),
            }
            continue;
        }
        match connect_verified(&i.opts, &url).await {
            Ok((client, conn)) => return move_to(i, url, &client, conn).await,
            Err(e) => why.push(e),
        }
    }
    Err(no_primary(sentinels, &why))
}

/// Moves the shared connection and the `WAIT` pool to the primary at `url`.
async fn move_to(
    i: &Inner,
    url: String,
    client: &redis::Client,
    conn: ConnectionManager,
) -> Result<(), String> {
    let where_ = redacted(&url);
    let waiter = waiter(client, &i.opts, &i.p)
        .await
        .map_err(|e| format!("cannot reach Redis at {where_}: {e}"))?;
    let from = std::mem::replace(&mut *lock(&i.url), url);
    *lock(&i.conn) = conn;
    *lock(&i.waiter) = waiter.map(Arc::new);
    tracing::warn!(from = %redacted(&from), to = %where_, "the sentinels name another Redis primary (a failover): the relay moved its connections there");
    Ok(())
}

/// The shared connection. A refusal names what was tried and for how long; a
/// `rediss://` URL pointing at a port that speaks plain text is found at once (a TLS
/// handshake there gets no answer: Redis waits for the end of a command line).
async fn connect(
    client: &redis::Client,
    url: &str,
    where_: &str,
) -> Result<ConnectionManager, String> {
    const RETRIES: usize = 3;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(RETRIES)
        .set_max_delay(Duration::from_secs(1));
    let started = Instant::now();
    tokio::select! {
        c = ConnectionManager::new_with_config(client.clone(), config) => c.map_err(|e| {
            format!(
                "cannot reach Redis at {where_}: {e} (tried {} times over {:.1} s, {} s each)",
                RETRIES + 1,
                started.elapsed().as_secs_f64(),
                CONNECT_TIMEOUT.as_secs()
            )
        }),
        Some(addr) = plain_text_behind_tls(url) => Err(format!(
            "cannot reach Redis at {where_}: redis_url asks for TLS (rediss://), but {addr} answered a plain-text PING within {} ms: Redis does not speak TLS on that port. Use redis:// for it, or the port Redis serves TLS on (its tls-port)",
            started.elapsed().as_millis()
        )),
    }
}

/// For a `rediss://` URL: the `host:port` if it answers a plain-text `PING` like a
/// Redis without TLS (within a second), else `None`. A TLS port takes the bytes
/// for a broken handshake and answers nothing a Redis reply starts with.
async fn plain_text_behind_tls(url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u = url::Url::parse(url)
        .ok()
        .filter(|u| u.scheme() == "rediss")?;
    let host = u.host_str()?.trim_matches(['[', ']']).to_owned();
    let port = u.port().unwrap_or(6379);
    let probe = async {
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = s.read(&mut buf).await.ok()?;
        let reply = buf.get(..n)?;
        let plain = reply.starts_with(b"+PONG")
            || reply.starts_with(b"-NOAUTH")
            || reply.starts_with(b"-ERR");
        plain.then(|| format!("{host}:{port}"))
    };
    // `None` (not plain text, or no answer): the TLS connection has its own timeout.
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
}

/// With `wait_replicas`, the connections `WAIT` runs on (`wait.rs`): their response
/// timeout leaves room for the wait.
async fn waiter(
    client: &redis::Client,
    opts: &RedisOptions,
    p: &str,
) -> Result<Option<Waiter>, redis::RedisError> {
    if opts.wait_replicas == 0 {
        return Ok(None);
    }
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(opts.wait_timeout + RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    let mut conns = Vec::with_capacity(wait::POOL);
    for _ in 0..wait::POOL {
        conns.push(ConnectionManager::new_with_config(client.clone(), config.clone()).await?);
    }
    Ok(Some(Waiter::start(
        conns,
        format!("{p}:waited"),
        opts.wait_replicas,
        opts.wait_timeout,
    )))
}

/// The client for `url` (`redis_url`, or the primary the sentinels named), trusting
/// `ca` when given.
pub(super) fn client(opts: &RedisOptions, url: &str) -> Result<redis::Client, String> {
    use redis::IntoConnectionInfo;
    // TCP_NODELAY, as hiredis sets it: the accept group commits are pipelined on one
    // connection, and with Nagle's algorithm on (redis-rs's default) a small write
    // may wait for the ACK of the one before it. On loopback the load bench's (g)
    // showed no difference; across a network it saves up to a round trip a call.
    let info = url
        .into_connection_info()
        .map_err(|e| e.to_string())?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let Some(ca) = &opts.ca else {
        return redis::Client::open(info).map_err(|e| e.to_string());
    };
    let pem = std::fs::read(ca).map_err(|e| format!("redis_ca {}: {e}", ca.display()))?;
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(info, certs).map_err(|e| e.to_string())
}

/// How long a starting relay waits for a Redis that is loading its data set into
/// memory (after a restart; a large append-only file takes minutes).
const LOADING_WAIT: Duration = Duration::from_secs(600);
/// How often the wait is logged.
const LOADING_SAY_EVERY: Duration = Duration::from_secs(10);

/// [`init_meta`], once Redis has loaded its data set: a relay started beside a
/// restarting Redis waits (and says so) instead of exiting at once, which under a
/// service manager would soon reach its limit of restarts.
async fn init_meta_when_loaded(
    scripts: &Scripts,
    conn: &mut ConnectionManager,
    p: &str,
    where_: &str,
) -> Result<(String, [u8; 32]), String> {
    let started = Instant::now();
    let mut said: Option<Instant> = None;
    loop {
        match init_meta(scripts, conn, p).await {
            Ok(x) => {
                if said.is_some() {
                    tracing::info!(redis = %where_, waited_s = started.elapsed().as_secs(), "Redis has loaded its data set; starting");
                }
                return Ok(x);
            }
            Err(MetaError::Loading) if started.elapsed() < LOADING_WAIT => {
                if said.is_none_or(|t| t.elapsed() >= LOADING_SAY_EVERY) {
                    tracing::warn!(
                        redis = %where_,
                        waited_s = started.elapsed().as_secs(),
                        max_wait_s = LOADING_WAIT.as_secs(),
                        "Redis is loading its data set into memory (it restarted); waiting for it before starting"
                    );
                    said = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(MetaError::Loading) => {
                return Err(format!(
                    "Redis at {where_} was still loading its data set into memory after {} s (LOADING); start the relay again once its log says \"DB loaded from\"",
                    LOADING_WAIT.as_secs()
                ))
            }
            Err(MetaError::Other(e)) => return Err(format!("Redis at {where_}: {e}")),
        }
    }
}

enum MetaError {
    /// Redis answered LOADING: it is reading its data set after a restart.
    Loading,
    Other(String),
}

/// Reads the installation's epoch and dedupe secret, creating them on first use.
async fn init_meta(
    scripts: &Scripts,
    conn: &mut ConnectionManager,
    p: &str,
) -> Result<(String, [u8; 32]), MetaError> {
    let mut fresh = [0u8; 48];
    rand::rng().fill_bytes(&mut fresh);
    let epoch: String = fresh[32..].iter().map(|b| format!("{b:02x}")).collect();
    let (epoch, secret, format, _created): (String, Vec<u8>, String, i64) = scripts
        .open
        .prepare_invoke()
        .arg(p)
        .arg(&epoch)
        .arg(&fresh[..32])
        .arg(FORMAT)
        .invoke_async(conn)
        .await
        .map_err(|e| match e.code() {
            Some("LOADING") => MetaError::Loading,
            _ => MetaError::Other(e.to_string()),
        })?;
    if format != FORMAT {
        return Err(MetaError::Other(format!(
            "the keys under {p} were written in format {format}, this version reads {FORMAT}; use another redis_prefix or the matching version"
        )));
    }
    let secret = <[u8; 32]>::try_from(secret.as_slice())
        .map_err(|_| MetaError::Other(format!("{p}:meta holds a damaged dedupe secret")))?;
    Ok((epoch, secret))
}

/// The epoch note in `data_dir`: a relay that used this prefix before refuses to
/// start on data with another epoch (Redis lost or replaced it) until the operator
/// deletes the note.
fn check_epoch_note(dir: &Path, prefix: &str, epoch: &str, url: &str) -> Result<(), String> {
    let path = dir.join(EPOCH_FILE);
    let line = format!("{prefix} {epoch}\n");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut words = text.split_whitespace();
            if let (Some(p), Some(e)) = (words.next(), words.next()) {
                if p == prefix && e != epoch {
                    return Err(format!(
                        "{}: this relay used Redis data {e} under prefix {prefix}, but {url} now holds {}: Redis lost the relay's data (a restart without persistence, a flush, or a failover to an empty replica), and every delivery queued there is gone. To start on the data Redis has now, delete {}",
                        path.display(),
                        epoch,
                        path.display()
                    ));
                }
                if p == prefix {
                    return Ok(());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(&path, line).map_err(|e| format!("{}: {e}", path.display()))
}

/// Warns about server settings that lose accepted deliveries.
async fn warn_about_settings(conn: &mut ConnectionManager, url: &str) {
    let get = |name: &'static str| {
        let mut c = conn.clone();
        async move {
            let v: Option<(String, String)> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut c)
                .await
                .ok();
            v.map(|(_, value)| value)
        }
    };
    // CONFIG may be refused (managed services, ACLs): then nothing is said.
    if let Some(policy) = get("maxmemory-policy").await {
        if policy != "noeviction" {
            tracing::warn!(redis = %url, maxmemory_policy = %policy, "Redis may evict keys under memory pressure: queued deliveries and dedupe marks can vanish; set maxmemory-policy noeviction");
        }
    }
    if get("appendonly").await.as_deref() == Some("no") {
        tracing::warn!(redis = %url, "Redis runs without the append-only file: a Redis restart loses every queued delivery (the relay then refuses to go on); set appendonly yes");
    }
}
