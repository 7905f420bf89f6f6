//! Simulator configuration and the `sim[,key=value...]` device-name syntax.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::SimError;

/// Every option key, for error messages.
const KNOWN_KEYS: &str =
    "size, lba, namespaces, file, queues, qdepth, vectors, mdts, dstrd, latency, iops, serial, model, spin, idle, dbbuf, fault";

/// An example setting of `key`, for a known key written without a value.
fn example_of(key: &str) -> Option<&'static str> {
    Some(match key {
        "size" => "size=4G",
        "lba" => "lba=512",
        "namespaces" => "namespaces=2",
        "file" => "file=/var/tmp/ns1.img",
        "queues" => "queues=8",
        "qdepth" => "qdepth=256",
        "vectors" => "vectors=9",
        "mdts" => "mdts=5",
        "dstrd" => "dstrd=0",
        "latency" => "latency=20us",
        "iops" => "iops=500000",
        "serial" => "serial=SIM1",
        "model" => "model=sim",
        "spin" => "spin=50us",
        "idle" => "idle=1ms",
        "dbbuf" => "dbbuf=off",
        "fault" => "fault=drop@5",
        _ => return None,
    })
}

/// Completion latency per command class (zero, fixed, or per operation).
///
/// Admin commands always complete as soon as they are executed; the model
/// applies to I/O commands only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencyModel {
    /// Read.
    pub read: Duration,
    /// Write.
    pub write: Duration,
    /// Flush.
    pub flush: Duration,
    /// Every other I/O command (Write Zeroes, Dataset Management, invalid ones).
    pub other: Duration,
}

impl LatencyModel {
    /// No latency at all: completions are posted as soon as the command ran.
    pub const ZERO: Self = Self::fixed(Duration::ZERO);

    /// The same latency for every I/O command.
    #[must_use]
    pub const fn fixed(latency: Duration) -> Self {
        Self {
            read: latency,
            write: latency,
            flush: latency,
            other: latency,
        }
    }

    /// Whether every latency is zero.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
}

impl fmt::Display for LatencyModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        if *self == Self::fixed(self.read) {
            return f.write_str(&format_duration(self.read));
        }
        let mut first = true;
        for (name, d) in [
            ("read", self.read),
            ("write", self.write),
            ("flush", self.flush),
            ("other", self.other),
        ] {
            if d.is_zero() {
                continue;
            }
            if !first {
                f.write_str("/")?;
            }
            first = false;
            write!(f, "{name}:{}", format_duration(d))?;
        }
        Ok(())
    }
}

impl FromStr for LatencyModel {
    type Err = SimError;

    /// `0`, a fixed duration such as `10us`, or per-operation
    /// `read:20us/write:50us/flush:1ms/other:5us` (unnamed operations get 0).
    fn from_str(s: &str) -> Result<Self, SimError> {
        const EXPECTED: &str =
            "`0`, a duration (e.g. `10us`), or per-op `read:20us/write:50us/flush:1ms/other:5us`";
        let bad = || invalid("latency", s, EXPECTED);
        if !s.contains(':') {
            return parse_duration(s).map(Self::fixed).ok_or_else(bad);
        }
        let mut model = Self::ZERO;
        for part in s.split('/') {
            let (op, value) = part.split_once(':').ok_or_else(bad)?;
            let d = parse_duration(value).ok_or_else(bad)?;
            match op.trim() {
                "read" => model.read = d,
                "write" => model.write = d,
                "flush" => model.flush = d,
                "other" => model.other = d,
                _ => return Err(bad()),
            }
        }
        Ok(model)
    }
}

