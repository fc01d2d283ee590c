//! The operator CLI contract: JSON on stdout, a message and a non-zero exit on failure,
//! and effects the running server sees on its next request.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn account_key_card_and_grant_print_the_documented_json() {
    let db = TestDb::sqlite();
    let created = cli_ok(
        &db.url,
        &[
            "account",
            "create",
            "--email",
            "Ops@Example.com",
            "--password",
            PASSWORD,
        ],
    );
    let obj = created.as_object().unwrap();
    assert_eq!(obj.len(), 3);
    assert!(created["id"].as_str().unwrap().starts_with("acct_"));
    assert_eq!(
        (created["email"].clone(), created["tier"].clone()),
        (json!("ops@example.com"), json!("free"))
    );

    let key = cli_ok(
        &db.url,
        &[
            "key",
            "create",
            "--email",
            "ops@example.com",
            "--name",
            "ci",
        ],
    );
    let k = key["key"].as_str().unwrap();
    assert_eq!(k.len(), 32);
    assert!(k
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(key["prefix"], json!(&k[..8]));
    assert_eq!(key.as_object().unwrap().len(), 2);

    // Only the key's hash is stored.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stored: Vec<(String, String)> = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query_as("SELECT prefix, hash FROM api_keys")
            .fetch_all(&pool)
            .await
            .unwrap()
    });
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].0, &k[..8]);
    assert_ne!(stored[0].1, k);
    assert!(!stored[0].1.contains(k));

    let granted = cli_ok(
        &db.url,
        &[
            "credits",
            "grant",
            "--email",
            "ops@example.com",
            "--credits",
            "1234",
            "--reason",
            "welcome",
        ],
    );
    assert_eq!(granted, json!({"balance_credits": 1234}));
    let card = cli_ok(
        &db.url,
        &[
            "billing",
            "add-card",
            "--email",
            "ops@example.com",
            "--card",
            "4242424242424242",
        ],
    );
    assert_eq!(card, json!({"tier": "verified", "balance_credits": 51234}));
    let deducted = cli_ok(
        &db.url,
        &[
            "credits",
            "adjust",
            "--email",
            "ops@example.com",
            "--credits",
            "-234",
            "--reason",
            "correction",
        ],
    );
    assert_eq!(deducted, json!({"balance_credits": 51000}));
    assert_eq!(
        cli_ok(&db.url, &["ledger", "check"]),
        json!({
            "ok": true, "disagreeing_accounts": [], "disagreeing_charges": [],
            "disagreeing_charges_total": 0, "charges_without_usage_row": [],
            "usage_rows_checked": 0, "usage_rows_unpriced": 0,
        })
    );
}

#[test]
fn failures_exit_non_zero_with_a_message() {
    let db = TestDb::sqlite();
    cli_ok(
        &db.url,
        &[
            "account",
            "create",
            "--email",
            "dup@example.com",
            "--password",
            PASSWORD,
        ],
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "account",
                "create",
                "--email",
                "dup@example.com",
                "--password",
                PASSWORD,
            ],
            "already exists",
        ),
        (
            &[
                "account",
                "create",
                "--email",
                "not-an-email",
                "--password",
                PASSWORD,
            ],
            "invalid email",
        ),
        (
            &[
                "account",
                "create",
                "--email",
                "short@example.com",
                "--password",
                "abc",
            ],
            "at least 8",
        ),
        (
            &["key", "create", "--email", "nobody@example.com"],
            "no account",
        ),
        (
            &[
                "billing",
                "add-card",
                "--email",
                "dup@example.com",
                "--card",
                "4000000000000002",
            ],
            "declined",
        ),
        (
            &[
                "billing",
                "add-card",
                "--email",
                "dup@example.com",
                "--card",
                "1234",
            ],
            "invalid",
        ),
        (
            &[
                "credits",
                "adjust",
                "--email",
                "dup@example.com",
                "--credits",
                "-5",
                "--reason",
                "x",
            ],
            "below zero",
        ),
        (
            &[
                "credits",
                "grant",
                "--email",
                "dup@example.com",
                "--credits",
                "-5",
                "--reason",
                "x",
            ],
            "credits adjust",
        ),
        (
            &[
                "credits",
                "grant",
                "--email",
                "dup@example.com",
                "--credits",
                "5",
                "--reason",
                " ",
            ],
            "reason",
        ),
    ];
    for (args, expected) in cases {
        let (ok, out, err) = cli(&db.url, args);
        assert!(!ok, "{args:?} should fail");
        assert_eq!(out, Value::Null, "{args:?} printed {out}");
        assert!(err.to_lowercase().contains(expected), "{args:?}: {err}");
    }
    let (ok, _, err) = cli("mysql://nope", &["ledger", "check"]);
    assert!(!ok && err.contains("database.url"), "{err}");
}

