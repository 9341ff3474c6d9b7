//! Per-client token buckets driven by the caller's clock, with a bounded table.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: SystemTime,
}

/// A token bucket per key. Time only moves forward here: a clock step backwards
/// refills nothing instead of panicking or granting tokens.
#[derive(Debug)]
pub struct RateLimiter<K> {
    burst: f64,
    per_second: f64,
    capacity: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `burst` tokens, refilled at `per_second`, tracking at most `capacity` keys.
    pub fn new(burst: u32, per_second: u32, capacity: usize) -> Self {
        Self {
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            capacity: capacity.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key` at `now`; `false` means over the limit.
    pub fn allow(&mut self, key: &K, now: SystemTime) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.capacity {
            self.evict(now);
        }
        let burst = self.burst;
        let rate = self.per_second;
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let elapsed = now.duration_since(b.last).unwrap_or(Duration::ZERO);
        b.tokens = (b.tokens + elapsed.as_secs_f64() * rate).min(burst);
        if now > b.last {
            b.last = now;
        }
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Number of tracked keys.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Forgets buckets that have refilled completely (they carry no state); if that frees
    /// nothing, forgets the least recently used eighth. Evicting in bulk keeps a flood
    /// of made-up keys at amortised O(1) per request instead of a full scan each.
    fn evict(&mut self, now: SystemTime) {
        let full_after = Duration::from_secs_f64(self.burst / self.per_second);
        self.buckets
            .retain(|_, b| now.duration_since(b.last).unwrap_or(Duration::ZERO) < full_after);
        if self.buckets.len() < self.capacity {
            return;
        }
        let drop = (self.capacity / 8).max(1);
        let mut ages: Vec<(SystemTime, K)> = self
            .buckets
            .iter()
            .map(|(k, b)| (b.last, k.clone()))
            .collect();
        if drop < ages.len() {
            ages.select_nth_unstable_by_key(drop, |(t, _)| *t);
        }
        for (_, k) in ages.into_iter().take(drop) {
            self.buckets.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn burst_then_refill() {
        let mut r = RateLimiter::new(3, 2, 10);
        assert!(r.allow(&1, t(0)));
        assert!(r.allow(&1, t(0)));
        assert!(r.allow(&1, t(0)));
        assert!(!r.allow(&1, t(0)));
        assert!(!r.allow(&1, t(400)));
        assert!(r.allow(&1, t(500)));
        assert!(r.allow(&2, t(500)), "other keys are independent");
        // Clock stepping backwards grants nothing.
        assert!(!r.allow(&1, t(100)));
    }

    #[test]
    fn table_is_bounded() {
        let mut r = RateLimiter::new(1, 1, 4);
        for k in 0..100u32 {
            assert!(r.allow(&k, t(u64::from(k))));
            assert!(r.len() <= 4);
        }
    }

    #[test]
    fn a_flood_of_new_keys_evicts_the_oldest_and_keeps_recent_ones() {
        let us = |n: u64| SystemTime::UNIX_EPOCH + Duration::from_micros(n);
        // Nothing refills within the flood (1 token per second, 10 ms of flood).
        let mut r = RateLimiter::new(1, 1, 64);
        for k in 0..10_000u32 {
            assert!(r.allow(&k, us(u64::from(k))), "a new key has its burst");
            assert!(r.len() <= 64);
        }
        assert!(
            !r.allow(&9_999, us(10_000)),
            "the newest key is still tracked"
        );
        assert!(
            r.allow(&0, us(10_000)),
            "the oldest was forgotten: a fresh bucket"
        );
    }
}
