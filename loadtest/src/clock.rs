//! One clock for every process of a run: CLOCK_MONOTONIC, which is
//! system-wide on Linux, so a send time stamped by one worker process can
//! be subtracted from an arrival time read by another.
//!
//! The workspace denies unsafe code; this module's libc calls (clock,
//! rusage, rlimit, affinity) are the exception, each with its SAFETY note.
#![allow(unsafe_code)]

use std::time::Duration;

use tokio::time::Instant;

/// CLOCK_MONOTONIC in nanoseconds (the clock `Instant` reads on Linux).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the pointer given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The tokio `Instant` at which `mono_ns()` will read `target_ns`.
pub fn instant_at(target_ns: u64) -> Instant {
    // The clock first, then the Instant: the result is never early (a few
    // ns late at most), so a send is never written before it is due.
    let now_ns = mono_ns();
    let now_instant = Instant::now();
    if target_ns >= now_ns {
        now_instant + Duration::from_nanos(target_ns - now_ns)
    } else {
        now_instant.checked_sub(Duration::from_nanos(now_ns - target_ns)).unwrap_or(now_instant)
    }
}

/// This process's CPU time (user + system), in microseconds.
pub fn process_cpu_us() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// The calling thread's CPU time (user + system), in nanoseconds
/// (CLOCK_THREAD_CPUTIME_ID: the scheduler's own count, not ticks).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the pointer given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Raises the soft limit of open files to the hard limit.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain rlimit calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Pins the calling thread to `cpu` (sched_setaffinity of the thread alone).
pub fn pin_thread(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("no CPU {cpu}")));
    }
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it
    // (cpu < CPU_SETSIZE); sched_setaffinity(0) reads it for this thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