#[test]
fn config_show_redacts_secrets_and_bad_config_names_the_field() {
    let out = std::process::Command::new(BIN)
        .args(["config", "show"])
        .env("OPENAI_API_KEY", "sk-very-secret")
        .env(
            "OPENAI_BASE_URL",
            "https://proxyuser:proxypass@llm.example.com/v1?api_key=querysecret&region=eu",
        )
        .env(
            "TOLLGATE__DATABASE__URL",
            "postgres://tollgate:dbpassword@db.example.com/tg?sslpassword=sslsecret&sslmode=require",
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for secret in [
        "sk-very-secret",
        "proxypass",
        "proxyuser",
        "querysecret",
        "dbpassword",
        "sslsecret",
    ] {
        assert!(!text.contains(secret), "{secret} shown: {text}");
    }
    for kept in [
        "llm.example.com/v1",
        "region=eu",
        "db.example.com/tg",
        "sslmode=require",
        "*****",
    ] {
        assert!(text.contains(kept), "{kept} missing: {text}");
    }

    let out = std::process::Command::new(BIN)
        .args(["config", "show"])
        .env("TOLLGATE__FREE_TIER__HOURLY_REQUSTS", "5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hourly_requsts"));
}

#[test]
fn a_priced_model_without_a_price_refuses_to_start() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[model]]\nid = \"acme/unpriced\"\ntype = \"openai/chat-completions\"\ninfo = {}\n[[model.routes]]\nprovider = \"demo\"\nmodel = \"x\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
        ])
        .env(
            "TOLLGATE__CATALOG__FILES",
            format!("[\"{}\"]", file.display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("acme/unpriced") && err.contains("no price"),
        "{err}"
    );
}

#[test]
fn the_openai_catalogue_prices_match_the_reference_price_table() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let table: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("catalog/reference/litellm-openai-prices.json"))
            .unwrap(),
    )
    .unwrap();
    // Where the full reference table sits beside the repository, the excerpt must match it.
    let full = root.join("../shared/reference/litellm-prices/model_prices_and_context_window.json");
    if let Ok(text) = std::fs::read_to_string(full) {
        let full: Value = serde_json::from_str(&text).unwrap();
        for (model, entry) in table.as_object().unwrap() {
            for (field, value) in entry.as_object().unwrap() {
                assert_eq!(&full[model][field], value, "{model} {field}");
            }
        }
    }
    let catalog: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("catalog/openai.toml")).unwrap())
            .unwrap();
    let models = catalog["model"].as_array().unwrap();
    assert!(models
        .iter()
        .any(|m| m["id"].as_str() == Some("openai/gpt-4o-mini")));
    for m in models {
        let upstream = m["routes"][0]["model"].as_str().unwrap();
        let reference = &table[upstream];
        let per_million = |field: &str| {
            let usd: f64 = m["pricing"][field].as_str().unwrap().parse().unwrap();
            usd / 1_000_000.0
        };
        for (ours, theirs) in [
            ("input_tokens", "input_cost_per_token"),
            ("output_tokens", "output_cost_per_token"),
        ] {
            let expected = reference[theirs].as_f64().unwrap();
            assert!(
                (per_million(ours) - expected).abs() < 1e-15,
                "{upstream} {ours}"
            );
        }
        assert_eq!(
            m["info"]["contextLength"].as_integer().unwrap(),
            reference["max_input_tokens"].as_i64().unwrap()
        );
    }
}
