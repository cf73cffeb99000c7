//! A small time-bounded cache of authentication and authorization results, so a stream of
//! requests from the API server costs one TokenReview or SubjectAccessReview per identity
//! and decision, not one per request — as the kubelet's webhook caches do.
//!
//! Bounds: at most `capacity` entries. When full, expired entries are dropped first; if
//! none has expired, the new result is simply not cached (a flood of distinct tokens then
//! costs reviews, never memory).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub(crate) fn new(capacity: usize) -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The value stored for `key`, if it has not expired.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let now = Instant::now();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match entries.get(key) {
            Some((value, expires)) if *expires > now => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remember `value` for `key` during `ttl`.
    pub(crate) fn insert(&self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.capacity {
                return;
            }
        }
        entries.insert(key, (value, now + ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_own_ttl() {
        let cache = TtlCache::new(8);
        cache.insert("allowed", true, Duration::from_secs(300));
        cache.insert("denied", false, Duration::from_secs(30));
        assert_eq!(cache.get(&"allowed"), Some(true));
        assert_eq!(cache.get(&"denied"), Some(false));

        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(cache.get(&"denied"), None, "a denial is kept 30 s");
        assert_eq!(cache.get(&"allowed"), Some(true));

        tokio::time::advance(Duration::from_secs(270)).await;
        assert_eq!(cache.get(&"allowed"), None, "an allowance is kept 5 min");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_makes_room_from_expired_entries_only() {
        let cache = TtlCache::new(2);
        cache.insert(1, "a", Duration::from_secs(10));
        cache.insert(2, "b", Duration::from_secs(60));
        cache.insert(3, "c", Duration::from_secs(60));
        assert_eq!(
            cache.get(&3),
            None,
            "nothing expired: the new entry is not cached"
        );
        assert_eq!((cache.get(&1), cache.get(&2)), (Some("a"), Some("b")));

        tokio::time::advance(Duration::from_secs(11)).await;
        cache.insert(3, "c", Duration::from_secs(60));
        assert_eq!((cache.get(&2), cache.get(&3)), (Some("b"), Some("c")));
    }
}
