//! The metrics filter's own label rules: the reserved values, and the dotted stat name the
//! shipped `stats_tags` take apart. What a label value may hold is common to every filter
//! ([`gateway_common::label_value`]).

use std::borrow::Cow;

/// The value a label takes when its own value is over the cap or not in its allowed list.
pub const OVERFLOW_VALUE: &str = "other";

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
