//! Token-bucket rate limits for the unauthenticated surface, and the client address they key on.
//!
//! Limits are per replica and in memory: with N replicas the global ceiling is N times the
//! configured one (stated in docs/security.md). Time is a parameter, so tests are exact.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Buckets kept before idle (full) ones are dropped; bounds memory under address churn.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: DateTime<Utc>,
}

/// `capacity` requests in a burst, refilled at `capacity` per `period`.
#[derive(Debug)]
pub struct RateLimiter {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(capacity: u32, period: Duration) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            per_second: capacity / period.as_secs_f64().max(0.001),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str, now: DateTime<Utc>) -> Result<(), Duration> {
        let Ok(mut buckets) = self.buckets.lock() else {
            // Fail closed: a broken limiter must not become no limit.
            return Err(Duration::from_secs(60));
        };
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            let (capacity, per_second) = (self.capacity, self.per_second);
            buckets.retain(|_, b| refill(b, now, capacity, per_second) < capacity);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.capacity,
            updated: now,
        });
        let tokens = refill(bucket, now, self.capacity, self.per_second);
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            bucket.updated = now;
            Ok(())
        } else {
            bucket.tokens = tokens;
            bucket.updated = now;
            Err(Duration::from_secs_f64(
                ((1.0 - tokens) / self.per_second).max(0.001),
            ))
        }
    }
}

fn refill(bucket: &Bucket, now: DateTime<Utc>, capacity: f64, per_second: f64) -> f64 {
    let elapsed = (now - bucket.updated).num_milliseconds().max(0) as f64 / 1000.0;
    (bucket.tokens + elapsed * per_second).min(capacity)
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
/// right-most address in `X-Forwarded-For` (all header lines, in order) that is not itself a
/// trusted proxy. A client that is not a trusted proxy cannot choose its address by sending the
/// header. IPv4-mapped IPv6 addresses are treated as IPv4; hops may carry a port.
pub fn client_address(peer: IpAddr, forwarded_for: &[&str], trusted_proxies: &[IpAddr]) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted_proxies.contains(&peer) || forwarded_for.is_empty() {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .iter()
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .collect();
    let mut last = peer;
    for hop in hops.into_iter().rev() {
        match parse_hop(hop) {
            Some(ip) if trusted_proxies.contains(&ip) => last = ip,
            Some(ip) => return ip,
            // A malformed hop: stop trusting the chain at the last good address.
            None => return last,
        }
    }
    last
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// The key a client is limited under: its IPv4 address, or its IPv6 /64 (one host usually holds
/// a whole /64, so a per-/128 key would give it unlimited budgets).
pub fn limit_key(client: IpAddr) -> String {
    match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()
    }

    #[test]
    fn bursts_then_refills_and_keys_are_independent() {
        let limiter = RateLimiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limiter.check("a", at(0)).is_ok());
        }
        let retry = limiter.check("a", at(0)).unwrap_err();
        assert_eq!(retry.as_secs(), 20, "one token every 20 s");
        assert!(
            limiter.check("b", at(0)).is_ok(),
            "another key has its own bucket"
        );
        assert!(limiter.check("a", at(19_000)).is_err());
        assert!(limiter.check("a", at(21_000)).is_ok());
    }

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        // Not a trusted peer: the header is ignored.
        assert_eq!(client_address(client, &["1.2.3.4"], &[proxy]), client);
        // Trusted proxy: the right-most untrusted hop is the client (the left part is client-supplied).
        assert_eq!(
            client_address(proxy, &["198.51.100.1, 203.0.113.7"], &[proxy]),
            client
        );
        // A proxy that adds its own header line after the client's: the last line wins.
        assert_eq!(
            client_address(proxy, &["198.51.100.1", "203.0.113.7"], &[proxy]),
            client
        );
        // Chained trusted proxies are skipped; ports and IPv4-mapped peers are understood.
        let inner: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            client_address(proxy, &["203.0.113.7:5555, 10.0.0.2"], &[proxy, inner]),
            client
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_address(mapped, &["203.0.113.7"], &[proxy]), client);
        // No header, or garbage: the proxy itself.
        assert_eq!(client_address(proxy, &[], &[proxy]), proxy);
        assert_eq!(client_address(proxy, &["not-an-ip"], &[proxy]), proxy);
        // IPv6 clients are limited per /64.
        let key = |s: &str| limit_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2::5"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::5"), key("2001:db8:1:3::5"));
    }
}

/// Lockout with exponential backoff after repeated sign-in failures from one client: the first
/// `free_failures` within `window` cost nothing; each further one locks the client out for twice
/// as long as the previous lock (1 min, 2 min, 4 min … up to `max_lock`). A success clears it.
#[derive(Debug)]
pub struct Lockout {
    free_failures: u32,
    window: chrono::Duration,
    max_lock: chrono::Duration,
    clients: Mutex<HashMap<String, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: DateTime<Utc>,
    locked_until: Option<DateTime<Utc>>,
}

impl Lockout {
    pub fn new(free_failures: u32, window: chrono::Duration, max_lock: chrono::Duration) -> Self {
        Self {
            free_failures,
            window,
            max_lock,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while the client is locked out.
    pub fn check(&self, client: &str, now: DateTime<Utc>) -> Result<(), Duration> {
        let Ok(clients) = self.clients.lock() else {
            return Err(Duration::from_secs(60));
        };
        match clients.get(client).and_then(|f| f.locked_until) {
            Some(until) if until > now => {
                Err((until - now).to_std().unwrap_or(Duration::from_secs(1)))
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, client: &str, now: DateTime<Utc>) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        if clients.len() >= MAX_BUCKETS && !clients.contains_key(client) {
            let window = self.window;
            clients
                .retain(|_, f| now - f.first < window || f.locked_until.is_some_and(|u| u > now));
        }
        let entry = clients.entry(client.to_owned()).or_insert(Failures {
            count: 0,
            first: now,
            locked_until: None,
        });
        let locked = entry.locked_until.is_some_and(|u| u > now);
        if now - entry.first >= self.window && !locked {
            *entry = Failures {
                count: 0,
                first: now,
                locked_until: None,
            };
        }
        entry.count += 1;
        if entry.count > self.free_failures {
            let exponent = (entry.count - self.free_failures - 1).min(16);
            let lock = (chrono::Duration::minutes(1) * 2i32.pow(exponent)).min(self.max_lock);
            entry.locked_until = Some(now + lock);
        }
    }

    pub fn record_success(&self, client: &str) {
        if let Ok(mut clients) = self.clients.lock() {
            clients.remove(client);
        }
    }
}

#[cfg(test)]
mod lockout_tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn free_failures_then_doubling_locks_and_success_clears() {
        let lockout = Lockout::new(
            5,
            chrono::Duration::minutes(15),
            chrono::Duration::minutes(60),
        );
        for _ in 0..5 {
            lockout.record_failure("c", at(0));
            assert!(lockout.check("c", at(0)).is_ok());
        }
        lockout.record_failure("c", at(0));
        assert_eq!(lockout.check("c", at(0)).unwrap_err().as_secs(), 60);
        assert!(lockout.check("c", at(61)).is_ok());
        lockout.record_failure("c", at(61));
        assert_eq!(lockout.check("c", at(61)).unwrap_err().as_secs(), 120);
        assert!(lockout.check("other", at(61)).is_ok());
        lockout.record_success("c");
        assert!(lockout.check("c", at(62)).is_ok());
        // Locks are capped.
        for _ in 0..30 {
            lockout.record_failure("d", at(0));
        }
        assert_eq!(lockout.check("d", at(0)).unwrap_err().as_secs(), 3600);
    }
}
