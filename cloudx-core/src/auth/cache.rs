//! Recently read accounts, so that showing one's own account (`GET /api/v1/auth/me`, asked by
//! clients on every start and often in between) does not read the database each time.
//!
//! An entry lives one second at most, and this process forgets it at once when it changes the
//! account; another process's change shows within that second. Nothing that decides access reads
//! from here: tokens are checked against the revocation set, keys against the database.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::User;

/// How long an entry is used.
const TTL: Duration = Duration::from_secs(1);

/// Beyond this many entries the cache starts over.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Default)]
pub(super) struct AccountCache {
    entries: Mutex<HashMap<Uuid, (User, Instant)>>,
}

impl AccountCache {
    pub(super) fn get(&self, id: Uuid) -> Option<User> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(&id).filter(|(_, at)| at.elapsed() < TTL).map(|(user, _)| user.clone())
    }

    pub(super) fn put(&self, user: User) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(user.id, (user, Instant::now()));
    }

    pub(super) fn forget(&self, id: Uuid) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }
}
