//! Aborts transfers that trickle: fewer than `min_bytes_per_sec` on average over a whole window.
//!
//! A stall timeout alone misses the slow loris that sends one byte just before each timeout; CVMFS
//! counts < 1 kB/s as a timeout and Nix has a similar low-speed limit.

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Default floor: 1 KiB/s averaged over the window.
pub const DEFAULT_MIN_BYTES_PER_SEC: u64 = 1024;

/// The slowest acceptable transfer.
#[derive(Clone, Copy, Debug)]
pub struct LowSpeedLimit {
    /// Average rate a transfer must keep over each window.
    pub min_bytes_per_sec: u64,
    /// Length of the window.
    pub window: Duration,
}

/// Wraps a reader, failing with `TimedOut` when a window passes below the limit.
#[derive(Debug)]
pub struct LowSpeedReader<R> {
    inner: R,
    limit: LowSpeedLimit,
    window_start: Instant,
    window_bytes: u64,
}

impl<R> LowSpeedReader<R> {
    /// Starts the first window now.
    pub fn new(inner: R, limit: LowSpeedLimit) -> Self {
        Self { inner, limit, window_start: Instant::now(), window_bytes: 0 }
    }
}

impl<R: Read> Read for LowSpeedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.window_bytes += n as u64;
        let elapsed = self.window_start.elapsed();
        if elapsed >= self.limit.window {
            let floor = (self.limit.min_bytes_per_sec as f64 * elapsed.as_secs_f64()) as u64;
            if self.window_bytes < floor && n > 0 {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "transfer too slow: {} bytes in {:.1} s, below {} bytes/s",
                        self.window_bytes,
                        elapsed.as_secs_f64(),
                        self.limit.min_bytes_per_sec
                    ),
                ));
            }
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Yields one byte per read, waiting `delay` before each.
    struct Trickle {
        left: usize,
        delay: Duration,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Ok(0);
            }
            std::thread::sleep(self.delay);
            self.left -= 1;
            buf[0] = b'x';
            Ok(1)
        }
    }

    #[test]
    fn a_trickle_is_aborted_after_one_window() {
        let limit = LowSpeedLimit { min_bytes_per_sec: 1000, window: Duration::from_millis(30) };
        let slow = Trickle { left: 100, delay: Duration::from_millis(10) };
        let err = LowSpeedReader::new(slow, limit).read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("too slow"), "{err}");
    }

    #[test]
    fn a_fast_transfer_passes() {
        let limit = LowSpeedLimit { min_bytes_per_sec: 1, window: Duration::from_millis(1) };
        let data = vec![7u8; 1 << 20];
        let mut out = Vec::new();
        LowSpeedReader::new(&data[..], limit).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }
}
