//! `MinFree`: the free space the cache keeps on its filesystem (`--min-free`), as bytes or as a
//! share of the filesystem. Parsing the setting's text is the configuration's job.

/// Free space to leave on the cache's filesystem; eviction runs when less is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinFree {
    /// An absolute number of bytes.
    Bytes(u64),
    /// A percentage (0..=99) of the filesystem's size.
    Percent(u8),
}

impl MinFree {
    /// The bytes to keep free on a filesystem of `fs_bytes`.
    pub fn bytes_of(self, fs_bytes: u64) -> u64 {
        match self {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => fs_bytes / 100 * u64::from(p),
        }
    }
}
