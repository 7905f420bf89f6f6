//! Faults given in the device string, `fault=KIND@N[+KIND@N...]`: what
//! happens to the N-th I/O command the controller fetches (1-based, counted
//! from bring-up), so the bench, the examples and the tests reach every
//! fault the same way.
//!
//! | kind | what the controller does at the N-th I/O command |
//! |---|---|
//! | `drop` | runs it and never posts its completion |
//! | `delay:DUR` | posts its completion `DUR` late |
//! | `status:SCT/SC[:dnr]` | fails it with that status (Do Not Retry with `:dnr`) without running it |
//! | `fatal` | sets CSTS.CFS and stops processing (the command never completes) |
//! | `remove` | surprise removal: every register reads all-ones, no more DMA |
//! | `sqhead` | posts its completion with an SQ head the host never submitted up to |
//! | `stall:DUR` | stops fetching for `DUR`; the command completes after the stall |
//! | `event:NAME` | runs it normally and raises an asynchronous event: `ns-changed` (namespace attribute changed), `firmware` (firmware activation starting), `health` (SMART: reliability degraded) |

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::options::{format_duration, parse_duration};
use super::SimError;

/// One fault of the device string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoFaultKind {
    /// The completion never comes.
    Drop,
    /// The completion comes this much later.
    Delay(Duration),
    /// The command fails with this status type and code.
    Status {
        /// Status Code Type (0-7).
        sct: u8,
        /// Status Code.
        sc: u8,
        /// Do Not Retry.
        dnr: bool,
    },
    /// The controller enters fatal status (CSTS.CFS).
    Fatal,
    /// The controller is surprise-removed.
    Remove,
    /// The completion reports an impossible SQ head.
    SqHead,
    /// The controller stops fetching for this long.
    Stall(Duration),
    /// The controller raises this asynchronous event (the command runs
    /// normally).
    Event(crate::events::AsyncEvent),
}

/// The faults of a device string: per I/O command number, what happens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    at: BTreeMap<u64, Vec<IoFaultKind>>,
}

impl FaultPlan {
    /// Whether no fault is planned.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// The faults planned for the `n`-th I/O command (1-based).
    pub fn at(&self, n: u64) -> &[IoFaultKind] {
        self.at.get(&n).map_or(&[], Vec::as_slice)
    }

    /// Adds every fault of `other` (a second `fault=` option).
    pub fn merge(&mut self, other: FaultPlan) {
        for (n, kinds) in other.at {
            self.at.entry(n).or_default().extend(kinds);
        }
    }

    /// Adds `kind` at the `n`-th I/O command.
    pub fn add(&mut self, n: u64, kind: IoFaultKind) {
        self.at.entry(n).or_default().push(kind);
    }

    /// Parses the value of `fault=`: `KIND@N` items separated by `+`.
    pub fn parse(value: &str) -> Result<Self, SimError> {
        let mut plan = FaultPlan::default();
        for item in value.split('+') {
            let item = item.trim();
            let bad = |why: &'static str| SimError::InvalidOption {
                key: "fault",
                value: item.to_owned(),
                expected: why,
            };
            let (kind, n) = item.rsplit_once('@').ok_or_else(|| {
                bad("KIND@N: the fault kind, `@`, and the I/O command number (e.g. drop@5)")
            })?;
            let n: u64 =
                n.trim().parse().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    bad("an I/O command number of 1 or more after `@` (e.g. drop@5)")
                })?;
            let (name, argument) = match kind.split_once(':') {
                Some((name, argument)) => (name.trim(), Some(argument.trim())),
                None => (kind.trim(), None),
            };
            let duration = |argument: Option<&str>| {
                argument.and_then(parse_duration).ok_or_else(|| {
                    bad("a duration after the colon (e.g. delay:10ms@5, stall:1s@5)")
                })
            };
            let kind = match (name, argument) {
                ("drop", None) => IoFaultKind::Drop,
                ("fatal", None) => IoFaultKind::Fatal,
                ("remove", None) => IoFaultKind::Remove,
                ("sqhead", None) => IoFaultKind::SqHead,
                ("delay", argument) => IoFaultKind::Delay(duration(argument)?),
                ("stall", argument) => IoFaultKind::Stall(duration(argument)?),
                ("event", Some("ns-changed")) => {
                    IoFaultKind::Event(crate::events::AsyncEvent::NAMESPACE_CHANGED)
                }
                ("event", Some("firmware")) => {
                    IoFaultKind::Event(crate::events::AsyncEvent::FIRMWARE_ACTIVATION)
                }
                ("event", Some("health")) => {
                    IoFaultKind::Event(crate::events::AsyncEvent::HEALTH_RELIABILITY)
                }
                ("event", _) => {
                    return Err(bad(
                        "event:ns-changed, event:firmware or event:health (e.g. event:ns-changed@5)",
                    ))
                }
                ("status", Some(argument)) => {
                    let mut fields = argument.split(':');
                    let code = fields.next().unwrap_or_default();
                    let dnr = match fields.next() {
                        None => false,
                        Some("dnr") => true,
                        Some(_) => return Err(bad("status:SCT/SC or status:SCT/SC:dnr (e.g. status:0/6:dnr@5)")),
                    };
                    let (sct, sc) = code
                        .split_once('/')
                        .and_then(|(sct, sc)| Some((number(sct)?, number(sc)?)))
                        .filter(|&(sct, sc)| sct <= 7 && sc <= 0xFF && (sct, sc) != (0, 0))
                        .ok_or_else(|| bad("status:SCT/SC with SCT 0-7 and SC 0-255, not success (e.g. status:0/6@5, status:2/0x81:dnr@5)"))?;
                    IoFaultKind::Status {
                        sct: sct as u8,
                        sc: sc as u8,
                        dnr,
                    }
                }
                _ => {
                    return Err(bad(
                        "drop, delay:DUR, status:SCT/SC[:dnr], fatal, remove, sqhead, stall:DUR or event:NAME, then @N",
                    ))
                }
            };
            plan.add(n, kind);
        }
        Ok(plan)
    }
}

