//! The page at `/`: one HTML document with its style and script inlined
//! (so a `?token=` in its address is the only credential it needs), kept
//! as separate files under `assets/` and embedded in the binary: no CDN,
//! works offline, readable on a phone.

const HTML: &str = include_str!("assets/index.html");
const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// The page, its opacity slider starting at `alpha`.
pub(super) fn index(alpha: f32) -> String {
    HTML.replace("/*STYLE*/", STYLE).replace("/*SCRIPT*/", SCRIPT).replace("{{alpha}}", &format!("{alpha:.2}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_inlines_its_assets() {
        let page = super::index(0.3);
        assert!(page.contains("value=\"0.30\"") && page.contains("function startStream") && page.contains("#legend"));
        assert!(!page.contains("/*STYLE*/") && !page.contains("/*SCRIPT*/") && !page.contains("{{alpha}}"));
        assert!(!page.contains("http://") && !page.contains("https://"), "nothing loaded from elsewhere");
    }
}
