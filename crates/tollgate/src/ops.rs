//! The operator commands: JSON on stdout, a message and a non-zero exit on failure.

use crate::cli::{AccountCmd, BillingCmd, CreditsCmd, KeyCmd, LedgerCmd};
use crate::config::Config;
use crate::wiring;
use serde_json::{json, Value};
use tollgate_core::keys::KeyKind;
use tollgate_core::service::Accounts;

/// What a command printed, and whether it succeeded.
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

pub async fn credits(config: &Config, cmd: CreditsCmd) -> anyhow::Result<Output> {
    let svc = accounts(config).await?;
    match cmd {
        CreditsCmd::Grant {
            email,
            credits,
            reason,
        } => {
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
    }
}

pub async fn ledger(config: &Config, cmd: LedgerCmd) -> anyhow::Result<Output> {
    let svc = accounts(config).await?;
    match cmd {
        LedgerCmd::Check => {
            let bad = svc.ledger_check().await?;
            let rows: Vec<Value> = bad
                .iter()
                .map(|d| {
                    json!({
                        "account_id": d.account_id, "email": d.email,
                        "balance": d.balance.0, "ledger_sum": d.ledger_sum.0,
                        "held": d.held.0, "holds_sum": d.holds_sum.0, "expired_holds": d.expired_holds,
                    })
                })
                .collect();
            Ok(Output {
                json: json!({"ok": rows.is_empty(), "disagreeing_accounts": rows}),
                ok: bad.is_empty(),
            })
        }
    }
}
