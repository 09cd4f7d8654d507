//! dmakit backend (being written).
