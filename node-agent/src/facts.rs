//! Facts about this host, for the registry and the seed contract's `SystemInfo`.

use std::path::Path;

use moltops_proto::agent::{HostFacts, Metrics};
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

/// Samples the host's figures; keeps its `System` between samples so CPU usage is measured over
/// the interval since the previous one.
pub struct Sampler {
    system: Option<System>,
    data_path: std::path::PathBuf,
}

impl Sampler {
    pub fn new(data_path: &Path) -> Self {
        let system = System::new().ok().map(|mut s| {
            s.refresh_cpu_usage();
            s
        });
        Self {
            system,
            data_path: data_path.to_path_buf(),
        }
    }

    pub fn sample(&mut self) -> Metrics {
        let (cpu_percent, memory_used_bytes, memory_total_bytes) = match self.system.as_mut() {
            Some(system) => {
                system.refresh_cpu_usage();
                system.refresh_memory();
                (
                    system.global_cpu_usage(),
                    system.used_memory(),
                    system.total_memory(),
                )
            }
            None => (0.0, 0, 0),
        };
        let mem_percent = if memory_total_bytes == 0 {
            0.0
        } else {
            // Precision is not at stake in a percentage.
            #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
            let percent = (memory_used_bytes as f64 / memory_total_bytes as f64 * 100.0) as f32;
            percent
        };
        #[allow(clippy::cast_possible_truncation)]
        let load_1m = System::load_average().map_or(0.0, |l| l.one) as f32;
        Metrics {
            cpu_percent: cpu_percent.clamp(0.0, 100.0),
            mem_percent: mem_percent.clamp(0.0, 100.0),
            disk_free_bytes: disk_free_bytes(&self.data_path),
            uptime_seconds: System::uptime().unwrap_or(0),
            // No gateway is managed yet: the supervisor that counts its restarts comes with the
            // installer ([P4]).
            restart_count_24h: 0,
            memory_used_bytes,
            memory_total_bytes,
            load_1m: if load_1m.is_finite() {
                load_1m.max(0.0)
            } else {
                0.0
            },
        }
    }
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

    #[test]
    fn samples_are_real_figures_of_this_host() {
        let mut sampler = super::Sampler::new(std::path::Path::new("/"));
        let metrics = sampler.sample();
        assert!((0.0..=100.0).contains(&metrics.cpu_percent));
        assert!(metrics.mem_percent > 0.0 && metrics.mem_percent <= 100.0);
        assert!(metrics.memory_total_bytes >= metrics.memory_used_bytes);
        assert!(metrics.memory_used_bytes > 0);
        assert!(metrics.disk_free_bytes > 0);
        assert!(metrics.uptime_seconds > 0);
    }
}
