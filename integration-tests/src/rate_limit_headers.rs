//! Reading the `RateLimit` and `RateLimit-Policy` response headers as a client would: as
//! structured-field Lists (RFC 8941), parsed with the `sfv` crate.

use std::collections::BTreeMap;

/// Parses a structured-field List of `"name";param=int` items into name -> params; panics
/// (failing the test) on anything else.
pub fn rate_limit_field(value: &str) -> BTreeMap<String, BTreeMap<String, i64>> {
    let list = sfv::Parser::parse_list(value.as_bytes()).unwrap_or_else(|e| panic!("`{value}` is not an SF List: {e}"));
    list.into_iter()
        .map(|entry| match entry {
            sfv::ListEntry::Item(item) => {
                let name =
                    item.bare_item.as_str().unwrap_or_else(|| panic!("`{value}`: name is not a String")).to_string();
                let params = item
                    .params
                    .iter()
                    .map(|(key, param)| {
                        (key.clone(), param.as_int().unwrap_or_else(|| panic!("`{value}`: {key} is not an Integer")))
                    })
                    .collect();
                (name, params)
            }
            sfv::ListEntry::InnerList(_) => panic!("`{value}`: unexpected inner list"),
        })
        .collect()
}

/// The params an item is expected to have.
pub fn params(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(key, value)| (key.to_string(), *value)).collect()
}
