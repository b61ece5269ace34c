//! The operations kit, checked with the real tools: `promtool check metrics` on a live
//! scrape, the metrics reference (docs/metrics.md) against what the daemon exports,
//! `promtool check rules` / `test rules` on the alerts, the Grafana dashboard's queries,
//! and `systemd-analyze verify` / `security` on the unit (with the README's stated score).
//! scripts/test installs promtool and systemd-analyze when they are missing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use workspaced::auth::Role;
use workspaced::domain::LoopKind;

use crate::api::{api_daemon, fill_pools, user};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a tool that scripts/test installs; a missing tool is a failure, not a skip.
fn tool(name: &str, args: &[&str], stdin: Option<&str>, dir: &Path) -> std::process::Output {
    let mut child = Command::new(name)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "{name} is needed ({error}); scripts/test installs it (Debian: prometheus, systemd)"
            )
        });
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// docs/metrics.md's table: name → (type, labels).
fn documented() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let text = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            name.starts_with("workspaced_").then(|| {
                let labels = cells[3]
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                (name.to_owned(), (cells[2].to_owned(), labels))
            })
        })
        .collect()
}

/// Metric names a PromQL text mentions (histogram series mapped to their family).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut index = 0;
    while let Some(at) = text[index..].find("workspaced_") {
        let start = index + at;
        let end = start
            + text[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(text.len() - start);
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| family.ends_with("_seconds"))
                .unwrap_or(name);
            names.insert(family.to_owned());
        }
        index = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_passes_promtool_and_matches_the_metrics_reference() {
    let (daemon, api) = api_daemon(|config| config.gc.enabled = true).await;
    // Exercise every part so its series exist: pools, claims, builds, GC, API, events.
    fill_pools(&daemon).await;
    let owner = api.as_user(&user(&daemon, "root", Role::Owner, "default").await);
    let (status, _) = owner
        .post("/api/v1/workspaces", json!({ "template": "dev", "preset": "small", "name": "a" }))
        .await;
    assert_eq!(status, 201);
    assert_eq!(owner.post("/api/v1/gc/run", json!({})).await.0, 200);
    daemon.tick(LoopKind::Lifecycle).await;
    daemon.wait_idle().await;
    daemon.tick(LoopKind::Reconciler).await;
    let (status, scrape) = daemon.get("/metrics").await;
    assert_eq!(status, 200);
    daemon.shutdown().await;

    let output = tool("promtool", &["check", "metrics"], Some(&scrape), &root());
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let documented = documented();
    assert!(documented.len() > 40, "docs/metrics.md table not found");
    let mut exported = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            if name.starts_with("process_") {
                continue;
            }
            let (documented_kind, _) = documented
                .get(name)
                .unwrap_or_else(|| panic!("{name} is exported but not in docs/metrics.md"));
            assert_eq!(
                documented_kind, kind,
                "{name}: docs say {documented_kind}, exported as {kind}"
            );
            exported.insert(name.to_owned());
        } else if line.starts_with("workspaced_") {
            let series = line.split(' ').next().unwrap();
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix).filter(|f| documented.contains_key(*f))
                })
                .unwrap_or(name);
            let (_, allowed) = &documented[family];
            for pair in labels.trim_end_matches('}').split(',').filter(|pair| !pair.is_empty()) {
                let label = pair.split('=').next().unwrap();
                assert!(
                    label == "le" || allowed.contains(label),
                    "{family}: label {label} is not documented"
                );
            }
        }
    }
    // The prebuild families modelled on Coder's are all there, with the preset labels.
    for family in [
        "created_total",
        "failed_total",
        "claimed_total",
        "desired",
        "running",
        "eligible",
        "preset_hard_limited",
        "resource_replacements_total",
        "metrics_last_updated",
    ] {
        let name = format!("workspaced_prebuilt_workspaces_{family}");
        assert!(exported.contains(&name), "{name} is not exported");
        if family != "metrics_last_updated" {
            let expected: BTreeSet<String> =
                ["organization_name", "template_name", "preset_name"].map(str::to_owned).into();
            assert_eq!(documented[&name].1, expected, "{name}");
        }
    }
    // Nothing documented that the code does not define.
    let mut source = String::new();
    for entry in std::fs::read_dir(root().join("src/metrics")).unwrap() {
        source += &std::fs::read_to_string(entry.unwrap().path()).unwrap();
    }
    for name in documented.keys() {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "docs/metrics.md lists {name}, src/metrics/ does not define it"
        );
    }
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = root().join("packaging/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts.test.yml"][..],
        &["check", "config", "scrape.yml"][..],
    ] {
        let output = tool("promtool", args, None, &dir);
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn alerts_and_dashboard_query_only_documented_metrics() {
    let documented = documented();
    let alerts = std::fs::read_to_string(root().join("packaging/prometheus/alerts.yml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("packaging/grafana/workspaced.json")).unwrap(),
    )
    .unwrap();
    let mut expressions = vec![alerts];
    let mut panels = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        panels += 1;
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        expressions
            .extend(targets.iter().map(|target| target["expr"].as_str().unwrap().to_owned()));
    }
    assert!(panels >= 20, "the dashboard covers pools, builds, lifecycle, GC, loops, API");
    for text in &expressions {
        for name in metric_names(text) {
            assert!(
                documented.contains_key(&name),
                "{name} (used in {text:.80}) is not in docs/metrics.md"
            );
        }
    }
}

#[test]
fn the_unit_passes_systemd_analyze_with_the_score_the_readme_states() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(root().join("systemd/workspaced.service")).unwrap();
    // As installed, ExecStart names /usr/bin/workspaced; verify checks it exists.
    let unit = unit.replace("/usr/bin/workspaced", env!("CARGO_BIN_EXE_workspaced"));
    std::fs::write(dir.path().join("workspaced.service"), unit).unwrap();
    let output = tool("systemd-analyze", &["verify", "workspaced.service"], None, dir.path());
    assert!(
        output.status.success() && output.stderr.is_empty() && output.stdout.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let output = tool(
        "systemd-analyze",
        &["security", "--offline=true", "workspaced.service"],
        None,
        dir.path(),
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let score: f64 = report
        .lines()
        .find_map(|line| line.split("Overall exposure level for workspaced.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    assert!(score <= 2.0, "exposure {score} is above 2.0:\n{report}");
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("exposure level {score:.1}")),
        "README must state the measured exposure level {score:.1}"
    );
}
