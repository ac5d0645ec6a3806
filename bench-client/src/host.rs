//! Facts about the machine and the few Linux calls the bench needs: CPU affinity, process CPU
//! time (`/proc/<pid>/stat`, own `getrusage`), per-thread CPU and run-queue time
//! (`/proc/self/task/<tid>/schedstat`), the file-descriptor limit, and host metadata (kernel,
//! CPU model) that every saved result must carry to be interpretable later.

use std::io;

use anyhow::{bail, Context};
use echo_units::format_cpu_list;
use serde::{Deserialize, Serialize};

/// Host metadata recorded in the JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// `gethostname`.
    pub hostname: String,
    /// `uname`: sysname, release, version and machine.
    pub kernel: String,
    /// First `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Online CPUs of the machine (`sysconf(_SC_NPROCESSORS_ONLN)`).
    pub nproc: usize,
    /// CPUs echo-bench was allowed to use when it started (`sched_getaffinity`, before any
    /// `--client-cpus` pinning), e.g. narrowed by `taskset` or a container.
    pub allowed_cpus: Vec<usize>,
}

fn cstr_field(field: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Collect [`HostInfo`]. Call it before pinning the calling thread.
pub fn host_info() -> HostInfo {
    // SAFETY: utsname is plain old data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    let (kernel, hostname) = if unsafe { libc::uname(&mut uts) } == 0 {
        (
            format!(
                "{} {} {} {}",
                cstr_field(&uts.sysname),
                cstr_field(&uts.release),
                cstr_field(&uts.version),
                cstr_field(&uts.machine)
            ),
            cstr_field(&uts.nodename),
        )
    } else {
        ("unknown".into(), "unknown".into())
    };
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let allowed_cpus = allowed_cpus().unwrap_or_default();
    // SAFETY: sysconf has no memory-safety preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    HostInfo {
        hostname,
        kernel,
        cpu_model,
        nproc: if online > 0 {
            online as usize
        } else {
            allowed_cpus.len().max(1)
        },
        allowed_cpus,
    }
}

/// CPUs the calling thread may run on.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain old data.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid and its size is passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect())
}

/// Build a `cpu_set_t` from a CPU list (validated against `CPU_SETSIZE` by the CLI parser).
pub fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain old data; CPU_ZERO/CPU_SET only touch it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: the CLI parser keeps every CPU below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    set
}

/// Pin the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Check that every CPU in `cpus` is one this process may use, so that pinning errors are
/// reported up front with the list that is available.
pub fn check_cpus(flag: &str, cpus: &[usize]) -> anyhow::Result<()> {
    let allowed = allowed_cpus().context("sched_getaffinity")?;
    if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
        bail!(
            "{flag}: CPU {bad} is not available to this process (available: {})",
            format_cpu_list(&allowed)
        );
    }
    Ok(())
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time (user + system) of process `pid` so far, all its threads included (exited ones
/// too), in ns: the kernel's process CPU clock (`clock_getcpuclockid` + `clock_gettime`), which
/// counts the scheduler's exact runtime. Where that clock cannot be read, utime + stime from
/// `/proc/<pid>/stat` fields 14 and 15, whose resolution is one clock tick (usually 10 ms).
pub fn process_cpu_ns(pid: u32) -> io::Result<u64> {
    if let Some(ns) = process_cpu_clock_ns(pid) {
        return Ok(ns);
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu_ticks(&stat)
        .map(|ticks| ticks * 1_000_000_000 / clock_ticks_per_second())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unparsable /proc/{pid}/stat"),
            )
        })
}

/// The process CPU clock of `pid`, ns; `None` if it cannot be read (no such process, or a
/// kernel that refuses).
fn process_cpu_clock_ns(pid: u32) -> Option<u64> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `clock` is a valid out-pointer for the duration of the call.
    if unsafe { libc::clock_getcpuclockid(pid, &mut clock) } != 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; `clock` came from clock_getcpuclockid.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(u64::try_from(ts.tv_sec).ok()? * 1_000_000_000 + u64::try_from(ts.tv_nsec).ok()?)
}

