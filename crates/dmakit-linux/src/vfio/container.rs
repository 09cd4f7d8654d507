//! A VFIO container: one IOMMU address space (type1) shared by the groups attached to it.
//!
//! [`Container::open`] opens `/dev/vfio/vfio` and checks the API version and that the type1
//! v2 IOMMU is available. The IOMMU type can only be set once a group is attached, so the
//! first [`VfioDevice::open`](super::VfioDevice::open) of a device does it. After that,
//! [`info`](Container::info) reports the page sizes and valid IOVA ranges, and one
//! [`VfioMapper`](super::VfioMapper) maps memory for every device of the container.

use super::group::Group;
use super::info::IommuInfo;
use super::sys;
use crate::hints::os;
use dmakit::{Error, Result};
use rustix::io::Errno;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use vfio_bindings::bindings::vfio::{VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION};

/// Where the VFIO nodes live.
pub const DEV_VFIO: &str = "/dev/vfio";

/// An open VFIO container with the type1 v2 IOMMU.
#[derive(Debug)]
pub struct Container {
    // Dropped before `fd`: groups detach before the container closes.
    groups: Mutex<Vec<Group>>,
    fd: OwnedFd,
    dev_dir: PathBuf,
    mapper_taken: AtomicBool,
}

impl Container {
    /// Opens `/dev/vfio/vfio`.
    pub fn open() -> Result<Container> {
        Self::open_in(DEV_VFIO)
    }

    /// Opens `<dev_dir>/vfio` (groups are then looked up in `dev_dir` as well).
    pub fn open_in(dev_dir: impl AsRef<Path>) -> Result<Container> {
        use rustix::fs::{Mode, OFlags};
        let dev_dir = dev_dir.as_ref().to_path_buf();
        let fd = rustix::fs::open(
            dev_dir.join("vfio"),
            OFlags::RDWR | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::NOENT => Error::Unsupported {
                what: "VFIO: /dev/vfio/vfio does not exist (load the vfio, vfio_iommu_type1 \
                           and vfio-pci modules: modprobe vfio-pci)",
            },
            Errno::ACCESS | Errno::PERM => Error::NotPermitted {
                what: "open /dev/vfio/vfio",
                hint: "run as root or give this user access to /dev/vfio",
            },
            e => os("open /dev/vfio/vfio", e, ""),
        })?;
        let v = sys::api_version(fd.as_fd()).map_err(|e| os("VFIO_GET_API_VERSION", e, ""))?;
        if v != VFIO_API_VERSION as i32 {
            return Err(Error::Unsupported {
                what: "VFIO: the kernel's API version is not the one vfio-bindings describes",
            });
        }
        if !sys::check_extension(fd.as_fd(), VFIO_TYPE1v2_IOMMU)
            .map_err(|e| os("VFIO_CHECK_EXTENSION", e, ""))?
        {
            return Err(Error::Unsupported {
                what: "VFIO: no type1 v2 IOMMU (load vfio_iommu_type1; an IOMMU must be enabled)",
            });
        }
        Ok(Container {
            groups: Mutex::new(Vec::new()),
            fd,
            dev_dir,
            mapper_taken: AtomicBool::new(false),
        })
    }

    /// Attaches IOMMU group `number` (once; later calls do nothing) and sets the IOMMU type
    /// when it is the first group.
    pub(crate) fn attach_group(&self, number: u32) -> Result<()> {
        let mut groups = self.groups();
        if groups.iter().any(|g| g.number() == number) {
            return Ok(());
        }
        let g = Group::open(&self.dev_dir, number)?;
        g.set_container(self.fd.as_fd())?;
        if groups.is_empty() {
            sys::set_iommu(self.fd.as_fd(), VFIO_TYPE1v2_IOMMU)
                .map_err(|e| os("VFIO_SET_IOMMU (type1 v2)", e, ""))?;
        }
        groups.push(g);
        Ok(())
    }

    /// Runs `f` on attached group `number`.
    pub(crate) fn with_group<R>(
        &self,
        number: u32,
        f: impl FnOnce(&Group) -> Result<R>,
    ) -> Result<R> {
        let groups = self.groups();
        let g = groups
            .iter()
            .find(|g| g.number() == number)
            .ok_or(Error::Internal {
                what: "VFIO group used before it was attached",
            })?;
        f(g)
    }

    /// The IOMMU's page sizes, valid IOVA ranges and remaining mapping count (needs an
    /// attached group).
    pub fn info(&self) -> Result<IommuInfo> {
        if self.groups().is_empty() {
            return Err(Error::NotReady {
                what: "VFIO container info (open a device first: the IOMMU type is set when the first group attaches)",
                addr: 0,
            });
        }
        let bytes =
            sys::iommu_info(self.fd.as_fd()).map_err(|e| os("VFIO_IOMMU_GET_INFO", e, ""))?;
        IommuInfo::parse(&bytes)
    }

    /// The numbers of the attached groups.
    pub fn groups_attached(&self) -> Vec<u32> {
        self.groups().iter().map(|g| g.number()).collect()
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Claims the container's IO address space for one mapper.
    pub(crate) fn take_mapper(&self) -> Result<()> {
        if self.mapper_taken.swap(true, Ordering::AcqRel) {
            return Err(Error::Busy {
                what: "VFIO container",
                addr: 0,
                why: "it already has a VfioMapper (one IO address space, one allocator)",
            });
        }
        Ok(())
    }

    /// Gives the IO address space back (the mapper was dropped).
    pub(crate) fn release_mapper(&self) {
        self.mapper_taken.store(false, Ordering::Release);
    }

    fn groups(&self) -> MutexGuard<'_, Vec<Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }
}
