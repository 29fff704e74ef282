//! Branch-free f32 math the kernels' inner loops are built from, written so that LLVM
//! vectorises the loops that call it, and [`simd_dispatch!`] to compile such a loop again
//! for AVX-512F and for AVX2+FMA, chosen at run time.
//!
//! `exp` follows Cephes `expf` (Cody-Waite reduction, degree-6 polynomial): within 2 ulp of
//! the correctly rounded result over its clamped range. GELU is computed as
//! `x * sigmoid(2u)`, which equals `0.5 x (1 + tanh(u))` exactly in real arithmetic and has no
//! cancellation for negative `x` (where `1 + tanh(u)` would lose every bit).

/// Defines `fn $name(args)` that runs `$body` compiled for AVX-512F (with AVX2 and FMA) when
/// the CPU has it, else for AVX2+FMA when the CPU has both (detected once, cached by std), and
/// for the baseline target otherwise. The copies compute the same values (LLVM contracts no
/// multiply-add into an FMA on its own; the body asks for none): they differ in register
/// width only. The body must be safe code; only the calls into the feature-enabled copies are
/// `unsafe`.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

/// Defines `fn $name(args)` that runs `$body::<true>` (fused multiply-adds) compiled for
/// AVX-512F when the CPU has it, else for AVX2+FMA when the CPU has both, and
/// `$body::<false>` for the baseline target otherwise (as `simd_dispatch`, with the FMA choice
/// made visible to the body). The two FMA copies compute the same values: they differ only in
/// the register width LLVM maps the body's fixed-size lane arrays to.
macro_rules! fma_dispatch {
    ($(#[$m:meta])* fn $name:ident => $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$m])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    $body::<true>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $body::<true>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body::<false>($($arg),*)
        }
    };
}
pub(crate) use fma_dispatch;

/// `sqrt(2 / pi)`.
pub(crate) const GELU_S: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
pub(crate) const GELU_C: f32 = 0.044_715;

simd_dispatch! {
    /// `e^(x[i] - m)` into `o[i]`.
    pub(crate) fn exp_sub(x: &[f32], m: f32, o: &mut [f32]) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = exp(v - m);
        }
    }
}

/// `e^x` for `x` in `[-87.3, 88.3]`; above, the input is clamped; below, the result is 0
/// (`e^x` is a subnormal there), so `exp(-inf)` is exactly 0 and a masked logit (-inf) gets
/// exactly no probability. NaN propagates.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    exp_with::<false>(x)
}

/// `a * b + c`: one rounding (a fused multiply-add) when `F`, two otherwise.
#[inline(always)]
pub(crate) fn fma<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F { a.mul_add(b, c) } else { a * b + c }
}

/// [`exp`] with its multiply-adds fused when `F` (for bodies compiled for FMA units by
/// [`fma_dispatch`]); `exp_with::<false>` is [`exp`].
#[inline(always)]
pub(crate) fn exp_with<const F: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(-87.3, 88.3);
    let y = fma::<F>(xc, LOG2E, MAGIC);
    let n = y - MAGIC;
    let ni = (y.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = fma::<F>(-n, C2, fma::<F>(-n, C1, xc));
    let mut p = 1.987_569_1e-4f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = fma::<F>(p, r, c);
    }
    let e = fma::<F>(p * r, r, r) + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    // `clamp` maps NaN to NaN, and so does every operation after it (NaN < x is false).
    let v = e * scale;
    if x < -87.3 { 0.0 } else { v }
}

/// GELU, tanh approximation: `0.5 x (1 + tanh(u))` computed as `x / (1 + e^(-2u))`.
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    let u = GELU_S * (x + GELU_C * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

/// The exact derivative of [`gelu`]: with `sigma = sigmoid(2u)`,
/// `sigma + 2 x sigma (1 - sigma) u'(x)`.
#[inline(always)]
pub(crate) fn gelu_grad(x: f32) -> f32 {
    let u = GELU_S * (x + GELU_C * x * x * x);
    let e = exp(-2.0 * u);
    let sigma = 1.0 / (1.0 + e);
    let one_minus = e * sigma;
    sigma + 2.0 * x * sigma * one_minus * GELU_S * (1.0 + 3.0 * GELU_C * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let ulp = f64::from(f32::EPSILON) * want;
            for got in [exp(x), exp_with::<true>(x)] {
                worst = worst.max((f64::from(got) - want).abs() / ulp);
            }
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
        assert!(exp_with::<true>(f32::NAN).is_nan());
    }

    #[test]
    fn gelu_matches_the_tanh_form() {
        for i in -2000..2000 {
            let x = i as f32 * 0.005;
            let xd = f64::from(x);
            let (s, c) = (f64::from(GELU_S), f64::from(GELU_C));
            let u = s * (xd + c * xd * xd * xd);
            // 0.5 x (1 + tanh u), in the form without cancellation (f64's own `1 + tanh u`
            // is 0 below x = -9).
            let want = xd / (1.0 + (-2.0 * u).exp());
            let got = f64::from(gelu(x));
            // Rounding of u in f32 is amplified by e^(-2u)'s condition number |2u|.
            let rel = 1e-6 * (1.0 + 2.0 * u.abs());
            assert!(
                (got - want).abs() <= rel * want.abs(),
                "gelu({x}) = {got}, want {want}"
            );
            let t = u.tanh();
            let dwant = 0.5 * (1.0 + t) + 0.5 * xd * (1.0 - t * t) * s * (1.0 + 3.0 * c * xd * xd);
            let dgot = f64::from(gelu_grad(x));
            assert!(
                (dgot - dwant).abs() <= 1e-6,
                "gelu'({x}) = {dgot}, want {dwant}"
            );
        }
        assert!(gelu(-100.0).abs() < 1e-30);
        assert_eq!(gelu(100.0), 100.0);
        assert!(gelu_grad(-100.0).abs() < 1e-30);
        assert_eq!(gelu_grad(100.0), 1.0);
    }
}
