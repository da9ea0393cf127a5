//! The concepts' names and colours as the preview shows them, and the rename
//! endpoint: `POST /concepts` (or PUT) with `{"id": 3, "name": "road",
//! "color": "#804080"}` (`color` optional) renames concept 3 in the model's
//! `model.toml` (validated and written by [`Manifest::rename_concept`] and
//! [`Model::save_manifest`]: atomically), then in the legend and the stream.
//!
//! [`Manifest::rename_concept`]: crate::model::Manifest::rename_concept

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use serde::Deserialize;

use super::http::Response;
use crate::model::manifest::{concept_entries, parse_color, ConceptEntry, RenameError};
use crate::model::Model;

/// The body of a rename request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenameRequest {
    id: usize,
    name: String,
    color: Option<String>,
}

/// Names and colours by concept id, and where to save them.
pub(super) struct Concepts {
    table: RwLock<(Vec<String>, Vec<[u8; 3]>)>,
    model_dir: PathBuf,
    /// Serialises renames (each reads, changes and writes `model.toml`).
    renaming: Mutex<()>,
}

impl Concepts {
    pub(super) fn new(model_dir: &Path, names: &[String], colors: &[[u8; 3]]) -> Self {
        Concepts { table: RwLock::new((names.to_vec(), colors.to_vec())), model_dir: model_dir.into(), renaming: Mutex::new(()) }
    }

    /// The current colours, by id.
    pub(super) fn colors(&self) -> Vec<[u8; 3]> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).1.clone()
    }

    /// The current concepts.
    pub(super) fn list(&self) -> Vec<ConceptEntry> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        concept_entries(&table.0, &table.1)
    }

    /// Handles a rename request body: 200 with the new list; 400 (bad
    /// JSON, name or colour), 404 (no such concept) or 500 (the model
    /// directory cannot be read or written) with the reason. The running
    /// preview changes only once `model.toml` is written.
    pub(super) fn rename(&self, body: &[u8]) -> Response {
        let request: RenameRequest = match serde_json::from_slice(body) {
            Ok(request) => request,
            Err(e) => {
                return Response::text(400, format!("invalid rename request: {e}; expected {{\"id\": 3, \"name\": \"road\", \"color\": \"#804080\"}}"))
            }
        };
        let color = match request.color.as_deref().map(parse_color).transpose() {
            Ok(color) => color,
            Err(reason) => return Response::text(400, reason),
        };
        let _renaming = self.renaming.lock().unwrap_or_else(|p| p.into_inner());
        let mut model = match Model::load(&self.model_dir) {
            Ok(model) => model,
            Err(e) => return Response::text(500, format!("cannot read the model: {e}")),
        };
        if let Err(error) = model.manifest.rename_concept(request.id, &request.name, color) {
            let status = if matches!(error, RenameError::UnknownConcept { .. }) { 404 } else { 400 };
            return Response::text(status, error.to_string());
        }
        if let Err(e) = model.save_manifest() {
            return Response::text(500, format!("cannot save the new name: {e}"));
        }
        let concepts = model.manifest.concepts;
        log::info!("concept {} renamed to '{}' in {}", request.id, concepts.names[request.id], self.model_dir.display());
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = (concepts.names, concepts.colors);
        Response::json(200, &self.list())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of the k-means model (manifest and centroids) in a temporary directory.
    fn model_copy() -> (tempfile::TempDir, Concepts) {
        let dir = tempfile::tempdir().unwrap();
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/camvid-kmeans");
        for file in ["model.toml", "centroids.npy"] {
            std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
        }
        let concepts = Model::load(dir.path()).unwrap().manifest.concepts;
        let table = Concepts::new(dir.path(), &concepts.names, &concepts.colors);
        (dir, table)
    }

    fn reason(response: &Response) -> (u16, String) {
        (response.status, String::from_utf8(response.body.clone()).unwrap())
    }

    #[test]
    fn renames_are_saved_then_shown() {
        let (dir, concepts) = model_copy();
        let response = concepts.rename(br##"{"id": 3, "name": " road ", "color": "#804080"}"##);
        assert_eq!(response.status, 200);
        let listed: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(listed[3], serde_json::json!({"id": 3, "name": "road", "color": "#804080"}));
        assert_eq!(concepts.colors()[3], [0x80, 0x40, 0x80]);
        let saved = Model::load(dir.path()).unwrap().manifest.concepts;
        assert_eq!((saved.names[3].as_str(), saved.colors[3]), ("road", [0x80, 0x40, 0x80]));
        // Without a colour, the colour stays.
        assert_eq!(concepts.rename(br#"{"id": 3, "name": "street"}"#).status, 200);
        assert_eq!(concepts.list()[3], ConceptEntry { id: 3, name: "street".into(), color: "#804080".into() });
    }

    #[test]
    fn bad_renames_say_why_and_change_nothing() {
        let (dir, concepts) = model_copy();
        let before = std::fs::read_to_string(dir.path().join("model.toml")).unwrap();
        let long = format!(r#"{{"id": 0, "name": "{}"}}"#, "x".repeat(65));
        for (body, status, needle) in [
            (r#"{"id": 0, "name": "  "}"#, 400, "concept 0: the name is empty"),
            (long.as_str(), 400, "concept 0: the name has 65 characters; at most 64"),
            (r#"{"id": 0, "name": "sky", "color": "blue"}"#, 400, "'blue' is not a colour #RRGGBB"),
            (r#"{"id": 99, "name": "sky"}"#, 404, "concept 99 does not exist: the model has concepts 0 to 10"),
            (r#"{"id": -1, "name": "sky"}"#, 400, "invalid rename request"),
            (r##"{"id": 0, "name": "sky", "colour": "#000000"}"##, 400, "unknown field `colour`"),
            ("not json", 400, "invalid rename request"),
        ] {
            let (got, text) = reason(&concepts.rename(body.as_bytes()));
            assert_eq!(got, status, "{body}: {text}");
            assert!(text.contains(needle), "{body}: {text}");
        }
        assert_eq!(std::fs::read_to_string(dir.path().join("model.toml")).unwrap(), before);
    }

    #[test]
    fn an_unwritable_model_directory_is_named() {
        let (dir, concepts) = model_copy();
        // A directory where the temporary manifest goes: writing it fails,
        // even for root (for whom permission bits do not count).
        std::fs::create_dir(dir.path().join(".model.toml.partial")).unwrap();
        let (status, text) = reason(&concepts.rename(br#"{"id": 0, "name": "sky"}"#));
        assert_eq!(status, 500);
        assert!(text.starts_with("cannot save the new name: ") && text.contains(&dir.path().display().to_string()), "{text}");
        assert_eq!(concepts.list()[0].name, "concept 0", "not renamed in the preview either");
    }
}
