//! Unix signals by pid, through the C library's `kill(2)` (declared here rather than
//! pulling in a crate for one function).

#[cfg(target_os = "linux")]
mod nums {
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
    pub const SIGCONT: i32 = 18;
    pub const SIGSTOP: i32 = 19;
}
#[cfg(not(target_os = "linux"))] // macOS and the BSDs
mod nums {
    pub const SIGKILL: i32 = 9;
    pub const SIGTERM: i32 = 15;
    pub const SIGSTOP: i32 = 17;
    pub const SIGCONT: i32 = 19;
}
pub use nums::*;

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Sends `sig` to process `pid`; true if it was delivered.
pub fn send(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) takes plain integers and has no memory effects in this process.
    unsafe { kill(pid as i32, sig) == 0 }
}

/// True if a process with this pid exists (`kill(pid, 0)`; a zombie counts as existing).
pub fn pid_exists(pid: u32) -> bool {
    send(pid, 0)
}
