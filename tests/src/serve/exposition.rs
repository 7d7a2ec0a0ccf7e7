//! A reader of the Prometheus text exposition format (version 0.0.4, and the OpenMetrics text
//! that `prometheus-client` writes): samples as (name, labels, value), so a test compares
//! counts with what it did instead of searching the text for a number.

use std::collections::BTreeMap;

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample of one scrape, and the text it came from (for assertion messages).
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Exposition {
    /// Parses a whole exposition; the error names the line that is not a sample.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut samples = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample =
                parse_sample(line).map_err(|why| format!("line {}: {why}: {line}", number + 1))?;
            samples.push(sample);
        }
        Ok(Exposition {
            samples,
            text: text.to_owned(),
        })
    }

    /// The samples called `name` whose labels include every `(label, value)` of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(k, v)| sample.labels.get(*k).is_some_and(|have| have == v))
        })
    }

    /// The sum of the samples [`Exposition::matching`] selects (0 when there is none: a
    /// counter no event has touched yet is often not exported at all).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample is called `name` (or is a histogram's or summary's part of it).
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| {
            s.name == name
                || s.name
                    .strip_prefix(name)
                    .is_some_and(|rest| matches!(rest, "_bucket" | "_sum" | "_count" | "_total"))
        })
    }

    /// The distinct sample names, sorted (for messages).
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.samples.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("`{name}` is not a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inside)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse()
            .map_err(|_| format!("`{number}` is not a number"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `a="x",b="y"}` (after the opening brace); returns the labels and what follows
/// the closing brace.
fn parse_labels(mut text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = text.find('=').ok_or("a label without `=`")?;
        let key = text[..eq].trim().to_owned();
        text = text[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("an unfinished escape".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("an unterminated label value".into()),
            }
        };
        labels.insert(key, value);
        text = text[end + 1..].trim_start();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_labels_and_escapes_are_read() {
        let text = "# HELP x_total Things.\n# TYPE x_total counter\n\
                    x_total{team=\"a\",reason=\"say \\\"hi\\\"\\n\"} 3\n\
                    y 1.5e3 1700000000\n\
                    z_bucket{le=\"+Inf\"} 7\n# EOF\n";
        let parsed = Exposition::parse(text).unwrap();
        assert_eq!(parsed.samples.len(), 3);
        assert_eq!(parsed.samples[0].labels["reason"], "say \"hi\"\n");
        assert_eq!(parsed.sum("x_total", &[("team", "a")]), 3.0);
        assert_eq!(parsed.sum("x_total", &[("team", "b")]), 0.0);
        assert_eq!(parsed.sum("y", &[]), 1500.0);
        assert!(parsed.has("z"));
        assert!(Exposition::parse("x{a=\"1} 2\n").is_err());
        assert!(Exposition::parse("x one\n").is_err());
    }
}
