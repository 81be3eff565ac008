//! How a run ended, judged from what was seen of it: [`Ending::outcome`].

use super::{
    Outcome,
    process::{Exit, describe},
    shared::Failure,
    stop::StopStep,
};

/// What was seen of a run by the time QEMU was reaped.
pub(super) struct Ending {
    /// The first failure seen.
    pub(super) failure: Option<Failure>,
    /// The console's kernel panic line, if one came.
    pub(super) panic_line: Option<String>,
    /// The step of a stop asked for, where one was.
    pub(super) step: Option<StopStep>,
    /// The reason of QEMU's `SHUTDOWN` event.
    pub(super) reason: Option<String>,
    /// The KVM internal error line on QEMU's stderr.
    pub(super) kvm_error: Option<String>,
}

impl Ending {
    /// The outcome, given how QEMU exited: a failure seen outranks the exit status; a clean
    /// exit is told apart by the shutdown reason and the stop step.
    pub(super) fn outcome(self, exit: &Exit) -> Outcome {
        let Ending {
            failure,
            panic_line,
            step,
            reason,
            kvm_error,
        } = self;
        match failure {
            Some(Failure::ConsolePanic(line)) => Outcome::Panicked { line },
            Some(Failure::Panicked(what)) => Outcome::Panicked {
                line: panic_line.unwrap_or(what),
            },
            Some(Failure::Crashed(what)) => Outcome::Crashed {
                reason: kvm_error.unwrap_or(what),
            },
            Some(Failure::Log) | None if exit.success() => clean(reason.as_deref(), step),
            _ if step == Some(StopStep::Killed) => Outcome::Stopped {
                by: StopStep::Killed.to_string(),
            },
            _ => Outcome::QemuFailed {
                status: describe(exit),
            },
        }
    }
}

/// The outcome of a run after which QEMU exited 0.
fn clean(reason: Option<&str>, step: Option<StopStep>) -> Outcome {
    match (reason, step) {
        (Some("guest-shutdown"), _) => Outcome::PoweredOff,
        (_, Some(step)) => Outcome::Stopped {
            by: step.to_string(),
        },
        (Some("host-qmp-quit"), None) => Outcome::Stopped {
            by: "QEMU quit on a QMP request".into(),
        },
        (Some("host-signal"), None) => Outcome::Stopped {
            by: "QEMU was sent a signal".into(),
        },
        (Some("host-qmp-system-reset"), None) => Outcome::Stopped {
            by: "a reset asked for over QMP (under -no-reboot a reset ends the run)".into(),
        },
        (Some(r @ ("guest-reset" | "subsystem-reset")), None) => Outcome::GuestReset {
            reason: r.to_owned(),
        },
        _ => Outcome::PoweredOff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_nobody_asked_for_is_not_a_power_off() {
        let reset = clean(Some("guest-reset"), None);
        assert_eq!(
            reset,
            Outcome::GuestReset {
                reason: "guest-reset".into()
            }
        );
        assert!(reset.is_failure());
        assert_ne!(reset.exit_code(), crate::ExitCode::Success);
        assert_eq!(clean(Some("guest-shutdown"), None), Outcome::PoweredOff);
        // A stop the user asked for stays a stop, whatever QEMU calls it.
        assert!(matches!(
            clean(Some("guest-reset"), Some(StopStep::Quit)),
            Outcome::Stopped { .. }
        ));
        assert!(matches!(
            clean(Some("host-qmp-system-reset"), None),
            Outcome::Stopped { .. }
        ));
    }
}
