//! The client's IP address, as a rate-limit key or a log field.
//!
//! The filters take it from Envoy's `source.address` attribute, which is Envoy's *trusted
//! client address*: the TCP peer when the connection manager has `use_remote_address: true`,
//! moved left along `x-forwarded-for` by `xff_num_trusted_hops` proxies the operator trusts.
//! Envoy already applies those rules (for access logs, RBAC and its own headers), so the
//! filters never parse `x-forwarded-for` themselves and cannot disagree with Envoy.

use std::net::{IpAddr, SocketAddr};

/// Parses `source.address` (`1.2.3.4:5678`, `[::1]:5678`, or a bare address when Envoy took
/// it from `x-forwarded-for`).
pub fn from_source_address(address: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(address).ok()?;
    text.parse::<SocketAddr>().map(|address| address.ip()).or_else(|_| text.parse::<IpAddr>()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_envoy_reports() {
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        assert_eq!(from_source_address(b"10.0.0.7:51000"), ip("10.0.0.7"));
        assert_eq!(from_source_address(b"[2001:db8::1]:443"), ip("2001:db8::1"));
        assert_eq!(from_source_address(b"203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(from_source_address(b"2001:db8::2"), ip("2001:db8::2"));
        for garbage in [&b""[..], b"garbage", b"\xff\xfe", b"1.2.3.4:", b"envoy://internal"] {
            assert_eq!(from_source_address(garbage), None);
        }
    }
}
