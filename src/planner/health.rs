//! The health verdict after one check of a running workspace (docs/containers.md): a pass
//! makes it healthy at once; failures make it unhealthy once `failure_threshold` of them
//! came in a row (failures within the probe's `start_period` after the start do not
//! count), or at once when the container itself is not running. Until then the stored
//! verdict stands. Pure: the health monitor keeps the count and stores the verdict.

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Passed,
    /// The probe failed (or the engine could not be asked).
    Failed(String),
    /// The container stopped or vanished: no point in waiting for more failures.
    NotRunning(String),
}

/// What the check decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Unhealthy(String),
    /// Not enough failures in a row yet: the stored verdict stands.
    Unchanged,
}

/// The failures in a row after `check` (starting from `failures`) and the verdict;
/// `warming_up`: the check fell within the start period.
pub fn judge(failures: u32, threshold: u32, check: Check, warming_up: bool) -> (u32, Verdict) {
    match check {
        Check::Passed => (0, Verdict::Healthy),
        Check::NotRunning(error) => (failures.saturating_add(1), Verdict::Unhealthy(error)),
        Check::Failed(_) if warming_up => (failures, Verdict::Unchanged),
        Check::Failed(error) => {
            let failures = failures.saturating_add(1);
            if failures >= threshold.max(1) {
                (failures, Verdict::Unhealthy(error))
            } else {
                (failures, Verdict::Unchanged)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_up_to_the_threshold_and_a_pass_resets_them() {
        let failed = || Check::Failed("refused".to_owned());
        assert_eq!(judge(0, 3, failed(), false), (1, Verdict::Unchanged));
        assert_eq!(judge(1, 3, failed(), false), (2, Verdict::Unchanged));
        assert_eq!(judge(2, 3, failed(), false), (3, Verdict::Unhealthy("refused".to_owned())));
        assert_eq!(judge(3, 3, Check::Passed, false), (0, Verdict::Healthy));
        assert_eq!(
            judge(0, 3, Check::NotRunning("exited".to_owned()), true),
            (1, Verdict::Unhealthy("exited".to_owned())),
            "a stopped container is unhealthy at once, even while warming up"
        );
        assert_eq!(judge(2, 3, failed(), true), (2, Verdict::Unchanged), "start period");
        assert_eq!(judge(0, 0, failed(), false), (1, Verdict::Unhealthy("refused".to_owned())));
        assert_eq!(judge(u32::MAX, 3, failed(), false).0, u32::MAX);
    }
}
