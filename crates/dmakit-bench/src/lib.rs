//! dmakit benchmarks (being written).
