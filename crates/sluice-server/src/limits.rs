//! How many connections the server holds, in all and per client address, and the warnings
//! it logs when it refuses or times out one — at most one per address, reason and interval,
//! so a client hammering the server cannot flood the log.
//!
//! Invariants: a connection counts from [`ConnectionCounter::acquire`] until its
//! [`ConnectionSlot`] is dropped, however the connection ends; an address with no open
//! connection has no entry (the map holds live addresses only); the warning map holds at
//! most [`MAX_WARNED`] addresses.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::ConnectionLimits;

/// Shortest time between two warnings about one address and reason.
pub(crate) const WARN_INTERVAL: Duration = Duration::from_secs(60);
/// Most addresses the warning throttle remembers; past that (after forgetting those not
/// warned about within the interval), further addresses share one entry.
const MAX_WARNED: usize = 4096;

/// Counts open connections and refuses those over the limits.
#[derive(Debug)]
pub(crate) struct ConnectionCounter {
    max_total: usize,
    max_per_address: usize,
    // std Mutex: held for a counter update only, never across an .await.
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// One counted connection; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    counter: Arc<ConnectionCounter>,
    address: IpAddr,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The server holds its maximum of connections.
    Total { max: usize },
    /// This address holds its maximum of connections.
    PerAddress { address: IpAddr, max: usize },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total { max } => write!(
                f,
                "too many connections: {max} are open, the most this server holds (--max-connections); try again later"
            ),
            Refusal::PerAddress { address, max } => write!(
                f,
                "too many connections from {address}: {max} are open, the most one address may hold (--max-connections-per-address); try again later"
            ),
        }
    }
}

impl Refusal {
    /// The reason's name in logs and the throttle.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refusal::Total { .. } => "max_connections",
            Refusal::PerAddress { .. } => "max_connections_per_address",
        }
    }
}

impl ConnectionCounter {
    pub(crate) fn new(limits: &ConnectionLimits) -> Self {
        Self {
            max_total: limits.max_connections.max(1),
            max_per_address: limits.max_connections_per_address.max(1),
            open: Mutex::default(),
        }
    }

    /// Counts a connection from `address`, or says which limit it would exceed.
    pub(crate) fn acquire(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionSlot, Refusal> {
        // An IPv4 client on a dual-stack socket is one address, however it is spelled.
        let address = address.to_canonical();
        let mut open = self.open.lock().expect("connection counter lock");
        if open.total >= self.max_total {
            return Err(Refusal::Total {
                max: self.max_total,
            });
        }
        let from_address = open.per_address.entry(address).or_insert(0);
        if *from_address >= self.max_per_address {
            return Err(Refusal::PerAddress {
                address,
                max: self.max_per_address,
            });
        }
        *from_address += 1;
        open.total += 1;
        Ok(ConnectionSlot {
            counter: self.clone(),
            address,
        })
    }

    fn release(&self, address: IpAddr) {
        let mut open = self.open.lock().expect("connection counter lock");
        open.total -= 1;
        if let Some(n) = open.per_address.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                open.per_address.remove(&address);
            }
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.counter.release(self.address);
    }
}

/// At most one warning per address and reason per [`WARN_INTERVAL`]; counts the ones it
/// held back so the next warning can say how many there were.
#[derive(Debug, Default)]
pub(crate) struct WarnThrottle {
    // std Mutex: held for a map update only, never across an .await.
    last: Mutex<HashMap<(IpAddr, &'static str), Warned>>,
}

#[derive(Debug, Clone, Copy)]
struct Warned {
    at: Instant,
    held_back: u64,
}

impl WarnThrottle {
    /// Whether to warn about `reason` for `address` now: `Some(n)` with the number of
    /// warnings held back since the last one, or `None` to stay quiet.
    pub(crate) fn check(&self, address: IpAddr, reason: &'static str, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().expect("warn throttle lock");
        if last.len() >= MAX_WARNED && !last.contains_key(&(address, reason)) {
            last.retain(|_, w| now.saturating_duration_since(w.at) < WARN_INTERVAL);
        }
        // Still full: these addresses are too many to tell apart; they share one entry.
        let address = if last.len() >= MAX_WARNED && !last.contains_key(&(address, reason)) {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            address
        };
        match last.get_mut(&(address, reason)) {
            Some(w) if now.saturating_duration_since(w.at) < WARN_INTERVAL => {
                w.held_back += 1;
                None
            }
            Some(w) => {
                let held_back = w.held_back;
                *w = Warned {
                    at: now,
                    held_back: 0,
                };
                Some(held_back)
            }
            None => {
                last.insert(
                    (address, reason),
                    Warned {
                        at: now,
                        held_back: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(total: usize, per_address: usize) -> Arc<ConnectionCounter> {
        Arc::new(ConnectionCounter::new(
            &ConnectionLimits::default()
                .max_connections(total)
                .max_connections_per_address(per_address),
        ))
    }

    #[test]
    fn given_full_limits_when_a_slot_is_dropped_then_its_place_is_given_back() {
        let counter = counter(3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = counter.acquire(a).unwrap();
        let _second = counter.acquire(a).unwrap();
        assert_eq!(
            counter.acquire(a).unwrap_err(),
            Refusal::PerAddress { address: a, max: 2 },
            "a third connection from one address is refused"
        );
        let _third = counter.acquire(b).unwrap();
        assert_eq!(
            counter.acquire("10.0.0.3".parse().unwrap()).unwrap_err(),
            Refusal::Total { max: 3 },
            "a fourth connection in all is refused"
        );
        drop(first);
        assert!(
            counter.acquire(a).is_ok(),
            "the dropped slot's place is free again"
        );
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_the_ipv4_address() {
        let counter = counter(10, 1);
        let _v4 = counter.acquire("127.0.0.1".parse().unwrap()).unwrap();
        assert!(counter
            .acquire("::ffff:127.0.0.1".parse().unwrap())
            .is_err());
    }

    #[test]
    fn given_a_warning_when_the_same_reason_recurs_within_the_interval_then_it_is_held_back_and_counted(
    ) {
        let throttle = WarnThrottle::default();
        let address: IpAddr = "10.0.0.1".parse().unwrap();
        let start = Instant::now();
        assert_eq!(throttle.check(address, "idle", start), Some(0));
        assert_eq!(
            throttle.check(address, "idle", start + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            throttle.check(address, "idle", start + Duration::from_secs(2)),
            None
        );
        assert_eq!(
            throttle.check(address, "slow_frame", start + Duration::from_secs(2)),
            Some(0),
            "another reason has its own budget"
        );
        assert_eq!(
            throttle.check(address, "idle", start + WARN_INTERVAL),
            Some(2),
            "after the interval: one warning, saying how many were held back"
        );
    }

    #[test]
    fn the_throttle_remembers_a_bounded_number_of_addresses() {
        let throttle = WarnThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_WARNED as u32 + 100) {
            throttle.check(IpAddr::from(i.to_be_bytes()), "refused", now);
        }
        assert!(throttle.last.lock().unwrap().len() <= MAX_WARNED + 1);
    }
}
