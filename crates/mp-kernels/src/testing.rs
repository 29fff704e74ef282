//! Helpers for testing kernels, shared by the CPU tests and every other backend's test suite.
//!
//! - [`Rng`], [`random_vec`], [`random_normal`], [`random_ids`]: deterministic data from a
//!   seed (SplitMix64), never all zero;
//! - [`quantize`]: values rounded to a dtype and widened back, so a float64 reference can be
//!   fed exactly the inputs a kernel sees;
//! - [`tolerance`], [`assert_close`], [`check_close`]: the project-wide comparison
//!   `|got - want| <= abs + |want| * k * eps(dtype)`, reporting the worst element;
//! - [`for_each_dtype`] and the [`test_per_dtype!`](crate::test_per_dtype) macro: one test
//!   body run for several dtypes.

use mp_dtype::DType;

/// The dtypes every kernel is tested in.
pub const TEST_DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

/// A small deterministic generator (SplitMix64): same seed, same stream, on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        (f64::from(lo) + (f64::from(hi) - f64::from(lo)) * self.unit()) as f32
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Uniform integer in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// Makes sure a non-empty vector is not all zero (a kernel that writes nothing must fail):
/// a zero first element is replaced.
fn never_all_zero(mut v: Vec<f32>) -> Vec<f32> {
    if v.first() == Some(&0.0) {
        v[0] = 0.25;
    }
    v
}

/// `len` values uniform in `[-1, 1)` from `seed`; never all zero.
pub fn random_vec(len: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    never_all_zero((0..len).map(|_| r.uniform(-1.0, 1.0)).collect())
}

/// `len` values normal with standard deviation `std` from `seed`; never all zero.
pub fn random_normal(len: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    never_all_zero((0..len).map(|_| std * r.normal()).collect())
}

/// `len` indices uniform in `[0, n)` from `seed` (`n > 0`).
pub fn random_ids(len: usize, n: u32, seed: u64) -> Vec<u32> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| r.below(n)).collect()
}

/// `x` rounded to nearest even in `dtype` and widened back to f32.
pub fn quantize(x: &[f32], dtype: DType) -> Vec<f32> {
    let mut bytes = vec![0u8; x.len() * dtype.size_in_bytes()];
    let mut out = vec![0.0f32; x.len()];
    // Lengths agree by construction; a failure here is a bug in mp-dtype.
    mp_dtype::encode(x, &mut bytes, dtype, &mp_dtype::EncodeOptions::default())
        .expect("encode of equal-length slices");
    mp_dtype::decode(&bytes, dtype, &mut out).expect("decode of equal-length slices");
    out
}

/// Machine epsilon of `dtype` (the gap between 1 and the next value), as f64.
pub fn eps(dtype: DType) -> f64 {
    f64::from(dtype.epsilon())
}

/// The default tolerance `(abs, k)` of a result stored in `dtype`: compare with
/// `|got - want| <= abs + |want| * k * eps(dtype)`.
///
/// It allows the final rounding of a low-precision output (half an ulp, plus one ulp of
/// difference between two backends that both round) and FP32 accumulation error of
/// reductions over up to a few thousand terms of values of order one; tests of longer
/// reductions or ill-conditioned ops pass their own tolerance to [`check_close`].
pub fn tolerance(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::F32 => (1e-5, 64.0),
        DType::F16 => (1e-4, 2.0),
        DType::BF16 => (1e-3, 2.0),
        DType::F8E4M3 | DType::F8E5M2 => (1e-2, 1.0),
    }
}

/// Compares `got` with `want` element by element with `|got - want| <= abs + |want| * k *
/// eps(dtype)` (NaN matches NaN, infinities must be equal); on failure the message names
/// `what`, the number of failing elements and the worst one (largest excess over its bound).
pub fn check_close<T: Copy + Into<f64>>(
    what: &str,
    got: &[f32],
    want: &[T],
    dtype: DType,
    abs: f64,
    k: f64,
) -> Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{what} [{dtype}]: got {} elements, want {}",
            got.len(),
            want.len()
        ));
    }
    let e = eps(dtype);
    let mut fails = 0usize;
    let mut worst: Option<(usize, f64, f64, f64)> = None; // (index, got, want, excess ratio)
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w): (f64, f64) = (g.into(), w.into());
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= abs + w.abs() * k * e
        };
        if !ok {
            fails += 1;
            let bound = abs + w.abs() * k * e;
            let ratio = if (g - w).is_finite() {
                (g - w).abs() / bound
            } else {
                f64::INFINITY
            };
            if worst.is_none_or(|(_, _, _, r)| ratio > r || r.is_nan()) {
                worst = Some((i, g, w, ratio));
            }
        }
    }
    match worst {
        None => Ok(()),
        Some((i, g, w, r)) => Err(format!(
            "{what} [{dtype}]: {fails} of {} elements outside |d| <= {abs:e} + |want| * {k} * \
             {e:e}; worst at [{i}]: got {g:e}, want {w:e}, diff {:e} ({r:.3} x its bound)",
            got.len(),
            (g - w).abs()
        )),
    }
}

