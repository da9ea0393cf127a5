//! A float product with a constant weight packed once, at load, into
//! panels of [`PANEL`] columns and [`DEPTH`] rows, and its epilogue (row
//! scale, bias, residual, GELU) applied to the results while they are
//! still in registers: `y = act((x·W) ⊙ r + c + s)`. The kernel and the
//! loop order are the classic ones for AVX2 + FMA (as in ONNX Runtime's
//! MLAS): 6 rows of `x` read in place, each value broadcast against the
//! 16 columns of a panel into 12 accumulators (in assembly,
//! [`six_rows`]); those 6 rows (in L1) against [`PANELS_PER_PASS`] panels
//! (in L2) before the next 6.
//! Packing the weight once and writing each output value once saves
//! `gemm`'s packing of the weight at every run and the passes over the
//! output before and after the product. On two cores of an AVX2 Zen 3,
//! tract against ONNX Runtime went from 1.23x (`gemm`) to 1.19x with the
//! compiler's kernel, to 1.05-1.08x with the assembly one and to
//! 0.91-0.97x with the GELU in the epilogue and the units shared one by
//! one (README, `bench`).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::ops::Range;

/// Columns of the weight per panel: two AVX2 vectors.
pub(super) const PANEL: usize = 16;

/// Rows of `x` per kernel call: 12 accumulators of the 16 registers.
const ROWS: usize = 6;

/// Rows of the weight per panel, the products' inner dimension in one
/// pass (the backbone's 384 whole, its 1536 in four): 6 rows of `x` are
/// 9 kB, a panel 24 kB. 256 and 768 measured 2-8 % slower.
const DEPTH: usize = 384;

/// Panels each group of 6 rows meets before the next group: 8 panels
/// (192 kB) stay in a core's L2 (512 kB on Zen 3).
const PANELS_PER_PASS: usize = 8;

/// Whether this CPU runs the panel kernel: AVX2 + FMA. On AVX-512 CPUs
/// `gemm`'s AVX-512 kernels are kept (about 220 GFLOP/s on a 2-core
/// Zen 4), which this AVX2 kernel was not measured against.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx2") && has!("fma") && !has!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A `[K, N]` row-major weight as panels: for each [`DEPTH`] rows of it,
/// one panel per 16 columns, each holding those columns of those rows, row
/// after row (the last panel padded with zeros).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PackedWeight {
    k: usize,
    n: usize,
    panels: Vec<f32>,
}

impl PackedWeight {
    /// Packs `weight`, `k × n` row-major.
    pub(super) fn new(weight: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(weight.len(), k * n, "a [{k}, {n}] weight");
        let mut panels = Vec::with_capacity(k * n.div_ceil(PANEL) * PANEL);
        for depth in weight.chunks(DEPTH * n) {
            for first_column in (0..n).step_by(PANEL) {
                let columns = PANEL.min(n - first_column);
                for row in depth.chunks_exact(n) {
                    panels.extend_from_slice(&row[first_column..][..columns]);
                    panels.extend(std::iter::repeat_n(0.0, PANEL - columns));
                }
            }
        }
        PackedWeight { k, n, panels }
    }

    /// Rows (the product's inner dimension).
    pub(super) fn k(&self) -> usize {
        self.k
    }

    /// Columns (the output's width).
    pub(super) fn n(&self) -> usize {
        self.n
    }
}

/// What is applied to each product row `p_i` before it is written:
/// `act(p_i · r_i + c + s_i)`.
#[derive(Clone, Copy, Default)]
pub(super) struct Epilogue<'a> {
    /// `r`, one per row.
    pub row_scale: Option<&'a [f32]>,
    /// `c`, one per column.
    pub bias: Option<&'a [f32]>,
    /// `s`, the output's shape.
    pub residual: Option<&'a [f32]>,
    /// Whether `act` is the exact GELU ([`gelu`]), else the identity.
    pub gelu: bool,
}

/// A unit of parallel work: some rows of the output and some of its
/// columns (whole panels).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Unit {
    pub rows: Range<usize>,
    pub columns: Range<usize>,
}

