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

/// The network of `ip` with `v4_prefix` (IPv4) or `v6_prefix` (IPv6) leading bits kept and
/// the rest zeroed, like Envoy's `masked_remote_address` descriptor. One IPv6 client usually
/// holds a whole /64, so keying by its full address would let it mint keys at will.
pub fn mask(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX.checked_shl(32 - u32::from(v4_prefix.min(32))).unwrap_or(0);
            IpAddr::V4((bits & kept).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX.checked_shl(128 - u32::from(v6_prefix.min(128))).unwrap_or(0);
            IpAddr::V6((bits & kept).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_the_leading_bits() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(mask(ip("203.0.113.77"), 32, 64), ip("203.0.113.77"));
        assert_eq!(mask(ip("203.0.113.77"), 24, 64), ip("203.0.113.0"));
        assert_eq!(mask(ip("203.0.113.77"), 0, 64), ip("0.0.0.0"));
        assert_eq!(mask(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 32, 64), ip("2001:db8:1:2::"));
        assert_eq!(mask(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 32, 48), ip("2001:db8:1::"));
        assert_eq!(mask(ip("2001:db8::1"), 32, 128), ip("2001:db8::1"));
        assert_eq!(mask(ip("2001:db8::1"), 32, 0), ip("::"));
    }

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
