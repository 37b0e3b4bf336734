//! Reading the Prometheus text exposition format that Envoy's admin serves.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Series {
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(name, value)| self.labels.get(*name).map(String::as_str) == Some(*value))
    }
}

/// The samples whose metric name is exactly `family`.
pub fn parse(text: &str, family: &str) -> Vec<Series> {
    text.lines().filter(|line| !line.starts_with('#')).filter_map(parse_line).filter(|s| s.name == family).collect()
}

fn parse_line(line: &str) -> Option<Series> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse::<f64>().ok()?;
    let (name, labels) = match head.split_once('{') {
        None => (head, BTreeMap::new()),
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Series { name: name.to_string(), labels, value })
}

/// `a="x",b="y\"z"` (Envoy escapes `\`, `"` and newlines in values).
fn parse_labels(mut text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    while !text.is_empty() {
        let (name, rest) = text.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(name.to_string(), value);
        text = rest.get(end + 1..)?.trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_values() {
        let text = "# TYPE x counter\nx{a=\"1\",b=\"q\\\"t\"} 5\nx 2\nxy{a=\"1\"} 9\nh_bucket{le=\"+Inf\"} 3\n";
        let series = parse(text, "x");
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].labels.get("b").unwrap(), "q\"t");
        assert_eq!(series[0].value, 5.0);
        assert!(series[0].has(&[("a", "1")]));
        assert!(series[1].labels.is_empty());
        assert_eq!(parse(text, "h_bucket")[0].labels["le"], "+Inf");
    }
}
