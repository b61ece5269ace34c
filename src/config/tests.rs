use std::path::PathBuf;

use super::*;

fn load_str(toml: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workspaced.toml");
    std::fs::write(&path, toml).unwrap();
    load(&ConfigSource { file: Some(path) })
}

#[test]
fn an_empty_file_gives_the_defaults() {
    assert_eq!(load_str("").unwrap(), Config::default());
}

#[test]
fn durations_and_addresses_are_parsed() {
    let config = load_str(
            "[server]\nlisten = \"0.0.0.0:9000\"\n[reconciler]\ninterval = \"2m30s\"\n[gc]\ninterval = \"1d\"\n",
        )
        .unwrap();
    assert_eq!(config.server.listen.port(), 9000);
    assert_eq!(config.reconciler.interval.as_secs(), 150);
    assert_eq!(config.gc.interval.as_secs(), 86_400);
}

#[test]
fn an_unknown_key_is_named_with_its_path_and_file() {
    let error = load_str("[server]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
    assert_eq!(error.key.as_deref(), Some("server.lisen"));
    assert!(error.source_name.ends_with("workspaced.toml"), "{error}");
    assert!(error.to_string().contains("unknown key `lisen`"), "{error}");
}

#[test]
fn a_bad_duration_names_key_and_value() {
    let error = load_str("[lifecycle]\ninterval = \"5 minutes\"\n").unwrap_err();
    assert_eq!(error.key.as_deref(), Some("lifecycle.interval"));
    assert!(error.reason.contains("5 minutes"), "{error}");
}

#[test]
fn a_zero_interval_is_rejected() {
    let error = load_str("[gc]\ninterval = \"0s\"\n").unwrap_err();
    assert_eq!(error.key.as_deref(), Some("gc.interval"));
}

#[test]
fn durations_past_one_hundred_years_are_rejected_with_the_key() {
    for (toml, key) in [
        ("[[templates]]\nname = \"t\"\ndefault_ttl = \"100000000d\"\n", "templates[0].default_ttl"),
        ("[gc]\ninterval = \"100000000d\"\n", "gc.interval"),
        ("[reconciler]\nbackoff_lookback = \"36501d\"\n", "reconciler.backoff_lookback"),
        ("[gc]\nttl = \"100000000d\"\n", "gc.ttl"),
    ] {
        let error = load_str(toml).unwrap_err();
        assert_eq!(error.key.as_deref(), Some(key), "{error}");
        assert!(error.reason.contains("100 years"), "{error}");
    }
    assert!(load_str("[gc]\ninterval = \"36500d\"\n").is_ok());
}

#[test]
fn a_gc_ttl_below_an_hour_is_rejected() {
    let error = load_str("[gc]\nttl = \"0s\"\n").unwrap_err();
    assert_eq!(error.key.as_deref(), Some("gc.ttl"), "{error}");
    let error =
        load_str("[[templates]]\nname = \"t\"\n[templates.gc]\nttl = \"59m\"\n").unwrap_err();
    assert_eq!(error.key.as_deref(), Some("templates[0].gc.ttl"), "{error}");
    assert!(load_str("[gc]\nttl = \"1h\"\nwarn_before = \"30m\"\n").is_ok());
}

#[test]
fn a_bad_enum_value_lists_the_choices() {
    let error = load_str("[storage]\nsynchronous = \"sometimes\"\n").unwrap_err();
    assert_eq!(error.key.as_deref(), Some("storage.synchronous"));
    assert!(error.reason.contains("sometimes") && error.reason.contains("full"), "{error}");
}

#[test]
fn template_problems_name_the_key_path_and_line() {
    let toml = r#"
[[templates]]
name = "go"
  [[templates.parameters]]
  name = "cpu"
  type = "number"
  default = "2"
  [[templates.presets]]
  name = "small"
  parameters = { cpu = "2" }
  [[templates.presets]]
  name = "big"
  parameters = { cpu = "many" }
"#;
    let error = load_str(toml).unwrap_err();
    assert_eq!(error.key.as_deref(), Some("templates[0].presets[1].parameters.cpu"));
    assert_eq!(error.line, Some(13), "{error}");
    assert!(error.reason.contains("is not a number"), "{error}");
}

#[test]
fn unknown_keys_inside_templates_are_located() {
    let toml =
        "[[templates]]\nname = \"go\"\n\n[[templates]]\nname = \"py\"\nprovisoner = \"local\"\n";
    let error = load_str(toml).unwrap_err();
    assert_eq!(error.key.as_deref(), Some("templates[1].provisoner"), "{error}");
    assert_eq!(error.line, Some(6), "{error}");
}

#[test]
fn schedules_are_checked_for_zone_cron_overlap_and_caps() {
    let base = |prebuilds: &str| {
        format!(
            "[[templates]]\nname = \"go\"\n[[templates.presets]]\nname = \"p\"\n[templates.presets.prebuilds]\n{prebuilds}"
        )
    };
    let key = |prebuilds: &str| load_str(&base(prebuilds)).unwrap_err().key.unwrap();
    assert_eq!(
        key("instances = 1\ntimezone = \"Mars/Base\"\n"),
        "templates[0].presets[0].prebuilds.timezone"
    );
    assert_eq!(
        key(
            "instances = 1\ntimezone = \"UTC\"\n[[templates.presets.prebuilds.schedule]]\ncron = \"0 8 * * *\"\ninstances = 2\n"
        ),
        "templates[0].presets[0].prebuilds.schedule[0].cron"
    );
    assert_eq!(
        key(
            "instances = 1\ntimezone = \"UTC\"\n[[templates.presets.prebuilds.schedule]]\ncron = \"* 8-12 * * *\"\ninstances = 2\n[[templates.presets.prebuilds.schedule]]\ncron = \"* 12-18 * * *\"\ninstances = 2\n"
        ),
        "templates[0].presets[0].prebuilds.schedule"
    );
    assert_eq!(key("instances = 101\n"), "templates[0].presets[0].prebuilds.instances");
    assert_eq!(key("instances = -1\n"), "templates[0].presets[0].prebuilds.instances");
    assert_eq!(
        key(
            "instances = 1\n[[templates.presets.prebuilds.schedule]]\ncron = \"* 8 * * *\"\ninstances = 2\n"
        ),
        "templates[0].presets[0].prebuilds.timezone"
    );
    let ok = base(
        "instances = 1\ntimezone = \"Europe/Berlin\"\n[[templates.presets.prebuilds.schedule]]\ncron = \"* 8-18 * * 1-5\"\ninstances = 3\n",
    );
    assert_eq!(
        load_str(&ok).unwrap().templates[0].presets[0].prebuilds.as_ref().unwrap().schedule[0]
            .instances,
        3
    );
}

#[test]
fn duplicate_names_and_unknown_provisioners_are_rejected() {
    let key = |toml: &str| load_str(toml).unwrap_err().key.unwrap();
    assert_eq!(
        key("[[templates]]\nname = \"a\"\n[[templates]]\nname = \"a\"\n"),
        "templates[1].name"
    );
    assert_eq!(
        key("[[templates]]\nname = \"a\"\nprovisioner = \"docker\"\n"),
        "templates[0].provisioner"
    );
    assert_eq!(
        key(
            "[[templates]]\nname = \"a\"\n[[templates.presets]]\nname = \"p\"\nparameters = { ram = \"1\" }\n"
        ),
        "templates[0].presets[0].parameters.ram"
    );
    assert_eq!(
        key("[[templates]]\nname = \"a\"\nautostart_days = [\"funday\"]\n"),
        "templates[0].autostart_days"
    );
}

#[test]
fn a_missing_file_is_an_error_not_the_defaults() {
    let error = load(&ConfigSource { file: Some(PathBuf::from("/nonexistent/workspaced.toml")) })
        .unwrap_err();
    assert!(error.to_string().starts_with("/nonexistent/workspaced.toml: cannot read"));
}
