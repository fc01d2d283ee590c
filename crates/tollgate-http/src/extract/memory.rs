//! The memory requests in flight may hold: a large request body reserves a multiple of its
//! size from one budget while its request is read, checked and sent on (the body, its
//! parsed form and the body sent upstream), and a request that would pass the budget is
//! refused with a 503 instead of growing the process.

use crate::error::ApiError;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tollgate_core::metrics::Metrics;

/// Reservations are counted in KiB.
const UNIT: usize = 1024;
/// What a request holds for each byte of its body.
const FACTOR: usize = 4;
/// Bodies up to this size reserve nothing: connection caps already bound them.
const SMALL: usize = 64 * 1024;

#[derive(Clone)]
pub struct MemoryBudget {
    units: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// What one request holds of the budget; given back when dropped.
#[derive(Default)]
pub struct MemoryLease {
    permit: Option<OwnedSemaphorePermit>,
}

impl MemoryLease {
    /// Whether this lease holds part of the budget (its body is a large one).
    pub fn covers_any(&self) -> bool {
        self.permit.is_some()
    }
}

impl MemoryBudget {
    /// A budget of `bytes` in all.
    pub fn new(bytes: usize, metrics: Arc<Metrics>) -> Self {
        let units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            units: Arc::new(Semaphore::new(units)),
            metrics,
        }
    }

    /// Grows `lease` to cover a body of `len` bytes, or refuses when the budget cannot.
    pub fn cover(&self, lease: &mut MemoryLease, len: usize) -> Result<(), ApiError> {
        if len <= SMALL {
            return Ok(());
        }
        let wanted = len.saturating_mul(FACTOR).div_ceil(UNIT);
        let held = lease
            .permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits);
        if wanted <= held {
            return Ok(());
        }
        let more = u32::try_from(wanted - held).unwrap_or(u32::MAX);
        match self.units.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                match lease.permit.as_mut() {
                    Some(p) => p.merge(permit),
                    None => lease.permit = Some(permit),
                }
                Ok(())
            }
            Err(_) => {
                Metrics::bump(&self.metrics.refused_memory);
                Err(ApiError::MemoryBusy)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_bodies_share_the_budget_and_give_it_back() {
        let budget = MemoryBudget::new(10 << 20, Arc::new(Metrics::default()));
        let mut small = MemoryLease::default();
        assert!(budget.cover(&mut small, SMALL).is_ok());
        assert!(!small.covers_any());
        let mut a = MemoryLease::default();
        assert!(budget.cover(&mut a, 1 << 20).is_ok());
        assert!(budget.cover(&mut a, 2 << 20).is_ok());
        assert_eq!(a.permit.as_ref().map(|p| p.num_permits()), Some(8 * 1024));
        let mut b = MemoryLease::default();
        assert!(
            budget.cover(&mut b, 1 << 20).is_err(),
            "8 of 10 MiB held, 4 more wanted"
        );
        drop(a);
        assert!(budget.cover(&mut b, 1 << 20).is_ok());
    }
}
