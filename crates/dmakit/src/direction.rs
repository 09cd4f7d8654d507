//! Transfer direction, as IOKit's `IODirection`.
//!
//! dmakit has one pair of words, IOKit's, named from the *memory's* point of view: `In`
//! means data flows **into memory** (the device writes it: a disk read, a received
//! packet), `Out` means data flows **out of memory** (the device reads it: a disk write, a
//! sent packet). Linux and the typed layer name the same thing from the device's point of
//! view; the aliases below and the marker types of [`dma::owned`](crate::dma::owned) map
//! one to the other:
//!
//! | IOKit (`Direction`) | Linux `dma_data_direction` | alias | typed marker |
//! | --- | --- | --- | --- |
//! | `In` (kIODirectionIn) | `DMA_FROM_DEVICE` | [`Direction::FROM_DEVICE`] | [`FromDevice`](crate::dma::FromDevice) |
//! | `Out` (kIODirectionOut) | `DMA_TO_DEVICE` | [`Direction::TO_DEVICE`] | [`ToDevice`](crate::dma::ToDevice) |
//! | `InOut` (kIODirectionInOut) | `DMA_BIDIRECTIONAL` | [`Direction::BIDIRECTIONAL`] | [`Bidirectional`](crate::dma::Bidirectional) |
//! | `None` (kIODirectionNone) | `DMA_NONE` | | |
//!
//! ```
//! use dmakit::Direction;
//! assert_eq!(Direction::FROM_DEVICE, Direction::In);
//! assert!(Direction::FROM_DEVICE.device_writes() && Direction::TO_DEVICE.device_reads());
//! ```

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
    /// The device writes memory: [`Direction::In`] (Linux `DMA_FROM_DEVICE`).
    pub const FROM_DEVICE: Direction = Direction::In;
    /// The device reads memory: [`Direction::Out`] (Linux `DMA_TO_DEVICE`).
    pub const TO_DEVICE: Direction = Direction::Out;
    /// Both: [`Direction::InOut`] (Linux `DMA_BIDIRECTIONAL`).
    pub const BIDIRECTIONAL: Direction = Direction::InOut;

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
