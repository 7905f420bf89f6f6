//! PCI addresses as users type them, and `all`.

use std::fmt;
use std::str::FromStr;

use crate::error::SetupError;

/// A PCI address, normalised to `dddd:bb:dd.f` (lower case, the domain
/// at least four digits: VMD domains have five).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI domain (segment).
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl FromStr for Bdf {
    type Err = SetupError;

    /// Parses `[domain:]bus:device.function` in hexadecimal, as `lspci`
    /// prints it.
    fn from_str(text: &str) -> Result<Self, SetupError> {
        let invalid = || SetupError::InvalidAddress(text.to_owned());
        let (rest, function) = text.rsplit_once('.').ok_or_else(invalid)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [bus, device] => ("0", *bus, *device),
            [domain, bus, device] => (*domain, *bus, *device),
            _ => return Err(invalid()),
        };
        let hex = |field: &str, max_digits: usize| -> Result<u32, SetupError> {
            if field.is_empty()
                || field.len() > max_digits
                || !field.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(invalid());
            }
            u32::from_str_radix(field, 16).map_err(|_| invalid())
        };
        let domain = hex(domain, 8)?;
        let bus = hex(bus, 2)? as u8;
        let device = hex(device, 2)?;
        let function = hex(function, 1)?;
        if device >= 32 || function >= 8 {
            return Err(invalid());
        }
        Ok(Bdf {
            domain,
            bus,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// What a bind/unbind command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One controller.
    One(Bdf),
    /// Every NVMe controller of the host.
    All,
}

impl FromStr for Target {
    type Err = SetupError;

    fn from_str(text: &str) -> Result<Self, SetupError> {
        if text.eq_ignore_ascii_case("all") {
            Ok(Target::All)
        } else {
            text.trim().parse().map(Target::One)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::One(bdf) => bdf.fmt(f),
            Target::All => f.write_str("all"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalised() {
        let bdf: Bdf = "1:0.0".parse().unwrap();
        assert_eq!(bdf.to_string(), "0000:01:00.0");
        let bdf: Bdf = "0000:3B:00.1".parse().unwrap();
        assert_eq!(bdf.to_string(), "0000:3b:00.1");
        let bdf: Bdf = "10000:e1:00.0".parse().unwrap();
        assert_eq!(bdf.to_string(), "10000:e1:00.0");
    }

    #[test]
    fn bad_addresses_are_refused_with_the_fix() {
        for bad in [
            "",
            "sim",
            "0000:01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "0000:100:00.0",
            "0000:01:00.0.0",
            "00:00:00:00.0",
            "+1:00.0",
        ] {
            let error = bad.parse::<Bdf>().unwrap_err();
            assert!(
                matches!(error, SetupError::InvalidAddress(_)),
                "{bad}: {error}"
            );
            assert!(error.to_string().contains("isonvme setup status"));
        }
    }

    #[test]
    fn all_is_a_target() {
        assert_eq!("all".parse::<Target>().unwrap(), Target::All);
        assert_eq!("ALL".parse::<Target>().unwrap(), Target::All);
        assert_eq!(
            "01:00.0".parse::<Target>().unwrap().to_string(),
            "0000:01:00.0"
        );
    }
}
