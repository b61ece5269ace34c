//! `workspaced bench seed` + `bench run --json` at a small size, through the real binary:
//! the smoke test of the fleet benchmark (shape and correctness, never timings).

use std::process::Command;

use serde_json::Value;

use crate::helpers::BIN;

#[test]
fn bench_seeds_a_fleet_serve_leaves_alone_and_measures_every_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fleet");
    let seeded = Command::new(BIN)
        .args(["bench", "seed", "--presets", "20", "--workspaces", "240", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(seeded.status.success(), "{}", String::from_utf8_lossy(&seeded.stderr));
    // Seeding twice into one directory is refused, naming it.
    let again = Command::new(BIN).args(["bench", "seed", "--out"]).arg(&out).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let run = Command::new(BIN)
        .args(["bench", "run", "--json", "--iterations", "3", "--cycles", "2"])
        .args(["--clients", "4", "--claims", "40", "--dir"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["size"]["presets"], 20);
    let rows = report["rows"].as_array().unwrap();
    let row = |path: &str| {
        rows.iter().find(|row| row["path"] == path).unwrap_or_else(|| panic!("no {path} row"))
    };
    for path in [
        "reconcile cycle",
        "lifecycle tick, 0 due",
        "lifecycle tick, 100 due",
        "gc selection",
        "/metrics render",
        "claims",
    ] {
        let row = row(path);
        for key in ["median_ms", "min_ms", "max_ms"] {
            assert!(row[key].as_f64().is_some_and(|v| v > 0.0), "{path} {key}: {row}");
        }
        assert!(row.get("floor_ms").is_some(), "{path}: {row}");
    }
    // The seed is consistent: a cycle on it changes nothing, nothing is due now, and at
    // its due time exactly the seeded workspaces autostop.
    assert_eq!(row("reconcile cycle")["actions"], 0, "{}", row("reconcile cycle"));
    assert!(row("reconcile cycle")["floor_ms"].as_f64().is_some());
    assert_eq!(row("lifecycle tick, 0 due")["actions"], 0);
    let due = row("lifecycle tick, 100 due");
    assert!(due["due"].as_u64().is_some_and(|n| n > 0), "{due}");
    assert_eq!(due["actions"], due["due"], "{due}");
    let metrics = row("/metrics render");
    assert_eq!(metrics["partial_scrapes"], 0, "{metrics}");
    assert!(metrics["floor_ms"].as_f64().is_some());
    let rss = row("serve RSS");
    for key in ["start_mib", "peak_mib", "end_mib"] {
        assert!(rss[key].as_f64().is_some_and(|v| v > 1.0), "{rss}");
    }
    assert!(rss["cycles"].as_f64().is_some_and(|n| n >= 2.0), "{rss}");
    let claims = row("claims");
    assert_eq!(claims["double_claims"], 0, "{claims}");
    assert_eq!(claims["errors"], 0, "{claims}");
    assert_eq!(claims["hits"], 40, "{claims}");
    assert!(claims["rate_per_s"].as_f64().is_some_and(|rate| rate > 0.0));
}
