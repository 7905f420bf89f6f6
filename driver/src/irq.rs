//! Host interrupt affinity for VFIO MSI-X vectors.
//!
//! With VFIO every MSI-X vector of the device is a host IRQ, listed in
//! `/proc/interrupts` under the action name `vfio-msix[N](<BDF>)`. The
//! kernel does not treat these IRQs as managed, so `isolcpus=managed_irq`
//! does not keep them off isolated CPUs: the driver itself writes each
//! one's `/proc/irq/<irq>/smp_affinity_list` with the vector's housekeeping
//! CPUs — the userspace form of restricted IRQ affinity.
//!
//! [`HostIrqs`] works on a proc root (normally `/proc`) so that tests and
//! "what if" runs can point it at a fake tree.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use isonvme_mapping::CpuSet;

/// The highest CPU number accepted from a `/proc/interrupts` header (the
/// kernel's NR_CPUS is at most 8192); bounds what a garbled file can make
/// the parser allocate.
const MAX_CPU: usize = 1 << 16;

/// Why finding, steering or counting host IRQs failed.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// A file under the proc root could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `/proc/interrupts` does not look as the kernel writes it.
    #[error("{}: line {line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line, counting from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The PCI address given is not one.
    #[error(
        "`{bdf}` is not a PCI address: expected domain:bus:device.function, e.g. 0000:01:00.0"
    )]
    InvalidBdf {
        /// The text given.
        bdf: String,
    },
    /// An IRQ asked for is not in `/proc/interrupts`.
    #[error("IRQ {irq} is not listed in {}", path.display())]
    NotListed {
        /// The IRQ.
        irq: u32,
        /// The file read.
        path: PathBuf,
    },
    /// An empty CPU set was given; the kernel would read it as "choose a
    /// default", which may include isolated CPUs.
    #[error("refusing to point IRQ {irq} at an empty CPU set")]
    EmptyCpuSet {
        /// The IRQ.
        irq: u32,
    },
    /// The IRQ has no `/proc/irq/<irq>` entry (it was freed, or the device
    /// released its vectors).
    #[error("IRQ {irq} does not exist ({} is missing): were the device's vectors released?",
        path.display())]
    NoSuchIrq {
        /// The IRQ.
        irq: u32,
        /// The affinity file looked for.
        path: PathBuf,
    },
    /// The host does not let this process change the IRQ's affinity.
    #[error("not permitted to point IRQ {irq} at CPUs {cpus}: writing {} failed ({source}); \
        {cause}. Fix: run as root with a writable /proc/irq (or give this user write access to \
        {}), or boot with irqaffinity=<housekeeping CPUs> so every unmanaged IRQ, this one \
        included, defaults to the housekeeping CPUs", path.display(), path.display())]
    NotPermitted {
        /// The IRQ.
        irq: u32,
        /// The CPUs asked for (cpulist).
        cpus: String,
        /// The affinity file.
        path: PathBuf,
        /// Why, in words.
        cause: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the CPU set for this IRQ.
    #[error("the kernel refused to point IRQ {irq} at CPUs {cpus} ({source}): {cause}")]
    Rejected {
        /// The IRQ.
        irq: u32,
        /// The CPUs asked for (cpulist).
        cpus: String,
        /// Why, in words.
        cause: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the affinity file failed for another reason.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The host's IRQs as seen under a proc root: find a VFIO device's MSI-X
/// IRQs, steer them, count them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIrqs {
    proc_root: PathBuf,
}

impl HostIrqs {
    /// IRQs under `proc_root`, a directory laid out like `/proc` (with
    /// `interrupts` and `irq/<n>/smp_affinity_list`).
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        HostIrqs {
            proc_root: proc_root.into(),
        }
    }

    /// This host's IRQs, under `/proc`.
    pub fn host() -> Self {
        HostIrqs::new("/proc")
    }

    /// The proc root this reads and writes under.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// The path of `interrupts` under the proc root.
    pub fn interrupts_path(&self) -> PathBuf {
        self.proc_root.join("interrupts")
    }

    /// The path of `irq`'s affinity list under the proc root.
    pub fn affinity_path(&self, irq: u32) -> PathBuf {
        self.proc_root
            .join("irq")
            .join(irq.to_string())
            .join("smp_affinity_list")
    }

    /// The MSI-X vectors of the VFIO device at `bdf` (e.g. `0000:01:00.0`;
    /// a missing domain means `0000`), as vector number → host IRQ, read
    /// from the `vfio-msix[N](<BDF>)` actions in `/proc/interrupts`.
    ///
    /// Only names carrying this device's address count; a bare
    /// `vfio-msix[N]` counts only when another field of its line (the
    /// interrupt chip, e.g. `IR-PCI-MSIX-0000:01:00.0`) names the device.
    /// Lines that are not numbered IRQs (`NMI:`, `ERR:`, `MIS:`…) are
    /// skipped. An empty map means the device has no enabled vectors.
    pub fn find_vfio_msix(&self, bdf: &str) -> Result<BTreeMap<u16, u32>, IrqError> {
        let bdf = normalize_bdf(bdf).ok_or_else(|| IrqError::InvalidBdf {
            bdf: bdf.to_string(),
        })?;
        let path = self.interrupts_path();
        let text = read_text(&path)?;
        parse_vfio_msix(&text, &bdf).map_err(|(line, reason)| IrqError::Malformed {
            path,
            line,
            reason,
        })
    }

    /// Points `irq` at `cpus`: writes the cpulist (and a newline) to
    /// `/proc/irq/<irq>/smp_affinity_list`.
    ///
    /// Errors: [`IrqError::NotPermitted`] when the host will not let this
    /// process change it (EACCES, EPERM, EROFS), with the fix in the
    /// message; [`IrqError::Rejected`] when the kernel refuses the set
    /// (EINVAL: no online CPU in it or the interrupt chip cannot target it;
    /// ENOSPC: no free vector on those CPUs; EIO); [`IrqError::NoSuchIrq`]
    /// when the IRQ has no entry.
    pub fn set_affinity(&self, irq: u32, cpus: &CpuSet) -> Result<(), IrqError> {
        if cpus.is_empty() {
            return Err(IrqError::EmptyCpuSet { irq });
        }
        let path = self.affinity_path(irq);
        let text = format!("{cpus}\n");
        write_once(&path, text.as_bytes()).map_err(|source| classify(irq, cpus, path, source))
    }

    /// The CPUs `irq` may be delivered to now, read back from
    /// `/proc/irq/<irq>/smp_affinity_list`.
    pub fn affinity(&self, irq: u32) -> Result<CpuSet, IrqError> {
        let path = self.affinity_path(irq);
        let text = read_text(&path)?;
        text.trim()
            .parse()
            .map_err(|error: isonvme_mapping::CpuListError| IrqError::Malformed {
                path,
                line: 1,
                reason: error.to_string(),
            })
    }

    /// How often each of `irqs` fired on each CPU, from `/proc/interrupts`:
    /// IRQ → counts indexed by CPU number (the header's `CPUn` columns).
    /// CPUs without a column (offline ones) read 0, so two snapshots can be
    /// diffed index by index. Every IRQ asked for must be listed.
    pub fn interrupt_counts(&self, irqs: &[u32]) -> Result<BTreeMap<u32, Vec<u64>>, IrqError> {
        let path = self.interrupts_path();
        let text = read_text(&path)?;
        let wanted: BTreeSet<u32> = irqs.iter().copied().collect();
        let counts =
            parse_counts(&text, &wanted).map_err(|(line, reason)| IrqError::Malformed {
                path: path.clone(),
                line,
                reason,
            })?;
        if let Some(&irq) = wanted.iter().find(|irq| !counts.contains_key(irq)) {
            return Err(IrqError::NotListed { irq, path });
        }
        Ok(counts)
    }
}

