//! A PCI function as sysfs shows it: does it exist, which driver has it, which IOMMU group
//! it is in, where its BARs are.
//!
//! Everything VFIO needs to know before opening anything is read here, so each way a device
//! can be unusable is its own clear [`Error::NotAttached`], in the order a person would
//! check: the function exists, it has an IOMMU group, it is bound to `vfio-pci`. The sysfs
//! root is a parameter, so these checks are tested on any host against a small fake tree.

use crate::hints::intern;
use dmakit::{Error, Result};
use std::fmt;
use std::path::{Path, PathBuf};

/// Where Linux lists PCI functions.
pub const SYSFS_PCI_DEVICES: &str = "/sys/bus/pci/devices";

/// A PCI address `domain:bus:device.function`, as `lspci -D` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0–31).
    pub device: u8,
    /// Function number (0–7).
    pub function: u8,
}

impl PciAddress {
    /// Parses `0000:00:04.0` (the domain may be omitted: `00:04.0`).
    pub fn parse(s: &str) -> Result<PciAddress> {
        let bad = || Error::BadArgument {
            what: "PCI address: expected domain:bus:device.function, e.g. 0000:00:04.0",
            value: s.len() as u64,
        };
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let mut parts: Vec<&str> = rest.split(':').collect();
        if parts.len() == 2 {
            parts.insert(0, "0000");
        }
        let [d, b, dev] = parts[..] else {
            return Err(bad());
        };
        let hex = |t: &str, max: u32| {
            u32::from_str_radix(t, 16)
                .ok()
                .filter(|&v| v <= max && !t.is_empty())
                .ok_or_else(bad)
        };
        Ok(PciAddress {
            domain: hex(d, 0xffff)? as u16,
            bus: hex(b, 0xff)? as u8,
            device: hex(dev, 0x1f)? as u8,
            function: hex(function, 7)? as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl From<PciAddress> for dmakit::device::PciAddress {
    /// The same address in the device seam's terms (the domain is its segment).
    fn from(a: PciAddress) -> Self {
        dmakit::device::PciAddress {
            segment: a.domain,
            bus: a.bus,
            device: a.device,
            function: a.function,
        }
    }
}

impl From<dmakit::device::PciAddress> for PciAddress {
    fn from(a: dmakit::device::PciAddress) -> Self {
        PciAddress {
            domain: a.segment,
            bus: a.bus,
            device: a.device,
            function: a.function,
        }
    }
}

/// One PCI function's sysfs directory.
#[derive(Clone, Debug)]
pub struct PciFunction {
    address: PciAddress,
    dir: PathBuf,
}

impl PciFunction {
    /// The function at `address` under the sysfs directory `root` (normally
    /// [`SYSFS_PCI_DEVICES`]); [`Error::NotAttached`] if there is none.
    pub fn find(root: impl AsRef<Path>, address: PciAddress) -> Result<PciFunction> {
        let dir = root.as_ref().join(address.to_string());
        if !dir.is_dir() {
            return Err(Error::NotAttached {
                what: device_name(address),
                why: intern(
                    format!(
                        "no such PCI function (nothing at {}; `lspci -D` lists the addresses)",
                        dir.display()
                    ),
                    "no such PCI function (`lspci -D` lists the addresses)",
                ),
            });
        }
        Ok(PciFunction { address, dir })
    }

    /// Its address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// Its sysfs directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `vendor:device` IDs.
    pub fn ids(&self) -> Result<(u16, u16)> {
        Ok((
            self.hex_attr("vendor")? as u16,
            self.hex_attr("device")? as u16,
        ))
    }

    /// The class code (24 bits: class, subclass, programming interface).
    pub fn class(&self) -> Result<u32> {
        Ok(self.hex_attr("class")? as u32)
    }

    /// The name of the driver bound to it, if any.
    pub fn driver(&self) -> Option<String> {
        link_name(&self.dir.join("driver"))
    }

    /// Its IOMMU group number, or [`Error::NotAttached`] saying how to get one.
    pub fn iommu_group(&self) -> Result<u32> {
        let name = link_name(&self.dir.join("iommu_group")).ok_or(Error::NotAttached {
            what: device_name(self.address),
            why: "has no IOMMU group: boot with intel_iommu=on (or amd_iommu=on) on a machine \
                  (or QEMU guest: -device intel-iommu) with an IOMMU, or use vfio's no-IOMMU \
                  mode at your own risk",
        })?;
        name.parse().map_err(|_| Error::BadArgument {
            what: "IOMMU group link does not end in a number",
            value: 0,
        })
    }

    /// Checks that it is bound to `vfio-pci`; otherwise [`Error::NotAttached`] naming the
    /// driver it has and how to rebind it.
    pub fn check_vfio_bound(&self) -> Result<()> {
        match self.driver() {
            Some(d) if d == "vfio-pci" => Ok(()),
            other => {
                let a = self.address;
                let now = match &other {
                    Some(d) => format!("bound to {d}, not vfio-pci"),
                    None => "bound to no driver (vfio-pci needed)".to_string(),
                };
                let unbind = if other.is_some() {
                    format!("echo {a} > /sys/bus/pci/devices/{a}/driver/unbind; ")
                } else {
                    String::new()
                };
                Err(Error::NotAttached {
                    what: device_name(a),
                    why: intern(
                        format!(
                            "{now}: as root, echo vfio-pci > /sys/bus/pci/devices/{a}/driver_override; \
                             {unbind}echo {a} > /sys/bus/pci/drivers_probe"
                        ),
                        "not bound to vfio-pci: write vfio-pci to its driver_override, unbind it \
                         and write its address to /sys/bus/pci/drivers_probe",
                    ),
                })
            }
        }
    }

    /// The bus address and length of BAR `index` (0–5) from the `resource` file; `None` for
    /// an unused BAR.
    pub fn bar(&self, index: u32) -> Result<Option<(u64, u64)>> {
        let text = std::fs::read_to_string(self.dir.join("resource")).map_err(|e| Error::Os {
            op: "read PCI resource file",
            errno: e.raw_os_error().unwrap_or(0),
            hint: "",
        })?;
        let line = text.lines().nth(index as usize).ok_or(Error::OutOfBounds {
            what: "PCI BAR index",
            offset: index as u64,
            len: 1,
            limit: text.lines().count() as u64,
        })?;
        let mut f = line.split_whitespace().map(parse_hex);
        match (f.next().flatten(), f.next().flatten()) {
            (Some(0), _) | (_, Some(0)) => Ok(None),
            (Some(start), Some(end)) if end > start => Ok(Some((start, end - start + 1))),
            _ => Err(Error::BadArgument {
                what: "PCI resource file line is not `start end flags` in hex",
                value: index as u64,
            }),
        }
    }

    fn hex_attr(&self, name: &'static str) -> Result<u64> {
        let text = std::fs::read_to_string(self.dir.join(name)).map_err(|e| Error::Os {
            op: "read PCI sysfs attribute",
            errno: e.raw_os_error().unwrap_or(0),
            hint: name,
        })?;
        parse_hex(text.trim()).ok_or(Error::BadArgument {
            what: "PCI sysfs attribute is not a hex number",
            value: 0,
        })
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
}

/// The last component of the symlink at `path`.
fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// `PCI device 0000:00:04.0`, interned.
pub(crate) fn device_name(a: PciAddress) -> &'static str {
    intern(format!("PCI device {a}"), "PCI device")
}
