//! An IOMMU group: the unit of isolation VFIO hands to userspace.
//!
//! Devices that the IOMMU cannot tell apart share a group, and a group is usable only when
//! it is *viable*: every device in it is bound to `vfio-pci` (or to no driver). A group is
//! attached to one [`Container`](super::Container), whose IOMMU then translates for all
//! its devices; it stays attached until the container is dropped.

use super::sys;
use crate::hints::intern;
use dmakit::{Error, Result};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use vfio_bindings::bindings::vfio::VFIO_GROUP_FLAGS_VIABLE;

/// An open `/dev/vfio/<n>`.
#[derive(Debug)]
pub(crate) struct Group {
    number: u32,
    fd: OwnedFd,
}

impl Group {
    /// Opens group `number` under `dev_dir` (normally `/dev/vfio`) and checks it is viable.
    pub(crate) fn open(dev_dir: &Path, number: u32) -> Result<Group> {
        use rustix::fs::{Mode, OFlags};
        let path = dev_dir.join(number.to_string());
        let fd = rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(
            |e| match e {
                Errno::NOENT => Error::NotAttached {
                    what: intern(format!("IOMMU group {number}"), "IOMMU group"),
                    why: intern(
                        format!(
                            "{} does not exist: bind the group's devices to vfio-pci first",
                            path.display()
                        ),
                        "its /dev/vfio node does not exist: bind the group's devices to vfio-pci first",
                    ),
                },
                Errno::ACCESS | Errno::PERM => Error::NotPermitted {
                    what: "open a VFIO group",
                    hint: "run as root, or give this user the /dev/vfio/<group> node (chown)",
                },
                Errno::BUSY => Error::Busy {
                    what: "VFIO group (number)",
                    addr: number as u64,
                    why: "another process (or another container of this one) has it open",
                },
                e => crate::hints::os("open /dev/vfio/<group>", e, ""),
            },
        )?;
        let flags = sys::group_status(fd.as_fd())
            .map_err(|e| crate::hints::os("VFIO_GROUP_GET_STATUS", e, ""))?;
        if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(Error::NotAttached {
                what: intern(format!("IOMMU group {number}"), "IOMMU group"),
                why: intern(
                    format!(
                        "is not viable: every device in /sys/kernel/iommu_groups/{number}/devices \
                         must be bound to vfio-pci or to no driver"
                    ),
                    "is not viable: every device in the group must be bound to vfio-pci or to no driver",
                ),
            });
        }
        Ok(Group { number, fd })
    }

    /// Its number.
    pub(crate) fn number(&self) -> u32 {
        self.number
    }

    /// Attaches it to the container `container`.
    pub(crate) fn set_container(&self, container: BorrowedFd<'_>) -> Result<()> {
        sys::group_set_container(self.fd.as_fd(), container)
            .map_err(|e| crate::hints::os("VFIO_GROUP_SET_CONTAINER", e, ""))
    }

    /// The fd of the device named `name` in this group.
    pub(crate) fn device_fd(&self, name: &str) -> Result<OwnedFd> {
        let c = std::ffi::CString::new(name).map_err(|_| Error::BadArgument {
            what: "VFIO device name contains a NUL byte",
            value: 0,
        })?;
        sys::group_device_fd(self.fd.as_fd(), &c).map_err(|e| {
            crate::hints::os(
                "VFIO_GROUP_GET_DEVICE_FD",
                e,
                "the device must be in this group and bound to vfio-pci, and not open elsewhere",
            )
        })
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Closing the fd detaches as well; unsetting first makes the order explicit.
        let _ = sys::group_unset_container(self.fd.as_fd());
    }
}