/// The simulated controller's configuration.
///
/// Parse it from a device name (`"sim,size=4G,lba=512".parse()`), or start
/// from [`SimOptions::default`] and set fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimOptions {
    /// Size of each namespace in bytes (`size=`, K/M/G/T suffixes; default 1G).
    pub size: u64,
    /// Logical block size in bytes, 512 or 4096 (`lba=`, default 4096).
    pub lba_size: u32,
    /// Number of namespaces, 1..=1024 (`namespaces=`, default 1).
    pub namespaces: u32,
    /// Backing file of namespace 1 (`file=`), created or extended to
    /// `size`; the others (and namespace 1 without it) live in RAM.
    pub file: Option<PathBuf>,
    /// Most I/O SQ/CQ pairs the controller grants (`queues=`, default 64).
    pub queues: u16,
    /// Largest queue in entries, CAP.MQES + 1 (`qdepth=`, 2..=65536, default 1024).
    pub qdepth: u32,
    /// MSI-X table size (`vectors=`, 1..=2048, default 65).
    pub vectors: u16,
    /// Maximum Data Transfer Size exponent in 4 KiB units, 0 = unlimited
    /// (`mdts=`, 0..=16, default 5 = 128 KiB).
    pub mdts: u8,
    /// Doorbell stride exponent CAP.DSTRD: doorbells `4 << dstrd` bytes
    /// apart (`dstrd=`, 0..=15, default 0).
    pub dstrd: u8,
    /// Completion latency (`latency=`, default 0).
    pub latency: LatencyModel,
    /// Most I/O commands completed per second, 0 = unlimited (`iops=`).
    pub iops: u64,
    /// Serial number, at most 20 ASCII characters (`serial=`).
    pub serial: String,
    /// Model number, at most 40 ASCII characters (`model=`).
    pub model: String,
    /// How long the device thread keeps spinning after activity before it
    /// starts sleeping (`spin=`, default 50us).
    pub spin: Duration,
    /// Longest sleep of an idle device thread between register polls, the
    /// worst-case extra latency of the first command after idling
    /// (`idle=`, default 1ms).
    pub idle: Duration,
    /// Whether the controller supports Doorbell Buffer Config, shadow
    /// doorbells with EventIdx, as QEMU's and cloud NVMe do (`dbbuf=on|off`,
    /// default on).
    pub dbbuf: bool,
    /// Faults at given I/O commands (`fault=KIND@N[+KIND@N...]`, see
    /// [`super::FaultPlan`]).
    pub faults: super::FaultPlan,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            size: 1 << 30,
            lba_size: 4096,
            namespaces: 1,
            file: None,
            queues: 64,
            qdepth: 1024,
            vectors: 65,
            mdts: 5,
            dstrd: 0,
            latency: LatencyModel::ZERO,
            iops: 0,
            serial: "ISONVME-SIM-0001".to_owned(),
            model: "isonvme simulated NVMe controller".to_owned(),
            spin: Duration::from_micros(50),
            idle: Duration::from_millis(1),
            dbbuf: true,
            faults: super::FaultPlan::default(),
        }
    }
}

impl SimOptions {
    /// Checks the cross-field rules (`FromStr` calls this; call it after
    /// setting fields by hand).
    pub fn validate(&self) -> Result<(), SimError> {
        if self.lba_size != 512 && self.lba_size != 4096 {
            return Err(invalid("lba", &self.lba_size.to_string(), "512 or 4096"));
        }
        if self.size < u64::from(self.lba_size)
            || !self.size.is_multiple_of(u64::from(self.lba_size))
        {
            return Err(invalid(
                "size",
                &self.size.to_string(),
                "a positive multiple of the LBA size (e.g. 1G, 512M, 64K)",
            ));
        }
        if usize::try_from(self.size).is_err() {
            return Err(invalid(
                "size",
                &self.size.to_string(),
                "a size that fits the address space",
            ));
        }
        if !(1..=1024).contains(&self.namespaces) {
            return Err(invalid(
                "namespaces",
                &self.namespaces.to_string(),
                "1..=1024",
            ));
        }
        if self.queues == 0 {
            return Err(invalid("queues", "0", "1..=65535"));
        }
        if !(2..=65536).contains(&self.qdepth) {
            return Err(invalid("qdepth", &self.qdepth.to_string(), "2..=65536"));
        }
        if !(1..=2048).contains(&self.vectors) {
            return Err(invalid("vectors", &self.vectors.to_string(), "1..=2048"));
        }
        if self.mdts > 16 {
            return Err(invalid(
                "mdts",
                &self.mdts.to_string(),
                "0..=16 (0 = unlimited)",
            ));
        }
        if self.dstrd > 15 {
            return Err(invalid("dstrd", &self.dstrd.to_string(), "0..=15"));
        }
        if self.doorbell_bytes() > 64 << 20 {
            return Err(invalid(
                "dstrd",
                &self.dstrd.to_string(),
                "a stride that keeps the doorbell space (2 x (queues + 1) x stride) within 64 MiB",
            ));
        }
        if self.serial.len() > 20 || !is_printable_ascii(&self.serial) {
            return Err(invalid(
                "serial",
                &self.serial,
                "at most 20 printable ASCII characters",
            ));
        }
        if self.model.len() > 40 || !is_printable_ascii(&self.model) {
            return Err(invalid(
                "model",
                &self.model,
                "at most 40 printable ASCII characters",
            ));
        }
        if self.idle.is_zero() {
            return Err(invalid("idle", "0", "a positive duration (e.g. 1ms)"));
        }
        Ok(())
    }

