//! [`LINEAR`]: a float product with a constant weight and its affine
//! epilogue, GELU or residual sum (`onnx::linear`), on `gemm`.

use tract_linalg::routines::Func;
use tract_onnx::tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_onnx::tract_core::ops::math::{add, mul};
use tract_onnx::tract_core::ops::nn::gelu_exact::gelu_exact;
use tract_hir::internal::*;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;

use super::{in_tract_pool, product, rows_of, Matrix, LINEAR};
use crate::engine::tract::{constant_input, wide};
use crate::onnx::linear::GELU;

/// Parses a [`LINEAR`] node.
pub(super) fn parse(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    ensure!((3..=5).contains(&node.input.len()), "{LINEAR} takes 3 to 5 inputs, {} has {}", node.name, node.input.len());
    let present = |i: usize| node.input.get(i).is_some_and(|name| !name.is_empty());
    let gelu = match node.get_attr_opt::<String>("activation")? {
        None => false,
        Some(a) if a == GELU => true,
        Some(other) => bail!("{}: unknown activation {other:?} (known: {GELU:?})", node.name),
    };
    Ok((expand(LinearNode { row_scale: present(3), residual: present(4), gelu }), vec![]))
}

/// A [`LINEAR`] node before its constants are known: which of the
/// optional inputs and the activation it has.
#[derive(Debug, Clone)]
struct LinearNode {
    row_scale: bool,
    residual: bool,
    gelu: bool,
}

impl Expansion for LinearNode {
    fn name(&self) -> StaticName {
        "Linear".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 3 + self.row_scale as usize + self.residual as usize)?;
        check_output_arity(outputs, 1)?;
        rows_of(s, &inputs[0], &outputs[0])?;
        s.given(&inputs[0].rank, move |s, rank| s.equals(&outputs[0].shape[rank as usize - 1], &inputs[1].shape[1]))
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let (weight, bias) = (constant_input(model, inputs, 1, prefix)?, constant_input(model, inputs, 2, prefix)?);
        ensure!(weight.rank() == 2 && bias.len() == weight.shape()[1], "{prefix}: weight {:?}, bias {:?}", weight.shape(), bias.shape());
        let row_scale = self.row_scale.then(|| inputs[3]);
        let residual = self.residual.then(|| inputs[3 + self.row_scale as usize]);
        let x = model.outlet_fact(inputs[0])?.shape.clone();
        let mut y = x.to_tvec();
        *y.last_mut().context("Linear of a scalar")? = weight.shape()[1].into();
        let per_row = match row_scale {
            Some(r) => {
                let r = &model.outlet_fact(r)?.shape;
                r.rank() == x.rank() && r.last() == Some(&1.into()) && r.iter().zip(x.iter()).rev().skip(1).all(|(a, b)| a == b)
            }
            None => true,
        };
        let same_shape = residual.map_or(Ok(true), |s| Ok::<_, TractError>(*model.outlet_fact(s)?.shape == *y))?;
        if per_row && same_shape {
            let op = LinearF32::new(weight, Some(bias), row_scale.is_some(), residual.is_some(), self.gelu)?;
            let op_inputs: TVec<OutletId> = std::iter::once(inputs[0]).chain(row_scale).chain(residual).collect();
            return model.wire_node(prefix, op, &op_inputs);
        }
        // Another broadcast of the scale or the residual: tract's own ops
        // after the product.
        let mut y = model.wire_node(format!("{prefix}.product"), LinearF32::new(weight, None, false, false, false)?, &inputs[..1])?[0];
        if let Some(r) = row_scale {
            y = wire_with_rank_broadcast(format!("{prefix}.scale"), model, mul(), &[y, r])?[0];
        }
        y = wire_with_rank_broadcast(format!("{prefix}.bias"), model, add(), &[y, inputs[2]])?[0];
        if let Some(s) = residual {
            y = wire_with_rank_broadcast(format!("{prefix}.residual"), model, add(), &[y, s])?[0];
        }
        if self.gelu {
            y = model.wire_node(format!("{prefix}.gelu"), gelu_exact(), &[y])?[0];
        }
        Ok(tvec!(y))
    }
}

/// `act((x·W) ⊙ r + c + s)` (`r` when `row_scale`, the residual `s` when
/// `residual`, act GELU when `gelu`). With `r`, the rows of `x` are scaled
/// before the product, each followed by a 1 that takes the bias from an
/// extra last row of the weight; without, the product is added to rows of
/// the bias. The residual is copied into the output first and the product
/// added to it; the GELU runs over the output's rows in parallel.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearF32 {
    /// `[K, N]`, or `[K + 1, N]` (the bias last) with `row_scale`.
    weight: Arc<Tensor>,
    /// The bias (`[N]`) the product is added to, without `row_scale` (none:
    /// the plain product, or the residual alone).
    bias: Option<Arc<Tensor>>,
    row_scale: bool,
    residual: bool,
    gelu: bool,
}

