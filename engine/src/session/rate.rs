//! A token bucket small enough to keep three per idle session.
//!
//! Hand-written rather than `governor` because each session holds three of
//! them and per-session memory is a design target (≤ 8 KiB per session);
//! this is 16 bytes and needs no clock object.

use std::time::Instant;

use viche_protocol::limits::Rate;

#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f32,
    /// When `tokens` was last brought up to date, in ms since `epoch`.
    updated_ms: u32,
}

impl TokenBucket {
    pub fn full(rate: Rate) -> Self {
        Self { tokens: rate.burst as f32, updated_ms: 0 }
    }

    /// Takes one token if there is one. `now_ms` is [`ms_since`] the
    /// session's start: it wraps every 2^32 ms (49.7 days), and the
    /// difference between two readings is taken modulo 2^32, so a bucket
    /// keeps refilling for as long as the session lives. (Two takes more
    /// than 49.7 days apart refill only by the remainder: at worst one
    /// request is refused before the bucket refills.)
    pub fn try_take(&mut self, rate: Rate, now_ms: u32) -> bool {
        let elapsed_ms = now_ms.wrapping_sub(self.updated_ms);
        self.updated_ms = now_ms;
        let refill = elapsed_ms as f32 * rate.per_second as f32 / 1000.0;
        self.tokens = (self.tokens + refill).min(rate.burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Milliseconds since `start`, modulo 2^32 (compare readings with
/// `wrapping_sub`).
pub fn ms_since(start: Instant) -> u32 {
    start.elapsed().as_millis() as u64 as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let rate = Rate { per_second: 20.0, burst: 50 };
        let mut b = TokenBucket::full(rate);
        for _ in 0..50 {
            assert!(b.try_take(rate, 0));
        }
        assert!(!b.try_take(rate, 0), "the 51st within the same instant is refused");
        assert!(!b.try_take(rate, 40), "40 ms refills 0.8 token");
        assert!(b.try_take(rate, 50), "50 ms refills a whole one");
        assert!(b.try_take(rate, 100_000) && b.try_take(rate, 100_000));
    }

    #[test]
    fn keeps_refilling_across_the_u32_wrap_of_the_clock() {
        let rate = Rate { per_second: 20.0, burst: 1 };
        let mut b = TokenBucket::full(rate);
        let before_wrap = u32::MAX - 10; // 49.7 days into the session
        assert!(b.try_take(rate, before_wrap));
        assert!(!b.try_take(rate, before_wrap), "empty");
        let after_wrap = before_wrap.wrapping_add(60); // 60 ms later, past the wrap
        assert!(b.try_take(rate, after_wrap), "refilled across the wrap");
        assert!(!b.try_take(rate, after_wrap.wrapping_add(10)), "10 ms refills 0.2 token");
        assert!(b.try_take(rate, after_wrap.wrapping_add(60)));
    }
}
