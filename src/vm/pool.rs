//! [`Pool`]: a bound on how many guests run at once, shared by everything that launches them
//! (the tests of one binary, typically), so that a machine with few cores is not swamped.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A bound on how many guests launched through it run at once.
///
/// A launch given the pool ([`super::VmBuilder::pool`], [`super::GuestBuilder::pool`]) first
/// waits for a place; the [`super::Vm`] holds it until it is dropped. Clones share the places.
/// Waiting works across runtimes, so one pool in a static serves every test of a binary:
///
/// ```no_run
/// use std::sync::LazyLock;
/// use qemu_direct::vm::Pool;
///
/// // Two guests at a time, whatever the number of test threads.
/// static GUESTS: LazyLock<Pool> = LazyLock::new(|| Pool::new(2));
/// ```
#[derive(Debug, Clone)]
pub struct Pool {
    places: Arc<Semaphore>,
    size: usize,
}

/// A place in a [`Pool`], given back when dropped.
#[derive(Debug)]
pub struct PoolPermit {
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool of `size` places (at least one).
    pub fn new(size: usize) -> Pool {
        let size = size.max(1);
        Pool {
            places: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// How many guests may run at once.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many places are free now.
    pub fn available(&self) -> usize {
        self.places.available_permits()
    }

    /// Waits for a free place. Places are handed out in the order they were asked for.
    pub async fn acquire(&self) -> PoolPermit {
        let permit = self
            .places
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        PoolPermit { _permit: permit }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_pool_lets_through_as_many_as_it_has_places() {
        let pool = Pool::new(2);
        assert_eq!(Pool::new(0).size(), 1);
        let a = pool.acquire().await;
        let _b = pool.clone().acquire().await;
        assert_eq!(pool.available(), 0);
        let third = tokio::time::timeout(Duration::from_millis(50), pool.acquire()).await;
        assert!(third.is_err(), "a third waits");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(5), pool.acquire())
            .await
            .expect("a place was given back");
    }
}
