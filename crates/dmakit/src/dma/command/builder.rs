//! [`DmaCommandBuilder`]: how a command is made (IOKit `withSpecification`).

use super::*;

impl<P: Platform + Clone + 'static> DmaCommand<P> {
    /// A builder for a command on `platform` (IOKit `IODMACommand::withSpecification`):
    /// no constraints, [`SegmentFormat::Host64`], [`MappingMode::Bypassed`], no bounce pool
    /// and no quarantine until set.
    ///
    /// ```
    /// use dmakit::dma::{DmaCommand, MappingMode, SegmentFormat, SegmentSpec};
    /// use dmakit::Error;
    /// # let machine = std::sync::Arc::new(dmakit_sim::MachineBuilder::new().build()?);
    ///
    /// // A 32-bit format limits a spec with no address limit to 32 bits...
    /// let cmd = DmaCommand::builder(machine.clone())
    ///     .format(SegmentFormat::Big32)
    ///     .mode(MappingMode::NonCoherent)
    ///     .build()?;
    /// assert_eq!(cmd.spec().max_address(), 0xFFFF_FFFF);
    /// assert!(cmd.maintains_caches());
    /// // ...and refuses one that reaches above 4 GiB.
    /// let wide = SegmentSpec::builder().address_bits(40).build()?;
    /// let refused = DmaCommand::builder(machine).spec(wide).format(SegmentFormat::Big32).build();
    /// assert!(matches!(refused, Err(Error::BadArgument { .. })));
    /// # Ok::<(), dmakit::Error>(())
    /// ```
    pub fn builder(platform: P) -> DmaCommandBuilder<P> {
        DmaCommandBuilder {
            platform,
            spec: SegmentSpec::default(),
            format: SegmentFormat::Host64,
            mode: MappingMode::Bypassed,
            pool: None,
            quarantine: None,
        }
    }

    /// A new, unprepared command with this one's spec, format, mapping mode, bounce pool and
    /// quarantine, and nothing attached (IOKit `cloneCommand`, which swaps the length and
    /// internal-segment alignments by mistake; dmakit copies them as they are).
    pub fn clone_command(&self) -> Result<Self> {
        Self::from_builder(DmaCommandBuilder {
            platform: self.platform.clone(),
            spec: self.spec,
            format: self.format,
            mode: self.owner.mode.clone(),
            pool: self.owner.pool.clone(),
            quarantine: self.owner.quarantine.clone(),
        })
    }

    /// The spec a command with `format` uses for `spec`: a 32-bit format limits a spec with
    /// no address limit to 32 bits and refuses one that reaches further (IOKit: 0 address
    /// bits become 32 for the 32-bit output functions, more than 32 are refused); its
    /// 32-bit length field caps segments at the longest length it holds that ends where
    /// the next segment may start (`2^32` less the internal or length alignment, so
    /// `0xFFFF_FFFF` bytes without one, as IOKit's 32-bit outputs carry).
    pub(super) fn spec_for(spec: SegmentSpec, format: SegmentFormat) -> Result<SegmentSpec> {
        let mut spec = spec;
        if spec.max_address() > format.max_address() {
            if spec.has_address_limit() {
                return Err(Error::BadArgument {
                    what: "a 32-bit segment format needs a spec limited to 32 address bits",
                    value: spec.max_address(),
                });
            }
            spec = spec.limited_to(format.max_address())?;
        }
        if spec.max_segment_size() > format.max_address() {
            let cut = spec.internal_alignment().max(spec.length_alignment());
            let longest = match (format.max_address() + 1).checked_sub(cut) {
                Some(n) if n > 0 => n,
                // An alignment of 4 GiB or more: no segment of a 32-bit length can end on it.
                _ => 1 << 31,
            };
            let cap = SegmentSpec::builder().max_segment_size(longest).build()?;
            spec = spec.intersect(&cap)?;
        }
        Ok(spec)
    }

    /// A command with nothing attached.
    pub(super) fn from_builder(b: DmaCommandBuilder<P>) -> Result<Self> {
        Ok(DmaCommand {
            spec: Self::spec_for(b.spec, b.format)?,
            platform: b.platform,
            format: b.format,
            owner: Owner {
                pool: b.pool,
                mode: b.mode,
                quarantine: b.quarantine,
                id: crate::debug::next_id(),
            },
            md: None,
            prep: None,
        })
    }
}

/// Builds a [`DmaCommand`] (IOKit `IODMACommand::withSpecification`); see
/// [`DmaCommand::builder`].
#[must_use = "a builder does nothing until `build`"]
pub struct DmaCommandBuilder<P: Platform + Clone + 'static> {
    platform: P,
    spec: SegmentSpec,
    format: SegmentFormat,
    mode: MappingMode,
    pool: Option<Arc<BouncePool<P>>>,
    quarantine: Option<Arc<Quarantine>>,
}

impl<P: Platform + Clone + 'static> DmaCommandBuilder<P> {
    /// The device's constraints (IOKit `SegmentOptions` and the address-bit count).
    pub fn spec(mut self, spec: SegmentSpec) -> Self {
        self.spec = spec;
        self
    }

    /// How segments are written (IOKit's output function). A 32-bit format limits a spec
    /// with no address limit to 32 bits, and refuses at `build` one that reaches above
    /// 4 GiB; its segments are at most `0xFFFF_FFFF` bytes long (less with an internal or
    /// length alignment: the longest multiple of it that a 32-bit length holds).
    pub fn format(mut self, format: SegmentFormat) -> Self {
        self.format = format;
        self
    }

    /// How the device reaches memory (IOKit's mapping type).
    pub fn mode(mut self, mode: MappingMode) -> Self {
        self.mode = mode;
        self
    }

    /// Mapped mode through `mapper` (IOKit `kMapped` with a mapper).
    pub fn mapper(self, mapper: Arc<dyn Mapper>) -> Self {
        self.mode(MappingMode::Mapped(mapper))
    }

    /// Where bounce buffers come from; without a pool, memory that breaks the spec is an
    /// error instead of a bounce.
    pub fn bounce_pool(mut self, pool: Arc<BouncePool<P>>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// [`bounce_pool`](Self::bounce_pool) when `pool` is `Some`.
    pub fn bounce_pool_option(mut self, pool: Option<Arc<BouncePool<P>>>) -> Self {
        self.pool = pool;
        self
    }

    /// The device's quarantine: a preparation dropped with the command waits there until
    /// the device is quiesced.
    pub fn quarantine(mut self, quarantine: Arc<Quarantine>) -> Self {
        self.quarantine = Some(quarantine);
        self
    }

    /// The command, with nothing attached.
    pub fn build(self) -> Result<DmaCommand<P>> {
        DmaCommand::from_builder(self)
    }
}

impl<P: Platform + Clone + 'static> core::fmt::Debug for DmaCommandBuilder<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaCommandBuilder")
            .field("spec", &self.spec)
            .field("format", &self.format)
            .field("mode", &self.mode)
            .finish()
    }
}
