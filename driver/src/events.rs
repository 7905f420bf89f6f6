//! Asynchronous events: what a completed Asynchronous Event Request reports
//! (NVMe base specification, "Asynchronous Event Request command"),
//! decoded into something an application can act on.
//!
//! The controller keeps a few requests outstanding on the admin queue; when
//! one completes, the driver reads the log page it names (which clears the
//! event at the controller), records the event and sends a new request.
//! With the isolation runtime the watchdog does this on a housekeeping CPU;
//! a bare [`crate::Controller`] user calls
//! [`crate::Controller::service_events`] now and then.

use std::fmt;

/// The type of an asynchronous event (completion dword 0, bits 2:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AsyncEventType {
    /// An error status (0).
    Error,
    /// SMART / health status (1).
    Health,
    /// A notice (2).
    Notice,
    /// Immediate (3), one-shot (4), I/O command set specific (6), vendor
    /// specific (7), or reserved: the raw type.
    Other(u8),
}

/// One asynchronous event the controller reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AsyncEvent {
    /// Its type.
    pub kind: AsyncEventType,
    /// Asynchronous Event Information (dword 0, bits 15:8).
    pub info: u8,
    /// The log page that describes it and was read to clear it (bits
    /// 23:16).
    pub log_page: u8,
}

impl AsyncEvent {
    /// Decodes completion dword 0 of an Asynchronous Event Request.
    #[must_use]
    pub const fn from_dw0(dw0: u32) -> Self {
        let kind = match dw0 & 0x7 {
            0 => AsyncEventType::Error,
            1 => AsyncEventType::Health,
            2 => AsyncEventType::Notice,
            other => AsyncEventType::Other(other as u8),
        };
        AsyncEvent {
            kind,
            info: (dw0 >> 8) as u8,
            log_page: (dw0 >> 16) as u8,
        }
    }

    /// Encodes it back into dword 0 (the simulator posts these).
    #[must_use]
    pub const fn to_dw0(self) -> u32 {
        let kind = match self.kind {
            AsyncEventType::Error => 0,
            AsyncEventType::Health => 1,
            AsyncEventType::Notice => 2,
            AsyncEventType::Other(raw) => raw as u32 & 0x7,
        };
        kind | (self.info as u32) << 8 | (self.log_page as u32) << 16
    }

    /// Namespace Attribute Changed (a namespace was added, removed or
    /// resized: re-identify before trusting its size).
    pub const NAMESPACE_CHANGED: AsyncEvent = AsyncEvent {
        kind: AsyncEventType::Notice,
        info: 0x00,
        log_page: 0x04,
    };
    /// Firmware Activation Starting (I/O may pause while it runs).
    pub const FIRMWARE_ACTIVATION: AsyncEvent = AsyncEvent {
        kind: AsyncEventType::Notice,
        info: 0x01,
        log_page: 0x03,
    };
    /// SMART / health: NVM subsystem reliability degraded.
    pub const HEALTH_RELIABILITY: AsyncEvent = AsyncEvent {
        kind: AsyncEventType::Health,
        info: 0x00,
        log_page: 0x02,
    };
}

impl fmt::Display for AsyncEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match (self.kind, self.info) {
            (AsyncEventType::Notice, 0x00) => "namespace attribute changed",
            (AsyncEventType::Notice, 0x01) => "firmware activation starting",
            (AsyncEventType::Notice, 0x02) => "telemetry log changed",
            (AsyncEventType::Notice, 0x03) => "asymmetric namespace access change",
            (AsyncEventType::Health, 0x00) => "health: NVM subsystem reliability degraded",
            (AsyncEventType::Health, 0x01) => "health: temperature above or below a threshold",
            (AsyncEventType::Health, 0x02) => "health: spare capacity below its threshold",
            (AsyncEventType::Error, 0x00) => "error: write to an invalid doorbell register",
            (AsyncEventType::Error, 0x01) => "error: invalid doorbell write value",
            (AsyncEventType::Error, 0x02) => "error: diagnostic failure",
            (AsyncEventType::Error, 0x03) => "error: persistent internal error",
            (AsyncEventType::Error, 0x04) => "error: transient internal error",
            (AsyncEventType::Error, 0x05) => "error: firmware image load error",
            _ => {
                return write!(
                    f,
                    "asynchronous event type {:?}, information {:#04x} (log page {:#04x})",
                    self.kind, self.info, self.log_page
                )
            }
        };
        write!(f, "{text} (log page {:#04x})", self.log_page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dword0_round_trips_and_names_the_event() {
        for event in [
            AsyncEvent::NAMESPACE_CHANGED,
            AsyncEvent::FIRMWARE_ACTIVATION,
            AsyncEvent::HEALTH_RELIABILITY,
        ] {
            assert_eq!(AsyncEvent::from_dw0(event.to_dw0()), event);
        }
        // Notice, namespace attribute changed, Changed Namespace List.
        assert_eq!(AsyncEvent::NAMESPACE_CHANGED.to_dw0(), 0x0004_0002);
        assert_eq!(
            AsyncEvent::from_dw0(0x0004_0002).to_string(),
            "namespace attribute changed (log page 0x04)"
        );
        assert!(AsyncEvent::from_dw0(0x00C0_FF07)
            .to_string()
            .contains("Other(7)"));
    }
}