/// The units of an `[m, n]` output for `threads` threads: one run of
/// rows per thread (each run reads the whole weight) times runs of
/// [`PANELS_PER_PASS`] panels, so that a core slowed by its neighbours
/// (a virtual machine's) takes fewer of them.
pub(super) fn units(m: usize, n: usize, threads: usize) -> Vec<Unit> {
    let rows = m.div_ceil(threads.max(1)).div_ceil(ROWS).max(1) * ROWS;
    let columns = PANELS_PER_PASS * PANEL;
    (0..m)
        .step_by(rows)
        .flat_map(|first| (0..n).step_by(columns).map(move |column| Unit { rows: first..m.min(first + rows), columns: column..n.min(column + columns) }))
        .collect()
}

/// `y = epilogue(x·W)` on one unit's rows and columns: `x` `[M, K]`
/// and `y` `[M, N]` row-major.
///
/// # Safety
/// `y` must be valid for writes of `M·N` values, no other thread writing
/// this unit's part of it.
///
/// # Panics
/// When a slice is shorter than its shape says, or the CPU lacks the
/// kernel's instructions ([`available`]).
pub(super) unsafe fn product_unit(x: &[f32], unit: &Unit, weight: &PackedWeight, epilogue: Epilogue, y: *mut f32) {
    let (k, n) = (weight.k, weight.n);
    let m = unit.rows.end;
    assert!(x.len() >= m * k && unit.columns.end <= n && unit.columns.start.is_multiple_of(PANEL), "{unit:?} of [.., {k}] x [{k}, {n}]");
    assert!(epilogue.row_scale.is_none_or(|r| r.len() >= m));
    assert!(epilogue.bias.is_none_or(|c| c.len() == n));
    assert!(epilogue.residual.is_none_or(|s| s.len() >= m * n));
    assert!(available(), "the panel kernel needs AVX2 + FMA");
    #[cfg(target_arch = "x86_64")]
    product_unit_avx2(x, unit, weight, epilogue, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_unit_avx2(x: &[f32], unit: &Unit, weight: &PackedWeight, epilogue: Epilogue, y: *mut f32) {
    let (k, n) = (weight.k, weight.n);
    let panels = n.div_ceil(PANEL);
    let mut depth_panels = weight.panels.chunks(DEPTH * panels * PANEL);
    for first_k in (0..k).step_by(DEPTH) {
        let depth = DEPTH.min(k - first_k);
        let pass = Pass { k, depth, first: first_k == 0, last: first_k + depth == k, n };
        let block = depth_panels.next().expect("one block of panels per DEPTH rows");
        let mut row = unit.rows.start;
        while row < unit.rows.end {
            let group = (unit.rows.end - row).min(ROWS);
            let x_rows = x.as_ptr().add(row * k + first_k);
            for j in unit.columns.start / PANEL..unit.columns.end.div_ceil(PANEL) {
                let tile = Tile { x: x_rows, panel: block.as_ptr().add(j * depth * PANEL), row, column: j * PANEL };
                match group {
                    ROWS => tile.run::<ROWS>(&pass, &epilogue, y),
                    5 => tile.run::<5>(&pass, &epilogue, y),
                    4 => tile.run::<4>(&pass, &epilogue, y),
                    3 => tile.run::<3>(&pass, &epilogue, y),
                    2 => tile.run::<2>(&pass, &epilogue, y),
                    _ => tile.run::<1>(&pass, &epilogue, y),
                }
            }
            row += group;
        }
    }
}

/// The kernel: `R` rows of `x` (`k` apart) against `depth` rows of a
/// panel, in 2·`R` accumulators; 6 rows (all of a unit's tiles but its
/// last rows') by [`six_rows`] in steps of 4, the rest here. Its own
/// function returning them by value: inside [`Tile::run`] the compiler
/// kept a copy of them on the stack, written at every step (half the
/// speed).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn accumulate<const R: usize>(x: *const f32, k: usize, panel: *const f32, depth: usize) -> [[__m256; 2]; R] {
    // One pointer per row: an address each, not a chain of additions.
    let rows: [*const f32; R] = std::array::from_fn(|i| x.add(i * k));
    let (mut acc, mut p) = match R {
        // SAFETY: R is 6 here, the two arrays one type.
        ROWS => (std::mem::transmute_copy(&six_rows(x, k, panel, depth / 4)), depth / 4 * 4),
        _ => ([[_mm256_setzero_ps(); 2]; R], 0),
    };
    while p + 2 <= depth {
        step(&mut acc, &rows, panel, p);
        step(&mut acc, &rows, panel, p + 1);
        p += 2;
    }
    if p < depth {
        step(&mut acc, &rows, panel, p);
    }
    acc
}

/// Step `$p` of [`six_rows`]' loop body: panel row `$p` (two vectors in
/// ymm0/ymm1) against value `$p` of each of the 6 rows (broadcast into
/// ymm2/ymm3 in turn), into the accumulators ymm4..ymm15.
#[cfg(target_arch = "x86_64")]
macro_rules! six_rows_step {
    ($p:literal) => {
        concat!(
            "vmovups ymm0, [{panel} + ", $p, " * 64]\n",
            "vmovups ymm1, [{panel} + ", $p, " * 64 + 32]\n",
            "vbroadcastss ymm2, [{x} + ", $p, " * 4]\n",
            "vfmadd231ps ymm4, ymm2, ymm0\n",
            "vfmadd231ps ymm5, ymm2, ymm1\n",
            "vbroadcastss ymm3, [{x} + {stride} + ", $p, " * 4]\n",
            "vfmadd231ps ymm6, ymm3, ymm0\n",
            "vfmadd231ps ymm7, ymm3, ymm1\n",
            "vbroadcastss ymm2, [{x} + 2 * {stride} + ", $p, " * 4]\n",
            "vfmadd231ps ymm8, ymm2, ymm0\n",
            "vfmadd231ps ymm9, ymm2, ymm1\n",
            "vbroadcastss ymm3, [{x3} + ", $p, " * 4]\n",
            "vfmadd231ps ymm10, ymm3, ymm0\n",
            "vfmadd231ps ymm11, ymm3, ymm1\n",
            "vbroadcastss ymm2, [{x3} + {stride} + ", $p, " * 4]\n",
            "vfmadd231ps ymm12, ymm2, ymm0\n",
            "vfmadd231ps ymm13, ymm2, ymm1\n",
            "vbroadcastss ymm3, [{x3} + 2 * {stride} + ", $p, " * 4]\n",
            "vfmadd231ps ymm14, ymm3, ymm0\n",
            "vfmadd231ps ymm15, ymm3, ymm1\n",
        )
    };
}

/// [`accumulate`] for 6 rows and `4 · quads` steps, in assembly: the
/// rows addressed from two pointers and the stride (`x`, `x + stride`,
/// `x + 2·stride`, then the same from `x + 3·stride`), 4 steps per
/// iteration. The compiler's version of the same loop recomputes the
/// rows' addresses by a chain of additions at every step.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn six_rows(x: *const f32, k: usize, panel: *const f32, quads: usize) -> [[__m256; 2]; 6] {
    let (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11): (__m256, __m256, __m256, __m256, __m256, __m256, __m256, __m256, __m256, __m256, __m256, __m256);
    std::arch::asm!(
        "vxorps ymm4, ymm4, ymm4",
        "vxorps ymm5, ymm5, ymm5",
        "vxorps ymm6, ymm6, ymm6",
        "vxorps ymm7, ymm7, ymm7",
        "vxorps ymm8, ymm8, ymm8",
        "vxorps ymm9, ymm9, ymm9",
        "vxorps ymm10, ymm10, ymm10",
        "vxorps ymm11, ymm11, ymm11",
        "vxorps ymm12, ymm12, ymm12",
        "vxorps ymm13, ymm13, ymm13",
        "vxorps ymm14, ymm14, ymm14",
        "vxorps ymm15, ymm15, ymm15",
        "lea {x3}, [{x} + 2 * {stride}]",
        "add {x3}, {stride}",
        "test {quads}, {quads}",
        "jz 3f",
        "2:",
        six_rows_step!(0),
        six_rows_step!(1),
        six_rows_step!(2),
        six_rows_step!(3),
        "add {x}, 16",
        "add {x3}, 16",
        "add {panel}, 256",
        "dec {quads}",
        "jnz 2b",
        "3:",
        x = inout(reg) x => _,
        x3 = out(reg) _,
        stride = in(reg) k * 4,
        panel = inout(reg) panel => _,
        quads = inout(reg) quads => _,
        out("ymm0") _,
        out("ymm1") _,
        out("ymm2") _,
        out("ymm3") _,
        out("ymm4") a0,
        out("ymm5") a1,
        out("ymm6") a2,
        out("ymm7") a3,
        out("ymm8") a4,
        out("ymm9") a5,
        out("ymm10") a6,
        out("ymm11") a7,
        out("ymm12") a8,
        out("ymm13") a9,
        out("ymm14") a10,
        out("ymm15") a11,
        options(nostack, readonly),
    );
    [[a0, a1], [a2, a3], [a4, a5], [a6, a7], [a8, a9], [a10, a11]]
}

