//! Child processes that never outlive the harness.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// Spawns `command` so that the kernel kills it when the thread that spawned it ends, which
/// covers what `Drop` cannot: a test binary killed outright (a CI timeout, `kill -9`).
/// The owner still kills and reaps it on drop.
pub fn spawn_tied(command: &mut Command) -> io::Result<Child> {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

/// A port the kernel had free a moment ago, for servers that cannot be asked to pick one
/// themselves (Redis, Prometheus).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}
