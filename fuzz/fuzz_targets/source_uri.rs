//! Source URI parsing: any `--source` text through `SourceUri::parse`; a
//! URI that parses must print as text that classifies the same way again
//! (for the kinds whose printed form is a URI).
#![no_main]

use causeseg::SourceUri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(uri) = SourceUri::parse(text) else { return };
    let printed = uri.to_string();
    if matches!(uri, SourceUri::Auto | SourceUri::Camera { .. } | SourceUri::Csi(_) | SourceUri::Gst(_) | SourceUri::Url(_) | SourceUri::Ros2 { .. }) {
        assert_eq!(SourceUri::parse(&printed).ok(), Some(uri), "{text:?} printed as {printed:?}");
    }
});
