//! The console's sessions: a server-side table, sans-IO (ids, tokens and `now` come from the
//! caller).
//!
//! A session id is 128 random bits, sent to the browser once in the session cookie and kept
//! here only as its SHA-256 (the table reveals no usable id, and looking one up compares hashes,
//! so response timing says nothing about a real id). Each session has its own CSRF token (128
//! random bits) that every state-changing form must carry. A session ends at logout, after
//! [`IDLE_SECS`] without a request, or [`ABSOLUTE_SECS`] after login, whichever comes first;
//! at most [`MAX_SESSIONS`] live at once (the least recently used goes first).

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

/// A session ends after this long without a request.
pub const IDLE_SECS: i64 = 3600;
/// A session ends this long after login, used or not.
pub const ABSOLUTE_SECS: i64 = 12 * 3600;
/// Most sessions at once.
pub const MAX_SESSIONS: usize = 256;

/// Random bytes of one id or token.
pub const TOKEN_BYTES: usize = 16;

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token its forms carry (hex).
    pub csrf: String,
    /// Login time.
    pub created: i64,
    /// Last request.
    pub last_used: i64,
}

/// The table (see the module documentation).
#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: HashMap<[u8; 32], Session>,
}

fn hash(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Equality that takes the same time wherever the first difference is.
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// Starts a session for fresh random `id` and `csrf` bytes; returns the id as the cookie
    /// carries it (hex).
    pub fn create(&mut self, id: [u8; TOKEN_BYTES], csrf: [u8; TOKEN_BYTES], now: i64) -> String {
        self.sweep(now);
        while self.by_hash.len() >= MAX_SESSIONS {
            let Some(oldest) = self
                .by_hash
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.by_hash.remove(&oldest);
        }
        let text = hex::encode(id);
        self.by_hash.insert(
            hash(&text),
            Session {
                csrf: hex::encode(csrf),
                created: now,
                last_used: now,
            },
        );
        text
    }

    /// The live session with this cookie value (its last use moved to `now`); an expired one
    /// is removed and `None`.
    pub fn touch(&mut self, id: &str, now: i64) -> Option<Session> {
        if id.len() != 2 * TOKEN_BYTES {
            return None;
        }
        let key = hash(id);
        let live = self
            .by_hash
            .get(&key)
            .is_some_and(|s| now - s.last_used <= IDLE_SECS && now - s.created <= ABSOLUTE_SECS);
        if !live {
            self.by_hash.remove(&key);
            return None;
        }
        let s = self.by_hash.get_mut(&key)?;
        s.last_used = now;
        Some(s.clone())
    }

    /// Whether the session with this cookie value is alive at `now`, without counting as a use
    /// (a long-lived event stream must not keep a session from going idle).
    #[must_use]
    pub fn alive(&self, id: &str, now: i64) -> bool {
        self.by_hash
            .get(&hash(id))
            .is_some_and(|s| now - s.last_used <= IDLE_SECS && now - s.created <= ABSOLUTE_SECS)
    }

    /// Ends the session with this cookie value (logout).
    pub fn remove(&mut self, id: &str) -> bool {
        self.by_hash.remove(&hash(id)).is_some()
    }

    /// Drops expired sessions.
    pub fn sweep(&mut self, now: i64) {
        self.by_hash
            .retain(|_, s| now - s.last_used <= IDLE_SECS && now - s.created <= ABSOLUTE_SECS);
    }

    /// Sessions alive (as of the last sweep).
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// No session.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

impl Session {
    /// Whether a form's `presented` token is this session's (constant time).
    #[must_use]
    pub fn csrf_ok(&self, presented: &str) -> bool {
        constant_time_eq(presented.as_bytes(), self.csrf.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_or_old_and_end_at_logout() {
        let mut t = Sessions::default();
        let id = t.create([1; 16], [2; 16], 1000);
        assert_eq!(id, "01".repeat(16));
        let s = t
            .touch(&id, 1000 + IDLE_SECS)
            .expect("alive at the idle limit");
        assert!(s.csrf_ok(&"02".repeat(16)));
        assert!(!s.csrf_ok(&"03".repeat(16)));
        assert!(!s.csrf_ok(""));
        // Used regularly it still ends at the absolute limit.
        let mut now = 1000;
        while now + IDLE_SECS / 2 <= 1000 + ABSOLUTE_SECS {
            now += IDLE_SECS / 2;
            assert!(t.touch(&id, now).is_some(), "at {now}");
        }
        assert!(t.touch(&id, 1000 + ABSOLUTE_SECS + 1).is_none());
        assert!(t.is_empty(), "expired sessions are removed");

        let id = t.create([3; 16], [4; 16], 5000);
        assert!(
            t.touch(&id, 5000 + IDLE_SECS + 1).is_none(),
            "idle too long"
        );
        let id = t.create([5; 16], [6; 16], 9000);
        assert!(t.alive(&id, 9000 + IDLE_SECS));
        assert!(!t.alive(&id, 9001 + IDLE_SECS));
        assert!(t.remove(&id));
        assert!(!t.alive(&id, 9001));
        assert!(t.touch(&id, 9001).is_none(), "logged out");
        assert!(t.touch("not-hex", 9001).is_none());
        assert!(t.touch(&"05".repeat(17), 9001).is_none());
    }

    #[test]
    fn the_table_is_bounded_and_keeps_the_recently_used() {
        let mut t = Sessions::default();
        let first = t.create([0; 16], [0; 16], 1);
        let mut last = String::new();
        for i in 1..=MAX_SESSIONS {
            let b = u8::try_from(i % 256).unwrap();
            let mut id = [b; 16];
            id[0] = u8::try_from(i / 256).unwrap();
            id[15] = 0xff;
            // The first session stays in use.
            assert!(t.touch(&first, 2 + i64::try_from(i).unwrap()).is_some());
            last = t.create(id, [1; 16], 2 + i64::try_from(i).unwrap());
        }
        assert_eq!(t.len(), MAX_SESSIONS);
        assert!(t.touch(&first, 1000).is_some(), "recently used survives");
        assert!(t.touch(&last, 1000).is_some());
    }

    #[test]
    fn the_table_holds_no_usable_id() {
        let mut t = Sessions::default();
        let id = t.create([7; 16], [8; 16], 1);
        let dump = format!("{t:?}");
        assert!(!dump.contains(&id));
    }
}
