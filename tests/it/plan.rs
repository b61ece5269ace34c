//! `workspaced plan`: the planner contract's example cases (tests/fixtures/planner, copied
//! from the spec), run through the real binary and compared as the examples' README says,
//! plus the command's error handling.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::helpers::run_binary;

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/planner");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    files
}

/// Runs `workspaced plan --snapshot FILE` and parses its output.
fn plan(snapshot: &Path, extra: &[&str]) -> Result<Value, (i32, String)> {
    let mut args = vec!["plan", "--snapshot", snapshot.to_str().unwrap()];
    args.extend_from_slice(extra);
    let output = run_binary(&args, &[], Duration::from_secs(30));
    if !output.status.success() {
        return Err((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    Ok(serde_json::from_slice(&output.stdout).unwrap())
}

fn as_instant(value: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    value
        .as_str()
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .map(|time| time.to_utc())
}

/// Compares `actual` against `expected` where every key of `expected` must match.
fn compare(path: &str, expected: &Value, actual: &Value, failures: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(expected), Value::Object(actual)) => {
            for (key, value) in expected {
                match actual.get(key) {
                    Some(found) => compare(&format!("{path}.{key}"), value, found, failures),
                    None => failures.push(format!("{path}.{key}: missing")),
                }
            }
        }
        (Value::Array(expected), Value::Array(actual)) => {
            if expected.len() != actual.len() {
                failures.push(format!(
                    "{path}: expected {} items, found {}: {actual:?}",
                    expected.len(),
                    actual.len()
                ));
                return;
            }
            for (index, (expected, actual)) in expected.iter().zip(actual).enumerate() {
                compare(&format!("{path}[{index}]"), expected, actual, failures);
            }
        }
        _ => {
            let same = expected == actual
                || matches!((as_instant(expected), as_instant(actual)), (Some(a), Some(b)) if a == b)
                || matches!((expected.as_f64(), actual.as_f64()), (Some(a), Some(b)) if a == b);
            if !same {
                failures.push(format!("{path}: expected {expected}, found {actual}"));
            }
        }
    }
}

/// Actions compare in order; a delete's ids in order, except reason `expired` (a set).
fn compare_actions(path: &str, expected: &Value, actual: &Value, failures: &mut Vec<String>) {
    let (Some(expected), Some(actual)) = (expected.as_array(), actual.as_array()) else {
        failures.push(format!("{path}: not a list"));
        return;
    };
    if expected.len() != actual.len() {
        failures.push(format!(
            "{path}: expected {} actions, found {}: {actual:?}",
            expected.len(),
            actual.len()
        ));
        return;
    }
    for (index, (expected, actual)) in expected.iter().zip(actual).enumerate() {
        let mut expected = expected.clone();
        let mut actual = actual.clone();
        if expected["reason"] == "expired" {
            for value in [&mut expected, &mut actual] {
                if let Some(ids) = value.get_mut("workspace_ids").and_then(Value::as_array_mut) {
                    ids.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
                }
            }
        }
        compare(&format!("{path}[{index}]"), &expected, &actual, failures);
    }
}

fn find<'a>(list: &'a Value, key: &str, id: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|item| item[key] == id)
}

fn check(expect: &Value, plan: &Value) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(reconciler) = expect.get("reconciler") {
        if let Some(paused) = reconciler.get("paused") {
            compare("reconciler.paused", paused, &plan["reconciler"]["paused"], &mut failures);
        }
        for (id, expected) in reconciler["presets"].as_object().into_iter().flatten() {
            let found = find(&plan["reconciler"]["presets"], "preset_id", id);
            match (expected, found) {
                (Value::Null, None) => {}
                (Value::Null, Some(found)) => {
                    failures.push(format!("preset {id}: must not be listed, found {found}"))
                }
                (_, None) => failures.push(format!("preset {id}: not listed")),
                (expected, Some(found)) => {
                    for (key, value) in expected.as_object().unwrap() {
                        let path = format!("preset {id}.{key}");
                        if key == "actions" {
                            compare_actions(&path, value, &found[key], &mut failures);
                        } else {
                            compare(&path, value, &found[key], &mut failures);
                        }
                    }
                }
            }
        }
    }
    if let Some(lifecycle) = expect.get("lifecycle") {
        for (id, expected) in lifecycle.as_object().into_iter().flatten() {
            match (expected, find(&plan["lifecycle"], "workspace_id", id)) {
                (Value::Null, None) => {}
                (Value::Null, Some(found)) => {
                    failures.push(format!("lifecycle {id}: must not be listed, found {found}"))
                }
                (_, None) => failures.push(format!("lifecycle {id}: not listed")),
                (expected, Some(found)) => {
                    compare(&format!("lifecycle {id}"), expected, found, &mut failures)
                }
            }
        }
    }
    if let Some(gc) = expect.get("gc") {
        if let Some(tripped) = gc.get("safety_valve_tripped") {
            compare(
                "gc.safety_valve_tripped",
                tripped,
                &plan["gc"]["safety_valve_tripped"],
                &mut failures,
            );
        }
        for (id, expected) in gc["actions"].as_object().into_iter().flatten() {
            match (expected, find(&plan["gc"]["actions"], "workspace_id", id)) {
                (Value::Null, None) => {}
                (Value::Null, Some(found)) => {
                    failures.push(format!("gc {id}: must not be listed, found {found}"))
                }
                (_, None) => failures.push(format!("gc {id}: not listed")),
                (expected, Some(found)) => {
                    compare(&format!("gc {id}"), expected, found, &mut failures)
                }
            }
        }
    }
    failures
}

