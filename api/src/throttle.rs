//! Throttling of failed authentications, per client address: the console's
//! sign-in and every route that takes a bearer secret.
//!
//! An address may fail [`FREE_FAILURES`] times; after that each further
//! attempt must wait twice as long as the previous one (1 s, 2 s, 4 s, ...,
//! at most [`MAX_DELAY`]): it is answered `429` with `Retry-After` without
//! its secret being looked at. Failures older than [`WINDOW`] are forgotten,
//! and a success clears the address. Only the failing address waits: a user
//! signing in from elsewhere is never locked out by an attacker (throttling
//! by secret, or by account, would let anyone lock any user out).
//!
//! Requests without an address (an app served without one, as in-process
//! tests do) are not throttled. Behind a proxy, every client has the proxy's
//! address unless `client_address_header` names the header the proxy sets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures an address may have before it must wait.
pub const FREE_FAILURES: u32 = 5;
/// Failures older than this are forgotten.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The longest wait.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Addresses remembered at most (older entries are dropped first).
const MAX_ADDRESSES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// How long an address with `count` failures waits after its last one.
fn delay(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let secs = 1u64.checked_shl(count - FREE_FAILURES).unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(MAX_DELAY)
}

/// Failed authentications per address.
#[derive(Debug, Default)]
pub(crate) struct AuthThrottle {
    by_address: Mutex<HashMap<IpAddr, Failures>>,
}

/// What a failure did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// Still within the free failures.
    Counted,
    /// The address must now wait this long (the first time: a lockout begins).
    Waits { wait: Duration, first: bool },
}

impl AuthThrottle {
    /// `Some(wait)` when `addr` must wait before it may try again.
    pub fn check(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let map = self.by_address.lock().expect("throttle lock");
        let f = map.get(&addr)?;
        let until = f.last + delay(f.count);
        (now.duration_since(f.last) < WINDOW && now < until).then(|| until - now)
    }

    /// Count a failed authentication of `addr`.
    pub fn failed(&self, addr: IpAddr, now: Instant) -> Failed {
        let mut map = self.by_address.lock().expect("throttle lock");
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&addr) {
            map.retain(|_, f| now.duration_since(f.last) < WINDOW);
            if map.len() >= MAX_ADDRESSES {
                // under a flood from many addresses: forget the oldest half
                let mut lasts: Vec<Instant> = map.values().map(|f| f.last).collect();
                lasts.sort_unstable();
                let cut = lasts[lasts.len() / 2];
                map.retain(|_, f| f.last > cut);
            }
        }
        let f = map.entry(addr).or_insert(Failures { count: 0, last: now });
        if now.duration_since(f.last) >= WINDOW {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        match delay(f.count) {
            d if d.is_zero() => Failed::Counted,
            wait => Failed::Waits { wait, first: f.count == FREE_FAILURES },
        }
    }

    /// A successful authentication clears `addr`.
    pub fn succeeded(&self, addr: IpAddr) {
        self.by_address.lock().expect("throttle lock").remove(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_waits_twice_as_long_after_each_failure_past_the_free_ones() {
        let t = AuthThrottle::default();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let t0 = Instant::now();
        for i in 1..FREE_FAILURES {
            assert_eq!(t.failed(a, t0), Failed::Counted, "failure {i}");
            assert_eq!(t.check(a, t0), None);
        }
        assert_eq!(t.failed(a, t0), Failed::Waits { wait: Duration::from_secs(1), first: true });
        assert_eq!(t.check(a, t0), Some(Duration::from_secs(1)));
        assert_eq!(t.check(b, t0), None, "another address is not held back");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(t.check(a, t1), None, "after the wait it may try again");
        assert_eq!(t.failed(a, t1), Failed::Waits { wait: Duration::from_secs(2), first: false });
        assert_eq!(t.check(a, t1 + Duration::from_millis(1500)), Some(Duration::from_millis(500)));
        // the delay is capped, and forgotten after the window
        let mut now = t1;
        for _ in 0..40 {
            now += Duration::from_secs(60);
            t.failed(a, now);
        }
        assert_eq!(t.check(a, now), Some(MAX_DELAY));
        assert_eq!(t.check(a, now + WINDOW), None);
        assert_eq!(t.failed(a, now + WINDOW), Failed::Counted, "counting starts over");
        t.succeeded(a);
        assert_eq!(t.check(a, now + WINDOW), None);
    }
}
