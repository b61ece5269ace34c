//! Activity from real use, in memory, before it reaches the store: a per-workspace gate
//! that lets one report a minute through (the store coalesces the same way, but the gate
//! keeps a busy app from queueing a write per request), and the app proxy's open
//! upstream connections per address (the health monitor subtracts them from what it sees
//! in a container, so proxied use is not counted twice as `backend`).
//!
//! Bounded: the gate forgets workspaces whose last report is older than the window, and
//! an address leaves the connection table when its last connection closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};

/// The shared tracker (one per daemon, in `LoopCtx`).
#[derive(Debug, Default)]
pub struct Tracker {
    gate: Mutex<Gate>,
    upstream: Arc<Mutex<HashMap<String, usize>>>,
}

#[derive(Debug, Default)]
struct Gate {
    last: HashMap<String, DateTime<Utc>>,
    /// Prune when the map grows past this (amortized: doubled after each prune).
    high_water: usize,
}

/// Entries the gate keeps before it first prunes.
const GATE_MIN_HIGH_WATER: usize = 1024;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters behind: still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Whether a report for `workspace_id` at `now` should go to the store: true when
    /// none was let through in the `window` before (a clock moved backwards counts as
    /// a new window).
    pub fn admit(&self, workspace_id: &str, now: DateTime<Utc>, window: TimeDelta) -> bool {
        let mut gate = lock(&self.gate);
        if let Some(last) = gate.last.get(workspace_id)
            && now >= *last
            && now - *last < window
        {
            return false;
        }
        gate.last.insert(workspace_id.to_owned(), now);
        if gate.last.len() > gate.high_water.max(GATE_MIN_HIGH_WATER) {
            gate.last.retain(|_, last| now < *last || now - *last < window);
            gate.high_water = gate.last.len() * 2;
        }
        true
    }

    /// Lets the next report of `workspace_id` through (its write failed).
    pub fn forget(&self, workspace_id: &str) {
        lock(&self.gate).last.remove(workspace_id);
    }

    /// Counts an open connection to `address` (`host:port`) until the guard drops.
    pub fn upstream_opened(&self, address: &str) -> UpstreamGuard {
        *lock(&self.upstream).entry(address.to_owned()).or_default() += 1;
        UpstreamGuard { table: Arc::clone(&self.upstream), address: address.to_owned() }
    }

    /// The app proxy's open connections to `address` now.
    pub fn upstream_connections(&self, address: &str) -> usize {
        lock(&self.upstream).get(address).copied().unwrap_or(0)
    }
}

/// One open upstream connection; dropping it uncounts it.
#[derive(Debug)]
pub struct UpstreamGuard {
    table: Arc<Mutex<HashMap<String, usize>>>,
    address: String,
}

impl Drop for UpstreamGuard {
    fn drop(&mut self) {
        let mut table = lock(&self.table);
        if let Some(count) = table.get_mut(&self.address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                table.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn one_report_a_window_per_workspace() {
        let tracker = Tracker::new();
        let window = TimeDelta::seconds(60);
        assert!(tracker.admit("a", at(0), window));
        assert!(!tracker.admit("a", at(59), window));
        assert!(tracker.admit("b", at(59), window), "another workspace has its own window");
        assert!(tracker.admit("a", at(60), window));
        // A clock set back starts a new window instead of silencing the workspace.
        assert!(tracker.admit("a", at(10), window));
        tracker.forget("a");
        assert!(tracker.admit("a", at(11), window), "a failed write lets the next one through");
    }

    #[test]
    fn the_gate_forgets_old_workspaces() {
        let tracker = Tracker::new();
        let window = TimeDelta::seconds(60);
        for n in 0..5000 {
            assert!(tracker.admit(&format!("ws-{n}"), at(n * 61), window));
        }
        let kept = lock(&tracker.gate).last.len();
        assert!(kept <= 2 * GATE_MIN_HIGH_WATER, "kept {kept}");
    }

    #[test]
    fn upstream_connections_are_counted_while_open() {
        let tracker = Tracker::new();
        let first = tracker.upstream_opened("127.0.0.1:8080");
        let second = tracker.upstream_opened("127.0.0.1:8080");
        assert_eq!(tracker.upstream_connections("127.0.0.1:8080"), 2);
        assert_eq!(tracker.upstream_connections("127.0.0.1:9090"), 0);
        drop(first);
        assert_eq!(tracker.upstream_connections("127.0.0.1:8080"), 1);
        drop(second);
        assert_eq!(tracker.upstream_connections("127.0.0.1:8080"), 0);
        assert!(lock(&tracker.upstream).is_empty());
    }
}