/// A decimal or `0x` hexadecimal number.
fn number(text: &str) -> Option<u32> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl fmt::Display for FaultPlan {
    /// The `fault=` value that parses back into this plan.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (n, kinds) in &self.at {
            for kind in kinds {
                if !first {
                    f.write_str("+")?;
                }
                first = false;
                match kind {
                    IoFaultKind::Drop => write!(f, "drop@{n}")?,
                    IoFaultKind::Fatal => write!(f, "fatal@{n}")?,
                    IoFaultKind::Remove => write!(f, "remove@{n}")?,
                    IoFaultKind::SqHead => write!(f, "sqhead@{n}")?,
                    IoFaultKind::Delay(d) => write!(f, "delay:{}@{n}", format_duration(*d))?,
                    IoFaultKind::Stall(d) => write!(f, "stall:{}@{n}", format_duration(*d))?,
                    IoFaultKind::Status { sct, sc, dnr } => {
                        write!(f, "status:{sct}/{sc}{}@{n}", if *dnr { ":dnr" } else { "" })?
                    }
                    IoFaultKind::Event(event) => {
                        let name = match *event {
                            crate::events::AsyncEvent::NAMESPACE_CHANGED => "ns-changed",
                            crate::events::AsyncEvent::FIRMWARE_ACTIVATION => "firmware",
                            _ => "health",
                        };
                        write!(f, "event:{name}@{n}")?
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_and_prints_back() {
        let text = "drop@1+delay:10ms@2+status:0/6:dnr@3+status:2/0x81@3+fatal@4+remove@5+sqhead@6+stall:1s@7+event:ns-changed@8+event:firmware@9+event:health@10";
        let plan = FaultPlan::parse(text).unwrap();
        assert_eq!(plan.at(1), &[IoFaultKind::Drop]);
        assert_eq!(plan.at(2), &[IoFaultKind::Delay(Duration::from_millis(10))]);
        assert_eq!(
            plan.at(3),
            &[
                IoFaultKind::Status {
                    sct: 0,
                    sc: 6,
                    dnr: true
                },
                IoFaultKind::Status {
                    sct: 2,
                    sc: 0x81,
                    dnr: false
                }
            ]
        );
        assert_eq!(plan.at(7), &[IoFaultKind::Stall(Duration::from_secs(1))]);
        assert_eq!(
            plan.at(8),
            &[IoFaultKind::Event(
                crate::events::AsyncEvent::NAMESPACE_CHANGED
            )]
        );
        assert_eq!(
            plan.at(10),
            &[IoFaultKind::Event(
                crate::events::AsyncEvent::HEALTH_RELIABILITY
            )]
        );
        assert!(plan.at(11).is_empty());
        assert_eq!(FaultPlan::parse(&plan.to_string()).unwrap(), plan);
    }

    #[test]
    fn bad_faults_name_what_is_expected() {
        for (text, needle) in [
            ("drop", "KIND@N"),
            ("drop@0", "1 or more"),
            ("drop@x", "1 or more"),
            ("delay@3", "a duration"),
            ("delay:soon@3", "a duration"),
            ("status:9/1@3", "SCT 0-7"),
            ("status:0/0@3", "not success"),
            ("status:0/6:maybe@3", "status:SCT/SC:dnr"),
            ("explode@3", "drop, delay:DUR"),
        ] {
            let error = FaultPlan::parse(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }
}
