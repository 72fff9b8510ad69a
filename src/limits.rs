//! Process limits for many sockets.

/// Raises the open-file limit as far as allowed and returns the new soft limit.
///
/// As root the hard limit is raised too, up to `/proc/sys/fs/nr_open`; otherwise the soft limit
/// is raised to the hard limit. Each WebSocket session holds one file descriptor, so the
/// default soft limit (often 1,024) would cap the relay far below `server.max_sessions`.
pub fn raise_nofile_limit() -> u64 {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    if rlimit::setrlimit(rlimit::Resource::NOFILE, nr_open, nr_open).is_ok() {
        return nr_open;
    }
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}
