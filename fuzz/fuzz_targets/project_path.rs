//! The project path normaliser on arbitrary text: it never panics, and whatever it accepts obeys
//! every path rule, is in normal form C, and is accepted again unchanged.
#![no_main]

use cloudx_core::storage::path::{Folder, MAX_PATH_BYTES, MAX_SEGMENT_BYTES, ProjectPath};
use libfuzzer_sys::fuzz_target;
use unicode_normalization::{UnicodeNormalization as _, is_nfc};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Folder::parse(text);
    let Ok(path) = ProjectPath::parse(text) else { return };
    let p = path.as_str();
    assert!(!p.is_empty() && p.len() <= MAX_PATH_BYTES, "{p:?}");
    assert!(!p.starts_with('/') && !p.chars().any(char::is_control), "{p:?}");
    for segment in p.split('/') {
        assert!(!segment.is_empty() && segment != "." && segment != "..", "{p:?}");
        assert!(segment.len() <= MAX_SEGMENT_BYTES, "{p:?}");
    }
    assert!(is_nfc(p), "{p:?}");
    assert_eq!(p, text.nfc().collect::<String>());
    assert_eq!(ProjectPath::parse(p).expect("accepted twice").as_str(), p);
    // Its folder contains everything under it and nothing beside it.
    let folder = Folder::from(path.clone());
    assert!(folder.contains(&format!("{p}/x")) && !folder.contains(p) && !folder.contains(&format!("{p}x")));
});
