//! The one way the relay takes a `Mutex`: every structure behind the relay's locks
//! is consistent between single steps (inserts, removes, replacements), so a lock
//! poisoned by a panicking holder is used as it is rather than taking the process down
//! with it.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