/// utime + stime in clock ticks from the text of a `/proc/<pid>/stat` file.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time (user + system) used by this process so far, in ns.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: rusage is plain old data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The kernel thread id of the calling thread.
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Time a thread of this process has spent running and waiting to run, so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadTimes {
    /// On a CPU, ns.
    pub cpu_ns: u64,
    /// Runnable but waiting on a run queue for a CPU, ns; `None` where the kernel does not
    /// account it (no `schedstat`).
    pub wait_ns: Option<u64>,
}

/// [`ThreadTimes`] of thread `tid` of this process: `/proc/self/task/<tid>/schedstat` (ns
/// resolution), falling back to CPU time alone from `/proc/self/task/<tid>/stat` (clock ticks).
pub fn thread_times(tid: i32) -> io::Result<ThreadTimes> {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")) {
        if let Some((cpu_ns, wait_ns)) = parse_schedstat(&text) {
            return Ok(ThreadTimes {
                cpu_ns,
                wait_ns: Some(wait_ns),
            });
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unparsable /proc/self/task/{tid}/stat"),
        )
    })?;
    Ok(ThreadTimes {
        cpu_ns: ticks * 1_000_000_000 / clock_ticks_per_second(),
        wait_ns: None,
    })
}

/// `(on-CPU ns, run-queue wait ns)` from the text of a `schedstat` file.
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut f = text.split_whitespace().map(str::parse::<u64>);
    Some((f.next()?.ok()?, f.next()?.ok()?))
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit if `needed` descriptors do not fit the
/// soft one; fail with a clear message when even the hard limit is too small.
pub fn ensure_fd_limit(needed: u64) -> anyhow::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(());
    }
    if lim.rlim_cur >= needed {
        return Ok(());
    }
    if lim.rlim_max < needed {
        bail!(
            "need about {needed} file descriptors but the RLIMIT_NOFILE hard limit is {} \
             (lower --connections or raise `ulimit -Hn`)",
            lim.rlim_max
        );
    }
    let new = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        bail!(
            "cannot raise RLIMIT_NOFILE to {}: {}",
            lim.rlim_max,
            io::Error::last_os_error()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_handles_spaces_and_parens_in_comm() {
        let stat = "1234 (my (weird) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 12345 1000000 100 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn another_process_cpu_time_has_nanosecond_resolution() {
        // A child that burns about 50 ms of CPU, then waits to be killed.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 30",
            ])
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut last = 0;
        let mut readings = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while readings.len() < 20 && std::time::Instant::now() < deadline {
            let ns = process_cpu_ns(pid).unwrap();
            assert!(ns >= last, "CPU time went backwards: {last} -> {ns}");
            if ns != last {
                readings.push(ns);
            }
            last = ns;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = child.kill();
        let _ = child.wait();
        // Clock-tick readings are multiples of 10 ms (or 1 ms at HZ=1000); the process CPU
        // clock is not.
        let tick = 1_000_000_000 / clock_ticks_per_second();
        assert!(
            readings.iter().any(|ns| ns % tick != 0),
            "only whole clock ticks: {readings:?}"
        );
        assert!(self_cpu_ns() > 0);
    }

    #[test]
    fn a_spinning_thread_is_seen_running_or_waiting_for_the_whole_time() {
        assert_eq!(
            parse_schedstat("2018683 3866234 4\n"),
            Some((2_018_683, 3_866_234))
        );
        assert_eq!(parse_schedstat("garbage"), None);
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let spinner = std::thread::spawn(move || {
            tx.send(current_tid()).unwrap();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {}
        });
        let tid = rx.recv().unwrap();
        let a = thread_times(tid).unwrap();
        let t0 = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let b = thread_times(tid).unwrap();
        let elapsed = t0.elapsed().as_nanos() as f64;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        spinner.join().unwrap();
        let cpu = (b.cpu_ns - a.cpu_ns) as f64;
        assert!(cpu > 0.0);
        if let (Some(wa), Some(wb)) = (a.wait_ns, b.wait_ns) {
            // Running or runnable all along, however busy the machine is (10 ms of slack for
            // the accounting, which is updated at scheduling events).
            let busy = cpu + (wb - wa) as f64;
            assert!(busy >= 0.9 * elapsed - 10e6, "busy {busy} of {elapsed} ns");
        }
    }

    #[test]
    fn host_info_has_kernel_and_cpus() {
        let h = host_info();
        assert!(h.kernel.starts_with("Linux"), "{}", h.kernel);
        assert!(h.nproc >= 1);
        assert!(!h.allowed_cpus.is_empty());
    }
}
