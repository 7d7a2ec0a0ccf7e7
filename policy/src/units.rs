//! Human-friendly sizes (`512KiB`, `1MiB`, `4096`) and durations (`5s`, `500ms`, `2m`).
//!
//! Limits in a policy are read by people first, so they are written the way people write them;
//! this module is the only place that turns those spellings into numbers.

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// A byte count written as plain bytes or with a binary (`KiB`, `MiB`, `GiB`) or decimal
/// (`KB`, `MB`, `GB`) suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A duration written with a unit: `ms`, `s`, `m` or `h` (`500ms`, `5s`, `2m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

/// A share of CPU time in cores (`0.5`, `1.5`, `2`), held in thousandths of a core so that
/// it compares exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cores(u32);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => {
                return Err(format!(
                "unknown size unit `{other}` in `{text}`: use bytes, KiB, MiB or GiB (e.g. 512KiB)"
            ))
            }
        };
        let value: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}` is not a size: write a whole number with an optional unit, e.g. 512KiB or 1MiB"))?;
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{text}` is too large"))
    }
}

impl Span {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let value: u64 = digits.parse().map_err(|_| {
            format!("`{text}` is not a duration: write a whole number with a unit, e.g. 500ms, 5s or 2m")
        })?;
        let duration = match unit.trim() {
            "ms" => Some(Duration::from_millis(value)),
            "s" => Some(Duration::from_secs(value)),
            "m" => value.checked_mul(60).map(Duration::from_secs),
            "h" => value.checked_mul(3600).map(Duration::from_secs),
            "" => {
                return Err(format!(
                    "duration `{text}` has no unit: write e.g. {text}s or {text}ms"
                ))
            }
            other => {
                return Err(format!(
                    "unknown duration unit `{other}` in `{text}`: use ms, s, m or h"
                ))
            }
        };
        duration
            .map(Span)
            .ok_or_else(|| format!("duration `{text}` is too large"))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }
}

impl Cores {
    /// The least the kernel can enforce: a quota of 1 ms per 100 ms period.
    pub const MIN: Cores = Cores(10);
    /// More cores than any host has: a typo rather than a limit.
    pub const MAX: Cores = Cores(4096 * 1000);

    /// `count` thousandths of a core, within [`Cores::MIN`]..=[`Cores::MAX`].
    pub fn from_millicores(count: u32) -> Option<Cores> {
        (Cores::MIN.0..=Cores::MAX.0)
            .contains(&count)
            .then_some(Cores(count))
    }

    pub fn millicores(self) -> u32 {
        self.0
    }

    /// A number of cores as written in YAML (`0.5`, `2`), rounded to a thousandth.
    pub fn from_f64(value: f64) -> Result<Cores, String> {
        let range = format!("between {} and {} cores", Cores::MIN, Cores::MAX);
        if !value.is_finite() || value <= 0.0 {
            return Err(format!(
                "{value} is not a share of CPU time: give a number {range}, e.g. 0.5 or 1.5"
            ));
        }
        let millis = (value * 1000.0).round();
        if millis > f64::from(u32::MAX) {
            return Err(format!("{value} cores is too many: give a number {range}"));
        }
        Cores::from_millicores(millis as u32)
            .ok_or_else(|| format!("{value} cores is out of range: give a number {range}"))
    }

    /// A decimal number of cores as written on a command line (`0.5`, `1.5`, `2`).
    pub fn parse(text: &str) -> Result<Cores, String> {
        let text = text.trim();
        let well_formed = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && text.bytes().filter(|b| *b == b'.').count() <= 1
            && text.bytes().any(|b| b.is_ascii_digit());
        if !well_formed {
            return Err(format!(
                "`{text}` is not a number of cores: write a decimal number, e.g. 0.5 or 1.5"
            ));
        }
        let value: f64 = text.parse().map_err(|_| {
            format!("`{text}` is not a number of cores: write a decimal number, e.g. 0.5 or 1.5")
        })?;
        Cores::from_f64(value)
    }

    /// The CFS quota for `period_us`: the microseconds of CPU time the execution may use in
    /// each period (`cpu.max`, `cpu.cfs_quota_us`).
    pub fn quota_us(self, period_us: u64) -> u64 {
        period_us * u64::from(self.0) / 1000
    }
}

impl fmt::Display for Cores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, thousandths) = (self.0 / 1000, self.0 % 1000);
        if thousandths == 0 {
            return write!(f, "{whole}");
        }
        let fraction = format!("{thousandths:03}");
        write!(f, "{whole}.{}", fraction.trim_end_matches('0'))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

