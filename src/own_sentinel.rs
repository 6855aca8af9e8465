//! `OwnSentinel`: a real `redis-server --sentinel` of a test's own on loopback,
//! watching one primary, for the Sentinel tests of the Redis store and of the relay
//! (`store/redis/tests/sentinel.rs`, `tests/scale_out.rs`).
//!
//! Owns: its port, its config file (the sentinel rewrites it, so each has its own,
//! in a folder removed on drop) and its process (killed on drop). Never: used by the
//! relay itself.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running sentinel; stopped and its folder removed when dropped.
pub struct OwnSentinel {
    pub port: u16,
    /// The name it knows the primary by (`sentinel monitor NAME ...`).
    pub name: String,
    dir: PathBuf,
    child: Child,
}

impl OwnSentinel {
    /// Starts a sentinel on a free port watching the primary on `primary` as `name`
    /// (down after 1 s, failover timeout 5 s); returns once it answers. Panics when
    /// `redis-server` cannot be started (callers check for it first).
    pub fn start(name: &str, primary: u16) -> OwnSentinel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "pbr-sentinel-{}-{port}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("the sentinel's folder");
        let conf = dir.join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {primary} 1\nsentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 5000\nsentinel parallel-syncs {name} 2\n",
            dir.display()
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server --sentinel");
        let s = OwnSentinel {
            port,
            name: name.to_string(),
            dir,
            child,
        };
        s.until("the sentinel listens", |_| Some(()));
        s
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Asks the sentinel until `check` finds what it waits for, for up to 30 s.
    pub fn until<T>(&self, what: &str, check: impl Fn(&mut redis::Connection) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let conn = redis::Client::open(format!("redis://{}", self.addr()))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)));
            if let Some(found) = conn.ok().and_then(|mut c| check(&mut c)) {
                return found;
            }
            // Pacing: the poll interval of a condition wait with a deadline.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{what}: not within 30 s");
    }

    /// The port of the primary the sentinel names now.
    pub fn primary_port(&self, c: &mut redis::Connection) -> Option<u16> {
        let (_, port): (String, String) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.name)
            .query(c)
            .ok()?;
        port.parse().ok()
    }

    /// Replicas the sentinel sees with their link to the primary up and not down.
    pub fn replicas_in_sync(&self, c: &mut redis::Connection) -> usize {
        let all: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(&self.name)
            .query(c)
            .unwrap_or_default();
        all.iter()
            .filter(|r| r.get("master-link-status").map(String::as_str) == Some("ok"))
            .filter(|r| !r.get("flags").is_some_and(|f| f.contains("down")))
            .count()
    }

    /// Waits until the sentinel sees `n` replicas in sync.
    pub fn wait_replicas_in_sync(&self, n: usize) {
        self.until("the sentinel sees the replicas in sync", |c| {
            (self.replicas_in_sync(c) == n).then_some(())
        });
    }
}

impl Drop for OwnSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