/// Reads a file as text; bytes that are not UTF-8 become U+FFFD rather
/// than an error.
fn read_text(path: &Path) -> Result<String, IrqError> {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|source| IrqError::Read {
            path: path.to_path_buf(),
            source,
        })
}

/// Opens an existing file for writing and writes `bytes` in one call, as
/// `echo list > /proc/irq/N/smp_affinity_list` does; never creates it.
fn write_once(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new().write(true).truncate(true).open(path)?;
    let written = file.write(bytes)?;
    if written != bytes.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {written} of {} bytes", bytes.len()),
        ));
    }
    Ok(())
}

/// Turns the OS error of writing `irq`'s affinity file into an
/// [`IrqError`] that says what it means and how to fix it.
fn classify(irq: u32, cpus: &CpuSet, path: PathBuf, source: std::io::Error) -> IrqError {
    let cpus_text = cpus.to_string();
    let not_permitted = |cause| IrqError::NotPermitted {
        irq,
        cpus: cpus_text.clone(),
        path: path.clone(),
        cause,
        source: clone_error(&source),
    };
    let rejected = |cause| IrqError::Rejected {
        irq,
        cpus: cpus_text.clone(),
        cause,
        source: clone_error(&source),
    };
    match source.raw_os_error() {
        Some(libc::EACCES) => not_permitted("this process may not write the file"),
        Some(libc::EPERM) => not_permitted(
            "the process lacks the privilege, or the kernel will not let userspace move this \
             IRQ (a kernel-managed IRQ, or an interrupt chip that cannot be moved)",
        ),
        Some(libc::EROFS) => not_permitted("/proc/irq is mounted read-only (inside a container?)"),
        Some(libc::EINVAL) | Some(libc::ERANGE) | Some(libc::EOVERFLOW) => rejected(
            "the set has no online CPU, names CPUs this kernel does not have, or the interrupt \
             chip cannot target it",
        ),
        Some(libc::ENOSPC) => rejected("no free interrupt vector is left on those CPUs"),
        Some(libc::EIO) | Some(libc::EBUSY) => {
            rejected("the interrupt chip refused the change; try again or another CPU set")
        }
        Some(libc::ENOENT) => IrqError::NoSuchIrq { irq, path },
        _ => IrqError::Write { path, source },
    }
}

