//! The official `openai` Python package (installed from PyPI into a venv) against a running
//! tollgate: completions, streams with usage, the models list, and every error class.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A venv with the `openai` package, made once per target directory.
fn venv() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-sdk-venv");
    let python = dir.join("bin/python");
    let has_sdk = |py: &Path| {
        Command::new(py)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_sdk(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&dir)
            .status()
            .expect("python3 -m venv");
        assert!(
            made.success(),
            "python3 -m venv failed (install python3-venv)"
        );
        let pip = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "openai",
            ])
            .status()
            .expect("pip install openai");
        assert!(pip.success(), "pip install openai failed");
    }
    python
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_python_sdk_works_unchanged() {
    let python = tokio::task::spawn_blocking(venv).await.unwrap();
    let db = TestDb::sqlite();
    let upstream = tollgate_testkit::FakeOpenAi::start(tollgate_testkit::Behaviour::Hang).await;
    let billing_url = "https://billing.example.test/billing";
    let server = Server::with_upstream(
        &db.url,
        &upstream.base_url(),
        &[
            ("TOLLGATE__BILLING__BILLING_URL", billing_url),
            ("TOLLGATE__UPSTREAM__FIRST_BYTE_TIMEOUT_SECONDS", "0.5"),
            ("TOLLGATE__UPSTREAM__TOTAL_TIMEOUT_SECONDS", "1"),
        ],
    );
    let free = account(&db.url, "sdk-free@example.com", None);
    let verified = account(
        &db.url,
        "sdk-verified@example.com",
        Some("4242424242424242"),
    );
    let broke = account(&db.url, "sdk-broke@example.com", Some("4242424242424242"));
    account(&db.url, "sdk-mgmt@example.com", None);
    let mgmt = cli_ok(
        &db.url,
        &[
            "key",
            "create",
            "--email",
            "sdk-mgmt@example.com",
            "--management",
        ],
    );

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_sdk_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("TOLLGATE_BASE_URL", &server.base)
        .env("FREE_KEY", &free)
        .env("VERIFIED_KEY", &verified)
        .env("BROKE_KEY", &broke)
        .env("MGMT_KEY", mgmt["key"].as_str().unwrap())
        .env("BILLING_URL", billing_url)
        .env("UPSTREAM_MODEL", "openai/gpt-4o-mini")
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "SDK checks failed");
    assert!(stdout.contains("12 passed, 0 failed"), "{stdout}");
    assert!(cli(&db.url, &["ledger", "check"]).0);
}
