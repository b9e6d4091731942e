//! Keyed token buckets for accounts: failed logins per username and per
//! client address, registrations per client address (docs/protocol.md,
//! "Limits").
//!
//! Bounded: at most `keys_max` keys are tracked. When the table is full,
//! keys whose buckets have refilled are forgotten; if none has, a new key
//! is refused (429) until some have — under a flood of distinct keys the
//! server sheds instead of growing.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;
use viche_protocol::limits::Rate;

pub struct KeyedLimiter {
    rate: Rate,
    keys_max: usize,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl KeyedLimiter {
    pub fn new(rate: Rate, keys_max: usize) -> Self {
        assert!(rate.per_second > 0.0 && rate.burst > 0 && keys_max > 0);
        Self { rate, keys_max, buckets: Mutex::new(HashMap::new()) }
    }

    fn tokens_now(&self, tokens: f64, updated: Instant, now: Instant) -> f64 {
        (tokens + now.duration_since(updated).as_secs_f64() * self.rate.per_second).min(self.rate.burst as f64)
    }

    /// Seconds until `key` may try again, or `None` if it may now.
    pub fn retry_after_s(&self, key: &str) -> Option<u64> {
        let now = Instant::now();
        let buckets = self.buckets.lock();
        let Some(&(tokens, updated)) = buckets.get(key) else {
            return (buckets.len() >= self.keys_max).then_some(1);
        };
        let tokens = self.tokens_now(tokens, updated, now);
        (tokens < 1.0).then(|| ((1.0 - tokens) / self.rate.per_second).ceil().max(1.0) as u64)
    }

    /// Takes a token for `key`; returns the retry delay in seconds when
    /// there is none.
    pub fn take(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if !buckets.contains_key(key) && buckets.len() >= self.keys_max {
            let burst = self.rate.burst as f64;
            buckets.retain(|_, (tokens, updated)| self.tokens_now(*tokens, *updated, now) < burst);
            if buckets.len() >= self.keys_max {
                return Err(1);
            }
        }
        let entry = buckets.entry(key.to_string()).or_insert((self.rate.burst as f64, now));
        let tokens = self.tokens_now(entry.0, entry.1, now);
        if tokens < 1.0 {
            *entry = (tokens, now);
            return Err(((1.0 - tokens) / self.rate.per_second).ceil().max(1.0) as u64);
        }
        *entry = (tokens - 1.0, now);
        Ok(())
    }

    /// Returns a token taken for `key` (an attempt that turned out not to
    /// count, such as a login with the right password), up to the burst.
    pub fn give_back(&self, key: &str) {
        let now = Instant::now();
        if let Some(entry) = self.buckets.lock().get_mut(key) {
            let tokens = self.tokens_now(entry.0, entry.1, now);
            *entry = ((tokens + 1.0).min(self.rate.burst as f64), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refused_with_retry_after() {
        let l = KeyedLimiter::new(Rate { per_second: 10.0 / 60.0, burst: 10 }, 100);
        for _ in 0..10 {
            assert!(l.take("alice").is_ok());
        }
        let retry = l.take("alice").unwrap_err();
        assert!((1..=6).contains(&retry), "one token refills in 6 s, got {retry}");
        assert!(l.retry_after_s("alice").is_some());
        assert!(l.take("bob").is_ok(), "keys are independent");
    }

    #[test]
    fn a_token_given_back_can_be_taken_again_up_to_the_burst() {
        let l = KeyedLimiter::new(Rate { per_second: 0.001, burst: 2 }, 100);
        assert!(l.take("k").is_ok() && l.take("k").is_ok());
        assert!(l.take("k").is_err());
        l.give_back("k");
        assert!(l.take("k").is_ok(), "the returned token");
        l.give_back("k");
        l.give_back("k");
        l.give_back("k");
        assert!(l.take("k").is_ok() && l.take("k").is_ok());
        assert!(l.take("k").is_err(), "never more than the burst");
        l.give_back("unknown"); // nothing to give back to
    }

    #[test]
    fn full_table_sheds_new_keys() {
        let l = KeyedLimiter::new(Rate { per_second: 0.001, burst: 1 }, 2);
        assert!(l.take("a").is_ok());
        assert!(l.take("b").is_ok());
        assert!(l.take("c").is_err(), "table full of drained buckets: new keys shed");
        assert_eq!(l.retry_after_s("d"), Some(1));
    }
}
