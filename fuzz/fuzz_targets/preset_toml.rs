//! Preset files (`preset::parse`), which a user may take from anywhere: whatever the text, the
//! parser answers with a preset or an error that names the file, never a panic; and a preset it
//! accepts keeps the executor's options for the executor: the input and the output come where
//! the executor puts them, and an MP4-family output is faststart; a ladder's files all go into
//! its folder.
#![no_main]

use isc_transcode::preset::{self, Source};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source::File(PathBuf::from("/presets/fuzz.toml"));
    let p = match preset::parse("fuzz", text, source) {
        Ok(p) => p,
        Err(e) => {
            assert!(e.to_string().contains("/presets/fuzz.toml"), "{e}");
            return;
        }
    };
    if p.is_ladder() {
        // A ladder writes a folder beside the archive it is sent back as: every file it names
        // is in that folder, and the input comes where the executor puts it.
        let args = p.ffmpeg_args("pipe:0", "out.tar");
        assert_eq!(args.iter().filter(|a| *a == "-i").count(), 1, "{args:?}");
        let at = args.iter().position(|a| a == "-i").expect("one -i");
        assert_eq!(args[at + 1], "pipe:0");
        assert!(args.last().is_some_and(|a| a.starts_with("out.d/")), "{args:?}");
        assert!(!args.iter().any(|a| a.contains('\0') || a.contains("..")));
        let _ = p.command_line();
        return;
    }
    let args = p.ffmpeg_args("pipe:0", "out.bin");
    assert_eq!(args.last().map(String::as_str), Some("out.bin"));
    assert_eq!(args.iter().filter(|a| *a == "-i").count(), 1, "{args:?}");
    let at = args.iter().position(|a| a == "-i").expect("one -i");
    assert_eq!(args[at + 1], "pipe:0");
    assert_eq!(
        &args[args.len() - 3..args.len() - 1],
        ["-f", p.format.as_str()]
    );
    assert!(!args.iter().any(|a| a.contains('\0')));
    for reserve in [None, Some(4096), Some(u64::MAX)] {
        let r = p.ffmpeg_args_reserving("pipe:0", "out.bin", reserve);
        assert_eq!(r.len(), args.len());
        assert_eq!(r.last(), args.last());
    }
    if p.is_mp4_family() {
        assert!(
            args.windows(2)
                .any(|w| w[0] == "-movflags" && w[1].split('+').any(|f| f == "faststart")),
            "{args:?}"
        );
    }
    let _ = p.copies_into_faststart();
    let _ = p.command_line();
    let f = p.fingerprint();
    assert!(f.len() == 64 && f.bytes().all(|b| b.is_ascii_hexdigit()));
});
