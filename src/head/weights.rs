//! A head's weights by name: the names are the head's `.npy` file names
//! (without the extension, `mlp/` for the TR head's projection), and the
//! ndarray forward, the ONNX emission and the candle training forward all
//! look tensors up by those names, so no code converts between layouts.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::{Array, ArrayD, ArrayView1, ArrayView2, ArrayViewD, ArrayViewMut1, ArrayViewMut2, Dimension, Ix1, Ix2};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use super::HeadError;

/// A head's tensors, float32, keyed by file name without `.npy`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weights(BTreeMap<String, ArrayD<f32>>);

/// The shape of one weight file in a head's layout, with symbolic sizes
/// (e.g. `("f1_weight", &["R", "D"])`): every occurrence of a symbol must
/// have the same size.
pub type LayoutEntry = (&'static str, &'static [&'static str]);

impl Weights {
    /// Adds (or replaces) the tensor `name`.
    pub fn insert<D: Dimension>(&mut self, name: impl Into<String>, values: Array<f32, D>) {
        self.0.insert(name.into(), values.into_dyn());
    }

    /// The tensor `name`, if present.
    pub fn get(&self, name: &str) -> Option<ArrayViewD<'_, f32>> {
        self.0.get(name).map(|a| a.view())
    }

    /// True when the tensor `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The 2-D tensor `name` (the layout check guarantees presence and rank).
    pub fn matrix(&self, name: &str) -> ArrayView2<'_, f32> {
        self.typed::<Ix2>(name)
    }

    /// The 1-D tensor `name`.
    pub fn vector(&self, name: &str) -> ArrayView1<'_, f32> {
        self.typed::<Ix1>(name)
    }

    /// The 2-D tensor `name`, mutable.
    pub fn matrix_mut(&mut self, name: &str) -> ArrayViewMut2<'_, f32> {
        self.entry_mut(name).into_dimensionality().unwrap_or_else(|_| panic!("head weight {name} is not 2-D"))
    }

    /// The 1-D tensor `name`, mutable.
    pub fn vector_mut(&mut self, name: &str) -> ArrayViewMut1<'_, f32> {
        self.entry_mut(name).into_dimensionality().unwrap_or_else(|_| panic!("head weight {name} is not 1-D"))
    }

    /// Every tensor with its name, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ArrayViewD<'_, f32>)> {
        self.0.iter().map(|(name, values)| (name.as_str(), values.view()))
    }

    /// Removes the tensor `name` and returns it.
    pub fn remove(&mut self, name: &str) -> Option<ArrayD<f32>> {
        self.0.remove(name)
    }

    fn typed<D: Dimension>(&self, name: &str) -> ndarray::ArrayView<'_, f32, D> {
        let values = self.0.get(name).unwrap_or_else(|| panic!("head weight {name} is missing"));
        values.view().into_dimensionality().unwrap_or_else(|_| panic!("head weight {name} has rank {}", values.ndim()))
    }

    fn entry_mut(&mut self, name: &str) -> ndarray::ArrayViewMutD<'_, f32> {
        self.0.get_mut(name).unwrap_or_else(|| panic!("head weight {name} is missing")).view_mut()
    }

    /// Reads `dir/<name>.npy` for every entry of `layout` (plus `optional`
    /// entries whose files exist) and checks the shapes against the layout.
    /// Returns the weights and the size of every symbol.
    pub fn read(dir: &Path, layout: &[LayoutEntry], optional: &[LayoutEntry]) -> Result<(Self, HashMap<&'static str, usize>), HeadError> {
        let present: Vec<LayoutEntry> = optional.iter().filter(|(name, _)| npy_path(dir, name).is_file()).copied().collect();
        let mut weights = Weights::default();
        for (name, shape) in layout.iter().chain(&present) {
            let path = npy_path(dir, name);
            let bad = |reason: String| HeadError::BadFile { path: path.clone(), reason };
            let file = std::fs::File::open(&path).map_err(|e| bad(e.to_string()))?;
            let values = ArrayD::<f32>::read_npy(std::io::BufReader::new(file))
                .map_err(|e| bad(format!("not a float32 {}-D .npy: {e}", shape.len())))?;
            weights.0.insert((*name).to_string(), values);
        }
        let all: Vec<LayoutEntry> = layout.iter().chain(&present).copied().collect();
        let sizes = weights.check(dir, &all)?;
        Ok((weights, sizes))
    }

    /// Checks every entry of `layout` against the tensors (`dir` names the
    /// files in errors); returns the size of every symbol.
    pub fn check(&self, dir: &Path, layout: &[LayoutEntry]) -> Result<HashMap<&'static str, usize>, HeadError> {
        let mut sizes: HashMap<&'static str, usize> = HashMap::new();
        for (name, symbols) in layout {
            let bad = |reason: String| HeadError::BadFile { path: npy_path(dir, name), reason };
            let values = self.0.get(*name).ok_or_else(|| bad("missing".into()))?;
            let fits = values.ndim() == symbols.len()
                && values.shape().iter().zip(symbols.iter()).all(|(&n, symbol)| *sizes.entry(symbol).or_insert(n) == n);
            if !fits {
                let expected: Vec<String> =
                    symbols.iter().map(|s| sizes.get(s).map_or(s.to_string(), |n| format!("{s} = {n}"))).collect();
                return Err(bad(format!("shape {:?} does not match the head's layout (expected [{}])", values.shape(), expected.join(", "))));
            }
        }
        Ok(sizes)
    }

    /// Writes every tensor to `dir/<name>.npy` (directories created as needed).
    pub fn write(&self, dir: &Path) -> Result<(), HeadError> {
        for (name, values) in &self.0 {
            let path = npy_path(dir, name);
            let bad = |reason: String| HeadError::BadFile { path: path.clone(), reason };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| bad(e.to_string()))?;
            }
            let file = std::fs::File::create(&path).map_err(|e| bad(e.to_string()))?;
            values.write_npy(std::io::BufWriter::new(file)).map_err(|e| bad(e.to_string()))?;
        }
        Ok(())
    }
}

impl<S: Into<String>, D: Dimension> FromIterator<(S, Array<f32, D>)> for Weights {
    fn from_iter<I: IntoIterator<Item = (S, Array<f32, D>)>>(iter: I) -> Self {
        Weights(iter.into_iter().map(|(name, values)| (name.into(), values.into_dyn())).collect())
    }
}

fn npy_path(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}.npy"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    const LAYOUT: &[LayoutEntry] = &[("w", &["O", "I"]), ("b", &["O"])];

    #[test]
    fn round_trip_and_symbol_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let mut weights = Weights::default();
        weights.insert("w", array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]);
        weights.insert("b", array![0.5f32, -0.5]);
        weights.insert("sub/x", array![1.0f32]);
        weights.write(dir.path()).unwrap();
        assert!(dir.path().join("sub/x.npy").is_file());
        let (read, sizes) = Weights::read(dir.path(), LAYOUT, &[("sub/x", &["X"]), ("absent", &["A"])]).unwrap();
        assert_eq!(read, weights);
        assert_eq!((sizes["O"], sizes["I"], sizes["X"]), (2, 3, 1));
    }

    #[test]
    fn inconsistent_shapes_name_the_file() {
        let weights: Weights = [("w", array![[1.0f32, 2.0]].into_dyn()), ("b", array![1.0f32, 2.0].into_dyn())].into_iter().collect();
        let err = weights.check(Path::new("/m"), LAYOUT).unwrap_err().to_string();
        assert!(err.contains("/m/b.npy") && err.contains("shape [2]") && err.contains("O = 1"), "{err}");
    }
}
