//! Label values and stat names.
//!
//! Envoy stats have no labels of their own: a wasm metric is one dotted name,
//! `gateway_requests_total.route.orders.code.200`, which Envoy stores as
//! `wasmcustom.gateway_requests_total.route.orders.code.200` and which the shipped
//! `stats_config.stats_tags` regexes turn back into `gateway_requests_total{route="orders",code="200"}`.
//! For that to be unambiguous a value can never contain a dot, so values are reduced to
//! `[A-Za-z0-9_-]` and a bounded length.

use std::borrow::Cow;

/// The value a label takes when its own value is over the cap or not in its allowed list.
pub const OVERFLOW_VALUE: &str = "other";
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

/// Keeps real values apart from the values the filter itself gives a label: `other` (over
/// the cap) and the label's missing value (`anonymous` for the consumer). A real value equal
/// to one of them, or to one of them followed by underscores, gets one more underscore, so
/// a token whose subject is `anonymous` is counted as `anonymous_`, never as unauthenticated
/// traffic, and no two distinct values end up as one.
pub fn escape_reserved<'a>(value: Cow<'a, str>, missing_value: &str) -> Cow<'a, str> {
    let stem = value.trim_end_matches('_');
    if stem == OVERFLOW_VALUE || stem == missing_value {
        let mut escaped = value.into_owned();
        escaped.push('_');
        Cow::Owned(escaped)
    } else {
        value
    }
}

/// `family.name1.value1.name2.value2…`: the dotted form the stats_tags regexes take apart.
pub fn stat_name<'a>(family: &str, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut name = String::with_capacity(128);
    name.push_str(family);
    for (label, value) in labels {
        name.push('.');
        name.push_str(label);
        name.push('.');
        name.push_str(value);
    }
    name
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

    #[test]
    fn real_values_never_take_a_reserved_value() {
        let escape = |value: &str| escape_reserved(Cow::Borrowed(value), "anonymous").into_owned();
        assert_eq!(escape("anonymous"), "anonymous_");
        assert_eq!(escape("other"), "other_");
        assert_eq!(escape("anonymous_"), "anonymous__", "still distinct from an escaped `anonymous`");
        assert_eq!(escape("other__"), "other___");
        for kept in ["ada", "anonymous-x", "_anonymous", "others", "Other"] {
            assert_eq!(escape(kept), kept);
        }
        assert!(matches!(escape_reserved(Cow::Borrowed("ada"), "anonymous"), Cow::Borrowed("ada")));
    }

    #[test]
    fn stat_names_alternate_label_and_value() {
        assert_eq!(
            stat_name("gateway_requests_total", [("route", "orders"), ("code", "200")]),
            "gateway_requests_total.route.orders.code.200"
        );
        assert_eq!(stat_name("family", []), "family");
    }
}