/// [`check_close`] with the [`tolerance`] of `dtype`, panicking with its report on failure.
#[track_caller]
pub fn assert_close<T: Copy + Into<f64>>(what: &str, got: &[f32], want: &[T], dtype: DType) {
    let (abs, k) = tolerance(dtype);
    if let Err(msg) = check_close(what, got, want, dtype, abs, k) {
        panic!("{msg}");
    }
}

/// [`check_close`] with an explicit tolerance, panicking with its report on failure.
#[track_caller]
pub fn assert_close_tol<T: Copy + Into<f64>>(
    what: &str,
    got: &[f32],
    want: &[T],
    dtype: DType,
    abs: f64,
    k: f64,
) {
    if let Err(msg) = check_close(what, got, want, dtype, abs, k) {
        panic!("{msg}");
    }
}

/// Runs `f` once per dtype, all of them even when some fail, then panics listing every
/// failing dtype with its message.
#[track_caller]
pub fn for_each_dtype(dtypes: &[DType], mut f: impl FnMut(DType)) {
    let mut failures = Vec::new();
    for &dt in dtypes {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(dt)));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string());
            failures.push(format!("[{dt}] {msg}"));
        }
    }
    if !failures.is_empty() {
        panic!(
            "failed for {} dtype(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

/// Declares one `#[test]` per dtype for a function `fn name(dtype: DType)`: a module `name`
/// holding tests named after each dtype (`name::f32`, `name::bf16`, ...).
///
/// ```
/// use mp_kernels::DType;
///
/// fn storage_is_narrower_than_f32(dtype: DType) {
///     assert!(dtype.size_in_bytes() <= 4);
/// }
/// mp_kernels::test_per_dtype!(storage_is_narrower_than_f32: f32, f16, bf16);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! test_per_dtype {
    ($name:ident: $($dt:ident),+ $(,)?) => {
        mod $name {
            $(
                #[test]
                fn $dt() {
                    let dtype: $crate::DType = stringify!($dt)
                        .parse()
                        .expect("a dtype name");
                    super::$name(dtype)
                }
            )+
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_deterministic_and_never_all_zero() {
        assert_eq!(random_vec(100, 7), random_vec(100, 7));
        assert_ne!(random_vec(100, 7), random_vec(100, 8));
        assert!(random_vec(1, 0).iter().all(|&v| v != 0.0));
        assert!(random_vec(1000, 3).iter().all(|v| (-1.0..1.0).contains(v)));
        assert!(random_ids(1000, 17, 1).iter().all(|&i| i < 17));
        let n = random_normal(10_000, 2.0, 5);
        let var = n.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / n.len() as f64;
        assert!((var - 4.0).abs() < 0.3, "variance {var}");
    }

    #[test]
    fn check_close_reports_the_worst_element() {
        let want = [1.0f64, 2.0, 3.0, f64::NAN];
        assert!(
            check_close(
                "ok",
                &[1.0, 2.0, 3.0, f32::NAN],
                &want,
                DType::F32,
                0.0,
                1.0
            )
            .is_ok()
        );
        let err = check_close(
            "x",
            &[1.0, 2.5, 3.1, f32::NAN],
            &want,
            DType::F32,
            1e-3,
            1.0,
        )
        .unwrap_err();
        assert!(
            err.contains("2 of 4") && err.contains("worst at [1]"),
            "{err}"
        );
        assert!(check_close("n", &[1.0], &[f64::NAN], DType::F32, 1.0, 1.0).is_err());
        assert!(check_close("len", &[1.0], &want, DType::F32, 1.0, 1.0).is_err());
    }

    #[test]
    fn quantize_rounds_to_the_dtype() {
        let x = [1.0 + 1.0 / 512.0, 0.1];
        assert_eq!(quantize(&x, DType::F32), x.to_vec());
        assert_eq!(quantize(&x, DType::BF16)[0], 1.0);
        assert!(eps(DType::BF16) > eps(DType::F16) && eps(DType::F16) > eps(DType::F32));
    }

    fn passes_for_wide_types(dtype: DType) {
        assert!(dtype.size_in_bytes() >= 2);
    }
    crate::test_per_dtype!(passes_for_wide_types: f32, f16, bf16);

    #[test]
    fn for_each_dtype_names_every_failure() {
        let r = std::panic::catch_unwind(|| {
            for_each_dtype(&DType::ALL, |dt| {
                assert!(dt.size_in_bytes() > 1, "too narrow")
            })
        });
        let msg = r
            .unwrap_err()
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(
            msg.contains("2 dtype(s)") && msg.contains("[f8e4m3]"),
            "{msg}"
        );
    }
}