#[test]
fn every_example_case_of_the_planner_contract_passes() {
    let files = fixtures();
    assert!(files.len() >= 18, "expected the spec's example cases, found {}", files.len());
    let dir = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for file in &files {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let snapshot = dir.path().join("snapshot.json");
        std::fs::write(&snapshot, case["snapshot"].to_string()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        match plan(&snapshot, &[]) {
            Ok(plan) => {
                for failure in check(&case["expect"], &plan) {
                    report.push(format!("{name} ({}): {failure}", case["name"]));
                }
            }
            Err((code, stderr)) => report.push(format!("{name}: exit {code}: {stderr}")),
        }
    }
    assert!(report.is_empty(), "{} failures:\n{}", report.len(), report.join("\n"));
}

#[test]
fn a_bad_snapshot_exits_2_with_one_line_naming_the_json_path() {
    let dir = tempfile::tempdir().unwrap();
    let case: Value =
        serde_json::from_str(&std::fs::read_to_string(&fixtures()[0]).unwrap()).unwrap();
    let mut snapshot = case["snapshot"].clone();
    snapshot["workspaces"][1]["created_at"] = Value::String("yesterday".into());
    let path = dir.path().join("bad.json");
    std::fs::write(&path, snapshot.to_string()).unwrap();
    let (code, stderr) = plan(&path, &[]).unwrap_err();
    assert_eq!(code, 2);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("workspaces[1].created_at: invalid RFC3339 time \"yesterday\""),
        "{stderr}"
    );

    let (code, stderr) = plan(&dir.path().join("missing.json"), &[]).unwrap_err();
    assert_eq!(code, 2);
    assert!(stderr.contains("missing.json"), "{stderr}");
}

#[test]
fn now_overrides_the_snapshot_time() {
    let dir = tempfile::tempdir().unwrap();
    // Case 01: with ttl 5 s, one prebuild is expired at the snapshot's now; an hour
    // earlier than both prebuilds' creation none is.
    let file = fixtures().into_iter().find(|path| path.to_string_lossy().contains("01-")).unwrap();
    let case: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let path = dir.path().join("snapshot.json");
    std::fs::write(&path, case["snapshot"].to_string()).unwrap();
    let later = plan(&path, &["--now", "2025-06-02T13:00:00Z"]).unwrap();
    assert_eq!(later["now"], "2025-06-02T13:00:00Z");
    assert_eq!(later["reconciler"]["presets"][0]["state"]["expired"], 2);
    let (code, stderr) = plan(&path, &["--now", "soon"]).unwrap_err();
    assert_eq!(code, 2);
    assert!(stderr.contains("--now"), "{stderr}");
}

#[test]
fn plan_and_export_read_the_live_database_without_writing_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}[[templates]]\nname = \"go\"\n[[templates.presets]]\nname = \"small\"\n[templates.presets.prebuilds]\ninstances = 2\n",
        crate::helpers::binary_config(dir.path())
    );
    let config = crate::helpers::write_config(dir.path(), &body);
    let config = config.to_str().unwrap();
    // Without a database there is nothing to read, and nothing is created.
    let output = run_binary(&["plan", "--config", config], &[], Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
    assert!(!dir.path().join("data/workspaced.db").exists());

    // A daemon applies the template and fills the pool, then stops.
    let daemon = crate::helpers::DaemonProcess::start(std::path::Path::new(config));
    daemon.wait_for_log("workspaced is ready", Duration::from_secs(15));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)).code(), Some(0));
    let database = dir.path().join("data/workspaced.db");
    let before = std::fs::read(&database).unwrap();

    let output = run_binary(
        &["plan", "--config", config, "--now", "2025-06-02T12:00:00Z"],
        &[],
        Duration::from_secs(30),
    );
    assert!(output.status.success(), "{output:?}");
    let live: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(live["reconciler"]["presets"][0]["state"]["desired"], 2);
    // Names beside ids, from the live database.
    let preset = &live["reconciler"]["presets"][0];
    assert_eq!(
        (preset["organization"].as_str(), preset["template"].as_str(), preset["preset"].as_str()),
        (Some("default"), Some("go"), Some("small")),
        "{live}"
    );
    // The daemon's cycle at start created both prebuilds: nothing more to do.
    assert_eq!(live["reconciler"]["presets"][0]["actions"], serde_json::json!([]), "{live}");

    let output =
        run_binary(&["snapshot", "export", "--config", config], &[], Duration::from_secs(30));
    assert!(output.status.success(), "{output:?}");
    let exported = dir.path().join("exported.json");
    std::fs::write(&exported, &output.stdout).unwrap();
    // The exported document plans the same way, and an edit changes the plan.
    let replayed = plan(&exported, &["--now", "2025-06-02T12:00:00Z"]).unwrap();
    // The same plan; a snapshot document carries ids only, so its plan has no names.
    let mut named = live["reconciler"].clone();
    for preset in named["presets"].as_array_mut().unwrap() {
        for key in ["organization", "template", "preset"] {
            preset.as_object_mut().unwrap().remove(key);
        }
    }
    assert_eq!(replayed["reconciler"], named);
    let mut edited: Value = serde_json::from_slice(&output.stdout).unwrap();
    edited["presets"][0]["desired_instances"] = serde_json::json!(5);
    std::fs::write(&exported, edited.to_string()).unwrap();
    let what_if = plan(&exported, &["--now", "2025-06-02T12:00:00Z"]).unwrap();
    assert_eq!(
        what_if["reconciler"]["presets"][0]["actions"][0],
        serde_json::json!({ "type": "create", "count": 3 })
    );

    assert_eq!(std::fs::read(&database).unwrap(), before, "plan and export must not write");
    let output = run_binary(
        &["preset", "reset", "no-such-preset", "--config", config],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no preset \"no-such-preset\""));
}