    /// Bytes of doorbell registers: an SQ tail and a CQ head doorbell for
    /// the admin queue and every I/O queue.
    pub(crate) fn doorbell_bytes(&self) -> usize {
        2 * (usize::from(self.queues) + 1) * (4usize << self.dstrd)
    }

    /// Namespace size in logical blocks.
    #[must_use]
    pub fn blocks(&self) -> u64 {
        self.size / u64::from(self.lba_size)
    }
}

impl FromStr for SimOptions {
    type Err = SimError;

    /// Parses `sim[,key=value...]`; see the field docs for the keys.
    fn from_str(name: &str) -> Result<Self, SimError> {
        let mut parts = name.split(',');
        if parts.next().map(str::trim) != Some("sim") {
            return Err(SimError::NotSim(name.to_owned()));
        }
        let mut o = SimOptions::default();
        for part in parts {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((key, value)) = part.split_once('=') else {
                if let Some(example) = example_of(part) {
                    return Err(SimError::MissingValue {
                        key: part.to_owned(),
                        example,
                    });
                }
                return Err(SimError::UnknownOption {
                    key: part.to_owned(),
                    known: KNOWN_KEYS,
                });
            };
            let value = value.trim();
            match key.trim() {
                "size" => {
                    o.size = parse_size(value).ok_or_else(|| {
                        invalid("size", value, "bytes with an optional K/M/G/T suffix")
                    })?;
                }
                "lba" => o.lba_size = parse_num(value, "lba", "512 or 4096")?,
                "namespaces" => o.namespaces = parse_num(value, "namespaces", "1..=1024")?,
                "file" => {
                    if value.is_empty() {
                        return Err(invalid("file", value, "a file path"));
                    }
                    o.file = Some(PathBuf::from(value));
                }
                "queues" => o.queues = parse_num(value, "queues", "1..=65535")?,
                "qdepth" => o.qdepth = parse_num(value, "qdepth", "2..=65536")?,
                "vectors" => o.vectors = parse_num(value, "vectors", "1..=2048")?,
                "mdts" => o.mdts = parse_num(value, "mdts", "0..=16 (0 = unlimited)")?,
                "dstrd" => o.dstrd = parse_num(value, "dstrd", "0..=15")?,
                "latency" => o.latency = value.parse()?,
                "iops" => {
                    o.iops = parse_num(value, "iops", "a number of I/O per second, 0 = unlimited")?
                }
                "serial" => o.serial = value.to_owned(),
                "model" => o.model = value.to_owned(),
                "spin" => {
                    o.spin = parse_duration(value)
                        .ok_or_else(|| invalid("spin", value, "a duration (e.g. 50us, 0)"))?;
                }
                "idle" => {
                    o.idle = parse_duration(value)
                        .ok_or_else(|| invalid("idle", value, "a duration (e.g. 1ms)"))?;
                }
                "fault" => o.faults.merge(super::FaultPlan::parse(value)?),
                "dbbuf" => {
                    o.dbbuf = match value {
                        "on" | "1" | "true" => true,
                        "off" | "0" | "false" => false,
                        _ => return Err(invalid("dbbuf", value, "on or off")),
                    }
                }
                other => {
                    return Err(SimError::UnknownOption {
                        key: other.to_owned(),
                        known: KNOWN_KEYS,
                    })
                }
            }
        }
        o.validate()?;
        Ok(o)
    }
}