impl LinearF32 {
    /// The op for a `[K, N]` `weight` and a `[N]` `bias` (none: the plain
    /// product); its inputs are `x`, then `r` with `row_scale`, then `s`
    /// with `residual`.
    fn new(weight: Arc<Tensor>, bias: Option<Arc<Tensor>>, row_scale: bool, residual: bool, gelu: bool) -> TractResult<Self> {
        if !row_scale {
            return Ok(LinearF32 { weight, bias, row_scale, residual, gelu });
        }
        let n = weight.shape()[1];
        let bias = match bias {
            Some(bias) => bias.into_tensor().into_shape(&[1, n])?,
            None => Tensor::zero::<f32>(&[1, n])?,
        };
        let weight = Tensor::stack_tensors(0, &[weight.into_tensor(), bias])?;
        Ok(LinearF32 { weight: weight.into_arc_tensor(), bias: None, row_scale, residual, gelu })
    }
}

impl Eq for LinearF32 {}

impl Op for LinearF32 {
    fn name(&self) -> StaticName {
        "LinearF32".into()
    }
    op_as_typed_op!();
}

impl EvalOp for LinearF32 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (k, n) = (self.weight.shape()[0], self.weight.shape()[1]);
        let x_view = inputs[0].try_as_plain_ram()?;
        let x = x_view.as_slice::<f32>()?;
        let width = k - self.row_scale as usize;
        ensure!(inputs[0].shape().last() == Some(&width), "input {:?} for a [{k}, {n}] weight", inputs[0].shape());
        let m = x.len() / width;
        let mut scaled: Vec<f32> = vec![];
        let lhs = if self.row_scale {
            let r_view = inputs[1].try_as_plain_ram()?;
            let r = r_view.as_slice::<f32>()?;
            ensure!(r.len() == m, "{} row scales for {m} rows", r.len());
            scaled.resize(m * k, 0.0);
            tract_linalg::multithread::par_chunks_mut(&mut scaled, k, m * k, |first_row, chunk| {
                for (i, out) in chunk.chunks_exact_mut(k).enumerate() {
                    let (row, s) = (&x[(first_row + i) * width..][..width], r[first_row + i]);
                    out[..width].iter_mut().zip(row).for_each(|(o, v)| *o = v * s);
                    out[width] = 1.0;
                }
                Ok(())
            })?;
            &scaled[..]
        } else {
            x
        };
        let mut shape: TVec<usize> = inputs[0].shape().into();
        *shape.last_mut().expect("rank checked by the rules") = n;
        let residual_view = self.residual.then(|| inputs[inputs.len() - 1].try_as_plain_ram()).transpose()?;
        let residual = residual_view.as_ref().map(|v| v.as_slice::<f32>()).transpose()?;
        ensure!(residual.is_none_or(|s| s.len() == m * n), "residual {:?} for a [{m}, {n}] output", inputs[inputs.len() - 1].shape());
        let bias_view = self.bias.as_ref().map(|b| b.try_as_plain_ram()).transpose()?;
        let bias = bias_view.as_ref().map(|v| v.as_slice::<f32>()).transpose()?;
        // SAFETY: every value is written below (the rows the product is
        // added to, or the product).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        {
            let mut y_view = output.try_as_plain_ram_mut()?;
            let y = y_view.as_slice_mut::<f32>()?;
            let accumulate = residual.is_some() || bias.is_some();
            if accumulate {
                tract_linalg::multithread::par_chunks_mut(y, n, m * n, |first_row, chunk| {
                    for (i, row) in chunk.chunks_exact_mut(n).enumerate() {
                        match (residual.map(|s| &s[(first_row + i) * n..][..n]), bias) {
                            (Some(s), Some(b)) => row.iter_mut().zip(s.iter().zip(b)).for_each(|(o, (s, b))| *o = s + b),
                            (Some(s), None) => row.copy_from_slice(s),
                            (None, Some(b)) => row.copy_from_slice(b),
                            (None, None) => unreachable!("accumulating onto something"),
                        }
                    }
                    Ok(())
                })?;
            }
            let w_view = self.weight.try_as_plain_ram()?;
            let w = w_view.as_slice::<f32>()?;
            in_tract_pool(|parallelism| {
                // SAFETY: the three buffers are row-major with the sizes
                // and strides given (checked above), `y` not aliased.
                unsafe { product(Matrix::rows(lhs, m, k, k), Matrix::rows(w, k, n, n), y.as_mut_ptr(), n, accumulate, 1.0, parallelism) }
            });
            if self.gelu {
                exact_gelu(y, n)?;
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

/// `y ← y · (erf(y / √2) + 1) / 2`, rows of `n` values spread over tract's
/// threads, erf by tract's own kernel (as its `GeluExact` does on one
/// thread).
fn exact_gelu(y: &mut [f32], n: usize) -> TractResult<()> {
    let erf = Func::Erf.ew_f32()?;
    tract_linalg::multithread::par_chunks_mut(y, n, y.len(), |_, chunk| {
        let mut scratch = vec![0f32; n];
        wide::vectorised(|| {
            for row in chunk.chunks_exact_mut(n) {
                scratch.iter_mut().zip(row.iter()).for_each(|(s, v)| *s = v * std::f32::consts::FRAC_1_SQRT_2);
                erf.run(&mut scratch)?;
                row.iter_mut().zip(&scratch).for_each(|(v, e)| *v *= 0.5 * (e + 1.0));
            }
            Ok(())
        })
    })
}

impl TypedOp for LinearF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        *shape.last_mut().context("Linear of a scalar")? = self.weight.shape()[1].into();
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        // The product's own multiply-adds (not the bias row's).
        let values: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(DatumType::F32), values * self.weight.shape()[1])))
    }

    as_op!();
}
