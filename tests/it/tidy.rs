//! Tidy checks: the rules of ARCHITECTURE.md that a grep can enforce.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap().display().to_string()
}

#[test]
fn every_source_module_says_what_it_owns() {
    for file in rust_files(&root().join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = relative(&file);
        // Test modules (`tests.rs`) are exempt: their parent documents them.
        if name.ends_with("/tests.rs") {
            continue;
        }
        assert!(text.starts_with("//!"), "{name} must open with a //! module comment");
    }
}

#[test]
fn only_the_clock_reads_wall_time() {
    for file in rust_files(&root().join("src")) {
        let name = relative(&file);
        if name == "src/clock.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for banned in ["Utc::now", "SystemTime::now", "Local::now"] {
            assert!(!text.contains(banned), "{name} calls {banned}; use the injected Clock");
        }
    }
}

#[test]
fn anyhow_is_only_used_by_the_binary_edge() {
    for file in rust_files(&root().join("src")) {
        let name = relative(&file);
        if name == "src/main.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("anyhow"), "{name} uses anyhow; use a thiserror enum");
    }
}

#[test]
fn released_migrations_are_never_edited() {
    // refinery's checksum of each released migration. Editing one changes its checksum
    // (and an existing database would refuse to start): add a new V<n>__ file instead.
    let released: &[(i64, &str, u64)] = &[
        (1, "initial", RELEASED_V1_CHECKSUM),
        (2, "workspace_latest_build", 6_566_952_001_017_238_390),
        (3, "lifecycle_candidates", 1_638_396_582_670_366_384),
        (4, "api_and_webhooks", 8_606_780_246_448_497_332),
        (5, "interrupted_jobs", 13_608_301_170_017_419_930),
        (6, "retention", 6_472_549_442_527_754_556),
        (7, "workspace_apps_and_health", 7_896_646_906_757_575_209),
    ];
    let runner = workspaced::store::migrations::migrations::runner();
    let migrations = runner.get_migrations();
    for (version, name, checksum) in released {
        let migration = migrations
            .iter()
            .find(|migration| i64::from(migration.version()) == *version)
            .unwrap_or_else(|| panic!("released migration V{version} is missing"));
        assert_eq!(migration.name(), *name);
        assert_eq!(
            migration.checksum(),
            *checksum,
            "migration V{version}__{name} was edited; migrations are append-only"
        );
    }
    // Versions are contiguous from 1, so nothing was renumbered.
    let mut versions: Vec<i64> = migrations.iter().map(|m| i64::from(m.version())).collect();
    versions.sort();
    assert_eq!(versions, (1..=versions.len() as i64).collect::<Vec<_>>());
}

const RELEASED_V1_CHECKSUM: u64 = 11_948_683_481_800_558_907;

#[test]
fn the_planner_is_pure() {
    // Decisions take a snapshot, a time and settings; they never reach for IO or a clock.
    for file in rust_files(&root().join("src/planner")) {
        let name = relative(&file);
        let text = std::fs::read_to_string(&file).unwrap();
        let banned =
            ["tokio", "rusqlite", "hyper", "kube", "crate::store", "Clock", "std::fs", "std::net"];
        for line in text.lines().filter(|line| !line.trim_start().starts_with("//")) {
            for word in banned {
                assert!(
                    !line.contains(word),
                    "{name} uses {word}; the planner must stay pure: {line}"
                );
            }
        }
    }
}

#[test]
fn the_ci_script_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    assert!(readme.contains("scripts/test"), "README must give scripts/test as the test command");
    assert!(ci.contains("scripts/test"), ".ci/run must run scripts/test");
}

#[test]
fn the_example_config_documents_the_defaults() {
    // Every key of config/workspaced.toml shows the built-in default, except data_dir,
    // which the quick start keeps under ./data.
    let source =
        workspaced::config::ConfigSource { file: Some(root().join("config/workspaced.toml")) };
    let mut example = workspaced::config::load(&source).unwrap();
    // The example also declares a template, so the quick start shows a fleet at once.
    assert!(!example.templates.is_empty());
    example.templates.clear();
    let mut expected = workspaced::config::Config::default();
    expected.storage.data_dir = PathBuf::from("./data");
    assert_eq!(example, expected);
}

/// The layers of ARCHITECTURE.md, lowest first. A module may import modules of lower
/// layers only (never its own layer's neighbours, never upward).
const LAYERS: &[&[&str]] = &[
    &["domain", "error", "clock"],
    &["planner", "auth"],
    &["config"],
    &["store"],
    &["metrics", "telemetry", "activity"],
    &["context", "systemd"],
    &["events", "provisioner"],
    &["pools", "lifecycle", "gc", "health", "retention", "templates"],
    &["loops"],
    &["http"],
    &["app"],
    &["signals"],
    &["cli"],
];

/// Exported macros live at the crate root; this is the module that defines each.
const MACROS: &[(&str, &str)] = &[("has_store_error", "store"), ("text_enums", "domain")];

