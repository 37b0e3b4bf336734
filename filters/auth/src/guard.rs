//! The brute-force guard: failed authentications are counted per client address in fixed
//! windows; once a client has `max_failures` in its window, the credentials it presents are
//! refused with 429 and **not verified** until the window ends, so forged tokens stop costing
//! signature checks. Tokens this worker has already verified still pass (their check costs
//! nothing). Counts live in the worker's memory (no host call): with W Envoy workers a client
//! gets at most W × `max_failures` verifications per window.

use gateway_common::client_ip::mask;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// Clients tracked per worker at most. When a flood of distinct addresses fills the table,
/// addresses not in it are not guarded until windows expire (the guard never refuses a client
/// it has not seen fail).
pub const MAX_CLIENTS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardSettings {
    pub max_failures: u32,
    pub window: Duration,
}

pub struct FailureGuard {
    settings: GuardSettings,
    clients: HashMap<IpAddr, Window>,
}

struct Window {
    started_ms: u64,
    failures: u32,
}

/// The guard's key for a client: its address, IPv6 to its /64 (one host's usual allocation,
/// which it can rotate through at will).
pub fn client_key(ip: IpAddr) -> IpAddr {
    mask(ip, 32, 64)
}

impl FailureGuard {
    pub fn new(settings: GuardSettings) -> FailureGuard {
        FailureGuard { settings, clients: HashMap::new() }
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.settings.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whole seconds (at least 1) until `client` may present credentials again, if it is
    /// locked out now.
    pub fn locked(&self, client: IpAddr, now_ms: u64) -> Option<u64> {
        let window = self.clients.get(&client_key(client))?;
        let ends_ms = window.started_ms.saturating_add(self.window_ms());
        (window.failures >= self.settings.max_failures && now_ms < ends_ms)
            .then(|| (ends_ms - now_ms).div_ceil(1000).max(1))
    }

    /// Counts one failed authentication of `client`.
    pub fn failed(&mut self, client: IpAddr, now_ms: u64) {
        let window_ms = self.window_ms();
        let key = client_key(client);
        if !self.clients.contains_key(&key) && self.clients.len() >= MAX_CLIENTS {
            self.clients.retain(|_, window| now_ms < window.started_ms.saturating_add(window_ms));
            if self.clients.len() >= MAX_CLIENTS {
                return;
            }
        }
        let window = self.clients.entry(key).or_insert(Window { started_ms: now_ms, failures: 0 });
        if now_ms >= window.started_ms.saturating_add(window_ms) {
            *window = Window { started_ms: now_ms, failures: 0 };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max_failures: u32, seconds: u64) -> FailureGuard {
        FailureGuard::new(GuardSettings { max_failures, window: Duration::from_secs(seconds) })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn locks_after_max_failures_until_the_window_ends() {
        let mut guard = guard(3, 60);
        let client = ip("203.0.113.7");
        for at in [0, 1_000, 2_000] {
            assert_eq!(guard.locked(client, at), None);
            guard.failed(client, at);
        }
        assert_eq!(guard.locked(client, 2_000), Some(58));
        assert_eq!(guard.locked(client, 59_001), Some(1));
        assert_eq!(guard.locked(client, 60_000), None);
        // A new window starts with the next failure.
        guard.failed(client, 60_000);
        assert_eq!(guard.locked(client, 60_000), None);
        assert_eq!(guard.locked(ip("203.0.113.8"), 2_000), None, "other clients are not affected");
    }

    #[test]
    fn an_ipv6_client_is_one_slash_64() {
        let mut guard = guard(1, 60);
        guard.failed(ip("2001:db8:1:2::1"), 0);
        assert!(guard.locked(ip("2001:db8:1:2:ffff::9"), 1).is_some());
        assert!(guard.locked(ip("2001:db8:1:3::1"), 1).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_reuses_expired_windows() {
        let mut guard = guard(1, 1);
        for n in 0..MAX_CLIENTS as u32 {
            guard.failed(IpAddr::from(n.to_be_bytes()), 0);
        }
        let late = ip("198.51.100.1");
        guard.failed(late, 500);
        assert_eq!(guard.locked(late, 500), None, "no room while every window is live");
        guard.failed(late, 1_000);
        assert!(guard.locked(late, 1_000).is_some(), "expired windows make room");
        assert!(guard.clients.len() <= MAX_CLIENTS);
    }
}
