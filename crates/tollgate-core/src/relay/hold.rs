//! Placing a hold: started detached, so a request cancelled while it waits for the answer
//! still has its hold released (and logged) by a task.

use super::ticket::{Bill, Outcome};
use super::Inner;
use crate::store::{Hold, HoldError, HoldRequest};
use futures::future::BoxFuture;
use std::sync::Arc;

/// Places a hold for `bill`'s request. The store starts it detached (it happens whether or
/// not this future is polled to the end); if the request is cancelled before the answer
/// arrives (the client went away), a task waits for the answer and settles the hold as a
/// failed request. The bill comes back with the answer.
pub(crate) async fn place(
    inner: &Arc<Inner>,
    req: HoldRequest,
    bill: Bill,
) -> Result<(Hold, Bill), (HoldError, Bill)> {
    let pending = inner.store.clone().hold_detached(req);
    HoldWait {
        inner: inner.clone(),
        pending: Some((pending, bill)),
    }
    .wait()
    .await
}

/// A hold being placed; settled as failed if abandoned before its answer was taken.
struct HoldWait {
    inner: Arc<Inner>,
    pending: Option<(BoxFuture<'static, Result<Hold, HoldError>>, Bill)>,
}

impl HoldWait {
    async fn wait(mut self) -> Result<(Hold, Bill), (HoldError, Bill)> {
        let (pending, _) = self.pending.as_mut().expect("a hold is awaited once");
        let result = pending.await;
        let (_, bill) = self.pending.take().expect("the hold was just awaited");
        match result {
            Ok(hold) => {
                self.inner.leases.add(&bill.inference_id);
                Ok((hold, bill))
            }
            Err(e) => Err((e, bill)),
        }
    }
}

impl Drop for HoldWait {
    fn drop(&mut self) {
        let Some((pending, mut bill)) = self.pending.take() else {
            return;
        };
        let inner = self.inner.clone();
        self.inner.tasks.spawn(async move {
            if let Ok(hold) = pending.await {
                inner.leases.add(&bill.inference_id);
                bill.held = hold.amount;
                bill.key_period_start = hold.key_period;
                let outcome = Outcome::Failed(inner.cut_code());
                let _ = super::settling::Settling::start(&inner, bill, outcome)
                    .finish()
                    .await;
            }
        });
    }
}
