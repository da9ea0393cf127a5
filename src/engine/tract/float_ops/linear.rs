//! [`LINEAR`]: a float product with a constant weight and its affine
//! epilogue, GELU or residual sum (`onnx::linear`): on AVX2 CPUs by
//! causeseg's own kernel on the weight packed at load (`panels`), else on
//! `gemm`.

use tract_linalg::element_wise::ElementWise;
use tract_linalg::routines::Func;
use tract_onnx::tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_onnx::tract_core::ops::math::{add, mul};
use tract_onnx::tract_core::ops::nn::gelu_exact::gelu_exact;
use tract_hir::internal::*;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;

use rayon::prelude::*;

use super::panels::{self, Epilogue, PackedWeight};
use super::{in_tract_pool, product, rows_of, Matrix, SharedOutput, LINEAR};
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
/// `residual`, act GELU when `gelu`), by one of the two [`Kernel`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearF32 {
    kernel: Kernel,
    /// The bias `c` (`[N]`): none for the plain product, or the residual
    /// alone, or where `gemm` takes it from the weight's last row.
    bias: Option<Arc<Tensor>>,
    row_scale: bool,
    residual: bool,
    gelu: bool,
}

/// How a [`LinearF32`] computes its product.
#[derive(Debug, Clone, PartialEq)]
enum Kernel {
    /// causeseg's own kernel on the weight packed at load, the epilogue
    /// applied before the results leave the registers (AVX2 CPUs).
    Panels(Arc<PackedWeight>),
    /// `gemm` on the `[K, N]` weight. With `r`, the rows of `x` are scaled
    /// before the product, each followed by a 1 that takes the bias from
    /// an extra last row of the weight (`[K + 1, N]`); without, the
    /// product is added to rows of the bias. The residual is copied into
    /// the output first and the product added to it; the GELU runs over
    /// the output's rows in parallel.
    Gemm(Arc<Tensor>),
}

/// The environment variable that chooses the kernel of the float weight
/// products ([`LINEAR`] nodes): `panels` (causeseg's own, on AVX2 + FMA
/// CPUs without AVX-512), `gemm`, or `auto` (unset: the panels where they
/// run).
pub const PRODUCT_KERNEL_ENV: &str = "CAUSESEG_TRACT_PRODUCTS";

/// Whether [`PRODUCT_KERNEL_ENV`] asks for the panel kernel.
fn wants_panels() -> TractResult<bool> {
    match std::env::var(PRODUCT_KERNEL_ENV).as_deref() {
        Err(_) | Ok("" | "auto") => Ok(panels::available()),
        Ok("panels") if panels::available() => Ok(true),
        Ok("panels") => bail!("{PRODUCT_KERNEL_ENV}=panels: this CPU lacks AVX2 + FMA (or has AVX-512, where gemm runs)"),
        Ok("gemm") => Ok(false),
        Ok(other) => bail!("{PRODUCT_KERNEL_ENV}={other}: expected panels, gemm or auto"),
    }
}

impl LinearF32 {
    /// The op for a `[K, N]` `weight` and a `[N]` `bias` (none: the plain
    /// product); its inputs are `x`, then `r` with `row_scale`, then `s`
    /// with `residual`.
    fn new(weight: Arc<Tensor>, bias: Option<Arc<Tensor>>, row_scale: bool, residual: bool, gelu: bool) -> TractResult<Self> {
        if wants_panels()? {
            let (k, n) = (weight.shape()[0], weight.shape()[1]);
            let packed = PackedWeight::new(weight.try_as_plain_ram()?.as_slice::<f32>()?, k, n);
            return Ok(LinearF32 { kernel: Kernel::Panels(Arc::new(packed)), bias, row_scale, residual, gelu });
        }
        if !row_scale {
            return Ok(LinearF32 { kernel: Kernel::Gemm(weight), bias, row_scale, residual, gelu });
        }
        let n = weight.shape()[1];
        let bias = match bias {
            Some(bias) => bias.into_tensor().into_shape(&[1, n])?,
            None => Tensor::zero::<f32>(&[1, n])?,
        };
        let weight = Tensor::stack_tensors(0, &[weight.into_tensor(), bias])?;
        Ok(LinearF32 { kernel: Kernel::Gemm(weight.into_arc_tensor()), bias: None, row_scale, residual, gelu })
    }

    /// The weight's `[K, N]` (`K` counting the bias row `gemm` may carry).
    fn weight_shape(&self) -> (usize, usize) {
        match &self.kernel {
            Kernel::Panels(packed) => (packed.k(), packed.n()),
            Kernel::Gemm(weight) => (weight.shape()[0], weight.shape()[1]),
        }
    }

