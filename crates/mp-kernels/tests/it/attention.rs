//! Causal (grouped-query) self-attention forward and backward against a float64 reference.

use crate::common::{cpu, down, input, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{
    TEST_DTYPES, assert_close, assert_close_tol, eps, for_each_dtype, tolerance,
};
use mp_kernels::{Attention, CpuBuffer, DType};

/// Element `d` of head `h` of part `part` (0 = q, 1 = k, 2 = v) at position `i` of batch `n`
/// in packed qkv rows.
fn at(s: &Attention, n: usize, i: usize, part: usize, h: usize, d: usize) -> usize {
    let hs = s.head_size();
    let col = match part {
        0 => h * hs,
        1 => s.c + h * hs,
        _ => s.c + s.kv_width() + h * hs,
    };
    (n * s.t + i) * s.qkv_row() + col + d
}

/// The causal probabilities of query head `h` of batch `n` in f64: `p[i][j]`, `j <= i`, and
/// each row's log-sum-exp.
fn probs_ref(qkv: &[f64], s: &Attention, n: usize, h: usize) -> (Vec<Vec<f64>>, Vec<f64>) {
    let hs = s.head_size();
    let kvh = h / s.group();
    let scale = 1.0 / (hs as f64).sqrt();
    let mut p = Vec::new();
    let mut lse = Vec::new();
    for i in 0..s.t {
        let sc: Vec<f64> = (0..=i)
            .map(|j| {
                let dot: f64 = (0..hs)
                    .map(|d| qkv[at(s, n, i, 0, h, d)] * qkv[at(s, n, j, 1, kvh, d)])
                    .sum();
                scale * dot
            })
            .collect();
        let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = sc.iter().map(|v| (v - m).exp()).sum();
        p.push(sc.iter().map(|v| (v - m).exp() / z).collect());
        lse.push(m + z.ln());
    }
    (p, lse)
}

/// (out, lse) of causal attention in f64.
pub fn attention_ref(qkv: &[f64], s: &Attention) -> (Vec<f64>, Vec<f64>) {
    let hs = s.head_size();
    let mut out = vec![0.0; s.b * s.t * s.c];
    let mut lse = Vec::new();
    for n in 0..s.b {
        for h in 0..s.heads {
            let (p, l) = probs_ref(qkv, s, n, h);
            lse.extend(l);
            for (i, row) in p.iter().enumerate() {
                for (j, &pj) in row.iter().enumerate() {
                    for d in 0..hs {
                        let v = qkv[at(s, n, j, 2, h / s.group(), d)];
                        out[(n * s.t + i) * s.c + h * hs + d] += pj * v;
                    }
                }
            }
        }
    }
    (out, lse)
}

/// dqkv of causal attention in f64 for upstream gradient `dout`.
pub fn attention_backward_ref(dout: &[f64], qkv: &[f64], s: &Attention) -> Vec<f64> {
    let hs = s.head_size();
    let scale = 1.0 / (hs as f64).sqrt();
    let mut d = vec![0.0; qkv.len()];
    for n in 0..s.b {
        for h in 0..s.heads {
            let kvh = h / s.group();
            let (p, _) = probs_ref(qkv, s, n, h);
            for (i, p) in p.iter().enumerate() {
                let go = |dd: usize| dout[(n * s.t + i) * s.c + h * hs + dd];
                let dp: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..hs)
                            .map(|dd| go(dd) * qkv[at(s, n, j, 2, kvh, dd)])
                            .sum()
                    })
                    .collect();
                let sum: f64 = (0..=i).map(|j| p[j] * dp[j]).sum();
                for j in 0..=i {
                    let ds = p[j] * (dp[j] - sum) * scale;
                    for dd in 0..hs {
                        d[at(s, n, j, 2, kvh, dd)] += p[j] * go(dd);
                        d[at(s, n, i, 0, h, dd)] += ds * qkv[at(s, n, j, 1, kvh, dd)];
                        d[at(s, n, j, 1, kvh, dd)] += ds * qkv[at(s, n, i, 0, h, dd)];
                    }
                }
            }
        }
    }
    d
}

/// Shapes covering one token, odd sizes, several key tiles with a partial last one, a
/// partial last query block, head sizes below, at and between multiples of the kernel's
/// register block (2, 4, 6, 16, 40), and grouped-query attention (2 and 4 query heads per
/// key/value head), and a head size of 128 (the tensor-core kernels' widest) with groups.
const SHAPES: [Attention; 6] = [
    Attention {
        b: 1,
        t: 1,
        c: 2,
        heads: 1,
        kv_heads: 1,
    },
    Attention {
        b: 2,
        t: 5,
        c: 12,
        heads: 3,
        kv_heads: 3,
    },
    Attention {
        b: 2,
        t: 150,
        c: 64,
        heads: 4,
        kv_heads: 4,
    },
    Attention {
        b: 2,
        t: 70,
        c: 80,
        heads: 2,
        kv_heads: 1,
    },
    Attention {
        b: 1,
        t: 9,
        c: 24,
        heads: 4,
        kv_heads: 1,
    },
    Attention {
        b: 1,
        t: 130,
        c: 512,
        heads: 4,
        kv_heads: 2,
    },
];

