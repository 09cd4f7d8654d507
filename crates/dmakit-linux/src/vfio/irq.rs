//! Device interrupts through eventfds (`VFIO_DEVICE_SET_IRQS`).
//!
//! VFIO signals an interrupt by incrementing an eventfd. [`Msi::enable`] creates one per
//! vector, hands them to the kernel for the device's MSI (or MSI-X) index, and runs one
//! thread that waits on them and calls the handler with the number of interrupts counted
//! since the last wake-up. A handler typically acknowledges the device and then raises a
//! [`DmaEventSource`](dmakit::dma::DmaEventSource) ([`InterruptSink::raise`]), which
//! delivers completions in order on its work loop.
//!
//! Dropping the `Msi` disables the index in the kernel, wakes the thread and joins it.

use super::device::VfioDevice;
use super::sys;
use crate::hints::os;
use dmakit::dma::InterruptSink;
use dmakit::{Error, Result};
use rustix::event::{eventfd, EventfdFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
};

/// Which interrupt mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqKind {
    /// PCI MSI.
    Msi,
    /// PCI MSI-X.
    MsiX,
}

impl IrqKind {
    pub(crate) fn index(self) -> u32 {
        match self {
            IrqKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            IrqKind::MsiX => VFIO_PCI_MSIX_IRQ_INDEX,
        }
    }
}

/// One interrupt vector delivered to a handler thread.
pub struct Msi {
    device_fd: OwnedFd,
    index: u32,
    event: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Msi {
    /// Enables vector 0 of `kind` on `device`; `handler` runs on a thread of its own for
    /// every wake-up, with the number of interrupts counted.
    pub fn enable(
        device: &VfioDevice,
        kind: IrqKind,
        handler: impl Fn(u64) + Send + 'static,
    ) -> Result<Msi> {
        let index = kind.index();
        let info =
            sys::irq_info(device.fd(), index).map_err(|e| os("VFIO_DEVICE_GET_IRQ_INFO", e, ""))?;
        if info.count == 0 || info.flags & VFIO_IRQ_INFO_EVENTFD == 0 {
            return Err(Error::Unsupported {
                what: match kind {
                    IrqKind::Msi => "MSI: the device has no MSI capability VFIO can signal through an eventfd",
                    IrqKind::MsiX => "MSI-X: the device has no MSI-X capability VFIO can signal through an eventfd",
                },
            });
        }
        let event = Arc::new(eventfd(0, EventfdFlags::CLOEXEC).map_err(|e| os("eventfd", e, ""))?);
        sys::set_irq_eventfds(device.fd(), index, &[event.as_fd()])
            .map_err(|e| os("VFIO_DEVICE_SET_IRQS (eventfd trigger)", e, ""))?;
        let device_fd = device.fd().try_clone_to_owned().map_err(|e| Error::Os {
            op: "dup of the VFIO device fd",
            errno: e.raw_os_error().unwrap_or(0),
            hint: "",
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (ev, st, ct) = (event.clone(), stop.clone(), count.clone());
        let thread = std::thread::Builder::new()
            .name("dmakit-vfio-irq".into())
            .spawn(move || loop {
                let mut b = [0u8; 8];
                match rustix::io::read(&*ev, &mut b) {
                    Ok(8) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    _ => return,
                }
                if st.load(Ordering::Acquire) {
                    return;
                }
                let n = u64::from_ne_bytes(b);
                ct.fetch_add(n, Ordering::AcqRel);
                handler(n);
            })
            .map_err(|_| Error::NoResources {
                what: "threads (the interrupt thread could not start)",
                limit: 0,
            })?;
        Ok(Msi {
            device_fd,
            index,
            event,
            stop,
            count,
            thread: Some(thread),
        })
    }

    /// Enables vector 0 of `kind` delivering to `sink` (after `ack`, which acknowledges the
    /// device and says whether the interrupt was its own).
    pub fn to_sink(
        device: &VfioDevice,
        kind: IrqKind,
        ack: impl Fn() -> bool + Send + 'static,
        sink: Arc<dyn InterruptSink>,
    ) -> Result<Msi> {
        Self::enable(device, kind, move |_| {
            if ack() {
                sink.raise();
            }
        })
    }

    /// Interrupts counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
}

impl Drop for Msi {
    fn drop(&mut self) {
        let _ = sys::set_irq_eventfds(self.device_fd.as_fd(), self.index, &[]);
        self.stop.store(true, Ordering::Release);
        let _ = rustix::io::write(&*self.event, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for Msi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msi")
            .field("index", &self.index)
            .field("count", &self.count())
            .finish()
    }
}
