//! `workspaced ws …` and `workspaced pool list` as an operator runs them: the real binary
//! against a running daemon process over loopback, tables and JSON, exit codes.

use std::time::Duration;

use crate::helpers::{DaemonProcess, binary_config, owner_token, run_binary, write_config};

#[test]
fn the_workspace_cli_drives_a_running_daemon_with_tables_json_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let body = binary_config(dir.path())
        + "[provisioner.local]\nbuild_duration = \"0s\"\n\
           [[templates]]\nname = \"go\"\n[[templates.presets]]\nname = \"small\"\n\
           [templates.presets.prebuilds]\ninstances = 1\n\
           [[templates]]\nname = \"broken\"\nprovisioner_config = { fail_transitions = [\"start\"] }\n";
    let config = write_config(dir.path(), &body);
    let token = owner_token(&config);
    let daemon = DaemonProcess::start(&config);
    daemon.wait_for_log("workspaced is ready", Duration::from_secs(20));
    let config_arg = config.to_str().unwrap().to_owned();
    // The config listens on port 0; the daemon's real address comes from --url's variable.
    let url = format!("http://{}", daemon.addr);
    let cli = |args: &[&str], token: &str| {
        let mut all = args.to_vec();
        all.extend(["--config", &config_arg]);
        let env = [("WORKSPACED_TOKEN", token), ("WORKSPACED_URL", url.as_str())];
        let output = run_binary(&all, &env, Duration::from_secs(60));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stdout, stderr)
    };

    // The pool the first cycle filled, as a table.
    let listing = crate::helpers::eventually(Duration::from_secs(20), "a ready prebuild", || {
        let (code, stdout, stderr) = cli(&["pool", "list"], &token);
        assert_eq!(code, Some(0), "{stderr}");
        stdout
            .lines()
            .nth(1)
            .is_some_and(|row| row.split_whitespace().nth(3) == Some("1"))
            .then_some(stdout)
    });
    let mut lines = listing.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header[..4], ["POOL", "DESIRED", "RUNNING", "ELIGIBLE"], "{listing}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["go/small", "1", "1", "1"], "{listing}");

    // Create from the pool and follow the build; it succeeds.
    let (code, stdout, stderr) =
        cli(&["ws", "create", "dev", "--template", "go", "--preset", "small", "--wait"], &token);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("from a ready prebuild"), "{stdout}");
    assert!(stderr.contains("build 2 succeeded"), "{stderr}");
    let (code, stdout, _) = cli(&["ws", "list", "-o", "json"], &token);
    assert_eq!(code, Some(0));
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mine: Vec<_> = listed["workspaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|workspace| workspace["owner"] == "root")
        .collect();
    assert_eq!(mine.len(), 1, "{stdout}");
    assert_eq!(mine[0]["status"], "running");
    let (code, stdout, _) = cli(&["ws", "show", "root/dev"], &token);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("status:      running"), "{stdout}");
    let (code, _, stderr) = cli(&["ws", "schedule", "dev", "--ttl", "2h"], &token);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = cli(&["ws", "stop", "dev", "--wait"], &token);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, _) = cli(&["ws", "logs", "dev"], &token);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("build succeeded"), "{stdout}");

    // A build that fails: exit 3 after its log; refused requests: exit 2.
    let (code, _, stderr) = cli(&["ws", "create", "bad", "--template", "broken", "--wait"], &token);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("failed on purpose"), "{stderr}");
    assert!(stderr.contains("build 1 ended failed"), "{stderr}");
    let (code, _, stderr) = cli(&["ws", "extend", "dev", "--by", "1h"], &token);
    assert_eq!(code, Some(2), "a stopped workspace has no deadline: {stderr}");
    assert!(stderr.contains("not running"), "{stderr}");
    let (code, _, stderr) = cli(&["ws", "show", "nobody/nothing"], &token);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("404"), "{stderr}");
    let (code, _, stderr) = cli(&["ws", "list"], "wsd_bad_token");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("401"), "{stderr}");
    let (code, _, stderr) = cli(&["ws", "list"], "");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("WORKSPACED_TOKEN"), "{stderr}");

    // Users through the API: suspend, reactivate, re-role, delete; an update with nothing
    // newer is refused.
    let migrated = run_binary(
        &["user", "create", "bob", "--role", "member", "--config", &config_arg],
        &[],
        Duration::from_secs(30),
    );
    assert!(migrated.status.success(), "{migrated:?}");
    for (args, expect) in [
        (&["user", "suspend", "bob"][..], "user bob: suspended"),
        (&["user", "activate", "bob"][..], "user bob: active"),
        (&["user", "roles", "bob", "--role", "auditor"][..], "user bob: roles set"),
        (&["user", "delete", "bob"][..], "user bob: deleted"),
    ] {
        let (code, stdout, stderr) = cli(args, &token);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stdout.contains(expect), "{args:?}: {stdout}");
    }
    let (code, _, stderr) = cli(&["ws", "update", "dev"], &token);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("active version already"), "{stderr}");

    // No daemon: exit 1, naming the address tried.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let (code, _, stderr) = cli(&["ws", "list", "--url", "http://127.0.0.1:9"], &token);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach the daemon at http://127.0.0.1:9"), "{stderr}");
}
