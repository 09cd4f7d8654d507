//! How `dmakit` ends: an exit status per kind of failure, so scripts can tell a mistyped
//! command from a host that cannot do what was asked.

use std::fmt;
use std::process::ExitCode;

/// The exit statuses, as `--help` lists them.
pub const TABLE: &str = "\
Exit status:
  0  success
  1  failure: the run went wrong (an operation failed, the demo found a leak,
     the output could not be written)
  2  bad usage: unknown option or subcommand, or a value refused (a size that is
     not one, a page size the demo does not run with, --hugepage over 2 MiB)
  3  missing privileges: physical addresses need root with CAP_SYS_ADMIN
  4  this host cannot provide it now: more than MemAvailable or RLIMIT_MEMLOCK
     allows, no free hugepage, or none at the physical addresses asked for";

/// Why `dmakit` stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Something went wrong during the run.
    Failure = 1,
    /// The command line asked for something the command refuses.
    Usage = 2,
    /// The process lacks a privilege the command needs.
    Privileges = 3,
    /// The host cannot provide what was asked (memory, lock limit, hugepages).
    Resources = 4,
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> ExitCode {
        ExitCode::from(s as u8)
    }
}

/// A failure: its status and the message for standard error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The exit status.
    pub status: Status,
    /// What to tell the user.
    pub message: String,
}

impl Failure {
    /// A failure of kind `status`.
    pub fn new(status: Status, message: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.into(),
        }
    }

    /// A run that went wrong.
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure::new(Status::Failure, message)
    }

    /// A value the command refuses.
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Status::Usage, message)
    }

    /// A dmakit error of a request the user made: its status follows its kind, its
    /// message names IOKit's return code.
    pub fn of_request(e: &dmakit::Error) -> Failure {
        use dmakit::Error as E;
        let status = match e {
            E::NotPermitted { .. } => Status::Privileges,
            E::NoMemory { .. }
            | E::NoSuitableMemory { .. }
            | E::CannotWire { .. }
            | E::NoResources { .. } => Status::Resources,
            E::ZeroSize { .. }
            | E::BadArgument { .. }
            | E::BadAlignment { .. }
            | E::NotAligned { .. }
            | E::Overflow { .. } => Status::Usage,
            _ => Status::Failure,
        };
        Failure::new(status, format!("{e} [{}]", e.io_return()))
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::failed(message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_kind_of_error() {
        let e = dmakit::Error::NotPermitted {
            what: "pagemap",
            hint: "needs CAP_SYS_ADMIN",
        };
        assert_eq!(Failure::of_request(&e).status, Status::Privileges);
        let e = dmakit::Error::NoMemory {
            what: "pool",
            requested: 1,
            available: 0,
        };
        let f = Failure::of_request(&e);
        assert_eq!(f.status, Status::Resources);
        assert!(f.message.contains("kIOReturnNoMemory"), "{f}");
        let e = dmakit::Error::ZeroSize { what: "inspect" };
        assert_eq!(Failure::of_request(&e).status, Status::Usage);
        let e = dmakit::Error::Internal { what: "x" };
        assert_eq!(Failure::of_request(&e).status, Status::Failure);
        for code in ["0", "1", "2", "3", "4"] {
            assert!(TABLE.contains(&format!("  {code}  ")), "{code} missing");
        }
    }
}
