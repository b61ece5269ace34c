//! Per-token limits of the API: a request rate (token bucket: `api.rate_limit` per second,
//! bursts of `api.rate_burst`) answered with 429 and `Retry-After` past it, and at most
//! `api.max_streams_per_token` open streams (event stream, log follows) per token.
//!
//! Owns only counting: in memory, bounded (buckets of idle tokens are dropped once the
//! table is large), reset by a restart. Time is the monotonic clock, never wall time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

/// Buckets kept at most; past that, full (idle) buckets are forgotten.
const MAX_BUCKETS: usize = 10_000;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limits in force; cheap to share.
pub struct Limits {
    rate: f64,
    burst: f64,
    max_streams: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

/// An open stream, counted against its token until dropped.
pub struct StreamSlot {
    token: String,
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = streams.get_mut(&self.token) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                streams.remove(&self.token);
            }
        }
    }
}

impl Limits {
    pub fn new(rate_per_second: u32, burst: u32, max_streams: usize) -> Limits {
        Limits {
            rate: f64::from(rate_per_second),
            burst: f64::from(burst.max(1)),
            max_streams,
            buckets: Mutex::new(HashMap::new()),
            streams: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes one request from `token`'s bucket; `Err(seconds)` to wait when it is empty.
    pub fn admit(&self, token: &str, now: Instant) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(token) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate < burst
            });
        }
        let bucket =
            buckets.entry(token.to_owned()).or_insert(Bucket { tokens: self.burst, at: now });
        let refilled = now.duration_since(bucket.at).as_secs_f64() * self.rate;
        bucket.tokens = (bucket.tokens + refilled).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.rate.max(f64::MIN_POSITIVE);
        Err(wait.ceil().clamp(1.0, 3600.0) as u64)
    }

    /// A stream slot for `token`, or `None` when it has `max_streams` open already.
    pub fn open_stream(&self, token: &str) -> Option<StreamSlot> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let count = streams.entry(token.to_owned()).or_insert(0);
        if *count >= self.max_streams {
            return None;
        }
        *count += 1;
        Some(StreamSlot { token: token.to_owned(), streams: Arc::clone(&self.streams) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_token_gets_its_burst_then_its_rate() {
        let limits = Limits::new(2, 3, 1);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limits.admit("a", start), Ok(()));
        }
        assert_eq!(limits.admit("a", start), Err(1));
        // Another token has its own bucket.
        assert_eq!(limits.admit("b", start), Ok(()));
        // Half a second refills one request at 2/s.
        assert_eq!(limits.admit("a", start + Duration::from_millis(500)), Ok(()));
        assert!(limits.admit("a", start + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn streams_are_counted_per_token_until_dropped() {
        let limits = Limits::new(1, 1, 2);
        let first = limits.open_stream("a").unwrap();
        let _second = limits.open_stream("a").unwrap();
        assert!(limits.open_stream("a").is_none());
        assert!(limits.open_stream("b").is_some());
        drop(first);
        assert!(limits.open_stream("a").is_some());
    }
}
