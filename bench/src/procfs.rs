//! What Linux says about a process: resident memory (`/proc/<pid>/status`), CPU time
//! (`/proc/<pid>/stat`) and the open-files limit (`/proc/<pid>/limits`). Parsing is separate from
//! reading, so the parsers are tested on fixed text.

use crate::error::{BenchError, BenchResult};

/// `/proc/<pid>/stat` counts CPU time in clock ticks of `USER_HZ`, which the kernel fixes at 100
/// for user space on every architecture Linux supports today (the `sysconf(_SC_CLK_TCK)` answer).
pub const TICKS_PER_SECOND: u64 = 100;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessSample {
    pub rss_bytes: u64,
    /// User + system CPU time since the process started, in ticks.
    pub cpu_ticks: u64,
}

/// Which process: a pid, or the bench itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    This,
    Other(u32),
}

impl Pid {
    fn path(self, file: &str) -> String {
        match self {
            Pid::This => format!("/proc/self/{file}"),
            Pid::Other(pid) => format!("/proc/{pid}/{file}"),
        }
    }
}

pub fn sample(pid: Pid) -> BenchResult<ProcessSample> {
    let status = read(&pid.path("status"))?;
    let stat = read(&pid.path("stat"))?;
    let rss_kib = parse_rss_kib(&status).ok_or_else(|| BenchError::Proc {
        path: pid.path("status"),
        cause: std::io::Error::other("no VmRSS line"),
    })?;
    let cpu_ticks = parse_cpu_ticks(&stat).ok_or_else(|| BenchError::Proc {
        path: pid.path("stat"),
        cause: std::io::Error::other("unexpected format"),
    })?;
    Ok(ProcessSample {
        rss_bytes: rss_kib * 1024,
        cpu_ticks,
    })
}

/// The soft limit on open files of a process (`None`: unlimited or unreadable).
pub fn open_files_limit(pid: Pid) -> Option<u64> {
    parse_open_files_limit(&std::fs::read_to_string(pid.path("limits")).ok()?)
}

fn read(path: &str) -> BenchResult<String> {
    std::fs::read_to_string(path).map_err(|cause| BenchError::Proc {
        path: path.to_owned(),
        cause,
    })
}

/// `VmRSS:    12345 kB` → 12345.
pub fn parse_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// utime + stime (fields 14 and 15). The command name (field 2) is in parentheses and may hold
/// spaces or parentheses itself, so counting starts after the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards; utime is field 14, the 12th of these.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The soft limit on the `Max open files` line.
pub fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_the_status_file() {
        let status =
            "Name:\tmoltops-server\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_rss_kib(status), Some(12345));
        assert_eq!(parse_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn cpu_time_is_utime_plus_stime_even_with_a_strange_name() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 100 \
                    1000000 3000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn the_open_files_soft_limit_is_the_first_number() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            20000                20000                files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(20000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(Pid::This).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(open_files_limit(Pid::This).is_some_and(|n| n > 0));
    }
}
