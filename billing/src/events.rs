//! The internal events of `billing`: each logs one line and counts in `metering_internal_events_total`.

use runtime::event;

// ---- issuing ----

/// `billing issue` copied from the ledger the rows an interrupted issue left out.
pub struct IssuedInvoicesCompleted {
    pub invoices: usize,
}

event!(IssuedInvoicesCompleted, |s, name| tracing::warn!(
    invoices = s.invoices,
    "{}: copied from the ledger what an interrupted issue left out",
    name
));