impl fmt::Display for SimOptions {
    /// The device name that parses back into these options (only options
    /// that differ from the defaults are listed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = SimOptions::default();
        f.write_str("sim")?;
        if self.size != d.size {
            write!(f, ",size={}", format_size(self.size))?;
        }
        if self.lba_size != d.lba_size {
            write!(f, ",lba={}", self.lba_size)?;
        }
        if self.namespaces != d.namespaces {
            write!(f, ",namespaces={}", self.namespaces)?;
        }
        if let Some(file) = &self.file {
            write!(f, ",file={}", file.display())?;
        }
        if self.queues != d.queues {
            write!(f, ",queues={}", self.queues)?;
        }
        if self.qdepth != d.qdepth {
            write!(f, ",qdepth={}", self.qdepth)?;
        }
        if self.vectors != d.vectors {
            write!(f, ",vectors={}", self.vectors)?;
        }
        if self.mdts != d.mdts {
            write!(f, ",mdts={}", self.mdts)?;
        }
        if self.dstrd != d.dstrd {
            write!(f, ",dstrd={}", self.dstrd)?;
        }
        if self.latency != d.latency {
            write!(f, ",latency={}", self.latency)?;
        }
        if self.iops != d.iops {
            write!(f, ",iops={}", self.iops)?;
        }
        if self.serial != d.serial {
            write!(f, ",serial={}", self.serial)?;
        }
        if self.model != d.model {
            write!(f, ",model={}", self.model)?;
        }
        if self.spin != d.spin {
            write!(f, ",spin={}", format_duration(self.spin))?;
        }
        if self.idle != d.idle {
            write!(f, ",idle={}", format_duration(self.idle))?;
        }
        if !self.faults.is_empty() {
            write!(f, ",fault={}", self.faults)?;
        }
        if self.dbbuf != d.dbbuf {
            f.write_str(if self.dbbuf {
                ",dbbuf=on"
            } else {
                ",dbbuf=off"
            })?;
        }
        Ok(())
    }
}

fn invalid(key: &'static str, value: &str, expected: &'static str) -> SimError {
    SimError::InvalidOption {
        key,
        value: value.to_owned(),
        expected,
    }
}

fn parse_num<T: FromStr>(
    value: &str,
    key: &'static str,
    expected: &'static str,
) -> Result<T, SimError> {
    value.parse().map_err(|_| invalid(key, value, expected))
}

fn is_printable_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7F).contains(&b))
}

/// `4096`, `64K`, `512M`, `1G`, `2T` (binary multiples; `KiB`/`KB` style
/// suffixes accepted too).
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits);
    let num: u64 = num.parse().ok()?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    num.checked_mul(1u64 << shift)
}

fn format_size(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `0`, `250ns`, `10us` (or `µs`), `2ms`, `1s`.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num.parse().ok()?;
    match unit {
        "ns" => Some(Duration::from_nanos(n)),
        "us" | "µs" => Some(Duration::from_micros(n)),
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        _ => None,
    }
}

