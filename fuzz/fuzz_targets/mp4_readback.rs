//! The MP4 index read-back (`readback::read_mp4`, `readback::index_reserve`), run on every MP4
//! output before it counts and on the inputs of stream copies: whatever the bytes, it ends
//! without a panic, and what it settles is consistent with the file; the verifier then takes
//! that description for every built-in preset.
#![no_main]

use isc_transcode::ffmpeg::InputInfo;
use isc_transcode::preset::{self, Preset};
use isc_transcode::{readback, verify};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn presets() -> &'static [Preset] {
    static PRESETS: OnceLock<Vec<Preset>> = OnceLock::new();
    PRESETS.get_or_init(|| preset::builtins().expect("built-in presets parse"))
}

fuzz_target!(|data: &[u8]| {
    let (probe, reserve) = readback::read_mp4_bytes(data);
    if let Some(r) = reserve {
        assert!(
            r <= data.len() as u64 / 100,
            "a reserve over 1 % of the file"
        );
    }
    let Ok(probe) = probe else { return };
    let size = probe.format.as_ref().and_then(|f| f.size.as_deref());
    assert_eq!(size, Some(data.len().to_string().as_str()));
    if let Some(d) = probe.duration() {
        assert!(d.is_finite() && d >= 0.0, "duration {d}");
    }
    let input = InputInfo {
        duration: probe.duration(),
        video: probe.video().map(|s| s.codec_name.clone()).collect(),
        audio: probe.audio().map(|s| s.codec_name.clone()).collect(),
        other: vec![],
    };
    for p in presets() {
        let _ = verify::needs_ffprobe(&p.check, &input, &probe);
        let _ = verify::check(&p.check, &input, &probe, None);
        let _ = verify::dropped(&p.check, &input, &probe);
    }
});
