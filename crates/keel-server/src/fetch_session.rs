//! Incremental fetch sessions (KIP-227).
//!
//! A client with a session sends only the partitions whose fetch position it
//! changed, and the broker answers only for partitions with something new:
//! records, a moved high watermark or log start offset, or an error. The
//! cache is bounded by `max.incremental.fetch.session.cache.slots`; a client
//! that finds its session evicted gets FETCH_SESSION_ID_NOT_FOUND and starts
//! over with a full fetch.

use std::time::Instant;

use indexmap::IndexMap;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use uuid::Uuid;

/// Session epoch that asks for a new session (with session id 0).
pub const INITIAL_EPOCH: i32 = 0;
/// Session epoch that closes a session, or asks for none.
pub const FINAL_EPOCH: i32 = -1;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    pub topic: String,
    pub partition: i32,
}

/// A partition as the fetch asks for it.
#[derive(Clone, Debug)]
pub struct PartitionFetch {
    pub topic_id: Uuid,
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
    /// The leader epoch the client believes current; -1 if it does not say.
    pub current_leader_epoch: i32,
    /// The epoch of the last batch the fetcher has (v12+); -1 if unknown.
    pub last_fetched_epoch: i32,
}

#[derive(Clone, Debug)]
struct CachedPartition {
    fetch: PartitionFetch,
    /// What the last response told the client, to detect changes.
    last_high_watermark: i64,
    last_log_start_offset: i64,
}

struct Session {
    epoch: i32,
    partitions: IndexMap<PartitionKey, CachedPartition>,
    last_used: Instant,
}

/// What one Fetch request resolves to.
#[derive(Debug)]
pub struct FetchContext {
    /// The session id to answer with; 0 when no session is kept.
    pub session_id: i32,
    /// Whether only changed partitions go in the response.
    pub incremental: bool,
    pub partitions: Vec<(PartitionKey, PartitionFetch)>,
}

pub struct FetchSessionCache {
    slots: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    sessions: std::collections::HashMap<i32, Session>,
    next_id: i32,
}

impl FetchSessionCache {
    pub fn new(slots: usize) -> Self {
        Self {
            slots,
            inner: Mutex::new(Inner {
                sessions: Default::default(),
                next_id: 1,
            }),
        }
    }

    /// Applies a request's session fields and partitions.
    pub fn resolve(
        &self,
        session_id: i32,
        epoch: i32,
        requested: Vec<(PartitionKey, PartitionFetch)>,
        forgotten: Vec<PartitionKey>,
    ) -> Result<FetchContext, ResponseError> {
        let mut inner = self.inner.lock();
        if epoch == FINAL_EPOCH || epoch == INITIAL_EPOCH {
            if session_id != 0 {
                inner.sessions.remove(&session_id);
            }
            let mut context = FetchContext {
                session_id: 0,
                incremental: false,
                partitions: requested,
            };
            if epoch == INITIAL_EPOCH && self.slots > 0 {
                context.session_id = inner.create(self.slots, &context.partitions);
            }
            return Ok(context);
        }
        let session = inner
            .sessions
            .get_mut(&session_id)
            .ok_or(ResponseError::FetchSessionIdNotFound)?;
        if session.epoch != epoch {
            return Err(ResponseError::InvalidFetchSessionEpoch);
        }
        session.epoch = next_epoch(epoch);
        session.last_used = Instant::now();
        for key in forgotten {
            session.partitions.shift_remove(&key);
        }
        for (key, fetch) in requested {
            match session.partitions.get_mut(&key) {
                Some(cached) => cached.fetch = fetch,
                None => {
                    session.partitions.insert(
                        key,
                        CachedPartition {
                            fetch,
                            last_high_watermark: -1,
                            last_log_start_offset: -1,
                        },
                    );
                }
            }
        }
        Ok(FetchContext {
            session_id,
            incremental: true,
            partitions: session
                .partitions
                .iter()
                .map(|(k, c)| (k.clone(), c.fetch.clone()))
                .collect(),
        })
    }

    /// Records what a response said about a partition and whether an
    /// incremental response must include it.
    pub fn note_response(
        &self,
        session_id: i32,
        key: &PartitionKey,
        high_watermark: i64,
        log_start_offset: i64,
        has_records_or_error: bool,
    ) -> bool {
        if session_id == 0 {
            return true;
        }
        let mut inner = self.inner.lock();
        let Some(cached) = inner
            .sessions
            .get_mut(&session_id)
            .and_then(|s| s.partitions.get_mut(key))
        else {
            return true;
        };
        let changed = cached.last_high_watermark != high_watermark
            || cached.last_log_start_offset != log_start_offset;
        cached.last_high_watermark = high_watermark;
        cached.last_log_start_offset = log_start_offset;
        changed || has_records_or_error
    }