pub(crate) fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0".to_owned()
    } else if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else if ns.is_multiple_of(1_000_000) {
        format!("{}ms", ns / 1_000_000)
    } else if ns.is_multiple_of(1_000) {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let o: SimOptions = "sim".parse().unwrap();
        assert_eq!(o, SimOptions::default());
        assert_eq!(o.size, 1 << 30);
        assert_eq!(o.lba_size, 4096);
        assert_eq!(o.blocks(), 1 << 18);
        assert_eq!(o.to_string(), "sim");
    }

    #[test]
    fn every_option() {
        let o: SimOptions = "sim,size=64M,lba=512,namespaces=3,file=/tmp/x.img,queues=8,qdepth=64,\
                             vectors=9,mdts=0,dstrd=2,latency=read:20us/write:50us,iops=1000,\
                             serial=SN1,model=M1,spin=0,idle=2ms"
            .parse()
            .unwrap();
        assert_eq!(o.size, 64 << 20);
        assert_eq!(o.lba_size, 512);
        assert_eq!(o.namespaces, 3);
        assert_eq!(o.file, Some(PathBuf::from("/tmp/x.img")));
        assert_eq!(
            (o.queues, o.qdepth, o.vectors, o.mdts, o.dstrd),
            (8, 64, 9, 0, 2)
        );
        assert_eq!(o.latency.read, Duration::from_micros(20));
        assert_eq!(o.latency.write, Duration::from_micros(50));
        assert_eq!(o.latency.flush, Duration::ZERO);
        assert_eq!(o.iops, 1000);
        assert_eq!((o.serial.as_str(), o.model.as_str()), ("SN1", "M1"));
        assert_eq!((o.spin, o.idle), (Duration::ZERO, Duration::from_millis(2)));
        // Display round-trips.
        assert_eq!(o.to_string().parse::<SimOptions>().unwrap(), o);
    }

    #[test]
    fn latency_forms() {
        assert_eq!("0".parse::<LatencyModel>().unwrap(), LatencyModel::ZERO);
        assert_eq!(
            "10us".parse::<LatencyModel>().unwrap(),
            LatencyModel::fixed(Duration::from_micros(10))
        );
        let m: LatencyModel = "flush:1ms/other:5us".parse().unwrap();
        assert_eq!(
            (m.flush, m.other, m.read),
            (
                Duration::from_millis(1),
                Duration::from_micros(5),
                Duration::ZERO
            )
        );
        assert_eq!(m.to_string().parse::<LatencyModel>().unwrap(), m);
        assert!("read=5us".parse::<LatencyModel>().is_err());
        assert!("trim:5us".parse::<LatencyModel>().is_err());
        assert!("5 parsecs".parse::<LatencyModel>().is_err());
    }

    #[test]
    fn errors_name_the_option() {
        for (name, key) in [
            ("sim,lba=1024", "lba"),
            ("sim,size=100", "size"),
            ("sim,size=12Q", "size"),
            ("sim,queues=0", "queues"),
            ("sim,qdepth=1", "qdepth"),
            ("sim,qdepth=70000", "qdepth"),
            ("sim,vectors=0", "vectors"),
            ("sim,mdts=17", "mdts"),
            ("sim,dstrd=16", "dstrd"),
            ("sim,latency=fast", "latency"),
            ("sim,namespaces=0", "namespaces"),
            ("sim,serial=012345678901234567890", "serial"),
            ("sim,queues=65535,dstrd=15", "dstrd"),
        ] {
            let err = name.parse::<SimOptions>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{key}`")), "{name}: {msg}");
            assert!(msg.contains("expected"), "{name}: {msg}");
        }
        let err = "sim,colour=blue".parse::<SimOptions>().unwrap_err();
        assert!(err.to_string().contains("colour") && err.to_string().contains("qdepth"));
        assert!(matches!(
            "0000:01:00.0".parse::<SimOptions>(),
            Err(SimError::NotSim(_))
        ));
        assert!(matches!(
            "simulator".parse::<SimOptions>(),
            Err(SimError::NotSim(_))
        ));
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1t"), Some(1 << 40));
        assert_eq!(parse_size("G"), None);
        assert_eq!(parse_size("99999999999999999999T"), None);
        assert_eq!(parse_duration("250ns"), Some(Duration::from_nanos(250)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("3"), None);
        assert_eq!(format_size(3 << 20), "3M");
        assert_eq!(format_size(4097), "4097");
    }
}
