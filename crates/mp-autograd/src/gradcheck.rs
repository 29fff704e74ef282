//! Finite-difference gradient checks of tape ops, built in or user-defined, on the CPU oracle.
//!
//! A [`GradCheck`] puts an op's inputs in a parameter arena (random values), takes the
//! analytic gradient of `sum(op(inputs) * r)` (random `r`; a scalar output is used as it is)
//! through the tape, and compares it element by element with central differences of the same
//! objective evaluated in f64 on the host from FP32 forward passes (step `1e-2`), within
//! `1e-3 + 5e-3 |numeric|` per element (large inputs are sampled: 24 elements each).
//!
//! ```text
//! let check = GradCheck::new(&[("x", &[4, 6])], 1);
//! let worst = check.run("square", |tape, p| tape.apply(Square, &[p[0]]))?;  // Err: a message
//! ```

use mp_dtype::DType;
use mp_kernels::cpu::CpuBackend;
use mp_kernels::prelude::*;

use crate::{ParamLayout, Result, Tape, Tensor};

/// The backend the checks run on.
pub type Cpu = CpuBackend;

/// SplitMix64 values, approximately standard normal (sum of uniforms).
pub fn randn(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| ((0..4).map(|_| next()).sum::<f64>() - 2.0) as f32 * 1.7)
        .collect()
}

/// A gradient check over named inputs (see the module docs).
pub struct GradCheck {
    layout: ParamLayout,
    values: Vec<f32>,
}

impl GradCheck {
    /// Inputs of these names and shapes, filled with random values from `seed`.
    pub fn new(params: &[(&str, &[usize])], seed: u64) -> Self {
        let mut layout = ParamLayout::new();
        for (name, shape) in params {
            layout.push(*name, shape);
        }
        let values = randn(seed, layout.numel());
        GradCheck { layout, values }
    }

    /// The inputs' values, back to back in declaration order (to shift or scale them).
    pub fn values_mut(&mut self) -> &mut [f32] {
        &mut self.values
    }

    fn params(&self, tape: &mut Tape<'_, Cpu>) -> Result<Vec<Tensor>> {
        self.layout
            .entries()
            .iter()
            .map(|e| tape.param(e))
            .collect()
    }

    /// Checks `build` (the inputs as tensors, in declaration order -> the op's output).
    /// Returns the worst error as a fraction of its tolerance, or a message naming the first
    /// element out of tolerance.
    pub fn run(
        &self,
        what: &str,
        build: impl for<'a> Fn(&mut Tape<'a, Cpu>, &[Tensor]) -> Result<Tensor>,
    ) -> std::result::Result<f64, String> {
        self.run_with(what, &(), |t, p, _| build(t, p))
    }

    /// [`GradCheck::run`] with data `env` the op borrows for the tape's life (token ids,
    /// targets).
    pub fn run_with<E: ?Sized>(
        &self,
        what: &str,
        env: &E,
        build: impl for<'a> Fn(&mut Tape<'a, Cpu>, &[Tensor], &'a E) -> Result<Tensor>,
    ) -> std::result::Result<f64, String> {
        let fail = |e: crate::AutogradError| format!("{what}: {e}");
        let h = 1e-2f32;
        let analytic = self.analytic(env, &build).map_err(fail)?;
        let mut worst = 0.0f64;
        for e in self.layout.entries() {
            let stride = (e.numel() / 24).max(1);
            for i in (e.offset..e.offset + e.numel()).step_by(stride) {
                let mut v = self.values.clone();
                v[i] += h;
                let up = self.objective(&v, env, &build).map_err(fail)?;
                v[i] -= 2.0 * h;
                let down = self.objective(&v, env, &build).map_err(fail)?;
                let numeric = (up - down) / (2.0 * h as f64);
                let a = analytic[i] as f64;
                let err = (a - numeric).abs() / (1e-3 + 5e-3 * numeric.abs());
                worst = worst.max(err);
                if err > 1.0 {
                    return Err(format!(
                        "{what}: d/d {}[{}]: analytic {a}, numeric {numeric}",
                        e.name,
                        i - e.offset
                    ));
                }
            }
        }
        if analytic.iter().all(|&g| g == 0.0) {
            return Err(format!(
                "{what}: the gradient is all zero: nothing was checked"
            ));
        }
        Ok(worst)
    }

    /// The objective `sum(y * r)` in f64 from an FP32 forward pass with `values`.
    fn objective<E: ?Sized>(
        &self,
        values: &[f32],
        env: &E,
        build: &impl for<'a> Fn(&mut Tape<'a, Cpu>, &[Tensor], &'a E) -> Result<Tensor>,
    ) -> Result<f64> {
        let be = Cpu::new();
        let master = be.upload_f32(values, DType::F32)?;
        let mut tape = Tape::new(&be).with_params(&master).with_rng(7, 0);
        // gradients enabled, as in the analytic pass, so random ops draw the same masks
        let ps = self.params(&mut tape)?;
        let y = build(&mut tape, &ps, env)?;
        let y = tape.to_vec_f32(y)?;
        let r = if y.len() == 1 {
            vec![1.0]
        } else {
            randn(99, y.len())
        };
        Ok(y.iter().zip(&r).map(|(&y, &r)| y as f64 * r as f64).sum())
    }

    /// The analytic gradient of the objective through the tape.
    fn analytic<E: ?Sized>(
        &self,
        env: &E,
        build: &impl for<'a> Fn(&mut Tape<'a, Cpu>, &[Tensor], &'a E) -> Result<Tensor>,
    ) -> Result<Vec<f32>> {
        let be = Cpu::new();
        let master = be.upload_f32(&self.values, DType::F32)?;
        let mut grads = be.zeros(DType::F32, self.layout.numel())?;
        let mut tape = Tape::new(&be).with_params(&master).with_rng(7, 0);
        let ps = self.params(&mut tape)?;
        let y = build(&mut tape, &ps, env)?;
        let shape = tape.shape(y)?.to_vec();
        let loss = if shape.is_empty() {
            y
        } else {
            let n: usize = shape.iter().product();
            let r = be.upload_f32(&randn(99, n), DType::F32)?;
            let r = tape.input(r, &shape)?;
            let yr = tape.mul(y, r)?;
            tape.sum(yr)?
        };
        tape.backward(loss, 1.0, &mut grads)?;
        Ok(be.download_f32(grads.view())?)
    }
}

/// Panics with the check's message unless it passed (for tests).
#[track_caller]
pub fn assert_ok(r: std::result::Result<f64, String>) {
    match r {
        Ok(worst) => assert!(worst <= 1.0, "worst error {worst} of tolerance"),
        Err(msg) => panic!("{msg}"),
    }
}

#[cfg(test)]
mod tests;