fn layer_of(module: &str) -> Option<usize> {
    let module = MACROS.iter().find(|(name, _)| *name == module).map_or(module, |(_, home)| home);
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a file of `src/` belongs to (`src/store/jobs.rs` → `store`).
fn top_module(file: &Path) -> String {
    let relative = file.strip_prefix(root().join("src")).unwrap();
    let first = relative.components().next().unwrap().as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// The lines of a file that are code: not blank, not comments, before its test module.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .filter(|(_, line)| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with("//")
        })
        .map(|(index, line)| (index + 1, line))
}

fn is_test_file(file: &Path) -> bool {
    file.file_name().is_some_and(|name| name == "tests.rs")
        || file.components().any(|part| part.as_os_str() == "tests")
}

#[test]
fn every_module_imports_only_lower_layers() {
    let mut upward = Vec::new();
    for file in rust_files(&root().join("src")) {
        let module = top_module(&file);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            panic!("src/{module} is in no layer of tests/it/tidy.rs LAYERS (and ARCHITECTURE.md)");
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (at, _) in line.match_indices("crate::") {
                let used: String = line[at + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let home = MACROS.iter().find(|(name, _)| *name == used).map(|(_, home)| *home);
                if used == module || home == Some(module.as_str()) || used.is_empty() {
                    continue;
                }
                match layer_of(&used) {
                    Some(layer) if layer < own => {}
                    _ => upward.push(format!(
                        "{}:{}: {module} uses crate::{used}",
                        relative(&file),
                        number + 1
                    )),
                }
            }
        }
    }
    assert!(upward.is_empty(), "imports that are not downward:\n{}", upward.join("\n"));
}

#[test]
fn sql_lives_only_in_the_store() {
    const SQL_STARTS: [&str; 9] = [
        "SELECT ", "INSERT ", "UPDATE ", "DELETE ", "WITH ", "CREATE ", "PRAGMA ", "BEGIN",
        "EXPLAIN ",
    ];
    const CALLS: [&str; 8] = [
        ".prepare(",
        ".prepare_cached(",
        ".query_row(",
        ".query_row_cached(",
        ".execute_cached(",
        ".execute_batch(",
        ".query_map(",
        ".pragma_update(",
    ];
    let mut found = Vec::new();
    for file in rust_files(&root().join("src")) {
        if top_module(&file) == "store" || is_test_file(&file) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (number, line) in code_lines(&text) {
            let literal = line.split('"').skip(1).step_by(2).any(|quoted| {
                SQL_STARTS.iter().any(|start| quoted.trim_start().starts_with(start))
            });
            if literal || CALLS.iter().any(|call| line.contains(call)) {
                found.push(format!("{}:{number}: {line}", relative(&file)));
            }
        }
    }
    assert!(found.is_empty(), "SQL outside src/store/:\n{}", found.join("\n"));
}

#[test]
fn no_module_is_over_450_lines_of_code() {
    // The snapshot parser is one document's exact JSON paths, kept together on purpose.
    const EXEMPT: [&str; 1] = ["src/planner/snapshot.rs"];
    let mut long = Vec::new();
    for file in rust_files(&root().join("src")) {
        let name = relative(&file);
        if is_test_file(&file) || EXEMPT.contains(&name.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let count = code_lines(&text).count();
        if count > 450 {
            long.push(format!("{name}: {count} lines of code"));
        }
    }
    assert!(long.is_empty(), "modules over 450 lines of code:\n{}", long.join("\n"));
}

/// `store::jobs::effects` for `src/store/jobs/effects.rs`; `None` for lib, main, tests.
fn module_path(file: &Path) -> Option<String> {
    if is_test_file(file) {
        return None;
    }
    let relative = file.strip_prefix(root().join("src")).unwrap().with_extension("");
    let parts: Vec<String> =
        relative.components().map(|part| part.as_os_str().to_string_lossy().into_owned()).collect();
    let parts = match parts.as_slice() {
        [only] if only == "lib" || only == "main" => return None,
        [rest @ .., last] if last == "mod" => rest.to_vec(),
        all => all.to_vec(),
    };
    Some(parts.join("::"))
}

#[test]
fn the_architecture_codemap_names_every_module_and_only_modules() {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let start = text.find("## Codemap").expect("ARCHITECTURE.md has a Codemap section");
    let codemap = &text[start..];
    let codemap = &codemap[..codemap[3..].find("\n## ").map_or(codemap.len(), |end| end + 3)];
    let modules: std::collections::BTreeSet<String> =
        rust_files(&root().join("src")).iter().filter_map(|file| module_path(file)).collect();
    let named: std::collections::BTreeSet<&str> = codemap.split('`').skip(1).step_by(2).collect();
    let missing: Vec<&String> =
        modules.iter().filter(|module| !named.contains(module.as_str())).collect();
    assert!(missing.is_empty(), "modules ARCHITECTURE.md's codemap does not name: {missing:?}");
    let tops: std::collections::BTreeSet<&str> =
        modules.iter().map(|module| module.split("::").next().unwrap()).collect();
    let stale: Vec<&&str> = named
        .iter()
        .filter(|name| {
            name.contains("::")
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '_' || c == ':')
                && tops.contains(name.split("::").next().unwrap())
                && !modules.contains(**name)
        })
        .collect();
    assert!(stale.is_empty(), "the codemap names modules src/ does not have: {stale:?}");
}
