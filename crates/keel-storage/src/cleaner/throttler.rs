//! Kafka's `Throttler`: keeps the cleaners' combined I/O under
//! `log.cleaner.io.max.bytes.per.second` by sleeping whenever the rate over
//! the last check interval ran above it. One throttler is shared by all
//! cleaner threads, and sleeps under its lock, so the budget is global.
//! It is also how a running clean is stopped: every read and write passes
//! through it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Result, StorageError};

/// How long one measuring period lasts (Kafka's check interval). Unlike
/// Kafka, the rate is checked at every I/O, not only once a period is
/// over, so a clean shorter than a period is held to the limit too.
const CHECK_INTERVAL: Duration = Duration::from_millis(300);

#[derive(Debug)]
pub struct Throttler {
    /// An `f64`'s bits: the rate is a dynamic config, changed while cleans run.
    bytes_per_second: AtomicU64,
    period: Mutex<Period>,
    stopped: AtomicBool,
}

#[derive(Debug)]
struct Period {
    start: Instant,
    observed_bytes: f64,
}

impl Throttler {
    /// `bytes_per_second` is `log.cleaner.io.max.bytes.per.second`; Kafka's
    /// default, `f64::MAX`, never sleeps.
    pub fn new(bytes_per_second: f64) -> Throttler {
        let throttler = Throttler {
            bytes_per_second: AtomicU64::new(0),
            period: Mutex::new(Period {
                start: Instant::now(),
                observed_bytes: 0.0,
            }),
            stopped: AtomicBool::new(false),
        };
        throttler.set_bytes_per_second(bytes_per_second);
        throttler
    }

    pub fn set_bytes_per_second(&self, bytes_per_second: f64) {
        assert!(
            bytes_per_second > 0.0,
            "log.cleaner.io.max.bytes.per.second must be positive"
        );
        self.bytes_per_second
            .store(bytes_per_second.to_bits(), Ordering::Relaxed);
    }

    /// Makes every clean using this throttler fail at its next read or
    /// write, as Kafka's cleaner threads stop on shutdown; the partial
    /// `.cleaned` files go when the failed clean is dropped.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }

    /// Records `bytes` of I/O and sleeps if the rate is above the target.
    pub(crate) fn maybe_throttle(&self, bytes: u64) -> Result<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(StorageError::CleanerStopped);
        }
        let bytes_per_second = f64::from_bits(self.bytes_per_second.load(Ordering::Relaxed));
        if bytes_per_second >= f64::MAX {
            return Ok(());
        }
        let mut period = self.period.lock().unwrap_or_else(|e| e.into_inner());
        period.observed_bytes += bytes as f64;
        let elapsed = period.start.elapsed();
        if let Some(sleep) = sleep_needed(period.observed_bytes, elapsed, bytes_per_second) {
            tracing::trace!(?sleep, "log cleaner above its I/O rate; sleeping");
            std::thread::sleep(sleep);
        }
        if period.start.elapsed() > CHECK_INTERVAL {
            period.start = Instant::now();
            period.observed_bytes = 0.0;
        }
        Ok(())
    }
}

/// How long to sleep so that `observed_bytes` over `elapsed` plus the sleep
/// averages `bytes_per_second`; `None` when already at or below it.
fn sleep_needed(observed_bytes: f64, elapsed: Duration, bytes_per_second: f64) -> Option<Duration> {
    let needed = Duration::try_from_secs_f64(observed_bytes / bytes_per_second).ok()?;
    needed.checked_sub(elapsed).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_just_enough_to_meet_the_rate() {
        let second = Duration::from_secs(1);
        assert_eq!(sleep_needed(3000.0, second, 1000.0), Some(2 * second));
        assert_eq!(
            sleep_needed(1500.0, second / 2, 1000.0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(sleep_needed(1000.0, second, 1000.0), None);
        assert_eq!(sleep_needed(10.0, second, 1000.0), None);
        assert_eq!(sleep_needed(1e300, second, f64::MAX), None);
    }

    #[test]
    fn unlimited_never_locks_or_sleeps() {
        let t = Throttler::new(f64::MAX);
        let start = Instant::now();
        for _ in 0..1000 {
            t.maybe_throttle(u64::MAX).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_stopped_throttler_fails_the_next_io() {
        let t = Throttler::new(f64::MAX);
        t.maybe_throttle(1).unwrap();
        t.stop();
        assert!(matches!(
            t.maybe_throttle(1),
            Err(StorageError::CleanerStopped)
        ));
    }
}
