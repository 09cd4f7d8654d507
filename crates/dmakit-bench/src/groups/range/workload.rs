//! The steady-state workloads of the range group, generated once from a fixed seed.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Sizes uniform in 4 KiB–1 MiB (1–256 pages); each step frees a random live range.
    Mixed,
    /// IOVA churn: page-multiple sizes, mostly small (1 page 60 %, 2 pages 20 %, 4 pages
    /// 10 %, 16 pages 10 %); each step frees one of the eight oldest ranges (FIFO-ish).
    Churn,
}

impl Kind {
    /// The name in row names.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mixed => "mixed_4k_1m",
            Kind::Churn => "iova_churn",
        }
    }

    fn size(self, r: &mut ChaCha8Rng) -> u32 {
        match self {
            Kind::Mixed => r.gen_range(1..=256),
            Kind::Churn => match r.gen_range(0..10) {
                0..=5 => 1,
                6 | 7 => 2,
                8 => 4,
                _ => 16,
            },
        }
    }
}

/// A workload over `live` ranges: `prefill[s]` pages go into slot `s` first (untimed);
/// then every step frees what its slot holds and allocates `units` pages into it, so the
/// number of live ranges stays `live`.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Which kind.
    pub kind: Kind,
    /// Sizes (pages) of the initial live ranges, one per slot.
    pub prefill: Vec<u32>,
    /// The steps: `(slot, units)`.
    pub steps: Vec<(u32, u32)>,
    /// Size of the space in pages: three times the expected live pages, so that no
    /// contender runs out.
    pub space_units: u32,
}

impl Workload {
    /// A workload of `kind` keeping `live` ranges, `steps` steps long.
    pub fn new(kind: Kind, live: usize, steps: usize, seed: u64) -> Workload {
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ live as u64);
        let prefill: Vec<u32> = (0..live).map(|_| kind.size(&mut r)).collect();
        let live = live.max(1);
        let steps = (0..steps)
            .map(|i| {
                let slot = match kind {
                    Kind::Mixed => r.gen_range(0..live),
                    Kind::Churn => (i + r.gen_range(0..8)) % live,
                };
                (slot as u32, kind.size(&mut r))
            })
            .collect();
        let mean = match kind {
            Kind::Mixed => 128.5,
            Kind::Churn => 3.0,
        };
        let space = (3.0 * mean * live as f64) as u64 + 4096;
        Workload {
            kind,
            prefill,
            steps,
            space_units: space.min(u32::MAX as u64) as u32,
        }
    }

    /// Live ranges.
    pub fn live(&self) -> usize {
        self.prefill.len()
    }
}
