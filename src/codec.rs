//! What a stream *is*, as opposed to what one reader calls it.
//!
//! ffmpeg names a codec differently depending on where it meets it. MPEG-1/2 audio layer II read
//! from an MPEG-TS is `mp2`; the same bytes copied into an MP4 are listed there under the one
//! MPEG-4 object type that covers layers I-III, and both the index read-back and ffprobe call
//! them `mp3`. A check that compared codec names would reject a perfect stream copy. So the
//! output check compares [`Family`]: the codec a stream carries, whatever name its container or
//! its reader gives it. The index read-back and ffprobe are each mapped through the same table,
//! so they can never disagree about whether an output is right.

/// A codec, as a kind of stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    H264,
    Hevc,
    Av1,
    Vp8,
    Vp9,
    Mpeg4Part2,
    Mpeg12Video,
    Mjpeg,
    /// MPEG-1/2 audio, layers I, II and III: one MP4 object type and one ffmpeg demuxer path
    /// for all three.
    MpegAudio,
    Aac,
    Ac3,
    Eac3,
    Opus,
    Vorbis,
    Flac,
    Alac,
    /// Uncompressed PCM, any sample format and byte order.
    Pcm,
    /// Any other codec: compared by its exact name.
    Other,
}

impl Family {
    /// The family of an ffmpeg/ffprobe codec name.
    pub fn of(codec_name: &str) -> Family {
        match codec_name {
            "h264" => Family::H264,
            "hevc" => Family::Hevc,
            "av1" => Family::Av1,
            "vp8" => Family::Vp8,
            "vp9" => Family::Vp9,
            "mpeg4" => Family::Mpeg4Part2,
            "mpeg1video" | "mpeg2video" => Family::Mpeg12Video,
            "mjpeg" | "mjpegb" => Family::Mjpeg,
            "mp1" | "mp2" | "mp3" | "mp3adu" | "mp3on4" => Family::MpegAudio,
            "aac" | "aac_latm" => Family::Aac,
            "ac3" => Family::Ac3,
            "eac3" => Family::Eac3,
            "opus" => Family::Opus,
            "vorbis" => Family::Vorbis,
            "flac" => Family::Flac,
            "alac" => Family::Alac,
            n if n.starts_with("pcm_") => Family::Pcm,
            _ => Family::Other,
        }
    }
}

/// Whether a stream that a reader calls `got` carries the codec that `want` names: the same
/// family, or the same name for codecs outside the table.
pub fn same_codec(want: &str, got: &str) -> bool {
    match (Family::of(want), Family::of(got)) {
        (Family::Other, _) | (_, Family::Other) => want == got,
        (a, b) => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp2_copied_into_mp4_is_the_same_stream_though_mp4_readers_say_mp3() {
        // MP4 has one object type (0x6B) for MPEG-1 audio layers I-III; ffprobe and the index
        // read-back both report it as mp3.
        assert!(same_codec("mp2", "mp3"));
        assert!(same_codec("mp1", "mp3"));
        assert!(!same_codec("mp2", "aac"));
    }

    #[test]
    fn mpeg1_and_mpeg2_video_share_the_mp4v_object_types() {
        assert!(same_codec("mpeg2video", "mpeg2video"));
        assert!(same_codec("mpeg1video", "mpeg2video"));
        assert!(
            !same_codec("mpeg2video", "mpeg4"),
            "Part 2 is another codec"
        );
    }

    #[test]
    fn mjpeg_variants_are_one_codec() {
        assert!(same_codec("mjpeg", "mjpegb"));
        assert!(!same_codec("mjpeg", "png"));
    }

    #[test]
    fn aac_in_latm_is_still_aac() {
        assert!(same_codec("aac", "aac_latm"));
    }

    #[test]
    fn pcm_sample_formats_are_one_family() {
        assert!(same_codec("pcm_s16le", "pcm_s16be"));
        assert!(!same_codec("pcm_s16le", "flac"));
    }

    #[test]
    fn ac3_and_eac3_are_different_codecs() {
        // A player that decodes AC-3 may not decode E-AC-3: the check must tell them apart.
        assert!(!same_codec("ac3", "eac3"));
        assert!(same_codec("eac3", "eac3"));
    }

    #[test]
    fn video_codecs_are_told_apart() {
        for (a, b) in [
            ("h264", "hevc"),
            ("vp8", "vp9"),
            ("av1", "vp9"),
            ("h264", "mpeg4"),
        ] {
            assert!(!same_codec(a, b), "{a} vs {b}");
            assert!(same_codec(a, a) && same_codec(b, b));
        }
    }

    #[test]
    fn audio_codecs_are_told_apart() {
        for (a, b) in [
            ("opus", "vorbis"),
            ("flac", "alac"),
            ("aac", "mp3"),
            ("ac3", "aac"),
        ] {
            assert!(!same_codec(a, b), "{a} vs {b}");
        }
    }

    #[test]
    fn unknown_codecs_compare_by_name() {
        assert!(same_codec("dts", "dts"));
        assert!(!same_codec("dts", "truehd"));
        assert!(!same_codec("dts", "ac3"));
    }
}
