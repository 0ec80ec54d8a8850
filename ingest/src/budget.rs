//! A memory budget for request bodies across all requests: each body is
//! bounded by `max_body_bytes`, and their sum by `max_bodies_bytes` (and
//! each API key's share of it by `max_bodies_bytes_per_key`), so a flood of
//! large uploads costs a bounded amount of memory, and one misbehaving
//! client cannot spend the share of the others.
//!
//! A request reserves its declared `Content-Length` before reading a byte
//! (or, without one, grows its reservation as chunks arrive) and holds the
//! reservation until its answer is sent: the body, and the events parsed
//! from it, are what the budget stands for. When it cannot reserve, the
//! request is answered at once without reading its body: `503` when the
//! gateway's budget is spent, `429` when the key's share is, both with
//! `Retry-After`.

use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget accounting unit: 1 KiB (permits of a `u32` count cover 4 TiB).
const UNIT: usize = 1024;

fn units(bytes: usize) -> usize {
    bytes.div_ceil(UNIT)
}

/// Which limit refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// The gateway's total (`max_bodies_bytes`).
    Total,
    /// The key's share (`max_bodies_bytes_per_key`).
    Key,
}

/// The shared budget.
#[derive(Debug)]
pub struct BodyBudget {
    total: Arc<Semaphore>,
    total_units: usize,
    share_units: usize,
    /// Units held per key index.
    held: Mutex<Vec<usize>>,
}

impl BodyBudget {
    /// A budget of `total_bytes`, of which one key may hold `share_bytes`,
    /// for `keys` keys.
    pub fn new(total_bytes: usize, share_bytes: usize, keys: usize) -> Arc<Self> {
        let total_units = units(total_bytes).min(Semaphore::MAX_PERMITS);
        Arc::new(BodyBudget {
            total: Arc::new(Semaphore::new(total_units)),
            total_units,
            share_units: units(share_bytes),
            held: Mutex::new(vec![0; keys]),
        })
    }

    /// Bytes held by all requests now.
    pub fn held_bytes(&self) -> usize {
        (self.total_units - self.total.available_permits()) * UNIT
    }

    /// Reserve `bytes` for a request of key `key` (an index of the key set).
    pub fn reserve(self: &Arc<Self>, key: usize, bytes: usize) -> Result<Reservation, Spent> {
        let mut r = Reservation { budget: self.clone(), key, units: 0, permit: None };
        r.grow_to(bytes)?;
        Ok(r)
    }
}

/// Bytes held by one request; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    key: usize,
    units: usize,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// Hold at least `bytes` (no-op when already held).
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), Spent> {
        let want = units(bytes);
        if want <= self.units {
            return Ok(());
        }
        let more = want - self.units;
        {
            let mut held = self.budget.held.lock().expect("budget lock");
            let mine = held.get_mut(self.key).ok_or(Spent::Key)?;
            if *mine + more > self.budget.share_units {
                return Err(Spent::Key);
            }
            let permit = self
                .budget
                .total
                .clone()
                .try_acquire_many_owned(u32::try_from(more).map_err(|_| Spent::Total)?)
                .map_err(|_| Spent::Total)?;
            *mine += more;
            match &mut self.permit {
                Some(p) => p.merge(permit),
                None => self.permit = Some(permit),
            }
        }
        self.units = want;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Ok(mut held) = self.budget.held.lock() {
            if let Some(mine) = held.get_mut(self.key) {
                *mine -= self.units;
            }
        }
        // the permit returns its units to the total when dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_and_each_keys_share_bound_what_is_held() {
        let b = BodyBudget::new(10 * UNIT, 6 * UNIT, 2);
        let a1 = b.reserve(0, 4 * UNIT).unwrap();
        assert_eq!(b.reserve(0, 3 * UNIT).unwrap_err(), Spent::Key, "key 0 would hold 7 of its 6");
        let mut b1 = b.reserve(1, 5 * UNIT).unwrap();
        assert_eq!(b.held_bytes(), 9 * UNIT);
        assert_eq!(b.reserve(0, 2 * UNIT).unwrap_err(), Spent::Total, "11 of 10 in all");
        assert_eq!(b1.grow_to(6 * UNIT), Ok(()));
        assert_eq!(b1.grow_to(7 * UNIT), Err(Spent::Key));
        drop(a1);
        assert_eq!(b.held_bytes(), 6 * UNIT);
        let a2 = b.reserve(0, 4 * UNIT).unwrap();
        drop((a2, b1));
        assert_eq!(b.held_bytes(), 0, "everything is given back");
        assert_eq!(b.reserve(1, 1).unwrap().units, 1, "a byte takes a unit");
        assert_eq!(b.reserve(5, 1).unwrap_err(), Spent::Key, "an unknown key holds nothing");
    }
}
