//! Facts about running processes from Linux's procfs, for the servers'
//! memory gauge and the bench's memory report.

/// Resident memory (VmRSS) in bytes of process `pid`, or of this process
/// with None. None where there is no procfs or the process has exited.
pub fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    vm_rss(&std::fs::read_to_string(path).ok()?)
}

/// The `VmRSS:` line of a `/proc/PID/status` text, in bytes.
fn vm_rss(status: &str) -> Option<u64> {
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        assert_eq!(
            vm_rss("Name:\tx\nVmRSS:\t  1234 kB\nThreads: 3\n"),
            Some(1234 * 1024)
        );
        assert_eq!(vm_rss("Name:\tx\n"), None);
        assert_eq!(vm_rss("VmRSS:\tlots kB\n"), None);
        assert!(rss_bytes(None).unwrap() > 1 << 20);
        assert_eq!(
            rss_bytes(Some(std::process::id())).map(|b| b > 0),
            Some(true)
        );
    }
}
