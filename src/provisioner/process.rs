//! Process groups of exec provisioners, as recorded in the database: reading a group
//! leader's start time from `/proc` and killing a recorded group after a crash.
//!
//! A pid can be reused once its process is gone, so a group is identified by its leader's
//! pid *and* start time (clock ticks since boot, field 22 of `/proc/PID/stat`). Recovery
//! kills the group only while its leader still has that start time; a group whose leader
//! exited but whose children live on is matched by any member with the same group id and
//! a start time not before the leader's.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The start time of process `pid` in clock ticks since boot, if it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, started)| started)
}

/// `(process group, start time)` from the text of `/proc/PID/stat`. The command name is
/// in parentheses and may itself hold spaces and parentheses: fields are counted after the
/// last `)`.
fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state(3) ppid(4) pgrp(5) … starttime(22) → indexes 0, 1, 2 … 19.
    let group = fields.get(2)?.parse().ok()?;
    let started = fields.get(19)?.parse().ok()?;
    Some((group, started))
}

/// Whether some process still belongs to group `group` and started no earlier than its
/// leader did (`leader_started`): then it is the job's, not a stranger's with a reused id.
pub fn group_alive(group: i32, leader_started: u64) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().any(|entry| {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            return false;
        };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat))
            .is_some_and(|(member_group, started)| {
                member_group == group && started >= leader_started
            })
    })
}

/// Kills the recorded group if it is still the job's. Returns whether a signal was sent.
pub fn kill_recorded_group(group: i32, leader_started: u64) -> bool {
    if group <= 1 || !group_alive(group, leader_started) {
        return false;
    }
    killpg(Pid::from_raw(group), Signal::SIGKILL).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (we ird) name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_stat(stat), Some((4242, 987_654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_start_time_and_a_stranger_group_is_left_alone() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(start_time(me).is_some());
        // Group 1 (init) is never killed, whatever is recorded.
        assert!(!kill_recorded_group(1, 0));
        // A group recorded with a start time in the future matches no process.
        assert!(!group_alive(me, u64::MAX));
    }
}
