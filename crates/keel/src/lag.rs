//! Consumer lag measured against retention: how many records a group has
//! yet to read, how many retention deleted before it read them, how much
//! room is left before retention reaches unread records, and roughly when it
//! will.
//!
//! Pure arithmetic on offsets and timestamps, depending on nothing but `std`,
//! so the broker's metrics can compute the same figures (`keel group
//! describe` is the first user).

/// Retention's figures for one partition and one committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionLag {
    /// Records the group has not read: log end − committed (Kafka's lag),
    /// counting records retention already deleted; 0 when the committed
    /// offset is at or past the log end.
    pub lag: i64,
    /// Records retention deleted before the group read them: log start −
    /// committed when the committed offset is below the log start offset.
    pub lost: i64,
    /// Unread records still in the log: from the committed offset (or the
    /// log start offset, when records were lost) to the log end.
    pub unread_retained: i64,
    /// How far the committed offset is above the log start offset: records
    /// the group has read that retention has not yet deleted. Retention
    /// deletes these before it reaches an unread record; 0 when records were
    /// lost.
    pub headroom: i64,
    /// How far the committed offset is past the log end offset (a topic that
    /// was recreated or truncated); 0 normally.
    pub beyond_end: i64,
    /// When retention may delete the oldest unread record.
    pub time_left: TimeLeft,
}

/// The estimated time until retention deletes the oldest unread record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeLeft {
    /// Nothing is unread, so retention cannot make the group lose records.
    NothingUnread,
    /// `retention.ms` is -1: records are never deleted for their age.
    Unlimited,
    /// No usable timestamp for the oldest unread record.
    Unknown,
    /// At least this many milliseconds (0: it may be deleted at the next
    /// retention check). A lower bound: Kafka deletes a whole segment once
    /// its newest record is older than `retention.ms`, and the segment's
    /// newest record is no older than the oldest unread one's batch.
    AtLeastMs(i64),
}

