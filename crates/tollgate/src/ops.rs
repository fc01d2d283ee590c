//! The operator commands: JSON on stdout, a message and a non-zero exit on failure.

use crate::cli::{AccountCmd, BillingCmd, CreditsCmd, KeyCmd, LedgerCmd};
use crate::config::Config;
use crate::{control, wiring};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tollgate_core::audit::LedgerReport;
use tollgate_core::catalog::Catalog;
use tollgate_core::keys::KeyKind;
use tollgate_core::service::Accounts;
use tollgate_core::store::OperatorAccess;

/// What a command printed, and whether it succeeded.
#[derive(Debug, Serialize, Deserialize)]
pub struct Output {
    pub json: Value,
    pub ok: bool,
}

async fn accounts(config: &Config) -> anyhow::Result<Accounts> {
    Ok(wiring::accounts(config, wiring::store(config).await?))
}

pub async fn account(config: &Config, cmd: AccountCmd) -> anyhow::Result<Output> {
    let svc = accounts(config).await?;
    match cmd {
        AccountCmd::Create { email, password } => {
            let a = svc.create(&email, &password).await?;
            Ok(Output {
                json: json!({"id": a.id, "email": a.email, "tier": a.tier().as_str()}),
                ok: true,
            })
        }
    }
}

pub async fn key(config: &Config, cmd: KeyCmd) -> anyhow::Result<Output> {
    let svc = accounts(config).await?;
    match cmd {
        KeyCmd::Create {
            email,
            name,
            management,
        } => {
            let account = svc.by_email(&email).await?;
            let kind = if management {
                KeyKind::Management
            } else {
                KeyKind::Regular
            };
            let k = svc.create_key(&account.id, &name, kind).await?;
            Ok(Output {
                json: json!({"key": k.key, "prefix": k.prefix}),
                ok: true,
            })
        }
    }
}

pub async fn billing(config: &Config, cmd: BillingCmd) -> anyhow::Result<Output> {
    let svc = accounts(config).await?;
    match cmd {
        BillingCmd::AddCard { email, card } => {
            let account = svc.by_email(&email).await?;
            let outcome = svc.add_card(&account.id, &card).await?;
            let account = svc.by_email(&email).await?;
            Ok(Output {
                json: json!({"tier": account.tier().as_str(), "balance_credits": outcome.balance.0}),
                ok: true,
            })
        }
    }
}

/// A command that must see the live holds ([`CreditsCmd`], [`LedgerCmd`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HeldCommand {
    Credits(CreditsCmd),
    Ledger(LedgerCmd),
}

pub async fn credits(config: &Config, cmd: CreditsCmd) -> anyhow::Result<Output> {
    held(config, HeldCommand::Credits(cmd)).await
}

pub async fn ledger(config: &Config, cmd: LedgerCmd) -> anyhow::Result<Output> {
    held(config, HeldCommand::Ledger(cmd)).await
}

/// Runs `cmd` here when this process may act on the database, else has the serving process
/// run it.
async fn held(config: &Config, cmd: HeldCommand) -> anyhow::Result<Output> {
    let store = wiring::store(config).await?;
    match store.operator_access().await? {
        OperatorAccess::Direct => {
            let catalog = wiring::full_catalog(config)?;
            run_held(&wiring::accounts(config, store), &catalog, cmd).await
        }
        OperatorAccess::Server(socket) => control::send(&socket, &cmd).await,
    }
}

/// Runs a command that must see the live holds, with `svc` on a store that sees them all.
pub async fn run_held(
    svc: &Accounts,
    catalog: &Catalog,
    cmd: HeldCommand,
) -> anyhow::Result<Output> {
    match cmd {
        HeldCommand::Credits(cmd) => {
            let (email, credits, reason, grant) = match cmd {
                CreditsCmd::Grant {
                    email,
                    credits,
                    reason,
                } => (email, credits, reason, true),
                CreditsCmd::Adjust {
                    email,
                    credits,
                    reason,
                } => (email, credits, reason, false),
            };
            if grant && credits <= 0 {
                anyhow::bail!("--credits must be positive for a grant; deduct with `tollgate credits adjust --credits -N --reason …`");
            }
            if credits == 0 {
                anyhow::bail!("--credits must not be 0");
            }
            if reason.trim().is_empty() {
                anyhow::bail!("--reason must not be empty");
            }
            let account = svc.by_email(&email).await?;
            let balance = svc.adjust(&account.id, credits, reason.trim()).await?;
            Ok(Output {
                json: json!({"balance_credits": balance.0}),
                ok: true,
            })
        }
        HeldCommand::Ledger(LedgerCmd::Check) => {
            let report = svc.ledger_check(catalog).await?;
            Ok(Output {
                json: report_json(&report),
                ok: report.ok(),
            })
        }
    }
}

fn report_json(report: &LedgerReport) -> Value {
    let accounts: Vec<Value> = report
        .accounts
        .iter()
        .map(|d| {
            json!({
                "account_id": d.account_id, "email": d.email,
                "balance": d.balance.0, "ledger_sum": d.ledger_sum.0,
                "held": d.held.0, "holds_sum": d.holds_sum.0, "expired_holds": d.expired_holds,
            })
        })
        .collect();
    let charges: Vec<Value> = report
        .charges
        .iter()
        .map(|c| {
            json!({
                "inference_id": c.inference_id, "model": c.model, "charged": c.charged.0,
                "ledger": c.ledger.0, "priced": c.priced.map(|p| p.0), "problem": c.problem,
            })
        })
        .collect();
    json!({
        "ok": report.ok(),
        "disagreeing_accounts": accounts,
        "disagreeing_charges": charges,
        "disagreeing_charges_total": report.charges_disagreeing,
        "charges_without_usage_row": report.charges_without_row,
        "usage_rows_checked": report.rows_checked,
        "usage_rows_unpriced": report.rows_unpriced,
    })
}