    /// The product's own `K` (without the bias row).
    fn width(&self) -> usize {
        let (k, _) = self.weight_shape();
        match self.kernel {
            Kernel::Gemm(_) if self.row_scale => k - 1,
            _ => k,
        }
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
        let ((k, n), width) = (self.weight_shape(), self.width());
        let x_view = inputs[0].try_as_plain_ram()?;
        let x = x_view.as_slice::<f32>()?;
        ensure!(inputs[0].shape().last() == Some(&width), "input {:?} for a [{k}, {n}] weight", inputs[0].shape());
        let m = x.len() / width;
        let r_view = self.row_scale.then(|| inputs[1].try_as_plain_ram()).transpose()?;
        let r = r_view.as_ref().map(|v| v.as_slice::<f32>()).transpose()?;
        ensure!(r.is_none_or(|r| r.len() == m), "{:?} row scales for {m} rows", inputs[1].shape());
        let residual_view = self.residual.then(|| inputs[inputs.len() - 1].try_as_plain_ram()).transpose()?;
        let residual = residual_view.as_ref().map(|v| v.as_slice::<f32>()).transpose()?;
        ensure!(residual.is_none_or(|s| s.len() == m * n), "residual {:?} for a [{m}, {n}] output", inputs[inputs.len() - 1].shape());
        let bias_view = self.bias.as_ref().map(|b| b.try_as_plain_ram()).transpose()?;
        let bias = bias_view.as_ref().map(|v| v.as_slice::<f32>()).transpose()?;
        let mut shape: TVec<usize> = inputs[0].shape().into();
        *shape.last_mut().expect("rank checked by the rules") = n;
        // SAFETY: every value is written below (by the kernel, or as the
        // rows the product is added to, or by the product).
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        {
            let mut y_view = output.try_as_plain_ram_mut()?;
            let y = y_view.as_slice_mut::<f32>()?;
            let epilogue = Epilogue { row_scale: r, bias, residual, gelu: self.gelu };
            match &self.kernel {
                Kernel::Panels(packed) => self.eval_panels(x, packed, epilogue, y)?,
                Kernel::Gemm(weight) => self.eval_gemm(x, weight, epilogue, y)?,
            }
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl LinearF32 {
    /// [`Kernel::Panels`]: the output's units (`panels::units`) spread
    /// over tract's threads, each unit's product with the epilogue (the
    /// GELU included).
    fn eval_panels(&self, x: &[f32], packed: &PackedWeight, epilogue: Epilogue, y: &mut [f32]) -> TractResult<()> {
        let n = packed.n();
        let m = y.len() / n;
        let output = SharedOutput(y.as_mut_ptr());
        let unit = |unit: &panels::Unit| -> TractResult<()> {
            // SAFETY: `y` is [m, n]; each unit writes its own part.
            unsafe { panels::product_unit(x, unit, packed, epilogue, output.add(0)) };
            Ok(())
        };
        in_tract_pool(|parallelism| match parallelism {
            gemm::Parallelism::None => panels::units(m, n, 1).iter().try_for_each(unit),
            // Each unit a piece of work an idle thread can take: by default
            // rayon cuts the units into about two runs per thread up front,
            // each run finished by the thread that starts it, and the first
            // thread done waited up to a run's time (0.3-0.6 ms a call).
            _ => panels::units(m, n, rayon::current_num_threads()).par_iter().with_max_len(1).try_for_each(unit),
        })
    }

    /// [`Kernel::Gemm`]: the rows scaled (each followed by a 1), the bias
    /// and residual written, the product added, then the GELU.
    fn eval_gemm(&self, x: &[f32], weight: &Tensor, epilogue: Epilogue, y: &mut [f32]) -> TractResult<()> {
        let (k, n) = (weight.shape()[0], weight.shape()[1]);
        let width = self.width();
        let m = x.len() / width;
        let mut scaled: Vec<f32> = vec![];
        let lhs = match epilogue.row_scale {
            Some(r) => {
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
            }
            None => x,
        };
        let accumulate = epilogue.residual.is_some() || epilogue.bias.is_some();
        if accumulate {
            tract_linalg::multithread::par_chunks_mut(y, n, m * n, |first_row, chunk| {
                for (i, row) in chunk.chunks_exact_mut(n).enumerate() {
                    match (epilogue.residual.map(|s| &s[(first_row + i) * n..][..n]), epilogue.bias) {
                        (Some(s), Some(b)) => row.iter_mut().zip(s.iter().zip(b)).for_each(|(o, (s, b))| *o = s + b),
                        (Some(s), None) => row.copy_from_slice(s),
                        (None, Some(b)) => row.copy_from_slice(b),
                        (None, None) => unreachable!("accumulating onto something"),
                    }
                }
                Ok(())
            })?;
        }
        let w_view = weight.try_as_plain_ram()?;
        let w = w_view.as_slice::<f32>()?;
        in_tract_pool(|parallelism| {
            // SAFETY: the three buffers are row-major with the sizes
            // and strides given (checked by eval), `y` not aliased.
            unsafe { product(Matrix::rows(lhs, m, k, k), Matrix::rows(w, k, n, n), y.as_mut_ptr(), n, accumulate, 1.0, parallelism) }
        });
        if self.gelu {
            let erf = Func::Erf.ew_f32()?;
            tract_linalg::multithread::par_chunks_mut(y, n, y.len(), |_, chunk| wide::vectorised(|| gelu_rows(chunk, n, &*erf)))?;
        }
        Ok(())
    }
}

/// `y ← y · (erf(y / √2) + 1) / 2` over rows of `n` values, erf by
/// tract's own kernel (as its `GeluExact` does).
fn gelu_rows(chunk: &mut [f32], n: usize, erf: &dyn ElementWise<f32>) -> TractResult<()> {
    let mut scratch = vec![0f32; n];
    chunk.chunks_exact_mut(n).try_for_each(|values| {
        scratch.iter_mut().zip(values.iter()).for_each(|(s, v)| *s = v * std::f32::consts::FRAC_1_SQRT_2);
        erf.run(&mut scratch)?;
        values.iter_mut().zip(scratch.iter()).for_each(|(v, e)| *v *= 0.5 * (e + 1.0));
        Ok(())
    })
}

impl TypedOp for LinearF32 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.to_tvec();
        *shape.last_mut().context("Linear of a scalar")? = self.weight_shape().1.into();
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        // The product's own multiply-adds (not the bias row's).
        let values: TDim = inputs[0].shape.iter().product();
        Ok(tvec!((Cost::FMA(DatumType::F32), values * self.weight_shape().1)))
    }

    as_op!();
}
