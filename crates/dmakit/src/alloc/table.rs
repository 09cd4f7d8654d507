//! [`Table`]: a hash map keyed by addresses, for the sharded bookkeeping of the range
//! caches. Removing keeps the table's memory, so a table that has reached its working
//! size inserts and removes without allocating.

use core::hash::{BuildHasherDefault, Hasher};

/// A hash map from `u64` addresses.
pub(crate) type Table<V> = hashbrown::HashMap<u64, V, BuildHasherDefault<AddrHash>>;

/// A hash for addresses: a multiply by 2^64 / φ, folded so that the low bits (the bucket)
/// depend on every bit of the key, page-aligned keys included. Much cheaper than the
/// standard library's SipHash for maps keyed by addresses, which need no protection from
/// chosen keys:
///
/// ```
/// use core::hash::BuildHasherDefault;
/// use dmakit::alloc::AddrHash;
/// use std::collections::HashMap;
///
/// let mut pages: HashMap<u64, u64, BuildHasherDefault<AddrHash>> = HashMap::default();
/// pages.insert(0x1000, 0x8_0000);
/// assert_eq!(pages[&0x1000], 0x8_0000);
/// ```
#[derive(Default, Clone, Copy, Debug)]
pub struct AddrHash(u64);

impl Hasher for AddrHash {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

/// An empty table.
pub(crate) fn table<V>() -> Table<V> {
    Table::default()
}
