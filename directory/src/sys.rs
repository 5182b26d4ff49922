//! The directory's only calls into the operating system that Rust's standard library
//! does not wrap: Linux scheduling and write-back. Every `unsafe` block of the
//! workspace is here, each with the reason it is sound.
#![allow(unsafe_code)]

use std::io;

/// Puts the calling thread under `SCHED_IDLE`, or failing that at nice 10, so that it
/// runs only on cores nobody else wants. Returns whether either took effect; elsewhere
/// than Linux, nothing is changed.
pub(crate) fn run_when_idle() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: a system call on the calling thread (pid 0); `param` is a valid,
        // initialised value that outlives the call, which only reads it.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) } == 0 {
            return true;
        }
        // SAFETY: a system call on the calling thread's own id; it takes no pointers.
        let tid = unsafe { libc::gettid() };
        // SAFETY: as above; integers only.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Starts writing the file's dirty pages to the disk and waits until they are written
/// (`sync_file_range` with WAIT_BEFORE | WRITE | WAIT_AFTER); not a durability barrier
/// (no metadata, no disk cache flush). Elsewhere than Linux, does nothing.
pub(crate) fn write_back(file: &std::fs::File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a system call on a descriptor `file` owns and keeps open for the
        // call; it touches no memory of ours.
        if unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_back_and_idle_priority_work_on_this_system() {
        let tmp = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &tmp, &[7; 8192]).unwrap();
        write_back(&tmp).unwrap();
        std::thread::spawn(run_when_idle).join().unwrap();
    }
}
