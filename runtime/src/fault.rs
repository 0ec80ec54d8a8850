//! Fault injection for the end-to-end tests: a process kills (SIGKILL) or
//! stops (SIGSTOP) itself right after a named step when an environment
//! variable names that step, so that a test can crash or pause it exactly
//! there.
//!
//! The hooks exist only in builds with the `fault-injection` feature
//! (`scripts/test` builds the binaries with it; `scripts/demo`, release
//! builds and `docker-compose.yml` do not). Without it [`at`] does nothing,
//! and [`refuse_unless_built_in`] makes a process that finds one of its fault
//! variables set stop at start with an error instead of running without the
//! fault a test expects.

/// Whether this build has the hooks.
pub const BUILT_IN: bool = cfg!(feature = "fault-injection");

/// What [`at`] does to the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL: a crash.
    Kill,
    /// SIGSTOP: a pause (of the host, of the VM); SIGCONT resumes it.
    Stop,
}

/// If the environment variable `env` is set to `step`, do `fault` to this
/// process (with the `fault-injection` feature; otherwise nothing).
pub fn at(env: &str, step: &str, fault: Fault) {
    if BUILT_IN && std::env::var(env).is_ok_and(|v| v == step) {
        now(fault, &format!("{env}={step}"));
    }
}

/// Do `fault` to this process now, logging `why` (with the
/// `fault-injection` feature; otherwise nothing).
pub fn now(fault: Fault, why: &str) {
    #[cfg(feature = "fault-injection")]
    {
        let (signal, what) = match fault {
            Fault::Kill => (libc::SIGKILL, "killing"),
            Fault::Stop => (libc::SIGSTOP, "stopping"),
        };
        tracing::error!(why, "FaultInjected: {what} the process");
        // SAFETY: raising a signal on the current process has no preconditions.
        unsafe { libc::raise(signal) };
    }
    #[cfg(not(feature = "fault-injection"))]
    let _ = (fault, why);
}

/// Err (naming the variable) when one of `vars` is set in a build without
/// the hooks. A service calls it at start with the variables it reads.
pub fn refuse_unless_built_in(vars: &[&str]) -> Result<(), String> {
    refuse(BUILT_IN, vars, |v| std::env::var_os(v).is_some())
}

fn refuse(built_in: bool, vars: &[&str], is_set: impl Fn(&str) -> bool) -> Result<(), String> {
    match vars.iter().find(|v| is_set(v)) {
        Some(v) if !built_in => Err(format!(
            "{v} is set, but this build has no fault injection (a test hook): unset it, or build the binaries with their \
             `fault-injection` feature (scripts/test does)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_the_hooks_refuses_their_variables_and_one_with_them_takes_them() {
        let set = |v: &str| v == "B_FAULT";
        let err = refuse(false, &["A_FAULT", "B_FAULT"], set).unwrap_err();
        assert!(err.contains("B_FAULT is set") && err.contains("fault-injection"), "{err}");
        assert_eq!(refuse(true, &["A_FAULT", "B_FAULT"], set), Ok(()));
        assert_eq!(refuse(false, &["A_FAULT"], set), Ok(()), "none of its variables set");
    }
}