/// Checks an attention forward + backward (`fwd`, `bwd`: the CPU kernel or the GEMM
/// formulation run on the CPU's ops) against the float64 reference for every test dtype
/// and shape. `gemm` adds the GEMM path's rounding of `P` and `dS` to the compute dtype to
/// the tolerance.
fn check_attention(
    gemm: bool,
    fwd: impl Fn(&CpuBuffer, &Attention, &mut CpuBuffer, &mut CpuBuffer),
    bwd: impl Fn(&CpuBuffer, &CpuBuffer, &CpuBuffer, &CpuBuffer, &Attention, &mut CpuBuffer),
) {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for s in SHAPES {
            let n3 = s.b * s.t * s.qkv_row();
            let (qkv, qr) = input(n3, 71, dt);
            let qb = up(&qkv, dt);
            let (want_out, want_lse) = attention_ref(&qr, &s);
            let mut out = up(&vec![f32::NAN; s.b * s.t * s.c], dt);
            let mut lse = up(&vec![f32::NAN; s.lse_len()], DType::F32);
            fwd(&qb, &s, &mut out, &mut lse);
            let what = format!("attention (gemm: {gemm}) {s:?} {dt}");
            assert_close(&format!("{what} lse"), &down(&lse), &want_lse, DType::F32);
            let (abs, k) = tolerance(dt);
            let pe = if gemm { eps(dt) } else { 0.0 };
            let got = down(&out);
            assert_close_tol(&format!("{what} out"), &got, &want_out, dt, abs + pe, k);

            let (g, gr) = input(s.b * s.t * s.c, 72, dt);
            let (d0, d0r) = input(n3, 73, dt);
            let mut dqkv = up(&d0, dt);
            bwd(&up(&g, dt), &qb, &out, &lse, &s, &mut dqkv);
            let want: Vec<f64> = attention_backward_ref(&gr, &qr, &s)
                .iter()
                .zip(&d0r)
                .map(|(a, b)| a + b)
                .collect();
            // the backward's D = rowsum(dO * O) reads the output rounded to its dtype
            let abs = abs + 4.0 * (pe + eps(dt)) * (s.t as f64).sqrt();
            assert_close_tol(&format!("{what} dqkv"), &down(&dqkv), &want, dt, abs, k);
        }
    });
}

#[test]
fn attention_forward_backward() {
    check_attention(
        false,
        |q, s, o, l| {
            cpu()
                .attention(q.view(), s, o.view_mut(), l.view_mut())
                .unwrap()
        },
        |g, q, o, l, s, d| {
            let be = cpu();
            be.attention_backward(g.view(), q.view(), o.view(), l.view(), s, d.view_mut())
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
        |q, s, o, l| forward(&cpu(), q.view(), s, o.view_mut(), l.view_mut()).unwrap(),
        |g, q, o, l, s, d| {
            let (g, q, o, l) = (g.view(), q.view(), o.view(), l.view());
            backward(&cpu(), g, q, o, l, s, d.view_mut()).unwrap()
        },
    );
}

/// The tiled kernel against the GEMM formulation on the same inputs, at a length of several
/// query blocks and key tiles, in BF16 storage.
#[test]
fn flash_kernel_matches_the_gemm_formulation() {
    use mp_kernels::gemm_attention::{backward, forward};
    let s = Attention::mha(2, 200, 64, 4);
    let dt = DType::BF16;
    let n3 = s.b * s.t * s.qkv_row();
    let (qkv, _) = input(n3, 81, dt);
    let (g, _) = input(s.b * s.t * s.c, 82, dt);
    let be = cpu();
    let run = |flash: bool| {
        let (qb, gb) = (up(&qkv, dt), up(&g, dt));
        let mut out = up(&vec![0.0; s.b * s.t * s.c], dt);
        let mut lse = up(&vec![0.0; s.lse_len()], DType::F32);
        let mut dq = up(&vec![0.0; n3], DType::F32);
        if flash {
            be.attention(qb.view(), &s, out.view_mut(), lse.view_mut())
                .unwrap();
            be.attention_backward(
                gb.view(),
                qb.view(),
                out.view(),
                lse.view(),
                &s,
                dq.view_mut(),
            )
            .unwrap();
        } else {
            forward(&be, qb.view(), &s, out.view_mut(), lse.view_mut()).unwrap();
            backward(
                &be,
                gb.view(),
                qb.view(),
                out.view(),
                lse.view(),
                &s,
                dq.view_mut(),
            )
            .unwrap();
        }
        (down(&out), down(&lse), down(&dq))
    };
    let (want, got) = (run(false), run(true));
    let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
    assert_close("lse", &got.1, &f64s(&want.1), DType::F32);
    let (abs, k) = tolerance(dt);
    assert_close_tol("out", &got.0, &f64s(&want.0), dt, abs + eps(dt), k);
    assert_close_tol("dqkv", &got.2, &f64s(&want.2), dt, 8.0 * eps(dt), k);
}

#[test]
fn split_and_merge_heads_round_trip_every_part() {
    use mp_kernels::Heads;
    let s = SHAPES[1];
    for_each_dtype(&TEST_DTYPES, |dt| {
        let n3 = s.b * s.t * s.qkv_row();
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
                let (h, n) = (r % l.heads, r / l.heads);
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
