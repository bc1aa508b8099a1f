//! The values of the size, duration and seconds flags (`cli::parse_size`,
//! `cli::parse_duration`, `cli::parse_seconds`, `cli::parse_on_success`), which arrive from
//! cron lines, unit files and environment variables: whatever the text, no panic, and a size
//! is accepted only when it is exactly the number of bytes written, never a value that wrapped.
#![no_main]

use isc_transcode::cli;
use libfuzzer_sys::fuzz_target;

/// What `s` means as a size, by the README: digits, an optional k, m or g (binary units) and an
/// optional b, any case, around spaces; at least 6 MiB.
fn meaning(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, unit) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u128 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: u128 = digits.parse::<u64>().ok()?.into();
    u64::try_from(n * unit).ok().filter(|v| *v >= 6 << 20)
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    assert_eq!(cli::parse_size(s).ok(), meaning(s), "size {s:?}");
    let _ = cli::parse_duration(s);
    let _ = cli::parse_seconds(s);
    let _ = cli::parse_on_success(s);
});
