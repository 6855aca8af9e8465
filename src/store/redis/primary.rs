//! Where the primary is: with `redis_sentinels`, the relay asks the sentinels
//! (`SENTINEL get-master-addr-by-name`) at open, then again every second and at once
//! after a command failed (a dead primary, or `READONLY` from a demoted one), and
//! moves its connections to the primary they name.
//!
//! Only the address comes from the sentinels: the scheme (TLS), user, password and
//! database stay those of `redis_url`. The data checks need nothing new: the
//! installation's epoch and commit counter are replicated with the data, so a
//! failover to a replica that lost acknowledged accepts is still found (`mark.rs`).

use std::time::Duration;

/// The sentinels to ask, and the name of the primary they watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinels {
    /// `host:port` of each sentinel, asked in this order.
    pub addrs: Vec<String>,
    /// The name the sentinels know the primary by (`sentinel monitor <name> ...`).
    pub master: String,
}

/// How long one sentinel may take to connect and answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the relay asks the sentinels while nothing fails.
pub(super) const EVERY: Duration = Duration::from_secs(1);

impl Sentinels {
    /// The URLs of the primaries the sentinels name (`url` with each address): the
    /// one most of them name first (a sentinel cut off from the others may name a
    /// primary that was demoted), then in the order of `addrs`. The error says what
    /// each sentinel answered.
    pub async fn named(&self, url: &str) -> Result<Vec<String>, String> {
        let asks = self.addrs.iter().map(|addr| async move {
            match tokio::time::timeout(ASK_TIMEOUT, ask(addr, &self.master)).await {
                Ok(Ok(found)) => Ok(found),
                Ok(Err(e)) => Err(format!("{addr}: {e}")),
                Err(_) => Err(format!(
                    "{addr}: no answer within {} ms",
                    ASK_TIMEOUT.as_millis()
                )),
            }
        });
        let mut votes: Vec<((String, u16), usize)> = Vec::new();
        let mut why = Vec::new();
        for answer in futures_util::future::join_all(asks).await {
            match answer {
                Ok(found) => match votes.iter_mut().find(|(a, _)| *a == found) {
                    Some((_, n)) => *n += 1,
                    None => votes.push((found, 1)),
                },
                Err(e) => why.push(e),
            }
        }
        if votes.is_empty() {
            return Err(format!(
                "no sentinel named the primary of \"{}\" ({})",
                self.master,
                why.join("; ")
            ));
        }
        // Stable: equal votes keep the order of `addrs`.
        votes.sort_by_key(|v| std::cmp::Reverse(v.1));
        votes
            .into_iter()
            .map(|((host, port), _)| with_addr(url, &host, port))
            .collect()
    }
}

/// Whether the server behind `conn` is a primary (`ROLE`). A user not allowed
/// `ROLE` (ACL) cannot tell: then the sentinels are believed.
pub(super) async fn is_primary(conn: &mut redis::aio::ConnectionManager) -> Result<bool, String> {
    let cmd = redis::cmd("ROLE");
    let role = cmd.query_async::<Vec<redis::Value>>(conn);
    match tokio::time::timeout(ASK_TIMEOUT * 2, role)
        .await
        .map_err(|_| "no answer to ROLE within 2 s".to_string())?
    {
        Ok(role) => Ok(match role.first() {
            Some(redis::Value::BulkString(r)) => r == b"master",
            Some(redis::Value::SimpleString(r)) => r == "master",
            _ => false,
        }),
        Err(e) if e.code() == Some("NOPERM") => Ok(true),
        Err(e) => Err(e.to_string()),
    }
}

/// One sentinel's answer.
async fn ask(addr: &str, master: &str) -> Result<(String, u16), String> {
    let client = redis::Client::open(format!("redis://{addr}")).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let found: Option<(String, String)> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(master)
        .query_async(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let (host, port) = found.ok_or_else(|| format!("does not monitor \"{master}\""))?;
    let port = port
        .parse()
        .map_err(|_| format!("answered a port that is not a number: {port}"))?;
    Ok((host, port))
}

/// `url` with its host and port replaced; user, password, database and scheme kept.
pub(super) fn with_addr(url: &str, host: &str, port: u16) -> Result<String, String> {
    let mut u = url::Url::parse(url).map_err(|e| format!("redis_url: {e}"))?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    u.set_host(Some(&host))
        .map_err(|e| format!("the sentinels named the host {host}: {e}"))?;
    u.set_port(Some(port))
        .map_err(|()| format!("redis_url {url} cannot take a port"))?;
    Ok(u.to_string())
}

/// Whether an error may mean the primary moved: the connection failed, or the
/// server is a replica now.
pub(super) fn moved(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_replaced_and_the_rest_kept() {
        assert_eq!(
            with_addr("rediss://u:pw@10.0.0.1:6380/2", "10.0.0.9", 6390).as_deref(),
            Ok("rediss://u:pw@10.0.0.9:6390/2")
        );
        assert_eq!(
            with_addr("redis://127.0.0.1:6379", "::1", 7000).as_deref(),
            Ok("redis://[::1]:7000")
        );
    }

    #[tokio::test]
    async fn no_sentinel_answering_is_said_with_each_address() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let s = Sentinels {
            addrs: vec![format!("127.0.0.1:{port}")],
            master: "mymaster".into(),
        };
        let e = s
            .named("redis://127.0.0.1:6379")
            .await
            .expect_err("nothing listens");
        assert!(
            e.contains("mymaster") && e.contains(&port.to_string()),
            "{e}"
        );
    }
}
