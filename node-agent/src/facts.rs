//! Facts about this host, for the registry and the seed contract's `SystemInfo`.

use std::path::Path;

use moltops_proto::agent::HostFacts;
use sysinfo::{Disks, System};

/// Collects host facts; `data_path` picks the disk whose free space is reported.
pub fn collect(data_path: &Path) -> HostFacts {
    // Memory is reported as 0 when this platform's sysinfo backend is unavailable.
    let memory_bytes = System::new()
        .map(|mut system| {
            system.refresh_memory();
            system.total_memory()
        })
        .unwrap_or(0);
    let cpu_cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    HostFacts {
        hostname: System::host_name().unwrap_or_default(),
        os: std::env::consts::OS.to_owned(),
        os_version: System::long_os_version().unwrap_or_default(),
        arch: std::env::consts::ARCH.to_owned(),
        cpu_cores: u32::try_from(cpu_cores).unwrap_or(u32::MAX),
        memory_bytes,
        disk_free_bytes: disk_free_bytes(data_path),
    }
}

/// Free space on the filesystem holding `path` (the longest matching mount point).
fn disk_free_bytes(path: &Path) -> u64 {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(disks) = Disks::new_with_refreshed_list() else {
        return 0;
    };
    disks
        .iter()
        .filter(|d| path.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_this_host() {
        let facts = super::collect(std::path::Path::new("/"));
        assert_eq!(facts.os, std::env::consts::OS);
        assert!(facts.cpu_cores >= 1);
        assert!(facts.memory_bytes > 0);
        assert!(!facts.hostname.is_empty());
    }
}