    pub fn len(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn create(&mut self, slots: usize, partitions: &[(PartitionKey, PartitionFetch)]) -> i32 {
        if self.sessions.len() >= slots {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id);
            if let Some(id) = oldest {
                self.sessions.remove(&id);
            }
        }
        let id = loop {
            let id = self.next_id;
            self.next_id = if self.next_id == i32::MAX {
                1
            } else {
                self.next_id + 1
            };
            if !self.sessions.contains_key(&id) {
                break id;
            }
        };
        self.sessions.insert(
            id,
            Session {
                epoch: 1,
                partitions: partitions
                    .iter()
                    .map(|(k, f)| {
                        (
                            k.clone(),
                            CachedPartition {
                                fetch: f.clone(),
                                last_high_watermark: -1,
                                last_log_start_offset: -1,
                            },
                        )
                    })
                    .collect(),
                last_used: Instant::now(),
            },
        );
        id
    }
}

fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX {
        1
    } else {
        epoch + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartitionKey {
        PartitionKey {
            topic: "t".into(),
            partition: p,
        }
    }

    fn fetch(offset: i64) -> PartitionFetch {
        PartitionFetch {
            current_leader_epoch: -1,
            last_fetched_epoch: -1,
            topic_id: Uuid::nil(),
            fetch_offset: offset,
            partition_max_bytes: 1024,
        }
    }

    #[test]
    fn full_fetch_creates_a_session_and_incremental_fetches_update_it() {
        let cache = FetchSessionCache::new(10);
        let full = cache
            .resolve(
                0,
                INITIAL_EPOCH,
                vec![(key(0), fetch(0)), (key(1), fetch(0))],
                vec![],
            )
            .unwrap();
        assert!(!full.incremental);
        assert_ne!(full.session_id, 0);
        let id = full.session_id;

        // Epoch 1: partition 0 moved on, partition 1 is forgotten, 2 is new.
        let inc = cache
            .resolve(
                id,
                1,
                vec![(key(0), fetch(5)), (key(2), fetch(0))],
                vec![key(1)],
            )
            .unwrap();
        assert!(inc.incremental);
        let offsets: Vec<(i32, i64)> = inc
            .partitions
            .iter()
            .map(|(k, f)| (k.partition, f.fetch_offset))
            .collect();
        assert_eq!(offsets, vec![(0, 5), (2, 0)]);

        // Replaying epoch 1 is refused; epoch 2 with no changes keeps the set.
        assert_eq!(
            cache.resolve(id, 1, vec![], vec![]).unwrap_err(),
            ResponseError::InvalidFetchSessionEpoch
        );
        assert_eq!(
            cache
                .resolve(id, 2, vec![], vec![])
                .unwrap()
                .partitions
                .len(),
            2
        );
    }

    #[test]
    fn unknown_sessions_and_closing() {
        let cache = FetchSessionCache::new(10);
        assert_eq!(
            cache.resolve(42, 1, vec![], vec![]).unwrap_err(),
            ResponseError::FetchSessionIdNotFound
        );
        let id = cache
            .resolve(0, INITIAL_EPOCH, vec![(key(0), fetch(0))], vec![])
            .unwrap()
            .session_id;
        let closed = cache
            .resolve(id, FINAL_EPOCH, vec![(key(0), fetch(0))], vec![])
            .unwrap();
        assert_eq!(closed.session_id, 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn incremental_responses_carry_only_changes() {
        let cache = FetchSessionCache::new(10);
        let id = cache
            .resolve(0, INITIAL_EPOCH, vec![(key(0), fetch(0))], vec![])
            .unwrap()
            .session_id;
        assert!(cache.note_response(id, &key(0), 10, 0, false));
        assert!(!cache.note_response(id, &key(0), 10, 0, false));
        assert!(cache.note_response(id, &key(0), 10, 0, true));
        assert!(cache.note_response(id, &key(0), 11, 0, false));
        assert!(cache.note_response(id, &key(0), 11, 3, false));
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_least_recently_used() {
        let cache = FetchSessionCache::new(2);
        let a = cache
            .resolve(0, INITIAL_EPOCH, vec![], vec![])
            .unwrap()
            .session_id;
        let b = cache
            .resolve(0, INITIAL_EPOCH, vec![], vec![])
            .unwrap()
            .session_id;
        cache.resolve(b, 1, vec![], vec![]).unwrap();
        let c = cache
            .resolve(0, INITIAL_EPOCH, vec![], vec![])
            .unwrap()
            .session_id;
        assert_eq!(cache.len(), 2);
        assert!(cache.resolve(a, 1, vec![], vec![]).is_err());
        assert!(cache.resolve(c, 1, vec![], vec![]).is_ok());
    }

    #[test]
    fn no_slots_means_sessionless_full_fetches() {
        let cache = FetchSessionCache::new(0);
        let ctx = cache
            .resolve(0, INITIAL_EPOCH, vec![(key(0), fetch(0))], vec![])
            .unwrap();
        assert_eq!(ctx.session_id, 0);
        assert!(!ctx.incremental);
    }
}
