//! Causal self-attention forward and backward against a float64 reference.

use crate::common::{cpu, down, input, up};
use mp_kernels::testing::{
    TEST_DTYPES, assert_close, assert_close_tol, eps, for_each_dtype, tolerance,
};
use mp_kernels::{Attention, Backend, BufferExt, CpuBuffer, DType};

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

#[test]
fn attention_forward_backward() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for s in SHAPES {
            let n3 = s.b * s.t * 3 * s.c;
            let (qkv, qr) = input(n3, 71, dt);
            let qb = up(&qkv, dt);
            let (want_out, want_p) = attention_ref(&qr, &s);
            for dp in [DType::F32, dt] {
                let mut out = CpuBuffer::zeros(dt, s.b * s.t * s.c);
                let mut probs = CpuBuffer::zeros(dp, s.b * s.heads * s.t * s.t);
                cpu()
                    .attention(qb.view(), &s, out.view_mut(), probs.view_mut())
                    .unwrap();
                let what = format!("attention {s:?} probs {dp}");
                assert_close(&format!("{what} probs"), &down(&probs), &want_p, dp);
                // Rounded probabilities perturb out by at most eps(probs)/2 * max|v|.
                let (abs, k) = tolerance(dt);
                assert_close_tol(
                    &format!("{what} out"),
                    &down(&out),
                    &want_out,
                    dt,
                    abs + eps(dp),
                    k,
                );

                let (g, gr) = input(s.b * s.t * s.c, 72, dt);
                let (d0, d0r) = input(n3, 73, dt);
                let mut dqkv = up(&d0, dt);
                cpu()
                    .attention_backward(
                        up(&g, dt).view(),
                        qb.view(),
                        probs.view(),
                        &s,
                        dqkv.view_mut(),
                    )
                    .unwrap();
                let want: Vec<f64> = attention_backward_ref(&gr, &qr, &s)
                    .iter()
                    .zip(&d0r)
                    .map(|(a, b)| a + b)
                    .collect();
                let abs = abs + 4.0 * eps(dp) * (s.t as f64).sqrt();
                assert_close_tol(&format!("{what} dqkv"), &down(&dqkv), &want, dt, abs, k);
            }
        }
    });
}