/// Step `p` of [`accumulate`]: row `p` of the panel against value `p`
/// of each row. (A function, not a closure: a closure is not compiled
/// for the caller's instructions, and was not inlined.)
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn step<const R: usize>(acc: &mut [[__m256; 2]; R], rows: &[*const f32; R], panel: *const f32, p: usize) {
    let (b0, b1) = (_mm256_loadu_ps(panel.add(p * PANEL)), _mm256_loadu_ps(panel.add(p * PANEL + 8)));
    for i in 0..R {
        let a = _mm256_broadcast_ss(&*rows[i].add(p));
        acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
    }
}

/// The exact GELU, `v · (1 + erf(v / √2)) / 2`, of 8 values, with erf as
/// tract's own kernel computes it (Abramowitz & Stegun 7.1.28: `1 − (1 +
/// a₁x + … + a₆x⁶)⁻¹⁶` for `x ≥ 0`, error under 3e-7), on the results
/// still in registers: the separate pass over each unit's output it
/// replaces cost 5 % of each GELU product's time.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn gelu(v: __m256) -> __m256 {
    const A: [f32; 6] = [0.070_523_08, 0.042_282_01, 0.009_270_527, 0.000_152_014_3, 0.000_276_567_2, 0.000_043_063_8];
    let x = _mm256_mul_ps(v, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let sign_bit = _mm256_set1_ps(-0.0);
    let a = _mm256_andnot_ps(sign_bit, x);
    let polynomial = A.iter().rev().skip(1).fold(_mm256_set1_ps(A[5]), |p, &c| _mm256_fmadd_ps(p, a, _mm256_set1_ps(c)));
    let p = _mm256_fmadd_ps(polynomial, a, _mm256_set1_ps(1.0));
    let p16 = [0; 4].iter().fold(p, |p, _| _mm256_mul_ps(p, p));
    let erf_abs = _mm256_sub_ps(_mm256_set1_ps(1.0), _mm256_div_ps(_mm256_set1_ps(1.0), p16));
    let erf = _mm256_or_ps(erf_abs, _mm256_and_ps(x, sign_bit));
    _mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(0.5)), _mm256_add_ps(erf, _mm256_set1_ps(1.0)))
}