/// `std::io::Error` is not `Clone`; OS errors carry only their code.
fn clone_error(error: &std::io::Error) -> std::io::Error {
    match error.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(error.kind(), error.to_string()),
    }
}

/// The canonical spelling of a PCI address (`dddd:bb:dd.f`, lower case),
/// or `None` when `text` is not one.
fn normalize_bdf(text: &str) -> Option<String> {
    let text = text.trim().to_ascii_lowercase();
    let parts: Vec<&str> = text.split(':').collect();
    let (domain, bus, slot) = match parts.as_slice() {
        [bus, slot] => ("0000", *bus, *slot),
        [domain, bus, slot] => (*domain, *bus, *slot),
        _ => return None,
    };
    let (device, function) = slot.split_once('.')?;
    let hex = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let function_ok = function.len() == 1 && matches!(function.as_bytes()[0], b'0'..=b'7');
    if !(hex(domain, 4, 8) && hex(bus, 2, 2) && hex(device, 2, 2) && function_ok) {
        return None;
    }
    Some(format!("{domain}:{bus}:{device}.{function}"))
}

/// A numbered IRQ line of `/proc/interrupts`: the IRQ and the fields after
/// the colon. `None` for the header, named rows (`NMI:`, `ERR:`) and
/// anything else.
fn irq_line(line: &str) -> Option<(u32, std::str::SplitWhitespace<'_>)> {
    let (label, rest) = line.split_once(':')?;
    let irq = label.trim().parse().ok()?;
    Some((irq, rest.split_whitespace()))
}

/// The vector of a `vfio-msix[N]` or `vfio-msix[N](BDF)` action, with the
/// BDF when the name carries one.
fn vfio_msix_name(field: &str) -> Option<(u16, Option<&str>)> {
    let field = field.trim_end_matches(',');
    let rest = field.strip_prefix("vfio-msix[")?;
    let (vector, rest) = rest.split_once(']')?;
    if vector.is_empty() || !vector.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let vector = vector.parse().ok()?;
    if rest.is_empty() {
        return Some((vector, None));
    }
    let bdf = rest.strip_prefix('(')?.strip_suffix(')')?;
    Some((vector, Some(bdf)))
}

/// Whether a field (such as the chip name `IR-PCI-MSIX-0000:01:00.0`)
/// ends with the normalized address `bdf`.
fn names_device(field: &str, bdf: &str) -> bool {
    let field = field.to_ascii_lowercase();
    match field.strip_suffix(bdf) {
        Some(prefix) => prefix.is_empty() || prefix.ends_with('-'),
        None => false,
    }
}

