//! Causal self-attention forward and backward against a float64 reference.

use crate::common::{cpu, down, input, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{
    TEST_DTYPES, assert_close, assert_close_tol, eps, for_each_dtype, tolerance,
};
use mp_kernels::{Attention, CpuBuffer, DType};

/// (out, probs) of causal attention in f64.
pub fn attention_ref(qkv: &[f64], s: &Attention) -> (Vec<f64>, Vec<f64>) {
    let (b, t, c, nh) = (s.b, s.t, s.c, s.heads);
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let mut out = vec![0.0; b * t * c];
    let mut probs = vec![0.0; b * nh * t * t];
    let at = |bi: usize, i: usize, part: usize, h: usize, d: usize| {
        qkv[(bi * t + i) * 3 * c + part * c + h * hs + d]
    };
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..t {
                let sc: Vec<f64> = (0..=i)
                    .map(|j| {
                        scale
                            * (0..hs)
                                .map(|d| at(bi, i, 0, h, d) * at(bi, j, 1, h, d))
                                .sum::<f64>()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|v| (v - m).exp()).sum();
                for j in 0..=i {
                    let p = (sc[j] - m).exp() / z;
                    probs[((bi * nh + h) * t + i) * t + j] = p;
                    for d in 0..hs {
                        out[(bi * t + i) * c + h * hs + d] += p * at(bi, j, 2, h, d);
                    }
                }
            }
        }
    }
    (out, probs)
}

/// dqkv of causal attention in f64 for upstream gradient `dout`.
pub fn attention_backward_ref(dout: &[f64], qkv: &[f64], s: &Attention) -> Vec<f64> {
    let (b, t, c, nh) = (s.b, s.t, s.c, s.heads);
    let hs = c / nh;
    let scale = 1.0 / (hs as f64).sqrt();
    let (_, probs) = attention_ref(qkv, s);
    let mut d = vec![0.0; qkv.len()];
    let idx = |bi: usize, i: usize, part: usize, h: usize, dd: usize| {
        (bi * t + i) * 3 * c + part * c + h * hs + dd
    };
    for bi in 0..b {
        for h in 0..nh {
            for i in 0..t {
                let p = |j: usize| probs[((bi * nh + h) * t + i) * t + j];
                let go = |dd: usize| dout[(bi * t + i) * c + h * hs + dd];
                let dp: Vec<f64> = (0..=i)
                    .map(|j| (0..hs).map(|dd| go(dd) * qkv[idx(bi, j, 2, h, dd)]).sum())
                    .collect();
                let sum: f64 = (0..=i).map(|j| p(j) * dp[j]).sum();
                for j in 0..=i {
                    let ds = p(j) * (dp[j] - sum) * scale;
                    for dd in 0..hs {
                        d[idx(bi, j, 2, h, dd)] += p(j) * go(dd);
                        d[idx(bi, i, 0, h, dd)] += ds * qkv[idx(bi, j, 1, h, dd)];
                        d[idx(bi, j, 1, h, dd)] += ds * qkv[idx(bi, i, 0, h, dd)];
                    }
                }
            }
        }
    }
    d
}

const SHAPES: [Attention; 3] = [
    Attention {
        b: 1,
        t: 1,
        c: 2,
        heads: 1,
    },
    Attention {
        b: 2,
        t: 5,
        c: 12,
        heads: 3,
    },
    Attention {
        b: 3,
        t: 64,
        c: 128,
        heads: 4,
    },
];

