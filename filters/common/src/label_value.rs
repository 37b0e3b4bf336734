//! Values that go into a stat name as a label value.
//!
//! Envoy stats have no labels of their own: a wasm metric is one dotted name,
//! `gateway_requests_total.route.orders.code.200`, which Envoy stores as
//! `wasmcustom.gateway_requests_total.route.orders.code.200` and which the shipped
//! `stats_config.stats_tags` regexes turn back into `gateway_requests_total{route="orders",code="200"}`.
//! For that to be unambiguous a value can never contain a dot, so values are reduced to
//! `[A-Za-z0-9_-]` and a bounded length. The metrics filter's labels and the `plugin` label
//! (see [`crate::plugin`]) both keep to this rule.

use std::borrow::Cow;

/// Longest label value kept; longer ones are cut (header values are client input).
pub const MAX_VALUE_LEN: usize = 64;

pub fn is_label_value(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_VALUE_LEN && value.bytes().all(is_value_byte)
}

fn is_value_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

/// Turns raw bytes (a header, a route name) into a label value: each byte outside
/// `[A-Za-z0-9_-]` becomes `_`, and the result is cut to [`MAX_VALUE_LEN`].
/// Returns `None` for empty input, so the caller can use the label's missing value.
pub fn sanitize(raw: &[u8]) -> Option<Cow<'_, str>> {
    let raw = raw.get(..MAX_VALUE_LEN).unwrap_or(raw);
    if raw.is_empty() {
        return None;
    }
    if raw.iter().copied().all(is_value_byte) {
        // All bytes are ASCII, so this cannot fail.
        return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
    }
    let cleaned = raw.iter().map(|&byte| if is_value_byte(byte) { byte as char } else { '_' }).collect();
    Some(Cow::Owned(cleaned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_values_are_borrowed_unchanged() {
        assert!(matches!(sanitize(b"orders-v2_EU"), Some(Cow::Borrowed("orders-v2_EU"))));
    }

    #[test]
    fn separators_and_hostile_bytes_become_underscores() {
        assert_eq!(sanitize(b"a.b").unwrap(), "a_b");
        assert_eq!(sanitize(b"alice@example.com").unwrap(), "alice_example_com");
        assert_eq!(sanitize(b"x\ny\"z{}=\\").unwrap(), "x_y_z____");
        assert_eq!(sanitize("é".as_bytes()).unwrap(), "__");
        assert_eq!(sanitize(&[0xff, 0xfe, b'a']).unwrap(), "__a");
    }

    #[test]
    fn long_values_are_cut_and_empty_ones_are_missing() {
        let long = "a".repeat(1000);
        assert_eq!(sanitize(long.as_bytes()).unwrap().len(), MAX_VALUE_LEN);
        assert_eq!(sanitize(b""), None);
    }

    #[test]
    fn every_sanitized_value_is_a_label_value() {
        for raw in [&b"a.b.c"[..], b"   ", b"\x00", b"/api/v1?x=1", b"-"] {
            let value = sanitize(raw).unwrap();
            assert!(is_label_value(&value), "{value:?}");
        }
    }
}
