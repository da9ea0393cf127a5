//! The exponentials of the attention's softmax. tract's own kernels (a
//! maximum pass, then `exp` and the sum) took 1.72 ns a value on a 2-core
//! AVX2 Zen, about 40 ms of each 448x336 frame (6 heads × 769² scores in
//! each of 12 blocks); this degree-5 polynomial with fused multiply-adds,
//! which the compiler vectorises, takes 1.19 ns and agrees with tract's to
//! 1.5e-7 relative (a scratch microbenchmark of 256 rows of 769 scores).

/// Replaces each row (`keys` values) of `scores` by its softmax numerators
/// `exp(x − max(row))` and writes the reciprocal of their sum to
/// `inverse_sums`, one per row. Compiled for AVX-512 and for AVX2 + FMA
/// and chosen at run time (a closure through `wide::vectorised` was not
/// inlined in dev builds, which left `mul_add` a library call).
pub(super) fn exponentiate_rows(scores: &mut [f32], keys: usize, inverse_sums: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("fma") {
            // SAFETY: the instructions were just detected.
            return unsafe { exponentiate_rows_avx512(scores, keys, inverse_sums) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            return unsafe { exponentiate_rows_avx2(scores, keys, inverse_sums) };
        }
    }
    each_row(scores, keys, inverse_sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn exponentiate_rows_avx512(scores: &mut [f32], keys: usize, inverse_sums: &mut [f32]) {
    each_row(scores, keys, inverse_sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exponentiate_rows_avx2(scores: &mut [f32], keys: usize, inverse_sums: &mut [f32]) {
    each_row(scores, keys, inverse_sums)
}

/// [`exponentiate_rows`]' loop, inlined into each of its versions.
#[inline(always)]
fn each_row(scores: &mut [f32], keys: usize, inverse_sums: &mut [f32]) {
    for (row, inverse) in scores.chunks_exact_mut(keys).zip(inverse_sums) {
        *inverse = 1.0 / exponentiate(row);
    }
}

/// Replaces each value `x` of `row` by `exp(x − max(row))` and returns
/// their sum.
#[inline(always)]
fn exponentiate(row: &mut [f32]) -> f32 {
    let max = row_max(row);
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (x, sum) in chunk.iter_mut().zip(&mut sums) {
            *x = exp_at_most_zero(*x - max);
            *sum += *x;
        }
    }
    let tail: f32 = chunks
        .into_remainder()
        .iter_mut()
        .map(|x| {
            *x = exp_at_most_zero(*x - max);
            *x
        })
        .sum();
    sums.iter().sum::<f32>() + tail
}

/// Independent partial results per pass, so that the compiler vectorises
/// the loops (two vectors of 8 on AVX2, one of 16 on AVX-512).
const LANES: usize = 16;

/// The largest value of `row`, in [`LANES`] interleaved partial maxima.
#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut partial = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| greater(m, x));
    for chunk in chunks {
        for (p, &x) in partial.iter_mut().zip(chunk) {
            *p = greater(*p, x);
        }
    }
    partial.iter().fold(tail, |m, &x| greater(m, x))
}

/// The larger of `a` and `b` in one instruction (`f32::max` adds NaN
/// handling, which the compiler cannot vectorise as one).
#[inline(always)]
fn greater(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `exp(x)` for `x ≤ 0` (as low as −87; below, about 1e-38 instead of
/// 0): `x = n·ln 2 + r`, `|r| ≤ ln 2 / 2`, `exp(x) = 2ⁿ · p(r)` with `p` a
/// degree-5 polynomial fitted to `exp` on that interval (relative error
/// under 1e-7), `2ⁿ` put straight into the exponent bits.
#[inline(always)]
fn exp_at_most_zero(x: f32) -> f32 {
    /// 1.5 · 2²³: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = greater(x, -87.0);
    let t = x.mul_add(std::f32::consts::LOG2_E, ROUND);
    let n = t - ROUND;
    // ln 2 in two parts, so that n · ln 2 is exact to f32 precision.
    let r = n.mul_add(-1.428_606_8e-6, n.mul_add(-0.693_145_75, x));
    let p = r.mul_add(r.mul_add(r.mul_add(r.mul_add(r.mul_add(0.008_290_327, 0.041_897_94), 0.166_676_36), 0.499_991_5), 0.999_999_7), 1.0);
    // Wrapping arithmetic: no overflow checks in dev builds, which would
    // keep the compiler from vectorising.
    let exponent = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32).wrapping_add(127).wrapping_shl(23);
    p * f32::from_bits(exponent as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_standard_library_down_to_minus_87() {
        for i in 0..=87_000 {
            let x = -(i as f32) / 1000.0;
            let (ours, std) = (exp_at_most_zero(x), x.exp());
            assert!((ours - std).abs() <= 3e-7 * std, "exp({x}): {ours} against {std}");
        }
    }

    #[test]
    fn rows_become_softmax_numerators_with_their_inverse_sums() {
        // 769 scores, as an attention row at 448x336, with a large spread.
        let row: Vec<f32> = (0..769).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.7).collect();
        let mut ours = [row.clone(), row.clone()].concat();
        let mut inverse_sums = [0f32; 2];
        exponentiate_rows(&mut ours, row.len(), &mut inverse_sums);
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let expected: Vec<f64> = row.iter().map(|&x| ((x - max) as f64).exp()).collect();
        for (o, e) in ours.iter().zip(expected.iter().chain(&expected)) {
            assert!((*o as f64 - e).abs() <= 3e-7 * e, "{o} against {e}");
        }
        let expected_sum: f64 = expected.iter().sum();
        for inverse in inverse_sums {
            assert!((1.0 / inverse as f64 - expected_sum).abs() <= 1e-6 * expected_sum, "{} against {expected_sum}", 1.0 / inverse);
        }
    }
}
