//! Opening a controller by name: `sim[,options]` for the built-in
//! simulated controller, a PCI address for a real device through VFIO.

use std::sync::Arc;

use crate::controller::{Controller, ControllerOptions};
use crate::error::{Error, Result};
use crate::sim::{SimController, SimOptions};
use crate::transport::Transport;

/// A device name, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceName {
    /// The simulated controller with its options.
    Sim(SimOptions),
    /// A PCI function (`0000:01:00.0`), normalised with its domain.
    Pci(String),
}

impl std::str::FromStr for DeviceName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        let name = name.trim();
        if name == "sim" || name.starts_with("sim,") {
            return name
                .parse::<SimOptions>()
                .map(DeviceName::Sim)
                .map_err(|e| Error::InvalidArgument(format!("device `{name}`: {e}")));
        }
        if let Some(address) = parse_pci_address(name) {
            return Ok(DeviceName::Pci(address));
        }
        Err(Error::InvalidArgument(format!(
            "device `{name}` is neither `sim[,key=value...]` nor a PCI address such as 0000:01:00.0 \
             (list NVMe devices with `lspci -D -d ::0108`)"
        )))
    }
}

/// `[dddd:]bb:dd.f` in hex, returned as `dddd:bb:dd.f`.
fn parse_pci_address(text: &str) -> Option<String> {
    let (domain, rest) = match text.matches(':').count() {
        2 => text.split_once(':')?,
        1 => ("0000", text),
        _ => return None,
    };
    let (bus, rest) = rest.split_once(':')?;
    let (device, function) = rest.split_once('.')?;
    let hex = |s: &str, max_len: usize| {
        !s.is_empty() && s.len() <= max_len && s.chars().all(|c| c.is_ascii_hexdigit())
    };
    if !(hex(domain, 4) && hex(bus, 2) && hex(device, 2) && hex(function, 1)) {
        return None;
    }
    let device_number = u8::from_str_radix(device, 16).ok()?;
    let function_number = u8::from_str_radix(function, 16).ok()?;
    if device_number > 0x1f || function_number > 7 {
        return None;
    }
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        u16::from_str_radix(domain, 16).ok()?,
        u8::from_str_radix(bus, 16).ok()?,
        device_number,
        function_number
    ))
}

/// Opens the transport a device name designates.
pub fn open_transport(name: &DeviceName) -> Result<Arc<dyn Transport>> {
    match name {
        DeviceName::Sim(options) => {
            let sim = SimController::new(options.clone())
                .map_err(|e| Error::InvalidArgument(format!("simulated controller: {e}")))?;
            Ok(sim)
        }
        DeviceName::Pci(address) => Ok(crate::vfio::VfioController::open(address)?),
    }
}

/// Opens and brings up the controller a device name designates.
pub fn open(name: &str, options: ControllerOptions) -> Result<Controller> {
    let name: DeviceName = name.parse()?;
    Controller::open(open_transport(&name)?, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_are_normalised() {
        assert_eq!(
            parse_pci_address("0000:01:00.0").as_deref(),
            Some("0000:01:00.0")
        );
        assert_eq!(parse_pci_address("1:0.0").as_deref(), Some("0000:01:00.0"));
        assert_eq!(
            parse_pci_address("00AB:FF:1f.7").as_deref(),
            Some("00ab:ff:1f.7")
        );
        assert_eq!(parse_pci_address("00:20.0"), None);
        assert_eq!(parse_pci_address("00:1f.8"), None);
        assert_eq!(parse_pci_address("nvme0n1"), None);
    }

    #[test]
    fn names_are_recognised_with_clear_errors() {
        assert!(matches!(
            "sim".parse::<DeviceName>(),
            Ok(DeviceName::Sim(_))
        ));
        assert!(
            matches!("sim,size=64M".parse::<DeviceName>(), Ok(DeviceName::Sim(o)) if o.size == 64 << 20)
        );
        let error = "sim,bogus=1".parse::<DeviceName>().unwrap_err().to_string();
        assert!(error.contains("bogus"), "{error}");
        let error = "/dev/nvme0n1"
            .parse::<DeviceName>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("neither"), "{error}");
    }
}