/// One pass over [`DEPTH`] rows of the weight (fewer in the last).
#[cfg(target_arch = "x86_64")]
struct Pass {
    /// The row stride of `x`, and the rows of the weight in this pass.
    k: usize,
    depth: usize,
    /// Whether the output holds nothing yet (else partial sums to add
    /// to), and whether the epilogue follows.
    first: bool,
    last: bool,
    /// The output's width.
    n: usize,
}

/// One kernel call: up to [`ROWS`] rows of `x` against one panel.
#[cfg(target_arch = "x86_64")]
struct Tile {
    /// The first of the rows, at this pass's first column.
    x: *const f32,
    panel: *const f32,
    /// The first row's index in the output.
    row: usize,
    /// The panel's first column.
    column: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// Computes `R` rows of the tile over the pass's depth, adds the
    /// earlier passes' sums, applies `epilogue` after the last pass and
    /// writes them to `out`.
    #[inline(always)]
    unsafe fn run<const R: usize>(&self, pass: &Pass, epilogue: &Epilogue, y: *mut f32) {
        let acc = accumulate::<R>(self.x, pass.k, self.panel, pass.depth);
        let columns = PANEL.min(pass.n - self.column);
        for (i, row) in acc.iter().enumerate() {
            let whole = self.row + i;
            let destination = std::slice::from_raw_parts_mut(y.add(whole * pass.n + self.column), columns);
            let residual = epilogue.residual.map(|s| &s[whole * pass.n + self.column..][..columns]);
            let bias = epilogue.bias.map(|c| &c[self.column..][..columns]);
            if columns == PANEL {
                // Whole panels in vectors.
                let [mut low, mut high] = *row;
                let load = |values: &[f32], half: usize| _mm256_loadu_ps(values.as_ptr().add(8 * half));
                if !pass.first {
                    (low, high) = (_mm256_add_ps(low, load(destination, 0)), _mm256_add_ps(high, load(destination, 1)));
                }
                if pass.last {
                    let scale = _mm256_set1_ps(epilogue.row_scale.map_or(1.0, |r| r[whole]));
                    let (mut add_low, mut add_high) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                    for values in bias.into_iter().chain(residual) {
                        (add_low, add_high) = (_mm256_add_ps(add_low, load(values, 0)), _mm256_add_ps(add_high, load(values, 1)));
                    }
                    (low, high) = (_mm256_fmadd_ps(low, scale, add_low), _mm256_fmadd_ps(high, scale, add_high));
                    if epilogue.gelu {
                        (low, high) = (gelu(low), gelu(high));
                    }
                }
                _mm256_storeu_ps(destination.as_mut_ptr(), low);
                _mm256_storeu_ps(destination.as_mut_ptr().add(8), high);
                continue;
            }
            // The last panel's columns one by one (the activation on the
            // whole panel, padding included).
            let mut values = [0f32; PANEL];
            _mm256_storeu_ps(values.as_mut_ptr(), row[0]);
            _mm256_storeu_ps(values.as_mut_ptr().add(8), row[1]);
            let scale = epilogue.row_scale.map_or(1.0, |r| r[whole]);
            for (c, (o, v)) in destination.iter().zip(values.iter_mut()).enumerate() {
                let sum = if pass.first { *v } else { *o + *v };
                *v = match pass.last {
                    true => sum * scale + bias.map_or(0.0, |b| b[c]) + residual.map_or(0.0, |s| s[c]),
                    false => sum,
                };
            }
            if pass.last && epilogue.gelu {
                for half in values.chunks_exact_mut(8) {
                    _mm256_storeu_ps(half.as_mut_ptr(), gelu(_mm256_loadu_ps(half.as_ptr())));
                }
            }
            destination.copy_from_slice(&values[..columns]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x·W` in float64, row-major.
    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for p in 0..k {
                for j in 0..n {
                    y[i * n + j] += x[i * k + p] as f64 * w[p * n + j] as f64;
                }
            }
        }
        y
    }

    #[test]
    fn packing_puts_sixteen_columns_per_panel_and_pads_the_last() {
        let (k, n) = (2, 18);
        let w: Vec<f32> = (0..k * n).map(|v| v as f32).collect();
        let packed = PackedWeight::new(&w, k, n);
        assert_eq!(packed.panels.len(), 2 * k * PANEL);
        assert_eq!(&packed.panels[..PANEL], &w[..PANEL]);
        assert_eq!(&packed.panels[PANEL..2 * PANEL], &w[n..n + PANEL]);
        assert_eq!(&packed.panels[2 * PANEL..2 * PANEL + 4], &[16.0, 17.0, 0.0, 0.0]);
        assert_eq!(&packed.panels[3 * PANEL..3 * PANEL + 3], &[34.0, 35.0, 0.0]);
    }

    #[test]
    fn deep_weights_are_packed_depth_by_depth() {
        let (k, n) = (DEPTH + 1, 16);
        let w: Vec<f32> = (0..k * n).map(|v| v as f32).collect();
        let packed = PackedWeight::new(&w, k, n);
        // The first DEPTH rows as one panel, then the last row as another.
        assert_eq!(&packed.panels[..DEPTH * n], &w[..DEPTH * n]);
        assert_eq!(&packed.panels[DEPTH * n..], &w[DEPTH * n..]);
    }

    #[test]
    fn units_cover_the_output_once() {
        for (m, n, threads) in [(769, 1152, 2), (769, 384, 2), (7, 37, 4), (1, 1, 1), (3072, 200, 8), (5, 16, 0)] {
            let mut covered = vec![0u8; m * n];
            for unit in units(m, n, threads) {
                assert!(unit.columns.start % PANEL == 0 && (unit.rows.start % ROWS == 0), "{unit:?}");
                for i in unit.rows.clone() {
                    unit.columns.clone().for_each(|j| covered[i * n + j] += 1);
                }
            }
            assert!(covered.iter().all(|&c| c == 1), "{m}x{n} on {threads}");
        }
    }

    #[test]
    fn rows_and_epilogue_match_a_float64_product() {
        if !available() {
            eprintln!("skipped: no AVX2 + FMA, or AVX-512 (gemm's kernels run there)");
            return;
        }
        // 13 rows (two of six and a remainder), two passes over the inner
        // dimension (the second 29 deep: 7 steps of 4 in assembly and 1
        // after; or 3 deep: none in assembly), 37 columns (a partial panel).
        for (m, k, n) in [(13, DEPTH + 29, 37), (13, DEPTH + 3, 37)] {
            let x: Vec<f32> = (0..m * k).map(|v| ((v * 7) % 11) as f32 * 0.3 - 1.4).collect();
            let w: Vec<f32> = (0..k * n).map(|v| ((v * 5) % 13) as f32 * 0.1 - 0.6).collect();
            let r: Vec<f32> = (0..m).map(|v| 0.5 + v as f32 * 0.1).collect();
            let c: Vec<f32> = (0..n).map(|v| v as f32 * -0.2).collect();
            let s: Vec<f32> = (0..m * n).map(|v| (v % 3) as f32).collect();
            let packed = PackedWeight::new(&w, k, n);
            let expected = reference(&x, &w, m, k, n);
            let epilogue = Epilogue { row_scale: Some(&r), bias: Some(&c), residual: Some(&s), gelu: false };
            // Every unit of a split over three threads: rows of 6 (the last
            // 1), columns of 128 (one unit, partial).
            let mut out = vec![f32::NAN; m * n];
            for unit in units(m, n, 3) {
                // SAFETY: `out` is [m, n], the units disjoint.
                unsafe { product_unit(&x, &unit, &packed, epilogue, out.as_mut_ptr()) };
            }
            for (index, got) in out.iter().enumerate() {
                let (i, j) = (index / n, index % n);
                let want = expected[i * n + j] * r[i] as f64 + c[j] as f64 + s[i * n + j] as f64;
                assert!((*got as f64 - want).abs() < 1e-3, "({i}, {j}): {got} against {want}");
            }
            let mut plain = vec![f32::NAN; m * n];
            let whole = Unit { rows: 0..m, columns: 0..n };
            // SAFETY: as above, one unit.
            unsafe { product_unit(&x, &whole, &packed, Epilogue::default(), plain.as_mut_ptr()) };
            for (got, want) in plain.iter().zip(&expected) {
                assert!((*got as f64 - want).abs() < 1e-3, "{got} against {want}");
            }
            // The GELU in the epilogue against tract's erf on the plain
            // product (values from about -5 to 5, the last panel partial).
            let mut activated = vec![f32::NAN; m * n];
            // SAFETY: as above, one unit.
            unsafe { product_unit(&x, &whole, &packed, Epilogue { gelu: true, ..Epilogue::default() }, activated.as_mut_ptr()) };
            let mut erf: Vec<f32> = plain.iter().map(|v| v * std::f32::consts::FRAC_1_SQRT_2).collect();
            tract_linalg::routines::Func::Erf.ew_f32().unwrap().run(&mut erf).unwrap();
            for ((got, v), e) in activated.iter().zip(&plain).zip(&erf) {
                let want = v * 0.5 * (1.0 + e);
                assert!((got - want).abs() <= 1e-6 * (1.0 + want.abs()), "gelu({v}): {got} against {want}");
            }
        }
    }
}
