//! The one place with `unsafe`: setting up a child between `fork` and `exec`.
//!
//! A supervised child must not outlive the launcher, even when the launcher is killed
//! with SIGKILL (no chance to clean up): the kernel's parent-death signal does that. It
//! has to be set in the child itself, before `exec`, which only `pre_exec` can do.

#![allow(unsafe_code)]

use nix::sys::signal::Signal;

/// Makes the child get SIGKILL when the thread that spawned it exits, and puts it in its
/// own process group (so a terminal's Ctrl-C reaches only the launcher, which then stops
/// the children in order).
///
/// `PR_SET_PDEATHSIG` fires when the spawning *thread* ends, so children must be spawned
/// from threads that live as long as the launcher (the runtime's worker threads or the
/// main thread, never `spawn_blocking`).
pub(crate) fn supervise_child(command: &mut tokio::process::Command) {
    command.process_group(0);
    // SAFETY: the closure runs in the forked child before exec. It only calls prctl(2)
    // and getppid(2) through nix (async-signal-safe system calls, no allocation, no
    // locks), as `pre_exec` requires.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent may have died between fork and prctl: then nobody would ever
            // signal us.
            if nix::unistd::getppid().as_raw() == 1 {
                return Err(std::io::Error::other("the launcher exited while starting"));
            }
            Ok(())
        });
    }
}
