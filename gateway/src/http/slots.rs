//! The caps on TCP connections, each a guard given back on drop: the
//! connections in their HTTP phase (`--max-http-connections`: not yet
//! upgraded to a WebSocket), and the connections of one client address
//! (`--max-connections-per-ip`: HTTP and WebSocket, before `hello` and
//! after). Without them one host could hold every descriptor, or every
//! task, with sockets that never finish a request.
//!
//! A connection is charged to its TCP peer at accept (`server.rs`), and
//! the guard lives as long as the connection, through its upgrade. A
//! connection from a trusted proxy is not: every client behind the proxy
//! would share one budget. Its requests, and the WebSocket one upgrades
//! to, are charged to the client the proxy names, when the request
//! arrives (`http/mod.rs`, `route`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use viche_engine::address::limit_key;
use viche_engine::clock::now_ms;

/// The connections in their HTTP phase, within `--max-http-connections`.
pub struct HttpSlots {
    open: AtomicUsize,
    max: usize,
}

/// One of the `--max-http-connections`.
pub struct HttpSlot(Arc<HttpSlots>);

impl HttpSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { open: AtomicUsize::new(0), max })
    }

    /// A slot, or `None` when all are taken.
    pub fn try_acquire(self: &Arc<Self>) -> Option<HttpSlot> {
        self.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max).then_some(n + 1)).ok()?;
        Some(HttpSlot(self.clone()))
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open connections per client address, within `--max-connections-per-ip`.
/// An address is forgotten when its last connection closes, so the table
/// holds at most one entry per open connection.
pub struct AddressSlots {
    open: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

/// One of an address's `--max-connections-per-ip`.
pub struct AddressSlot {
    slots: Arc<AddressSlots>,
    key: IpAddr,
}

/// When a refusal was last logged (minutes since the epoch): at most one
/// line a minute.
static LAST_WARNED_MIN: AtomicU64 = AtomicU64::new(0);

impl AddressSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { open: Mutex::new(HashMap::new()), max })
    }

    /// A slot for `client` (keyed as every per-address limit is: an IPv6
    /// address by its /64), or `None` when it has `max` already.
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr) -> Option<AddressSlot> {
        let key = limit_key(client);
        let mut open = self.open.lock();
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            drop(open);
            let minute = now_ms() / 60_000;
            if LAST_WARNED_MIN.swap(minute, Ordering::Relaxed) != minute {
                tracing::warn!(
                    address = %key,
                    max = self.max,
                    "connections refused past --max-connections-per-ip (if this address is a reverse proxy, \
                     list it in --trusted-proxies)"
                );
            }
            return None;
        }
        *n += 1;
        Some(AddressSlot { slots: self.clone(), key })
    }

    #[cfg(test)]
    fn open(&self, client: IpAddr) -> usize {
        self.open.lock().get(&limit_key(client)).copied().unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_slots_refuse_past_max_and_come_back_on_drop() {
        let slots = HttpSlots::new(2);
        let a = slots.try_acquire().unwrap();
        let _b = slots.try_acquire().unwrap();
        assert!(slots.try_acquire().is_none(), "past max");
        drop(a);
        assert_eq!(slots.open(), 1);
        assert!(slots.try_acquire().is_some(), "a slot given back is taken again");
    }

    #[test]
    fn address_slots_are_per_address_and_ipv6_per_64() {
        let slots = AddressSlots::new(2);
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = slots.try_acquire(v4).unwrap();
        let _b = slots.try_acquire(v4).unwrap();
        assert!(slots.try_acquire(v4).is_none(), "a third from one address is refused");
        assert!(slots.try_acquire(other).is_some(), "another address is not");
        drop(a);
        assert!(slots.try_acquire(v4).is_some(), "given back on drop");

        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let _x = slots.try_acquire(x).unwrap();
        let _y = slots.try_acquire(y).unwrap();
        assert!(slots.try_acquire("2001:db8:1:2::77".parse().unwrap()).is_none(), "one /64, one budget");
        assert!(slots.try_acquire("2001:db8:1:3::1".parse().unwrap()).is_some());
    }

    #[test]
    fn an_address_is_forgotten_with_its_last_connection() {
        let slots = AddressSlots::new(5);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| slots.try_acquire(ip).unwrap()).collect();
        assert_eq!(slots.open(ip), 3);
        drop(held);
        assert_eq!(slots.open(ip), 0);
        assert!(slots.open.lock().is_empty(), "no entry is kept for an address with no connection");
    }
}
