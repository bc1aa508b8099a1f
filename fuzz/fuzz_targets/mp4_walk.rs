//! The top-level MP4 box walk (`media::walk_boxes`), which reads every input before a job and
//! every MP4 output before it counts: whatever the bytes, it ends, and what it reports is true
//! of them.
#![no_main]

use isc_transcode::media::{Walk, walk_boxes};
use libfuzzer_sys::fuzz_target;
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let walk = walk_boxes(Cursor::new(data)).expect("reading a cursor cannot fail");
    let (boxes, complete) = match walk {
        Walk::NotIsoBmff => return,
        Walk::Complete(b) => (b, true),
        Walk::Truncated(b) => (b, false),
    };
    assert!(!boxes.is_empty(), "a walk that found no box is no MP4");
    let mut offset = 0u64;
    for (i, b) in boxes.iter().enumerate() {
        assert_eq!(b.offset, offset, "box {i} does not follow the one before");
        assert!(b.size >= 8, "box {i} is smaller than its header");
        let end = b.offset.checked_add(b.size);
        if i + 1 < boxes.len() || complete {
            assert!(end.is_some_and(|e| e <= len), "box {i} runs past the end");
        }
        offset = end.unwrap_or(u64::MAX);
    }
    if complete {
        assert_eq!(offset, len, "complete boxes tile the file exactly");
    }
});