/// Finds the `vfio-msix` IRQs of device `bdf` (normalized) in the text of
/// `/proc/interrupts`. Errors are (line number, reason).
fn parse_vfio_msix(text: &str, bdf: &str) -> Result<BTreeMap<u16, u32>, (usize, String)> {
    let mut found: BTreeMap<u16, u32> = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let Some((irq, fields)) = irq_line(line) else {
            continue;
        };
        let fields: Vec<&str> = fields.collect();
        let vector = fields.iter().find_map(|field| {
            let (vector, name_bdf) = vfio_msix_name(field)?;
            let ours = match name_bdf {
                Some(name_bdf) => normalize_bdf(name_bdf).is_some_and(|name| name == bdf),
                None => fields.iter().any(|other| names_device(other, bdf)),
            };
            ours.then_some(vector)
        });
        let Some(vector) = vector else {
            continue;
        };
        if let Some(first) = found.insert(vector, irq) {
            return Err((
                index + 1,
                format!("vector {vector} of {bdf} is listed twice (IRQs {first} and {irq})"),
            ));
        }
    }
    Ok(found)
}

/// The CPU numbers of the header's columns, in order.
fn parse_header(line: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for field in line.split_whitespace() {
        let cpu = field
            .strip_prefix("CPU")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&cpu| cpu < MAX_CPU)
            .ok_or_else(|| format!("header field `{field}` is not a CPU column (`CPU3`)"))?;
        if cpus.last().is_some_and(|&last| cpu <= last) {
            return Err(format!("header column CPU{cpu} is out of order"));
        }
        cpus.push(cpu);
    }
    if cpus.is_empty() {
        return Err("the header names no CPU column".into());
    }
    Ok(cpus)
}

