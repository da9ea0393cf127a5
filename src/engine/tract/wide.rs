//! causeseg's own per-value loops on the widest vector instructions the
//! CPU has. The crate is compiled for the baseline of its target (SSE2 on
//! x86-64), so the compiler vectorises such loops 4 floats wide; tract's
//! own kernels pick AVX-512 or AVX2 at run time, and [`vectorised`] does
//! the same for a loop: it runs it inside a function compiled for those
//! instructions, into which the loop is inlined. Used where it was
//! measured to pay (release profiles at 448x336): the activation
//! quantization (`quantize`), 2.8 → 1.1 ms per int8 frame, and the folded
//! LayerNorms' scale (`float_ops`), 2.25 → 1.90 ms per float frame; around
//! the fused int8 ops' row loops it changed nothing measurable.

/// Runs `f` compiled for AVX-512 (or AVX2 + FMA) when this CPU has it,
/// else as it is.
#[inline]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") && has!("fma") {
            // SAFETY: the instructions were just detected.
            return unsafe { avx512(f) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
