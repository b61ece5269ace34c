//! The real binary under a stand-in for systemd's notify socket: READY after migrations and
//! bind, RELOADING/READY around SIGHUP, STOPPING on SIGTERM, WATCHDOG pings that stop while
//! a loop iteration is stuck and resume when it recovers.

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::helpers::{DaemonProcess, write_config};

/// Every datagram the daemon sends, with the time it arrived.
fn listen(socket: UnixDatagram) -> mpsc::Receiver<(Instant, String)> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 1024];
        while let Ok(size) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..size]).into_owned();
            if sender.send((Instant::now(), message)).is_err() {
                break;
            }
        }
    });
    receiver
}

/// The next message that starts with `prefix`, skipping others.
fn next(messages: &mpsc::Receiver<(Instant, String)>, prefix: &str) -> (Instant, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (at, message) =
            messages.recv_timeout(left).unwrap_or_else(|_| panic!("no {prefix:?} notification"));
        if message.starts_with(prefix) {
            return (at, message);
        }
    }
}

#[test]
fn the_daemon_speaks_sd_notify_and_its_watchdog_tracks_the_loops() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let messages = listen(UnixDatagram::bind(&socket_path).unwrap());
    // The reconciler's cycle 3 s after start must write: the reload below grows the pool
    // (the cycle at start already filled the first one, and an unchanged pool writes nothing).
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nloop_stall_timeout = \"2s\"\n\
         [storage]\ndata_dir = {:?}\nbusy_timeout = \"60s\"\n[log]\nformat = \"json\"\n\
         [reconciler]\ninterval = \"3s\"\n\
         [[templates]]\nname = \"dev\"\n[[templates.presets]]\nname = \"small\"\n\
         [templates.presets.prebuilds]\ninstances = 1\n",
        dir.path().join("data")
    );
    let config_path = write_config(dir.path(), &config);
    let started = Instant::now();
    let daemon = DaemonProcess::start_with_env(
        &config_path,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")],
    );
    let (ready_at, ready) = next(&messages, "READY=1");
    assert!(ready.contains("STATUS="), "{ready}");
    let (first_ping, _) = next(&messages, "WATCHDOG=1");
    let (second_ping, _) = next(&messages, "WATCHDOG=1");
    assert!(
        second_ping.duration_since(first_ping) < Duration::from_millis(400),
        "pings at half the timeout"
    );
    assert!(ready_at > started);

    // Reload: RELOADING (with the monotonic time systemd wants), then READY again.
    write_config(dir.path(), &config.replace("instances = 1", "instances = 2"));
    daemon.signal(Signal::SIGHUP);
    let (_, reloading) = next(&messages, "RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    next(&messages, "READY=1");

    // Wedge the reconciler: hold the database's write lock before its first cycle, which
    // then waits inside its iteration (busy_timeout 60 s).
    let lock = rusqlite::Connection::open(dir.path().join("data/workspaced.db")).unwrap();
    lock.busy_timeout(Duration::from_secs(10)).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    daemon.wait_for_log(
        "loop stalled: an iteration has been running too long (server.loop_stall_timeout); withholding the systemd watchdog ping so the service is restarted",
        Duration::from_secs(20),
    );
    // Drain what was sent before the stall was seen, then expect silence.
    while messages.try_recv().is_ok() {}
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while let Ok((_, message)) =
        messages.recv_timeout(quiet_until.saturating_duration_since(Instant::now()))
    {
        assert!(!message.starts_with("WATCHDOG"), "pinged while stalled: {message}");
    }
    // Unwedge: the iteration finishes and pings resume.
    lock.execute_batch("ROLLBACK").unwrap();
    daemon
        .wait_for_log("every loop is alive again; watchdog pings resumed", Duration::from_secs(20));
    next(&messages, "WATCHDOG=1");

    daemon.signal(Signal::SIGTERM);
    next(&messages, "STOPPING=1");
    assert!(daemon.wait_exit(Duration::from_secs(20)).success());
}