/// Per-CPU counts of the `wanted` IRQs from the text of
/// `/proc/interrupts`. Errors are (line number, reason).
fn parse_counts(
    text: &str,
    wanted: &BTreeSet<u32>,
) -> Result<BTreeMap<u32, Vec<u64>>, (usize, String)> {
    let mut lines = text
        .lines()
        .enumerate()
        .skip_while(|(_, l)| l.trim().is_empty());
    let Some((header_index, header)) = lines.next() else {
        return Err((1, "the file is empty".into()));
    };
    let columns = parse_header(header).map_err(|reason| (header_index + 1, reason))?;
    let width = columns.last().map_or(0, |&cpu| cpu + 1);
    let mut counts = BTreeMap::new();
    for (index, line) in lines {
        let Some((irq, mut fields)) = irq_line(line) else {
            continue;
        };
        if !wanted.contains(&irq) {
            continue;
        }
        let mut per_cpu = vec![0u64; width];
        for &cpu in &columns {
            let count = fields.next().and_then(|field| field.parse::<u64>().ok());
            let Some(count) = count else {
                return Err((
                    index + 1,
                    format!(
                        "IRQ {irq} has fewer counts than the header's {} CPU columns",
                        columns.len()
                    ),
                ));
            };
            per_cpu[cpu] = count;
        }
        if counts.insert(irq, per_cpu).is_some() {
            return Err((index + 1, format!("IRQ {irq} is listed twice")));
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4-CPU host with two VFIO devices (01:00.0 with three vectors,
    /// 02:00.0 with two), a device in MSI mode, a kernel NVMe driver's
    /// vectors and the named rows at the end.
    const INTERRUPTS: &str = "\
            CPU0       CPU1       CPU2       CPU3       
   0:         38          0          0          0   IO-APIC   2-edge      timer
   1:          0          9          0          0   IO-APIC   1-edge      i8042
   8:          0          0          1          0   IO-APIC   8-edge      rtc0
   9:          0          4          0          0   IO-APIC   9-fasteoi   acpi
  24:          0          0          0          0  PCI-MSI-0000:00:1f.2   0-edge      ahci[0000:00:1f.2]
 120:         12          0          0          0  IR-PCI-MSIX-0000:01:00.0    0-edge      vfio-msix[0](0000:01:00.0)
 121:          0      51234          0          0  IR-PCI-MSIX-0000:01:00.0    1-edge      vfio-msix[1](0000:01:00.0)
 122:          0          0          7 4294967296  IR-PCI-MSIX-0000:01:00.0    2-edge      vfio-msix[2](0000:01:00.0)
 130:          3          0          0          0  IR-PCI-MSIX-0000:02:00.0    0-edge      vfio-msix[0](0000:02:00.0)
 131:          0          0          0          5  IR-PCI-MSIX-0000:02:00.0    1-edge      vfio-msix[1](0000:02:00.0)
 140:          0          0          0          0  IR-PCI-MSI-0000:03:00.0    0-edge      vfio-msi[0](0000:03:00.0)
 150:          1          2          3          4  IR-PCI-MSIX-0000:04:00.0    0-edge      nvme0q0
 151:          0          0          0          0  IR-PCI-MSIX-0000:04:00.0    1-edge      nvme0q1, vfio-msix[9]
 NMI:          0          0          0          0   Non-maskable interrupts
 LOC:      12345      23456      34567      45678   Local timer interrupts
 IWI:          0          0          0          0   IRQ work interrupts
 RTR:          0          0          0          0   APIC ICR read retries
 ERR:          0
 MIS:          0
 PIN:          0          0          0          0   Posted-interrupt notification event
";

    fn fake_proc(interrupts: &str, irqs: &[u32]) -> (tempfile::TempDir, HostIrqs) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("interrupts"), interrupts).unwrap();
        for irq in irqs {
            let irq_dir = dir.path().join("irq").join(irq.to_string());
            std::fs::create_dir_all(&irq_dir).unwrap();
            std::fs::write(irq_dir.join("smp_affinity_list"), "0-3\n").unwrap();
        }
        let irqs = HostIrqs::new(dir.path());
        (dir, irqs)
    }

    fn cpus(list: &str) -> CpuSet {
        list.parse().unwrap()
    }

    #[test]
    fn finds_each_devices_vectors_only() {
        let (_dir, irqs) = fake_proc(INTERRUPTS, &[]);
        let first = irqs.find_vfio_msix("0000:01:00.0").unwrap();
        assert_eq!(first, BTreeMap::from([(0, 120), (1, 121), (2, 122)]));
        let second = irqs.find_vfio_msix("02:00.0").unwrap();
        assert_eq!(second, BTreeMap::from([(0, 130), (1, 131)]));
        // MSI (not MSI-X) vectors and absent devices give nothing.
        assert!(irqs.find_vfio_msix("0000:03:00.0").unwrap().is_empty());
        assert!(irqs.find_vfio_msix("0000:05:00.0").unwrap().is_empty());
        // A bare name counts when its chip field names the device.
        assert_eq!(
            irqs.find_vfio_msix("0000:04:00.0").unwrap(),
            BTreeMap::from([(9, 151)])
        );
        // Surrounding blanks are ignored.
        assert_eq!(irqs.find_vfio_msix(" 0000:01:00.0\n").unwrap().len(), 3);
    }

    #[test]
    fn address_must_match_and_parse() {
        let text = "           CPU0\n 60:  1  PCI-MSIX  0-edge  vfio-msix[0](0000:0A:00.1)\n \
                    61:  1  PCI-MSIX  1-edge  vfio-msix[1]\n";
        let (_dir, irqs) = fake_proc(text, &[]);
        assert_eq!(
            irqs.find_vfio_msix("0000:0a:00.1").unwrap(),
            BTreeMap::from([(0, 60)])
        );
        assert_eq!(irqs.find_vfio_msix("0A:00.1").unwrap().len(), 1);
        // A bare name whose line does not name the device is ignored.
        assert!(irqs.find_vfio_msix("0000:0a:00.0").unwrap().is_empty());
        for bad in [
            "",
            "0000:01:00",
            "01:00.8",
            "0000:1:00.0",
            "zz:00.0",
            "a:b:c:d.0",
        ] {
            assert!(
                matches!(irqs.find_vfio_msix(bad), Err(IrqError::InvalidBdf { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn duplicate_vectors_and_missing_files_are_errors() {
        let text =
            "  CPU0\n 60:  1  vfio-msix[0](0000:01:00.0)\n 61:  1  vfio-msix[0](0000:01:00.0)\n";
        let (_dir, irqs) = fake_proc(text, &[]);
        let error = irqs.find_vfio_msix("0000:01:00.0").unwrap_err();
        assert!(
            matches!(error, IrqError::Malformed { line: 3, .. }),
            "{error}"
        );
        let missing = HostIrqs::new("/nonexistent/isonvme-proc");
        assert!(matches!(
            missing.find_vfio_msix("0000:01:00.0"),
            Err(IrqError::Read { .. })
        ));
    }

    #[test]
    fn writes_the_affinity_list() {
        let (dir, irqs) = fake_proc(INTERRUPTS, &[121]);
        irqs.set_affinity(121, &cpus("0-1,3")).unwrap();
        let written =
            std::fs::read_to_string(dir.path().join("irq/121/smp_affinity_list")).unwrap();
        assert_eq!(written, "0-1,3\n");
        assert_eq!(irqs.affinity(121).unwrap(), cpus("0-1,3"));
        assert!(matches!(
            irqs.set_affinity(121, &CpuSet::new()),
            Err(IrqError::EmptyCpuSet { irq: 121 })
        ));
        // An IRQ without an entry: nothing is created.
        let error = irqs.set_affinity(999, &cpus("0")).unwrap_err();
        assert!(
            matches!(error, IrqError::NoSuchIrq { irq: 999, .. }),
            "{error}"
        );
        assert!(!dir.path().join("irq/999").exists());
    }

    #[test]
    fn unwritable_path_is_a_plain_write_error() {
        let (dir, irqs) = fake_proc(INTERRUPTS, &[]);
        std::fs::create_dir_all(dir.path().join("irq/120/smp_affinity_list")).unwrap();
        let error = irqs.set_affinity(120, &cpus("0")).unwrap_err();
        assert!(matches!(error, IrqError::Write { .. }), "{error}");
    }

    /// Runs `f` on a thread without CAP_DAC_OVERRIDE and
    /// CAP_DAC_READ_SEARCH, so that file permissions apply even to root
    /// (capabilities are per thread). `None` when they cannot be dropped.
    fn without_dac_override<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy, Default)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        std::thread::spawn(move || {
            let mut header = Header {
                version: 0x2008_0522,
                pid: 0,
            };
            let mut data = [Data::default(); 2];
            // SAFETY: capget with a version-3 header and room for two data
            // structs, as the ABI requires; it only writes `data`.
            let got = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
            if got != 0 {
                return None;
            }
            let dac = (1 << 1) | (1 << 2);
            data[0].effective &= !dac;
            // SAFETY: capset on the calling thread (pid 0) with the data
            // just read, minus two capabilities; dropping is always allowed.
            let set = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
            (set == 0).then(f)
        })
        .join()
        .unwrap()
    }

    #[test]
    fn permission_denied_names_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, irqs) = fake_proc(INTERRUPTS, &[122]);
        let path = dir.path().join("irq/122/smp_affinity_list");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        // A real EACCES from the kernel, also when the tests run as root.
        let result = without_dac_override(move || irqs.set_affinity(122, &cpus("0-1")));
        let Some(result) = result else {
            eprintln!("cannot drop CAP_DAC_OVERRIDE here; the errno mapping test covers EACCES");
            return;
        };
        let error = result.unwrap_err();
        let IrqError::NotPermitted {
            irq,
            ref cpus,
            ref source,
            ..
        } = error
        else {
            panic!("expected NotPermitted, got {error:?}");
        };
        assert_eq!((irq, cpus.as_str()), (122, "0-1"));
        assert_eq!(source.raw_os_error(), Some(libc::EACCES));
        let message = error.to_string();
        assert!(message.contains("run as root"), "{message}");
        assert!(message.contains("write access to"), "{message}");
        assert!(
            message.contains("irqaffinity=<housekeeping CPUs>"),
            "{message}"
        );
        assert!(message.contains("irq/122/smp_affinity_list"), "{message}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0-3\n");
    }

    #[test]
    fn every_errno_maps_to_a_clear_error() {
        let path = PathBuf::from("/proc/irq/45/smp_affinity_list");
        let set = cpus("0,2");
        let map = |code| {
            classify(
                45,
                &set,
                path.clone(),
                std::io::Error::from_raw_os_error(code),
            )
        };
        for code in [libc::EACCES, libc::EPERM, libc::EROFS] {
            let error = map(code);
            assert!(
                matches!(error, IrqError::NotPermitted { .. }),
                "{code}: {error}"
            );
            assert!(error.to_string().contains("irqaffinity="), "{error}");
        }
        for code in [libc::EINVAL, libc::EIO, libc::ENOSPC, libc::ERANGE] {
            let error = map(code);
            assert!(
                matches!(error, IrqError::Rejected { .. }),
                "{code}: {error}"
            );
            assert!(error.to_string().contains("CPUs 0,2"), "{error}");
        }
        assert!(matches!(map(libc::EINVAL), IrqError::Rejected { cause, .. }
            if cause.contains("no online CPU")));
        assert!(matches!(
            map(libc::ENOENT),
            IrqError::NoSuchIrq { irq: 45, .. }
        ));
        assert!(matches!(map(libc::EISDIR), IrqError::Write { .. }));
    }

    #[test]
    fn counts_per_cpu() {
        let (_dir, irqs) = fake_proc(INTERRUPTS, &[]);
        let counts = irqs.interrupt_counts(&[121, 122, 0]).unwrap();
        assert_eq!(counts[&121], vec![0, 51234, 0, 0]);
        assert_eq!(counts[&122], vec![0, 0, 7, 4294967296]);
        assert_eq!(counts[&0], vec![38, 0, 0, 0]);
        assert_eq!(counts.len(), 3);
        assert!(irqs.interrupt_counts(&[]).unwrap().is_empty());
        assert!(matches!(
            irqs.interrupt_counts(&[121, 7]),
            Err(IrqError::NotListed { irq: 7, .. })
        ));
    }

    #[test]
    fn counts_follow_the_header_columns() {
        // CPU 1 offline: its column is missing, and it reads 0.
        let text = "           CPU0       CPU2       CPU3\n\
                    \x20 45:          1          2          3  PCI-MSIX  0-edge  vfio-msix[0](0000:01:00.0)\n\
                    \x20 46:          1  PCI-MSIX  1-edge  vfio-msix[1](0000:01:00.0)\n";
        let (_dir, irqs) = fake_proc(text, &[]);
        assert_eq!(irqs.interrupt_counts(&[45]).unwrap()[&45], vec![1, 0, 2, 3]);
        let error = irqs.interrupt_counts(&[46]).unwrap_err();
        assert!(
            matches!(error, IrqError::Malformed { line: 3, .. }),
            "{error}"
        );
        for bad in [
            "",
            "\n\n",
            "  CPU0  CPUx\n",
            "  CPU1 CPU0\n",
            "  CPU99999999999\n",
        ] {
            let (_dir, irqs) = fake_proc(bad, &[]);
            assert!(
                matches!(irqs.interrupt_counts(&[1]), Err(IrqError::Malformed { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reads_this_hosts_interrupts() {
        let host = HostIrqs::host();
        if !host.interrupts_path().exists() {
            return;
        }
        host.find_vfio_msix("0000:00:00.0").unwrap();
        host.interrupt_counts(&[]).unwrap();
    }

    mod never_panics {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn on_any_text(text in "\\PC*", bdf in "\\PC{0,16}") {
                let _ = normalize_bdf(&bdf);
                let _ = parse_vfio_msix(&text, "0000:01:00.0");
                let _ = parse_counts(&text, &BTreeSet::from([0, 1, 45]));
            }

            #[test]
            fn on_interrupts_like_text(
                lines in proptest::collection::vec(
                    "( *[0-9A-Z]{1,4}:)?( +[0-9]{1,12}){0,5}( +(vfio-msix\\[[0-9]{0,6}\\]\
                     (\\([0-9a-fA-F:.]{0,14}\\))?|CPU[0-9]{1,3}|IR-PCI-MSIX-0000:01:00.0|x))*",
                    0..12,
                ),
            ) {
                let text = lines.join("\n");
                let _ = parse_vfio_msix(&text, "0000:01:00.0");
                let _ = parse_counts(&text, &BTreeSet::from([0, 1, 45]));
            }
        }
    }
}
