//! Small array helpers shared by the runtime and training.

use ndarray::{Array2, Array3, Axis};

/// Scales every row to unit L2 norm (rows of zeros stay zero).
pub fn l2_normalize_rows(mut rows: Array2<f32>) -> Array2<f32> {
    for mut row in rows.axis_iter_mut(Axis(0)) {
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row /= norm;
        }
    }
    rows
}

/// Index of the largest value (the first on ties; 0 when empty).
pub fn argmax<'a>(values: impl IntoIterator<Item = &'a f32>) -> usize {
    values.into_iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}

/// Per-token rows `[rows * cols, C]` (any memory layout, e.g. a matrix
/// product's) as a standard-layout grid `[rows, cols, C]`.
pub fn rows_to_grid(tokens: Array2<f32>, rows: usize, cols: usize) -> Array3<f32> {
    let channels = tokens.ncols();
    tokens.as_standard_layout().into_owned().into_shape_with_order((rows, cols, channels)).expect("rows * cols tokens")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_the_largest() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
    }

    #[test]
    fn rows_are_normalised() {
        let m = l2_normalize_rows(ndarray::array![[3.0, 4.0], [0.0, 0.0]]);
        assert_eq!(m, ndarray::array![[0.6, 0.8], [0.0, 0.0]]);
    }

    #[test]
    fn transposed_rows_become_a_standard_grid() {
        let t = ndarray::array![[1.0f32, 3.0], [2.0, 4.0]].reversed_axes();
        assert_eq!(rows_to_grid(t, 1, 2).into_raw_vec_and_offset().0, vec![1.0, 2.0, 3.0, 4.0]);
    }
}
