//! `model.toml` parsing: any text through `Manifest::parse`; a manifest that
//! parses must survive writing and parsing again unchanged, and renaming a
//! concept with fuzzed text must either work or say why.
#![no_main]

use std::path::Path;

use causeseg::model::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(mut manifest) = Manifest::parse(text, Path::new("fuzz/model.toml")) else { return };
    let written = manifest.to_toml();
    let again = Manifest::parse(&written, Path::new("fuzz/written.toml")).unwrap_or_else(|e| panic!("written manifest does not parse: {e}\n{written}"));
    // NaN means or stds never compare equal; compare their text instead.
    assert_eq!(again.to_toml(), written, "a written manifest reads back the same");
    let name = text.lines().last().unwrap_or("");
    let id = text.len() % (manifest.concepts.names.len() + 1);
    if manifest.rename_concept(id, name, Some([1, 2, 3])).is_ok() {
        assert!(Manifest::parse(&manifest.to_toml(), Path::new("fuzz/renamed.toml")).is_ok(), "a renamed manifest still parses");
    }
});
