//! Transfer direction, as IOKit's `IODirection`.
//!
//! The names are from the *memory's* point of view as IOKit uses them: `In` means data
//! flows **into memory** (the device writes, a disk read), `Out` means data flows **out of
//! memory** (the device reads, a disk write).

/// The direction of a transfer (kIODirectionNone / In / Out / InOut).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// No transfer declared (kIODirectionNone = 0).
    #[default]
    None,
    /// Device writes memory (kIODirectionIn = 1).
    In,
    /// Device reads memory (kIODirectionOut = 2).
    Out,
    /// Both (kIODirectionInOut = 3).
    InOut,
}

impl Direction {
    /// IOKit's numeric value (the low two bits of the option word).
    pub const fn bits(self) -> u32 {
        match self {
            Direction::None => 0,
            Direction::In => 1,
            Direction::Out => 2,
            Direction::InOut => 3,
        }
    }

    /// From IOKit's numeric value; only the low two bits are read.
    pub const fn from_bits(bits: u32) -> Self {
        match bits & 3 {
            0 => Direction::None,
            1 => Direction::In,
            2 => Direction::Out,
            _ => Direction::InOut,
        }
    }

    /// Whether the device may write memory in this direction.
    pub const fn device_writes(self) -> bool {
        matches!(self, Direction::In | Direction::InOut)
    }

    /// Whether the device may read memory in this direction.
    pub const fn device_reads(self) -> bool {
        matches!(self, Direction::Out | Direction::InOut)
    }

    /// Whether every access allowed by `other` is also allowed by `self`.
    pub const fn covers(self, other: Direction) -> bool {
        self.bits() & other.bits() == other.bits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip() {
        for d in [
            Direction::None,
            Direction::In,
            Direction::Out,
            Direction::InOut,
        ] {
            assert_eq!(Direction::from_bits(d.bits()), d);
        }
        assert_eq!(Direction::from_bits(0x7), Direction::InOut);
        assert!(Direction::In.device_writes() && !Direction::In.device_reads());
        assert!(Direction::Out.device_reads() && !Direction::Out.device_writes());
        assert!(Direction::InOut.covers(Direction::In));
        assert!(!Direction::Out.covers(Direction::In));
        assert!(Direction::In.covers(Direction::None));
    }
}