/// Computes the figures for one partition.
///
/// `committed` is the group's committed offset (callers skip partitions
/// without one), `log_start` and `log_end` the partition's log start offset
/// and log end offset (high watermark), `oldest_unread_timestamp_ms` the
/// timestamp of the oldest unread record still in the log (the max
/// timestamp of its batch), `retention_ms` the topic's `retention.ms` (-1
/// for unlimited) and `now_ms` the current time; times are milliseconds
/// since the Unix epoch.
pub fn retention_lag(
    committed: i64,
    log_start: i64,
    log_end: i64,
    oldest_unread_timestamp_ms: Option<i64>,
    retention_ms: i64,
    now_ms: i64,
) -> RetentionLag {
    // A log end below the log start would be a broker bug; read it as empty.
    let log_end = log_end.max(log_start);
    let lag = (log_end - committed).max(0);
    let lost = (log_start - committed).max(0);
    let first_unread = committed.clamp(log_start, log_end);
    let unread_retained = log_end - first_unread;
    let time_left = if unread_retained == 0 {
        TimeLeft::NothingUnread
    } else if retention_ms < 0 {
        TimeLeft::Unlimited
    } else {
        // Kafka's NO_TIMESTAMP is -1; no negative timestamp says anything.
        match oldest_unread_timestamp_ms.filter(|&t| t >= 0) {
            None => TimeLeft::Unknown,
            Some(timestamp) => {
                let deletable_at = timestamp.saturating_add(retention_ms);
                TimeLeft::AtLeastMs(deletable_at.saturating_sub(now_ms).max(0))
            }
        }
    };
    RetentionLag {
        lag,
        lost,
        unread_retained,
        headroom: first_unread - log_start,
        beyond_end: (committed - log_end).max(0),
        time_left,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const HOUR: i64 = 3_600_000;

    #[test]
    fn records_deleted_before_they_were_read_are_lost() {
        let lag = retention_lag(10, 1244, 2000, Some(NOW - HOUR), 2 * HOUR, NOW);
        assert_eq!(
            lag,
            RetentionLag {
                lag: 1990,
                lost: 1234,
                unread_retained: 756,
                headroom: 0,
                beyond_end: 0,
                time_left: TimeLeft::AtLeastMs(HOUR),
            }
        );
    }

    #[test]
    fn headroom_is_read_records_retention_has_not_deleted() {
        let lag = retention_lag(150, 100, 400, Some(NOW), HOUR, NOW);
        assert_eq!((lag.lag, lag.lost), (250, 0));
        assert_eq!((lag.headroom, lag.unread_retained), (50, 250));
        assert_eq!(lag.time_left, TimeLeft::AtLeastMs(HOUR));
        // Committed exactly at the log start: no headroom, nothing lost.
        let lag = retention_lag(100, 100, 400, Some(NOW), HOUR, NOW);
        assert_eq!((lag.headroom, lag.lost, lag.unread_retained), (0, 0, 300));
    }

    #[test]
    fn time_left_counts_down_and_stops_at_zero() {
        let oldest = NOW - 90 * 60_000;
        let lag = retention_lag(5, 0, 10, Some(oldest), 2 * HOUR, NOW);
        assert_eq!(lag.time_left, TimeLeft::AtLeastMs(30 * 60_000));
        // Overdue: retention may delete it at its next check.
        let lag = retention_lag(5, 0, 10, Some(oldest), HOUR, NOW);
        assert_eq!(lag.time_left, TimeLeft::AtLeastMs(0));
        // A timestamp from the future (a producer's clock) only adds time.
        let lag = retention_lag(5, 0, 10, Some(NOW + HOUR), HOUR, NOW);
        assert_eq!(lag.time_left, TimeLeft::AtLeastMs(2 * HOUR));
    }

    #[test]
    fn unlimited_retention_has_no_time_limit() {
        let lag = retention_lag(5, 0, 10, Some(0), -1, NOW);
        assert_eq!(lag.time_left, TimeLeft::Unlimited);
        assert_eq!((lag.lag, lag.headroom), (5, 5));
        // Without a timestamp as well: the limit does not depend on one.
        let lag = retention_lag(5, 0, 10, None, -1, NOW);
        assert_eq!(lag.time_left, TimeLeft::Unlimited);
    }

    #[test]
    fn missing_timestamps_are_unknown() {
        assert_eq!(
            retention_lag(5, 0, 10, None, HOUR, NOW).time_left,
            TimeLeft::Unknown
        );
        // NO_TIMESTAMP (-1), as old-format records carry.
        assert_eq!(
            retention_lag(5, 0, 10, Some(-1), HOUR, NOW).time_left,
            TimeLeft::Unknown
        );
    }

    #[test]
    fn a_caught_up_group_has_nothing_at_risk() {
        let lag = retention_lag(10, 3, 10, None, HOUR, NOW);
        assert_eq!(
            lag,
            RetentionLag {
                lag: 0,
                lost: 0,
                unread_retained: 0,
                headroom: 7,
                beyond_end: 0,
                time_left: TimeLeft::NothingUnread,
            }
        );
    }

    #[test]
    fn empty_partitions() {
        // Never written to.
        let lag = retention_lag(0, 0, 0, None, HOUR, NOW);
        assert_eq!((lag.lag, lag.lost, lag.headroom), (0, 0, 0));
        assert_eq!(lag.time_left, TimeLeft::NothingUnread);
        // Written to and then emptied by retention after the group read it all.
        let lag = retention_lag(50, 50, 50, None, HOUR, NOW);
        assert_eq!((lag.lag, lag.lost, lag.headroom), (0, 0, 0));
        // Emptied by retention before the group read anything: all lost.
        let lag = retention_lag(20, 50, 50, None, HOUR, NOW);
        assert_eq!((lag.lag, lag.lost, lag.unread_retained), (30, 30, 0));
        assert_eq!(lag.time_left, TimeLeft::NothingUnread);
    }

    #[test]
    fn committed_beyond_the_end() {
        let lag = retention_lag(120, 40, 100, Some(NOW), HOUR, NOW);
        assert_eq!(
            lag,
            RetentionLag {
                lag: 0,
                lost: 0,
                unread_retained: 0,
                headroom: 60,
                beyond_end: 20,
                time_left: TimeLeft::NothingUnread,
            }
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let lag = retention_lag(0, 0, 10, Some(i64::MAX), i64::MAX, i64::MIN + 1);
        assert_eq!(lag.time_left, TimeLeft::AtLeastMs(i64::MAX));
        let lag = retention_lag(0, 0, 10, Some(0), 0, i64::MAX);
        assert_eq!(lag.time_left, TimeLeft::AtLeastMs(0));
    }
}
