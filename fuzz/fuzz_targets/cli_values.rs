//! The values of the size, limit, duration and seconds flags (`cli::parse_size`,
//! `parse_memory`, `parse_pids`, `parse_cpus`, `parse_duration`, `parse_job_timeout`,
//! `parse_seconds`, `parse_on_success`), which arrive from cron lines, unit files and
//! environment variables: whatever the text, no panic, and a size is accepted only when it is
//! exactly the number of bytes written, never a value that wrapped.
#![no_main]

use isc_transcode::cli;
use libfuzzer_sys::fuzz_target;

/// What `s` means as a size, by the README: digits, an optional k, m, g or t (binary units) and
/// an optional b, any case, around spaces.
fn meaning(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, unit) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u128 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        Some('t') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u128 = digits.parse::<u64>().ok()?.into();
    u64::try_from(n * unit).ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(cli::parse_size(s).ok(), meaning(s), "size {s:?}");
    let memory = meaning(s)
        .filter(|v| *v >= cli::MIN_MEMORY)
        .and_then(|v| i64::try_from(v).ok());
    assert_eq!(cli::parse_memory(s).ok(), memory, "memory {s:?}");
    if let Ok(n) = cli::parse_pids(s) {
        assert!(n >= cli::MIN_PIDS, "pids {s:?}");
    }
    if let Ok(n) = cli::parse_cpus(s) {
        assert!(n.is_finite() && n > 0.0 && n <= cli::MAX_CPUS, "cpus {s:?}");
    }
    if let Ok(d) = cli::parse_job_timeout(s) {
        assert!(d.as_secs() >= 1, "job timeout {s:?}");
    }
    let _ = cli::parse_duration(s);
    let _ = cli::parse_seconds(s);
    let _ = cli::parse_on_success(s);
});
