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
//! sign-ins being checked count until they settle, so requests sent at once cannot pass the
//! allowance before their failures are known; an IPv6 client counts by its /64 (one host is given a whole /64 and may pick any address in
//! it); memory is bounded by [`MAX_ADDRESSES`] windows (past it, ended windows go first, then
//! the oldest: a client with that many addresses can make an old refusal be forgotten, which
//! the per-user lockout still stands behind). Counts are per process, like the
//! sign-in turns: instances sharing a store each count their own clients. Behind a reverse
//! proxy the address is the one the proxy forwards, when the proxy is one of
//! `api.trusted_proxies` (see [`super::forwarded`]); otherwise every client has the proxy's.
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

/// One address's failures in its current window, and its sign-ins being checked now.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
    /// Admitted and not settled yet: they count against the allowance, so that requests sent
    /// at once cannot all pass before the first failure is counted.
    pending: u32,
}

/// Failed sign-ins per client address (see the module's documentation).
#[derive(Debug)]
pub struct SignInThrottle {
    limit: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, Window>>,
}

/// A sign-in admitted by [`SignInThrottle::admit`]: counts against its address until it is
/// settled, as a failure ([`Attempt::failed`]) or, when dropped, as not one.
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a SignInThrottle,
    key: Option<IpAddr>,
}

impl Attempt<'_> {
    /// The password was wrong, the name unknown or the account locked.
    pub fn failed(self) {
        self.settle(true, Instant::now());
    }

    fn settle(mut self, failed: bool, now: Instant) {
        if let Some(key) = self.key.take() {
            self.throttle.settle(key, failed, now);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.throttle.settle(key, false, Instant::now());
        }
    }
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

    /// Admits a sign-in from `address`, or refuses it when the address used up its failures
    /// in the current window (sign-ins being checked count as failures until they settle).
    /// `None` (no address known: a request made in-process) is always admitted.
    pub fn admit(&self, address: Option<IpAddr>) -> Result<Attempt<'_>, ApiError> {
        self.admit_at(address, Instant::now())
    }

    fn admit_at(&self, address: Option<IpAddr>, now: Instant) -> Result<Attempt<'_>, ApiError> {
        let Some(address) = address else {
            return Ok(Attempt {
                throttle: self,
                key: None,
            });
        };
        let k = key(address);
        let (limit, window) = (self.limit, self.window);
        let mut seen = self.seen();
        if !seen.contains_key(&k) && seen.len() >= MAX_ADDRESSES {
            seen.retain(|_, w| w.pending > 0 || now < w.started + window);
            if seen.len() >= MAX_ADDRESSES
                && let Some(oldest) = seen
                    .iter()
                    .filter(|(_, w)| w.pending == 0)
                    .min_by_key(|(_, w)| w.started)
                    .map(|(k, _)| *k)
            {
                seen.remove(&oldest);
            }
        }
        let w = seen.entry(k).or_insert(Window {
            started: now,
            failures: 0,
            pending: 0,
        });
        if now >= w.started + window {
            w.started = now;
            w.failures = 0;
        }
        if w.failures.saturating_add(w.pending) >= limit {
            // Used up: until the window ends. Held only by sign-ins still being checked: a
            // moment, until they settle.
            let retry_after_s = if w.failures >= limit {
                (w.started + window - now).as_secs_f64().ceil().max(1.0) as u64
            } else {
                1
            };
            return Err(ApiError::TooManyFailures {
                limit,
                window_minutes: window.as_secs() / 60,
                retry_after_s,
            });
        }
        w.pending += 1;
        Ok(Attempt {
            throttle: self,
            key: Some(k),
        })
    }

    fn settle(&self, k: IpAddr, failed: bool, now: Instant) {
        let mut seen = self.seen();
        let Some(w) = seen.get_mut(&k) else {
            return;
        };
        w.pending = w.pending.saturating_sub(1);
        if failed {
            if now >= w.started + self.window {
                w.started = now;
                w.failures = 0;
            }
            w.failures = w.failures.saturating_add(1);
            if w.failures == self.limit {
                // A security event for whoever watches the logs: password guessing, or a
                // terminal whose users keep mistyping.
                let until = w.started + self.window;
                tracing::warn!(
                    client = %k,
                    failures = w.failures,
                    window_minutes = self.window.as_secs() / 60,
                    refused_for_s = until.saturating_duration_since(now).as_secs(),
                    "Failed sign-ins from this client address reached api.sign_in_failures_per_address: its sign-ins are refused until the window ends."
                );
            }
        }
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

    /// One failed sign-in from `address` at `now`.
    fn fail(t: &SignInThrottle, address: Option<IpAddr>, now: Instant) {
        t.admit_at(address, now).unwrap().settle(true, now);
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let t = SignInThrottle::new(3, Duration::from_secs(600));
        let start = Instant::now();
        for _ in 0..3 {
            fail(&t, ip("10.0.0.7"), start);
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
        drop(t.admit_at(ip("10.0.0.8"), start).unwrap());
        drop(t.admit_at(None, start).unwrap());
        // The window ends: admitted again, and the next failure starts a new window.
        let later = start + Duration::from_secs(600);
        fail(&t, ip("10.0.0.7"), later);
        drop(t.admit_at(ip("10.0.0.7"), later).unwrap());
    }

    #[test]
    fn sign_ins_being_checked_count_until_they_settle() {
        let t = SignInThrottle::new(3, Duration::from_secs(600));
        let now = Instant::now();
        // Three sent at once, none checked yet: the fourth waits for them.
        let held: Vec<_> = (0..3)
            .map(|_| t.admit_at(ip("10.0.0.7"), now).unwrap())
            .collect();
        match t.admit_at(ip("10.0.0.7"), now) {
            Err(ApiError::TooManyFailures {
                retry_after_s: 1, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let mut held = held.into_iter();
        // A right password gives its place back; a wrong one keeps it as a failure.
        drop(held.next());
        let again = t.admit_at(ip("10.0.0.7"), now).unwrap();
        for a in held {
            a.settle(true, now);
        }
        again.settle(true, now);
        assert!(t.admit_at(ip("10.0.0.7"), now).is_err(), "three failures");
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let t = SignInThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        fail(&t, ip("2001:db8:1:2::1"), now);
        fail(&t, ip("2001:db8:1:2:ffff::9"), now);
        assert!(t.admit_at(ip("2001:db8:1:2::abcd"), now).is_err());
        drop(t.admit_at(ip("2001:db8:1:3::1"), now).unwrap());
        fail(&t, ip("::ffff:192.0.2.1"), now);
        fail(&t, ip("192.0.2.1"), now);
        assert!(t.admit_at(ip("192.0.2.1"), now).is_err());
    }

    #[test]
    fn memory_is_bounded_dropping_ended_windows_first() {
        let t = SignInThrottle::new(1, Duration::from_secs(60));
        let start = Instant::now();
        for i in 0..MAX_ADDRESSES as u32 {
            fail(&t, Some(IpAddr::V4((0x0a00_0000 + i).into())), start);
        }
        assert_eq!(t.tracked(), MAX_ADDRESSES);
        // A full table of live windows: the oldest goes.
        fail(&t, ip("192.0.2.1"), start + Duration::from_secs(1));
        assert_eq!(t.tracked(), MAX_ADDRESSES);
        assert!(t.admit_at(ip("192.0.2.1"), start).is_err());
        // Once the windows ended, they are dropped together.
        fail(&t, ip("192.0.2.2"), start + Duration::from_secs(61));
        assert_eq!(t.tracked(), 1);
    }
}
