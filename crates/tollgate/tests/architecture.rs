//! The crate map's dependency rules, checked against `cargo metadata` so they cannot erode.

use serde_json::Value;
use std::collections::BTreeMap;

fn dependencies() -> BTreeMap<String, Vec<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn dependencies_point_one_way() {
    let deps = dependencies();
    let forbidden: &[(&str, &[&str])] = &[
        (
            "tollgate-protocol",
            &[
                "tollgate-core",
                "tollgate-providers",
                "tollgate-http",
                "tollgate-store",
                "axum",
                "sqlx",
                "reqwest",
                "hyper",
            ],
        ),
        (
            "tollgate-providers",
            &[
                "tollgate-core",
                "tollgate-http",
                "tollgate-store",
                "axum",
                "sqlx",
                "rusqlite",
            ],
        ),
        (
            "tollgate-core",
            &[
                "tollgate-http",
                "tollgate-store",
                "axum",
                "sqlx",
                "rusqlite",
                "reqwest",
                "hyper",
                "http",
            ],
        ),
        (
            "tollgate-store",
            &["tollgate-http", "tollgate-providers", "axum", "reqwest"],
        ),
        (
            "tollgate-http",
            &["tollgate-store", "sqlx", "rusqlite", "reqwest"],
        ),
    ];
    for (krate, banned) in forbidden {
        let have = deps
            .get(*krate)
            .unwrap_or_else(|| panic!("{krate} is missing"));
        for b in *banned {
            assert!(
                !have.iter().any(|d| d == b),
                "{krate} must not depend on {b}"
            );
        }
    }
}
