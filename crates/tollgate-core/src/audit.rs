//! The ledger check: every balance against its ledger and live holds, and every usage row
//! against its `MODEL_USAGE` entry and the price of the units it records.

use crate::catalog::Catalog;
use crate::money::Credits;
use crate::store::{ChargedRow, Discrepancy, Store, StoreError};
use crate::usage::ChargeCap;
use chrono::{DateTime, Utc};
use tollgate_protocol::openai::Usage;

/// Usage rows read per page.
const PAGE: u32 = 5_000;
/// Most disagreeing charges listed (all are counted).
const LISTED: usize = 100;

/// A settled request whose charge disagrees with the ledger or with its units' price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeDiscrepancy {
    pub inference_id: String,
    pub model: String,
    /// What the usage row says was charged.
    pub charged: Credits,
    /// The ledger's `MODEL_USAGE` amount for it.
    pub ledger: Credits,
    /// The price of the row's units, where the catalogue prices the model.
    pub priced: Option<Credits>,
    pub problem: &'static str,
}

/// What the ledger check found.
#[derive(Debug, Clone, Default)]
pub struct LedgerReport {
    pub accounts: Vec<Discrepancy>,
    /// The first disagreeing charges (at most [`LISTED`]).
    pub charges: Vec<ChargeDiscrepancy>,
    pub charges_disagreeing: u64,
    /// `MODEL_USAGE` entries with no usage row.
    pub charges_without_row: Vec<String>,
    pub rows_checked: u64,
    /// Rows of models the catalogue does not price (their charge is checked against the
    /// ledger only).
    pub rows_unpriced: u64,
}

impl LedgerReport {
    pub fn ok(&self) -> bool {
        self.accounts.is_empty()
            && self.charges_disagreeing == 0
            && self.charges_without_row.is_empty()
    }
}

/// Runs the whole check against `store`, pricing rows with `catalog`.
pub async fn check(
    store: &dyn Store,
    catalog: &Catalog,
    now: DateTime<Utc>,
) -> Result<LedgerReport, StoreError> {
    let mut report = LedgerReport {
        accounts: store.ledger_check(now).await?,
        charges_without_row: store.charges_without_row(LISTED as u32).await?,
        ..LedgerReport::default()
    };
    let mut after: Option<String> = None;
    loop {
        let rows = store.charged_rows(after.as_deref(), PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.inference_id.clone());
        for row in &rows {
            report.rows_checked += 1;
            let priced = catalog.get(&row.model).map(|m| {
                m.price().chat_cost(&Usage {
                    prompt_tokens: row.prompt_tokens,
                    completion_tokens: row.completion_tokens,
                    cached_tokens: row.cached_tokens,
                })
            });
            if priced.is_none() {
                report.rows_unpriced += 1;
            }
            if let Some(problem) = problem(row, priced) {
                report.charges_disagreeing += 1;
                if report.charges.len() < LISTED {
                    report.charges.push(ChargeDiscrepancy {
                        inference_id: row.inference_id.clone(),
                        model: row.model.clone(),
                        charged: row.credits,
                        ledger: row.ledger,
                        priced,
                        problem,
                    });
                }
            }
        }
        if rows.len() < PAGE as usize {
            break;
        }
    }
    Ok(report)
}

/// What is wrong with one settled request's charge, if anything.
fn problem(row: &ChargedRow, priced: Option<Credits>) -> Option<&'static str> {
    if row.ledger != row.credits {
        return Some("the ledger's MODEL_USAGE amount differs from the usage row's charge");
    }
    if !row.succeeded {
        return (row.credits != Credits::ZERO).then_some("a failed request was charged");
    }
    let priced = priced?;
    match row.capped {
        None if row.credits != priced => Some("the charge differs from the units' price"),
        Some(ChargeCap::Hold | ChargeCap::Balance) if row.credits > priced => {
            Some("a capped charge is above the units' price")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(credits: i64, ledger: i64, capped: Option<ChargeCap>) -> ChargedRow {
        ChargedRow {
            inference_id: "i".into(),
            model: "m".into(),
            succeeded: true,
            prompt_tokens: 10,
            completion_tokens: 20,
            cached_tokens: 0,
            credits: Credits(credits),
            capped,
            ledger: Credits(ledger),
        }
    }

    #[test]
    fn charges_must_match_the_ledger_and_the_price_unless_capped_below_it() {
        let price = Some(Credits(100));
        assert_eq!(problem(&row(100, 100, None), price), None);
        assert!(
            problem(&row(0, 0, None), price).is_some(),
            "a priced reply charged nothing"
        );
        assert!(
            problem(&row(100, 0, None), price).is_some(),
            "no ledger entry"
        );
        assert!(
            problem(&row(90, 100, None), price).is_some(),
            "ledger differs"
        );
        assert_eq!(problem(&row(60, 60, Some(ChargeCap::Hold)), price), None);
        assert!(problem(&row(160, 160, Some(ChargeCap::Hold)), price).is_some());
        assert_eq!(
            problem(&row(5, 5, None), None),
            None,
            "unpriced: the ledger alone"
        );
        let mut failed = row(0, 0, None);
        failed.succeeded = false;
        assert_eq!(problem(&failed, price), None);
        failed.credits = Credits(3);
        failed.ledger = Credits(3);
        assert!(problem(&failed, price).is_some());
    }
}
