//! Fair share before the signature is known: each client address (an IPv6 address
//! counts by its /64, what one host usually holds) may hold at most
//! `max_connections_per_address` connections, all listeners together, and
//! `max_body_bytes_per_address` bytes of request bodies being read, so one address
//! cannot take every connection slot or the whole body budget from the others.
//!
//! An address's entry lives while it has a connection open; its body budget goes
//! with it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::config::ServerLimits;

/// The key an address is counted under.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
    }
}

struct Entry {
    conns: usize,
    budget: Arc<Semaphore>,
}

/// Every client address with a connection open.
pub struct Peers {
    max_conns: usize,
    max_bytes: usize,
    map: Mutex<HashMap<IpAddr, Entry>>,
    /// When a refusal was last logged, and how many were not logged since.
    refusals: Mutex<(Option<Instant>, u64)>,
}

/// One connection's place in its address's share; gives it back when dropped.
pub struct PeerSlot {
    peers: Arc<Peers>,
    key: IpAddr,
    /// The connection's client address.
    pub ip: IpAddr,
    /// Bytes of bodies this address may have in flight.
    pub budget: Arc<Semaphore>,
}

impl Peers {
    pub fn new(limits: &ServerLimits) -> Arc<Peers> {
        let bytes = usize::try_from(limits.max_body_bytes_per_address).unwrap_or(usize::MAX);
        Arc::new(Peers {
            max_conns: limits.max_connections_per_address,
            max_bytes: bytes.min(Semaphore::MAX_PERMITS),
            map: Mutex::new(HashMap::new()),
            refusals: Mutex::new((None, 0)),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when that address already
    /// holds `max_connections_per_address`.
    pub fn join(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let key = key(ip);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(key).or_insert_with(|| Entry {
            conns: 0,
            budget: Arc::new(Semaphore::new(self.max_bytes)),
        });
        if entry.conns >= self.max_conns {
            drop(map);
            self.refused(key);
            return None;
        }
        entry.conns += 1;
        Some(PeerSlot {
            peers: self.clone(),
            key,
            ip,
            budget: entry.budget.clone(),
        })
    }

    /// Logs a refused connection, at most once per 10 s (with how many were not).
    fn refused(&self, key: IpAddr) {
        let Ok(mut r) = self.refusals.lock() else {
            return;
        };
        let now = Instant::now();
        if r.0
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            tracing::warn!(
                address = %key,
                max_connections_per_address = self.max_conns,
                not_logged_since_last = r.1,
                "connection refused: this client address holds max_connections_per_address already (at most one such line per 10s; behind a proxy, raise [server] max_connections_per_address)"
            );
            *r = (Some(now), 0);
        } else {
            r.1 += 1;
        }
    }

    /// Connections open from `ip`'s address.
    #[cfg(test)]
    pub fn connections(&self, ip: IpAddr) -> usize {
        self.map
            .lock()
            .ok()
            .and_then(|m| m.get(&key(ip)).map(|e| e.conns))
            .unwrap_or(0)
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&self.key) {
            e.conns = e.conns.saturating_sub(1);
            if e.conns == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(conns: usize, bytes: u64) -> ServerLimits {
        ServerLimits {
            max_connections_per_address: conns,
            max_body_bytes_per_address: bytes,
            ..ServerLimits::default()
        }
    }

    #[test]
    fn an_address_holds_at_most_its_cap_and_gets_its_slots_back() {
        let peers = Peers::new(&limits(2, 100));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let one = peers.join(a);
        let two = peers.join(a);
        assert!(one.is_some() && two.is_some());
        assert!(peers.join(a).is_none(), "third from one address");
        assert!(peers.join(b).is_some(), "another address");
        drop(one);
        assert!(peers.join(a).is_some());
        drop(two);
    }

    #[test]
    fn an_ipv6_address_counts_by_its_64_and_a_mapped_v4_as_v4() {
        let peers = Peers::new(&limits(1, 100));
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let _held = peers.join(x);
        assert!(peers.join(y).is_none(), "same /64");
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        let _v4 = peers.join(v4);
        assert!(peers.join(mapped).is_none(), "the same client");
    }

    #[test]
    fn the_body_budget_is_shared_by_an_addresses_connections() {
        let peers = Peers::new(&limits(4, 100));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let one = peers.join(a);
        let two = peers.join(a);
        let (Some(one), Some(two)) = (one, two) else {
            panic!("slots");
        };
        let _p = one.budget.clone().try_acquire_many_owned(80);
        assert!(two.budget.clone().try_acquire_many_owned(30).is_err());
        assert_eq!(peers.connections(a), 2);
    }
}
