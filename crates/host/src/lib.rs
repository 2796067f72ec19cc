//! Host-side (std) implementations of the engine's platform traits: a persistent thread
//! pool implementing [`Parallel`], a monotonic [`Clock`], and model bytes held in
//! huge pages ([`HugePageBytes`]).
//!
//! The engine crates are `no_std`; these are what a program on an ordinary OS plugs in.

#![deny(unsafe_code)]

use std::time::Instant;

pub use embodios_engine::generate::Clock;
pub use embodios_engine::parallel::Parallel;

mod sys;

pub use sys::thread_pool::ThreadPool;

/// Bytes of a 2 MiB huge page, the alignment [`HugePageBytes`] gives its data.
const HUGE_PAGE: usize = 2 << 20;

/// A file's bytes read into anonymous memory advised for transparent huge pages.
///
/// A matrix-vector product streams every weight once per token. From a file mapping
/// (4 KiB page-cache pages on ext4 and most file systems) that costs a TLB miss per
/// 4 KiB and stops the hardware prefetchers at every page boundary; in 2 MiB pages the
/// same stream ran 5-8% faster (SmolLM2 decode, one thread). The data starts on a 2 MiB
/// boundary, so every alignment inside the file is kept. The pages are private to the
/// process (unlike a shared file mapping), and the file is read once at load.
pub struct HugePageBytes {
    map: memmap2::MmapMut,
    start: usize,
    len: usize,
}

impl HugePageBytes {
    /// Reads all of `file` (from its current position to the end, `len` bytes).
    pub fn read(file: &mut std::fs::File, len: usize) -> std::io::Result<Self> {
        use std::io::Read;
        let mut map = memmap2::MmapOptions::new()
            .len(len + HUGE_PAGE)
            .map_anon()?;
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let start = map.as_ptr().align_offset(HUGE_PAGE).min(HUGE_PAGE);
        file.read_exact(&mut map[start..start + len])?;
        Ok(Self { map, start, len })
    }
}

impl std::ops::Deref for HugePageBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

/// Microseconds since the clock was created, from [`Instant`].
#[derive(Clone, Copy, Debug)]
pub struct StdClock {
    start: Instant,
}

impl StdClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Default for StdClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for StdClock {
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_bytes_hold_the_file_aligned() {
        let path = std::env::temp_dir().join(format!("embodios-hp-{}", std::process::id()));
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let b = HugePageBytes::read(&mut f, data.len()).unwrap();
        assert_eq!(&*b, &data[..]);
        assert_eq!(b.as_ptr() as usize % HUGE_PAGE, 0);
        // A file shorter than claimed is an error, not a short buffer.
        let mut f = std::fs::File::open(&path).unwrap();
        assert!(HugePageBytes::read(&mut f, data.len() + 1).is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn clock_is_monotonic() {
        let c = StdClock::new();
        let a = c.now_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(c.now_us() >= a + 1000);
    }
}