/// Checks an attention forward + backward (`fwd`, `bwd`: the CPU kernel or the GEMM
/// formulation run on the CPU's ops) against the float64 reference for every test dtype,
/// shape and probabilities dtype. `gemm` adds the GEMM path's extra rounding of `P` and `dS` to
/// the compute dtype to the tolerance.
fn check_attention(
    gemm: bool,
    fwd: impl Fn(&CpuBuffer, &Attention, &mut CpuBuffer, &mut CpuBuffer),
    bwd: impl Fn(&CpuBuffer, &CpuBuffer, &CpuBuffer, &Attention, &mut CpuBuffer),
) {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for s in SHAPES {
            let n3 = s.b * s.t * 3 * s.c;
            let (qkv, qr) = input(n3, 71, dt);
            let qb = up(&qkv, dt);
            let (want_out, want_p) = attention_ref(&qr, &s);
            for dp in [DType::F32, dt] {
                let mut out = up(&vec![f32::NAN; s.b * s.t * s.c], dt);
                let mut probs = up(&vec![f32::NAN; s.b * s.heads * s.t * s.t], dp);
                fwd(&qb, &s, &mut out, &mut probs);
                let what = format!("attention (gemm: {gemm}) {s:?} probs {dp}");
                assert_close(&format!("{what} probs"), &down(&probs), &want_p, dp);
                // Rounded probabilities perturb out by at most eps(probs)/2 * max|v|.
                let (abs, k) = tolerance(dt);
                let pe = if gemm { eps(dp).max(eps(dt)) } else { eps(dp) };
                let got = down(&out);
                assert_close_tol(&format!("{what} out"), &got, &want_out, dt, abs + pe, k);

                let (g, gr) = input(s.b * s.t * s.c, 72, dt);
                let (d0, d0r) = input(n3, 73, dt);
                let mut dqkv = up(&d0, dt);
                bwd(&up(&g, dt), &qb, &probs, &s, &mut dqkv);
                let want: Vec<f64> = attention_backward_ref(&gr, &qr, &s)
                    .iter()
                    .zip(&d0r)
                    .map(|(a, b)| a + b)
                    .collect();
                let abs = abs + 4.0 * pe * (s.t as f64).sqrt();
                assert_close_tol(&format!("{what} dqkv"), &down(&dqkv), &want, dt, abs, k);
            }
        }
    });
}

#[test]
fn attention_forward_backward() {
    check_attention(
        false,
        |q, s, o, p| {
            cpu()
                .attention(q.view(), s, o.view_mut(), p.view_mut())
                .unwrap()
        },
        |g, q, p, s, d| {
            let be = cpu();
            be.attention_backward(g.view(), q.view(), p.view(), s, d.view_mut())
                .unwrap()
        },
    );
}

/// The GEMM formulation the device backends use (`mp_kernels::gemm_attention`, the trait's
/// default), run on the CPU backend's ops.
#[test]
fn gemm_attention_forward_backward() {
    use mp_kernels::gemm_attention::{backward, forward};
    check_attention(
        true,
        |q, s, o, p| forward(&cpu(), q.view(), s, o.view_mut(), p.view_mut()).unwrap(),
        |g, q, p, s, d| backward(&cpu(), g.view(), q.view(), p.view(), s, d.view_mut()).unwrap(),
    );
}

#[test]
fn split_and_merge_heads_round_trip_every_part() {
    use mp_kernels::Heads;
    let s = SHAPES[1];
    for_each_dtype(&TEST_DTYPES, |dt| {
        let n3 = s.b * s.t * 3 * s.c;
        let (qkv, _) = input(n3, 5, dt);
        let src = up(&qkv, dt);
        let mut back = up(&vec![f32::NAN; n3], dt);
        for part in 0..3 {
            let l = Heads::qkv(&s, part);
            let mut hm = CpuBuffer::zeros(DType::F32, l.head_major_len());
            cpu().split_heads(src.view(), &l, hm.view_mut()).unwrap();
            let hmv = down(&hm);
            // element d of head h at position i of batch n
            for (idx, &v) in hmv.iter().enumerate() {
                let (d, r) = (idx % l.hs, idx / l.hs);
                let (i, r) = (r % s.t, r / s.t);
                let (h, n) = (r % s.heads, r / s.heads);
                let want = qkv[(n * s.t + i) * l.row + l.col + h * l.hs + d];
                assert_eq!(v.to_bits(), want.to_bits(), "{dt} part {part} at {idx}");
            }
            cpu()
                .merge_heads(hm.view(), &l, back.view_mut(), false)
                .unwrap();
        }
        let got = down(&back);
        assert!(
            got.iter()
                .zip(&qkv)
                .all(|(a, b)| a.to_bits() == b.to_bits())
        );
        // accumulate: every element of the part doubles, the rest is untouched
        let l = Heads::qkv(&s, 1);
        let mut hm = CpuBuffer::zeros(dt, l.head_major_len());
        cpu().split_heads(src.view(), &l, hm.view_mut()).unwrap();
        cpu()
            .merge_heads(hm.view(), &l, back.view_mut(), true)
            .unwrap();
        for (j, (&g, &w)) in down(&back).iter().zip(&qkv).enumerate() {
            let in_part = (l.col..l.col + s.c).contains(&(j % l.row));
            let want = if in_part { 2.0 * w } else { w };
            assert_eq!(g, want, "{dt} accumulate at {j}");
        }
        // a layout that does not fit is a shape error naming it
        let bad = Heads {
            col: 2 * s.c + 1,
            ..l
        };
        let e = cpu()
            .split_heads(src.view(), &bad, hm.view_mut())
            .unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    });
}
