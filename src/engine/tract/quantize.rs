//! tract's activation quantization (QuantizeLinear to int8), vectorised.
//! tract 0.23.9 rounds each value with a branchy scalar function, about 2 ns
//! a value here: 52 ms of an int8 frame's 400 (issue 10). The same
//! arithmetic, written so that the compiler vectorises it, replaces it in
//! every graph tract loads.

use tract_onnx::tract_core;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::QuantizeLinearI8;

tract_core::element_wise_oop!(quantize_i8, QuantizeI8 { scale: f32, zero_point: i8 },
    [f32] => i8 |op, xs, ys| {
        super::wide::vectorised(|| quantize_into(op.scale, op.zero_point, xs, ys));
        Ok(())
    };
    prefix: "Vectorised"
);

/// `round_ties_to_even(x * scale) + zero_point`, saturated to i8: what
/// QuantizeLinear computes (`scale` is the reciprocal of the ONNX scale, as
/// tract stores it). Clamped first, in float, to the integers that stay in
/// range after the zero point; then adding 1.5·2^23 rounds to the nearest
/// integer, ties to even, and leaves it in the low bits.
#[inline]
pub fn quantize_into(scale: f32, zero_point: i8, xs: &[f32], ys: &mut [i8]) {
    const ROUNDER: f32 = 12_582_912.0;
    let offset = ROUNDER.to_bits() as i32 - i32::from(zero_point);
    let (low, high) = (f32::from(i8::MIN) - f32::from(zero_point), f32::from(i8::MAX) - f32::from(zero_point));
    for (x, y) in xs.iter().zip(ys.iter_mut()) {
        let scaled = x * scale;
        let clamped = if scaled < low { low } else if scaled > high { high } else { scaled };
        *y = ((clamped + ROUNDER).to_bits() as i32).wrapping_sub(offset) as i8;
    }
}

/// Replaces every QuantizeLinearI8 of `model` with [`QuantizeI8`].
pub fn vectorise(model: &mut TypedModel) {
    for node in model.nodes_mut() {
        let replacement = node
            .op_as::<ElementWiseOp>()
            .and_then(|op| op.0.downcast_ref::<QuantizeLinearI8>())
            .map(|q| ElementWiseOp(Box::new(QuantizeI8 { scale: q.scale, zero_point: q.zero_point }), None));
        if let Some(op) = replacement {
            node.op = Box::new(op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::quant::quantize_linear_f32_i8;

    /// Values whose scaled product fits an i32 (beyond, tract's own
    /// function overflows when it adds the zero point).
    #[test]
    fn agrees_with_tracts_quantize_linear_on_ties_and_saturation() {
        let mut xs: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.125).collect();
        xs.extend([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, -127.5, -128.5, 1e9, -1e9, 0.0, -0.0, f32::MIN_POSITIVE]);
        for (scale, zero_point) in [(1.0, 0i8), (0.37, 0), (2.0, 3), (1.0, -5)] {
            // As the crate compiles it, and for the CPU's widest vectors
            // (the op's path).
            let (mut ys, mut wide_ys) = (vec![0i8; xs.len()], vec![0i8; xs.len()]);
            quantize_into(scale, zero_point, &xs, &mut ys);
            super::super::wide::vectorised(|| quantize_into(scale, zero_point, &xs, &mut wide_ys));
            assert_eq!(ys, wide_ys);
            for (x, y) in xs.iter().zip(&ys) {
                assert_eq!(*y, quantize_linear_f32_i8(*x, scale, i32::from(zero_point)), "x {x} scale {scale} zero point {zero_point}");
            }
        }
    }
}
