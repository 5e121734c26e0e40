//! Reconnect delays: exponential with full jitter (a uniformly random delay between zero and the
//! exponential bound), so a fleet that lost its control plane at the same instant does not come
//! back at the same instant.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay; the randomness is a parameter so tests are exact.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let bound = self.bound();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=millis))
    }

    /// The upper bound of the next delay.
    pub fn bound(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(20));
        self.base.saturating_mul(factor).min(self.cap)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn bounds_grow_exponentially_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(1);
        let mut bounds = Vec::new();
        for _ in 0..8 {
            bounds.push(b.bound().as_millis());
            let d = b.next_delay(&mut rng);
            assert!(d <= Duration::from_secs(30));
        }
        assert_eq!(
            bounds,
            vec![500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.bound(), Duration::from_millis(500));
    }

    #[test]
    fn delays_are_spread_not_synchronised() {
        // A thousand agents at the same attempt pick delays spread across the whole window.
        let mut rng = StdRng::seed_from_u64(42);
        let delays: Vec<u128> = (0..1000)
            .map(|_| {
                let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
                for _ in 0..6 {
                    b.next_delay(&mut rng);
                }
                b.next_delay(&mut rng).as_millis()
            })
            .collect();
        let below_third = delays.iter().filter(|&&d| d < 10_000).count();
        let above_two_thirds = delays.iter().filter(|&&d| d > 20_000).count();
        assert!((250..420).contains(&below_third), "{below_third}");
        assert!((250..420).contains(&above_two_thirds), "{above_two_thirds}");
    }
}
