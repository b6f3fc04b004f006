//! Failed sign-ins counted per client address.
//!
//! The per-user lockout (`quality.lockout_*`) stops guessing one user's password; it does not
//! stop one client trying a few common passwords on every user name (each stays under its own
//! limit), nor a client making the service hash passwords for unknown names all day. So each
//! client address may fail `api.sign_in_failures_per_address` times in
//! `api.sign_in_window_minutes`; beyond that its sign-ins (the form and HTTP Basic) are refused
//! with 429 and `Retry-After` before any password is checked, until the window ends.
//!
//! Invariants: only failures count (wrong password, unknown user, locked account), so a
//! shop-floor terminal that many people sign in from is refused only after that many mistakes;
//! an IPv6 client counts by its /64 (one host is given a whole /64 and may pick any address in
//! it); memory is bounded by [`MAX_ADDRESSES`] windows. Counts are per process, like the
//! sign-in turns: instances sharing a store each count their own clients. Behind a reverse
//! proxy every client has the proxy's address.
//!
//! Written here rather than taken from a rate-limiting crate: those limit requests, and this
//! limits failures, which are known only after the password was checked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ApiError;

/// Client addresses tracked at once; past it, windows that ended are dropped first, then the
/// oldest.
pub const MAX_ADDRESSES: usize = 16_384;

/// One address's failures in its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failed sign-ins per client address (see the module's documentation).
#[derive(Debug)]
pub struct SignInThrottle {
    limit: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, Window>>,
}

/// The key an address counts under: IPv4 (also when mapped into IPv6) as it is, IPv6 by /64.
fn key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

impl SignInThrottle {
    /// `limit` failures per address in `window`.
    pub fn new(limit: u32, window: Duration) -> SignInThrottle {
        SignInThrottle {
            limit,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Window>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses a sign-in from `address` when it used up its failures in the current window.
    /// `None` (no address known: a request made in-process) is never refused.
    pub fn admit(&self, address: Option<IpAddr>) -> Result<(), ApiError> {
        self.admit_at(address, Instant::now())
    }

    fn admit_at(&self, address: Option<IpAddr>, now: Instant) -> Result<(), ApiError> {
        let Some(address) = address else {
            return Ok(());
        };
        let seen = self.seen();
        match seen.get(&key(address)) {
            Some(w) if w.failures >= self.limit => {
                let ends = w.started + self.window;
                if now >= ends {
                    return Ok(());
                }
                Err(ApiError::TooManyFailures {
                    limit: self.limit,
                    window_minutes: self.window.as_secs() / 60,
                    retry_after_s: (ends - now).as_secs_f64().ceil() as u64,
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed sign-in from `address`.
    pub fn failed(&self, address: Option<IpAddr>) {
        self.failed_at(address, Instant::now());
    }

    fn failed_at(&self, address: Option<IpAddr>, now: Instant) {
        let Some(address) = address else {
            return;
        };
        let window = self.window;
        let mut seen = self.seen();
        let k = key(address);
        if !seen.contains_key(&k) && seen.len() >= MAX_ADDRESSES {
            seen.retain(|_, w| now < w.started + window);
            if seen.len() >= MAX_ADDRESSES
                && let Some(oldest) = seen.iter().min_by_key(|(_, w)| w.started).map(|(k, _)| *k)
            {
                seen.remove(&oldest);
            }
        }
        let w = seen.entry(k).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= w.started + window {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }

    /// Addresses tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.seen().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let t = SignInThrottle::new(3, Duration::from_secs(600));
        let start = Instant::now();
        for _ in 0..3 {
            t.admit_at(ip("10.0.0.7"), start).unwrap();
            t.failed_at(ip("10.0.0.7"), start);
        }
        let e = t.admit_at(ip("10.0.0.7"), start + Duration::from_secs(1));
        match e {
            Err(ApiError::TooManyFailures {
                limit: 3,
                window_minutes: 10,
                retry_after_s: 599,
            }) => {}
            other => panic!("{other:?}"),
        }
        // Another client is not affected; nor is a request with no address.
        t.admit_at(ip("10.0.0.8"), start).unwrap();
        t.admit_at(None, start).unwrap();
        // The window ends: admitted again, and the next failure starts a new window.
        let later = start + Duration::from_secs(600);
        t.admit_at(ip("10.0.0.7"), later).unwrap();
        t.failed_at(ip("10.0.0.7"), later);
        t.admit_at(ip("10.0.0.7"), later).unwrap();
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let t = SignInThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        t.failed_at(ip("2001:db8:1:2::1"), now);
        t.failed_at(ip("2001:db8:1:2:ffff::9"), now);
        assert!(t.admit_at(ip("2001:db8:1:2::abcd"), now).is_err());
        t.admit_at(ip("2001:db8:1:3::1"), now).unwrap();
        t.failed_at(ip("::ffff:192.0.2.1"), now);
        t.failed_at(ip("192.0.2.1"), now);
        assert!(t.admit_at(ip("192.0.2.1"), now).is_err());
    }

    #[test]
    fn memory_is_bounded_dropping_ended_windows_first() {
        let t = SignInThrottle::new(1, Duration::from_secs(60));
        let start = Instant::now();
        for i in 0..MAX_ADDRESSES as u32 {
            t.failed_at(Some(IpAddr::V4((0x0a00_0000 + i).into())), start);
        }
        assert_eq!(t.tracked(), MAX_ADDRESSES);
        // A full table of live windows: the oldest goes.
        t.failed_at(ip("192.0.2.1"), start + Duration::from_secs(1));
        assert_eq!(t.tracked(), MAX_ADDRESSES);
        assert!(t.admit_at(ip("192.0.2.1"), start).is_err());
        // Once the windows ended, they are dropped together.
        t.failed_at(ip("192.0.2.2"), start + Duration::from_secs(61));
        assert_eq!(t.tracked(), 1);
    }
}
