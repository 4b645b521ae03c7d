//! Kafka's `SkimpyOffsetMap`: key hash to latest offset, in a fixed block
//! of memory. Keys are not stored, only a 128-bit hash of each (Kafka uses
//! MD5; xxh3-128 is as collision-free for this purpose and much faster), so
//! a dirty section of any key size maps into the configured buffer.

use xxhash_rust::xxh3::xxh3_128;

/// Bytes per slot: a 16-byte hash and an 8-byte offset, as Kafka's.
pub(crate) const ENTRY_BYTES: usize = 24;

/// Open addressing with linear probing. A slot is `[hash low, hash high,
/// offset + 1]`; an all-zero slot is free, so the table can come from
/// zeroed memory that the OS maps lazily.
#[derive(Debug)]
pub(crate) struct OffsetMap {
    slots: Vec<[u64; 3]>,
    entries: usize,
    /// `slots × log.cleaner.io.buffer.load.factor`: probing slows sharply
    /// past it, so the cleaner stops mapping there.
    entries_max: usize,
}

impl OffsetMap {
    pub(crate) fn new(memory_bytes: usize, load_factor: f64) -> OffsetMap {
        let slots = memory_bytes / ENTRY_BYTES;
        let entries_max = ((slots as f64 * load_factor) as usize).min(slots.saturating_sub(1));
        assert!(
            entries_max >= 1,
            "an offset map of {memory_bytes} bytes cannot hold a single key; \
             raise log.cleaner.dedupe.buffer.size or lower log.cleaner.threads"
        );
        OffsetMap {
            slots: vec![[0; 3]; slots],
            entries: 0,
            entries_max,
        }
    }

    fn hash(key: &[u8]) -> (u64, u64) {
        let h = xxh3_128(key);
        (h as u64, (h >> 64) as u64)
    }

    /// The slot holding `hash`, or the free slot where it would go.
    fn find(&self, (lo, hi): (u64, u64)) -> usize {
        let mut i = (lo % self.slots.len() as u64) as usize;
        loop {
            let slot = &self.slots[i];
            if slot[2] == 0 || (slot[0] == lo && slot[1] == hi) {
                return i;
            }
            i = (i + 1) % self.slots.len();
        }
    }

    /// Whether `keys` more distinct keys fit under the load factor.
    pub(crate) fn has_room_for(&self, keys: usize) -> bool {
        self.entries + keys <= self.entries_max
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Records `offset` as the latest for `key`. Returns false, changing
    /// nothing, only when a new key finds the table physically full (one
    /// slot always stays free so that probing ends).
    pub(crate) fn put(&mut self, key: &[u8], offset: i64) -> bool {
        debug_assert!(offset >= 0);
        let hash = Self::hash(key);
        let i = self.find(hash);
        if self.slots[i][2] == 0 {
            if self.entries + 1 >= self.slots.len() {
                return false;
            }
            self.entries += 1;
        }
        self.slots[i] = [hash.0, hash.1, offset as u64 + 1];
        true
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<i64> {
        let stored = self.slots[self.find(Self::hash(key))][2];
        (stored != 0).then(|| stored as i64 - 1)
    }

    /// Kafka's `bufferUtilization`: the share of slots in use.
    pub(crate) fn utilization(&self) -> f64 {
        self.entries as f64 / self.slots.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_offset_wins_and_room_is_bounded() {
        let mut map = OffsetMap::new(100 * ENTRY_BYTES, 0.9);
        assert!(map.is_empty());
        assert!(map.has_room_for(90));
        assert!(!map.has_room_for(91));
        for i in 0..50i64 {
            assert!(map.put(format!("k{}", i % 10).as_bytes(), i));
        }
        assert_eq!(map.get(b"k3"), Some(43));
        assert_eq!(map.get(b"k0"), Some(40));
        assert_eq!(map.get(b"other"), None);
        assert!((map.utilization() - 0.1).abs() < 1e-9);
        assert!(map.has_room_for(80));
        assert!(!map.has_room_for(81));
    }

    #[test]
    fn physically_full_refuses_new_keys_only() {
        let mut map = OffsetMap::new(4 * ENTRY_BYTES, 0.5);
        assert!(map.put(b"a", 0));
        assert!(map.put(b"b", 1));
        assert!(map.put(b"c", 2));
        assert!(!map.put(b"d", 3), "one slot stays free");
        assert!(map.put(b"a", 9));
        assert_eq!(map.get(b"a"), Some(9));
        assert_eq!(map.get(b"d"), None);
    }
}
