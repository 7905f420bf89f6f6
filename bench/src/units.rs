//! Values as fio writes them: sizes with `k`/`m`/`g` suffixes (powers of
//! 1024, fio's default `kb_base`), times with unit suffixes (seconds when
//! bare), percentages; and the scaled numbers fio prints.

use std::time::Duration;

/// A size that may be a share of the device (`size=50%`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeSpec {
    /// Bytes.
    Bytes(u64),
    /// Percent of the device or file (0 < p ≤ 100).
    Percent(f64),
}

impl SizeSpec {
    /// The bytes this means on a target of `total` bytes.
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            SizeSpec::Bytes(bytes) => bytes,
            SizeSpec::Percent(p) => ((total as f64) * p / 100.0) as u64,
        }
    }
}

/// Parses `4096`, `4k`, `4K`, `4KiB`, `1m`, `2g`, `1t` (powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits_end == 0 {
        return None;
    }
    let number: u64 = text[..digits_end].parse().ok()?;
    let suffix = text[digits_end..].trim().to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return None,
    };
    number.checked_mul(1u64 << shift)
}

/// Parses a size or a percentage (`50%`).
pub fn parse_size_spec(text: &str) -> Option<SizeSpec> {
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        let p: f64 = percent.trim().parse().ok()?;
        return (p > 0.0 && p <= 100.0).then_some(SizeSpec::Percent(p));
    }
    parse_size(text).map(SizeSpec::Bytes)
}

/// Parses a time: bare numbers are `default_unit`; suffixes `ns`, `us`,
/// `ms`, `s`, `m`, `h`, `d`; a decimal point is allowed (`0.5s`).
pub fn parse_time(text: &str, default_unit: Duration) -> Option<Duration> {
    let text = text.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    if number_end == 0 {
        return None;
    }
    let number: f64 = text[..number_end].parse().ok()?;
    let unit = match text[number_end..].trim().to_ascii_lowercase().as_str() {
        "" => default_unit,
        "ns" | "nsec" => Duration::from_nanos(1),
        "us" | "usec" => Duration::from_micros(1),
        "ms" | "msec" => Duration::from_millis(1),
        "s" | "sec" => Duration::from_secs(1),
        "m" | "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        "d" => Duration::from_secs(86400),
        _ => return None,
    };
    let nanos = number * unit.as_nanos() as f64;
    (0.0..1e19)
        .contains(&nanos)
        .then(|| Duration::from_nanos(nanos as u64))
}

/// fio's boolean values: `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A byte count the way fio prints it in binary units: `4096B`, `4KiB`,
/// `3702MiB` (integral when exact, else one decimal below 10, like fio).
pub fn bytes_binary(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    scaled(bytes as f64, 1024.0, &UNITS)
}

/// A byte count in decimal units (`1294MB`), as fio prints in parentheses.
pub fn bytes_decimal(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    scaled(bytes as f64, 1000.0, &UNITS)
}

/// A rate in binary units per second (`1234MiB/s`).
pub fn rate_binary(bytes_per_sec: f64) -> String {
    const UNITS: [&str; 6] = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s", "PiB/s"];
    scaled(bytes_per_sec, 1024.0, &UNITS)
}

/// A rate in decimal units per second (`1294MB/s`).
pub fn rate_decimal(bytes_per_sec: f64) -> String {
    const UNITS: [&str; 6] = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s", "PB/s"];
    scaled(bytes_per_sec, 1000.0, &UNITS)
}

/// A count with fio's `k`/`M` suffix (`316k`), as in `IOPS=316k`.
pub fn count(value: f64) -> String {
    const UNITS: [&str; 5] = ["", "k", "M", "G", "T"];
    scaled(value, 1000.0, &UNITS)
}

/// Scales `value` so it shows at most four significant integer digits.
fn scaled(value: f64, base: f64, units: &[&str]) -> String {
    let mut value = value.max(0.0);
    let mut index = 0;
    while value >= 10_000.0 && index + 1 < units.len() {
        value /= base;
        index += 1;
    }
    if value >= 100.0 || index == 0 || (value.fract() == 0.0) {
        format!("{:.0}{}", value.round(), units[index])
    } else if value >= 10.0 {
        format!("{value:.1}{}", units[index])
    } else {
        format!("{value:.2}{}", units[index])
    }
}

/// A duration as `00m:05s` for the progress line.
pub fn eta(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 3600 {
        format!("{}h:{:02}m:{:02}s", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{:02}m:{:02}s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4k"), Some(4096));
        assert_eq!(parse_size("4KiB"), Some(4096));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size("4x"), None);
        assert_eq!(parse_size_spec("50%"), Some(SizeSpec::Percent(50.0)));
        assert_eq!(parse_size_spec("0%"), None);
        assert_eq!(SizeSpec::Percent(25.0).resolve(4096), 1024);
    }

    #[test]
    fn times() {
        let s = Duration::from_secs(1);
        assert_eq!(parse_time("3", s), Some(Duration::from_secs(3)));
        assert_eq!(parse_time("500ms", s), Some(Duration::from_millis(500)));
        assert_eq!(parse_time("0.5s", s), Some(Duration::from_millis(500)));
        assert_eq!(parse_time("2m", s), Some(Duration::from_secs(120)));
        assert_eq!(parse_time("10us", s), Some(Duration::from_micros(10)));
        assert_eq!(parse_time("fast", s), None);
    }

    #[test]
    fn printing() {
        assert_eq!(bytes_binary(4096), "4096B");
        assert_eq!(bytes_binary(3702 << 20), "3702MiB");
        assert_eq!(count(316_000.0), "316k");
        assert_eq!(count(950.0), "950");
        assert_eq!(rate_binary(1234.0 * 1048576.0), "1234MiB/s");
        assert_eq!(eta(Duration::from_secs(65)), "01m:05s");
    }
}
