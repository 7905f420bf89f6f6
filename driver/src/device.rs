//! Opening a controller by name: `sim[,options]` for the built-in
//! simulated controller, a PCI address for a real device through VFIO.
//!
//! A PCI address may be followed by options:
//!
//! * `,noiommu`: open the device in VFIO's **unsafe** no-IOMMU mode, for
//!   hosts without an IOMMU (`0000:01:00.0,noiommu`). The device can then
//!   DMA anywhere in memory; isonvme refuses the option when the device is
//!   behind a real IOMMU or the kernel's `enable_unsafe_noiommu_mode` is
//!   off, and warns loudly when it is used. See
//!   [`crate::vfio`](crate::vfio#no-iommu-mode-unsafe-explicit-only).
//! * `,iommufd`: open the device through iommufd (its VFIO cdev
//!   `/dev/vfio/devices/vfioN` bound to `/dev/iommu`), and fail, naming
//!   what is missing, if the kernel or the device does not offer it.
//! * `,container`: open the device through the legacy VFIO container and
//!   group (`/dev/vfio/vfio`, `/dev/vfio/<group>`) even where iommufd is
//!   available.
//!
//! Without `,iommufd` or `,container`, isonvme takes iommufd where the
//! kernel and the device offer it and the container otherwise (see
//! [`crate::vfio`](crate::vfio#routes-iommufd-and-the-legacy-container)).
//! The options exclude each other: `,noiommu` always uses a container of
//! its own kind.

use std::sync::Arc;

use crate::controller::{Controller, ControllerOptions};
use crate::error::{Error, Result};
use crate::sim::{SimController, SimOptions};
use crate::transport::Transport;
use crate::vfio::VfioRoute;

/// A device name, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceName {
    /// The simulated controller with its options (boxed: they are far
    /// larger than a PCI address).
    Sim(Box<SimOptions>),
    /// A PCI function (`0000:01:00.0[,noiommu|,iommufd|,container]`).
    Pci {
        /// The PCI address, normalised with its domain (`dddd:bb:dd.f`).
        address: String,
        /// `,noiommu`: VFIO's unsafe no-IOMMU mode was asked for.
        noiommu: bool,
        /// `,iommufd` or `,container`: the VFIO route asked for
        /// ([`VfioRoute::Auto`] without either).
        route: VfioRoute,
    },
}

/// The options a PCI device name may carry after its address (one at most).
const PCI_OPTIONS: &str = "`noiommu` (VFIO's unsafe no-IOMMU mode, for hosts without an IOMMU), \
                           `iommufd` (open through /dev/iommu and the device's VFIO cdev) or \
                           `container` (open through the legacy VFIO container and group)";

impl std::str::FromStr for DeviceName {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        let name = name.trim();
        if name == "sim" || name.starts_with("sim,") {
            return name
                .parse::<SimOptions>()
                .map(|options| DeviceName::Sim(Box::new(options)))
                .map_err(|e| Error::InvalidArgument(format!("device `{name}`: {e}")));
        }
        let (head, options) = match name.split_once(',') {
            Some((head, options)) => (head, Some(options)),
            None => (name, None),
        };
        if let Some(address) = parse_pci_address(head) {
            let mut noiommu = false;
            let mut route = VfioRoute::Auto;
            let mut seen: Option<&str> = None;
            for option in options.into_iter().flat_map(|o| o.split(',')) {
                let option = option.trim();
                match option {
                    "noiommu" => noiommu = true,
                    "iommufd" => route = VfioRoute::Iommufd,
                    "container" => route = VfioRoute::Container,
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "device `{name}`: unknown option `{other}` after the PCI address; \
                             the options are {PCI_OPTIONS}"
                        )))
                    }
                }
                if let Some(first) = seen {
                    return Err(Error::InvalidArgument(format!(
                        "device `{name}`: `{first}` and `{option}` exclude each other: give at \
                         most one of {PCI_OPTIONS}"
                    )));
                }
                seen = Some(option);
            }
            return Ok(DeviceName::Pci {
                address,
                noiommu,
                route,
            });
        }
        Err(Error::InvalidArgument(format!(
            "device `{name}` is neither `sim[,key=value...]` nor a PCI address such as 0000:01:00.0 \
             (optionally followed by `,noiommu`, `,iommufd` or `,container`; list NVMe devices with `lspci -D -d ::0108`)"
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
            let sim = SimController::new((**options).clone())
                .map_err(|e| Error::InvalidArgument(format!("simulated controller: {e}")))?;
            Ok(sim)
        }
        DeviceName::Pci {
            address,
            noiommu,
            route,
        } => {
            let options = crate::vfio::VfioOptions {
                noiommu: *noiommu,
                route: *route,
                ..crate::vfio::VfioOptions::default()
            };
            Ok(crate::vfio::VfioController::open_with(address, options)?)
        }
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

    #[test]
    fn pci_names_take_the_noiommu_option_and_nothing_else() {
        let pci = |address: &str, noiommu| DeviceName::Pci {
            address: address.to_owned(),
            noiommu,
            route: VfioRoute::Auto,
        };
        assert_eq!(
            "1:0.0".parse::<DeviceName>().unwrap(),
            pci("0000:01:00.0", false)
        );
        assert_eq!(
            "0000:01:00.0,noiommu".parse::<DeviceName>().unwrap(),
            pci("0000:01:00.0", true)
        );
        assert_eq!(
            " 01:00.0, noiommu ".parse::<DeviceName>().unwrap(),
            pci("0000:01:00.0", true)
        );
        for bad in [
            "0000:01:00.0,iommu=off",
            "0000:01:00.0,",
            "0000:01:00.0,noiommu,x",
            "0000:01:00.0,IOMMUFD",
        ] {
            let error = bad.parse::<DeviceName>().unwrap_err().to_string();
            assert!(error.contains("unknown option"), "{bad}: {error}");
            assert!(error.contains("`noiommu`"), "{bad}: {error}");
            assert!(error.contains("`iommufd`"), "{bad}: {error}");
        }
        // Options do not rescue a bad address.
        let error = "0000:01:00,noiommu"
            .parse::<DeviceName>()
            .unwrap_err()
            .to_string();
        assert!(error.contains("neither"), "{error}");
    }

    #[test]
    fn pci_names_take_one_route_option() {
        let pci = |route| DeviceName::Pci {
            address: "0000:01:00.0".to_owned(),
            noiommu: false,
            route,
        };
        assert_eq!(
            "0000:01:00.0,iommufd".parse::<DeviceName>().unwrap(),
            pci(VfioRoute::Iommufd)
        );
        assert_eq!(
            "1:0.0, container".parse::<DeviceName>().unwrap(),
            pci(VfioRoute::Container)
        );
        for bad in [
            "0000:01:00.0,iommufd,container",
            "0000:01:00.0,container,iommufd",
            "0000:01:00.0,noiommu,iommufd",
            "0000:01:00.0,container,noiommu",
            "0000:01:00.0,iommufd,iommufd",
        ] {
            let error = bad.parse::<DeviceName>().unwrap_err().to_string();
            assert!(error.contains("exclude each other"), "{bad}: {error}");
        }
    }
}