/// Thousandths of a core, as the node service hands `--cpus` to the execution's worker
/// process; read back with the same bounds as a parsed number.
impl Serialize for Cores {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let millicores = u32::deserialize(deserializer)?;
        Cores::from_millicores(millicores).ok_or_else(|| {
            de::Error::custom(format!(
                "{millicores} thousandths of a core is out of range ({} to {} cores)",
                Cores::MIN,
                Cores::MAX
            ))
        })
    }
}

/// Accepts a YAML string (`"1MiB"`) or a plain integer (bytes).
impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 512KiB, 1MiB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Accepts a YAML string with a unit (`"5s"`); a bare number is refused because its unit
/// would be a guess.
impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Span;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as 500ms, 5s or 2m")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Span, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit: write e.g. {v}s or {v}ms"
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Span, E> {
                self.visit_u64(v.unsigned_abs())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Span, E> {
                Span::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A size: bytes as an integer, or a string with a unit (512KiB, 1MiB, 1GiB, 1MB)",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+ ?(B|KiB|MiB|GiB|KB|kB|MB|GB)?$"}
            ]
        })
    }
}

impl JsonSchema for Span {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration with a unit: 500ms, 5s, 2m, 1h",
            "type": "string",
            "pattern": "^[0-9]+ ?(ms|s|m|h)$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_plain_bytes_and_units() {
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert_eq!(ByteSize::parse("512KiB"), Ok(ByteSize(512 * 1024)));
        assert_eq!(ByteSize::parse("1MiB"), Ok(ByteSize(1 << 20)));
        assert_eq!(ByteSize::parse("2GiB"), Ok(ByteSize(2 << 30)));
        assert_eq!(ByteSize::parse("1MB"), Ok(ByteSize(1_000_000)));
        assert_eq!(ByteSize::parse("10 KiB"), Ok(ByteSize(10 * 1024)));
    }

    #[test]
    fn sizes_reject_garbage_with_a_hint() {
        for bad in [
            "",
            "KiB",
            "1.5MiB",
            "-1",
            "1 parsec",
            "99999999999999999999",
            "18446744073709551615GiB",
        ] {
            let err = ByteSize::parse(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
        assert!(ByteSize::parse("1TB").unwrap_err().contains("KiB"));
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(Span::parse("5s"), Ok(Span(Duration::from_secs(5))));
        assert_eq!(Span::parse("500ms"), Ok(Span(Duration::from_millis(500))));
        assert_eq!(Span::parse("2m"), Ok(Span(Duration::from_secs(120))));
        assert_eq!(Span::parse("1h"), Ok(Span(Duration::from_secs(3600))));
        assert!(Span::parse("5").unwrap_err().contains("5s"));
        assert!(Span::parse("5d").unwrap_err().contains("ms, s, m or h"));
        assert!(Span::parse("s").is_err());
        assert!(Span::parse("18446744073709551615h").is_err());
    }

    #[test]
    fn display_round_trips() {
        for text in ["512KiB", "1MiB", "1000", "3GiB"] {
            assert_eq!(ByteSize::parse(text).unwrap().to_string(), text);
        }
        for text in ["500ms", "5s", "2m", "0s"] {
            assert_eq!(Span::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn cores_are_decimal_and_bounded() {
        assert_eq!(Cores::parse("1.5").unwrap().millicores(), 1500);
        assert_eq!(Cores::parse("0.5").unwrap().to_string(), "0.5");
        assert_eq!(Cores::parse("2").unwrap().to_string(), "2");
        assert_eq!(Cores::parse(".25").unwrap().to_string(), "0.25");
        assert_eq!(Cores::from_f64(0.125).unwrap().to_string(), "0.125");
        assert_eq!(Cores::from_f64(1.0).unwrap(), Cores::parse("1").unwrap());
        for bad in [
            "", ".", "-1", "1,5", "1.2.3", "half", "0", "0.001", "5000", "1e3",
        ] {
            assert!(Cores::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Cores::from_f64(f64::NAN).is_err());
        assert!(Cores::from_f64(f64::INFINITY).is_err());
        assert!(Cores::parse("0.001")
            .unwrap_err()
            .contains("between 0.01 and 4096"));
        assert_eq!(Cores::parse("0.5").unwrap().quota_us(100_000), 50_000);
        assert_eq!(Cores::parse("1.5").unwrap().quota_us(100_000), 150_000);
        assert!(Cores::parse("0.5").unwrap() < Cores::parse("1").unwrap());
    }

    #[test]
    fn yaml_forms() {
        let size: ByteSize = serde_yaml::from_str("1MiB").unwrap();
        assert_eq!(size, ByteSize(1 << 20));
        let size: ByteSize = serde_yaml::from_str("2048").unwrap();
        assert_eq!(size, ByteSize(2048));
        let err = serde_yaml::from_str::<Span>("30").unwrap_err().to_string();
        assert!(err.contains("30s"), "{err}");
    }
}
