//! The fused scaler and optimizer passes against the CPU oracle (shared by the CUDA and wgpu
//! suites: `crate::common` supplies the backend).

use mp_kernels::prelude::*;
use mp_kernels::testing::{random_normal, random_vec};
use mp_kernels::{AdamW, DType, RangeQuery, Rounding, Sgd, UpdateCounts, test_per_dtype};

use crate::common::{close, cpu, down, gpu, poisoned, up};

fn grad_stats_match_cpu(dtype: DType) {
    let Some(g) = gpu("grad_stats_match_cpu") else {
        return;
    };
    let c = cpu();
    for (n, off) in [(1_000_003usize, 0usize), (4097, 5)] {
        let x = random_normal(n + off, 3.0, 71);
        for mult in [1.0f32, 1.0 / 65536.0, 0.37] {
            let (bg, bc) = (up(g, &x, dtype), up(&c, &x, dtype));
            let sg = g.grad_stats(bg.slice(off, n), mult).expect("grad_stats");
            let sc = c.grad_stats(bc.slice(off, n), mult).expect("grad_stats");
            assert!(
                !sg.non_finite && !sc.non_finite,
                "finite data flagged: {sg:?} {sc:?}"
            );
            let rel = (sg.sum_sq - sc.sum_sq).abs() / sc.sum_sq;
            assert!(
                rel < 1e-5,
                "grad_stats sum_sq n={n} mult={mult}: {} {} CPU {} (rel {rel:e})",
                crate::common::BACKEND,
                sg.sum_sq,
                sc.sum_sq
            );
        }
        for (pos, bad) in [
            (0usize, f32::INFINITY),
            (n / 2, f32::NAN),
            (n - 1, f32::NEG_INFINITY),
        ] {
            let mut y = x.clone();
            y[off + pos] = bad;
            let bg = up(g, &y, dtype);
            let sg = g.grad_stats(bg.slice(off, n), 1.0).expect("grad_stats");
            assert!(sg.non_finite, "{bad} at {pos} of {n} not flagged");
        }
    }
    // a huge but finite gradient overflows the square, not the flag
    let big = up(g, &[3.0e38f32.min(dtype.max()), 1.0], dtype);
    let s = g.grad_stats(big.view(), 1.0).expect("grad_stats");
    assert!(!s.non_finite, "finite values flagged non-finite: {s:?}");
}
test_per_dtype!(grad_stats_match_cpu: f32, f16, bf16);

/// Per-part statistics (the data-parallel gradient check's partial sums): one per part, each
/// the part's own `grad_stats`, close to the CPU's.
fn grad_stats_parts_match_cpu(dtype: DType) {
    let Some(g) = gpu("grad_stats_parts_match_cpu") else {
        return;
    };
    let c = cpu();
    let (n, off, part) = (70_001usize, 3usize, 16_384usize);
    let mut x = random_normal(n + off, 2.0, 72);
    x[off + 2 * part + 7] = f32::NAN;
    let (bg, bc) = (up(g, &x, dtype), up(&c, &x, dtype));
    let pg = g
        .grad_stats_parts(bg.slice(off, n), 0.5, part)
        .expect("grad_stats_parts");
    let pc = c
        .grad_stats_parts(bc.slice(off, n), 0.5, part)
        .expect("grad_stats_parts");
    assert_eq!(pg.len(), n.div_ceil(part));
    assert_eq!(pg.len(), pc.len());
    for (i, (a, b)) in pg.iter().zip(&pc).enumerate() {
        assert_eq!(a.non_finite, i == 2, "part {i}: {a:?}");
        assert_eq!(a.non_finite, b.non_finite, "part {i}");
        if !a.non_finite {
            let rel = (a.sum_sq - b.sum_sq).abs() / b.sum_sq;
            assert!(
                rel < 1e-5,
                "part {i}: {} vs CPU {} (rel {rel:e})",
                a.sum_sq,
                b.sum_sq
            );
        }
    }
}
test_per_dtype!(grad_stats_parts_match_cpu: f32, bf16);

/// Values over 50 binary exponents (2^-30 .. 2^20, so every format underflows, has
/// subnormals and overflows somewhere), then the specials: zeros, NaN, infinities, f32
/// subnormals and f32 max.
fn range_data(n: usize, seed: u64) -> (Vec<f32>, usize) {
    let r = random_vec(n, seed);
    let mut x: Vec<f32> = random_normal(n, 1.0, seed + 1)
        .iter()
        .zip(&r)
        .map(|(v, u)| v * 2f32.powi((u * 25.0 - 5.0) as i32))
        .collect();
    let body = x.len();
    x.extend([
        0.0,
        -0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1e-40,
        -3e-39,
        f32::MAX,
        -1e10,
        6e-8,
    ]);
    (x, body)
}

/// Precision-health counts equal mp-dtype's `range_stats` (and the amax the fold of the
/// values) on the values as stored, exactly, for every format and scale, for ranges that
/// start anywhere in a view that starts anywhere.
fn range_counts_are_exact(dtype: DType) {
    let Some(g) = gpu("range_counts_are_exact") else {
        return;
    };
    let c = cpu();
    let (x, body) = range_data(300_001, 91);
    let off = 3;
    let n = x.len() - off;
    let (bg, bc) = (up(g, &x, dtype), up(&c, &x, dtype));
    let stored = c.download_f32(bc.slice(off, n)).unwrap();
    let amax = |v: &[f32]| {
        v.iter()
            .filter(|x| x.is_finite())
            .fold(0.0f32, |m, x| m.max(x.abs()))
    };
    let mut queries = Vec::new();
    for fmt in DType::ALL {
        // the whole view at scale 1 (with the specials); the body at loss scales, an amax scale
        queries.push(RangeQuery {
            offset: 0,
            len: n,
            dtype: fmt,
            scale: 1.0,
        });
        for scale in [
            65536.0,
            1.0 / 1024.0,
            fmt.max() / amax(&stored[..body - off]),
        ] {
            queries.push(RangeQuery {
                offset: 0,
                len: body - off,
                dtype: fmt,
                scale,
            });
        }
        queries.push(RangeQuery {
            offset: 4097,
            len: 5000,
            dtype: fmt,
            scale: 1.0,
        });
        queries.push(RangeQuery {
            offset: n - 7,
            len: 7,
            dtype: fmt,
            scale: 1.0,
        });
        queries.push(RangeQuery {
            offset: 11,
            len: 0,
            dtype: fmt,
            scale: 1.0,
        });
    }
    let got = g
        .range_counts(bg.slice(off, n), &queries)
        .expect("range_counts");
    let on_cpu = c
        .range_counts(bc.slice(off, n), &queries)
        .expect("range_counts");
    assert_eq!(got.len(), queries.len());
    for ((q, gq), cq) in queries.iter().zip(&got).zip(&on_cpu) {
        let v = &stored[q.offset..q.offset + q.len];
        let s = mp_dtype::range_stats(v, q.dtype, q.scale);
        let want = (
            s.underflow_to_zero,
            s.subnormal,
            s.overflow,
            amax(v).to_bits(),
        );
        for (who, r) in [(crate::common::BACKEND, gq), ("cpu", cq)] {
            assert_eq!(
                (r.underflow, r.subnormal, r.overflow, r.amax.to_bits()),
                want,
                "{who} range_counts of {dtype} data, {q:?}"
            );
        }
    }
    let total: u64 = got
        .iter()
        .map(|r| r.underflow + r.subnormal + r.overflow)
        .sum();
    assert!(total > 0, "the data exercises no class");
    // a query outside the view is refused, naming it
    let bad = [RangeQuery {
        offset: n - 1,
        len: 2,
        dtype: DType::F16,
        scale: 1.0,
    }];
    let e = g
        .range_counts(bg.slice(off, n), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("query 0") && e.contains("outside"), "{e}");
}
test_per_dtype!(range_counts_are_exact: f32, bf16, f16);

/// Lost-update counts equal mp-dtype's `lost_update_counts` exactly: updates from far below
/// half an ulp of every format to far above it, zeros and a NaN among them.
#[test]
fn lost_update_counts_are_exact() {
    let Some(g) = gpu("lost_update_counts_are_exact") else {
        return;
    };
    let c = cpu();
    let n = 200_003;
    let before = random_normal(n, 0.05, 5);
    let r = random_vec(n, 6);
    let mut after: Vec<f32> = before
        .iter()
        .zip(&r)
        .map(|(w, u)| w + w * 2f32.powi((u * 12.0 - 16.0) as i32))
        .collect();
    after[10] = before[10];
    after[11] = f32::NAN;
    let ranges = [(0, n), (1, 4096), (n - 5, 5), (7, 0)];
    let (bb, ba) = (up(g, &before, DType::F32), up(g, &after, DType::F32));
    let (cb, ca) = (up(&c, &before, DType::F32), up(&c, &after, DType::F32));
    for fmt in [DType::BF16, DType::F16, DType::F8E4M3] {
        let got = g
            .lost_update_counts(bb.view(), ba.view(), &ranges, fmt)
            .expect("lost_update_counts");
        let on_cpu = c
            .lost_update_counts(cb.view(), ca.view(), &ranges, fmt)
            .expect("lost_update_counts");
        for (k, &(o, len)) in ranges.iter().enumerate() {
            let (updated, lost) =
                mp_dtype::lost_update_counts(&before[o..o + len], &after[o..o + len], fmt);
            let want = UpdateCounts { updated, lost };
            assert_eq!(got[k], want, "{} {fmt} range {k}", crate::common::BACKEND);
            assert_eq!(on_cpu[k], want, "cpu {fmt} range {k}");
        }
        assert!(
            got[0].lost > 0 && got[0].lost < got[0].updated,
            "{fmt}: {:?}",
            got[0]
        );
    }
    let e = g
        .lost_update_counts(bb.view(), ba.slice(0, 5), &ranges, DType::BF16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("after"), "{e}");
}

/// Device memory is not host memory: only the CPU lends its bytes in place.
#[test]
fn host_bytes_only_on_the_cpu() {
    let Some(g) = gpu("host_bytes_only_on_the_cpu") else {
        return;
    };
    let mut b = up(g, &[1.0, 2.0], DType::F32);
    assert!(g.host_bytes(b.view()).is_none());
    assert!(g.host_bytes_mut(b.view_mut()).is_none());
    let c = cpu();
    let mut h = up(&c, &[1.0, 2.0], DType::F32);
    assert_eq!(c.host_bytes(h.slice(1, 1)).unwrap(), 2.0f32.to_le_bytes());
    c.host_bytes_mut(h.view_mut()).unwrap()[..4].copy_from_slice(&3.0f32.to_le_bytes());
    assert_eq!(c.download_f32(h.view()).unwrap(), [3.0, 2.0]);
}

/// The device's own collectives (NCCL on CUDA with the `nccl` feature), in a world of one:
/// in-place identities, ordered with the backend's stream by `join`, sums in FP32 only, a
/// malformed id refused. A backend without them (the CPU, wgpu, CUDA without the feature)
/// says so with `None`, never a communicator that does nothing.
#[test]
fn device_collectives_in_a_world_of_one() {
    let Some(g) = gpu("device_collectives_in_a_world_of_one") else {
        return;
    };
    let c = cpu();
    assert!(c.device_comm_id().unwrap().is_none());
    assert!(c.device_comm(&[0; 128], 0, 1).unwrap().is_none());
    let Some(id) = g.device_comm_id().unwrap() else {
        assert!(g.device_comm(&[0; 128], 0, 1).unwrap().is_none());
        eprintln!(
            "{}: no collectives of its own in this build",
            crate::common::BACKEND
        );
        return;
    };
    assert_eq!(id.len(), 128);
    let comm = g.device_comm(&id, 0, 1).unwrap().expect("a communicator");
    eprintln!(
        "{}: device collectives {}",
        crate::common::BACKEND,
        comm.engine()
    );
    let values: Vec<f32> = (0..5000).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
    let mut buf = up(g, &values, DType::F32);
    comm.all_reduce_sum(buf.slice_mut(1000, 3000)).unwrap();
    comm.reduce_scatter_sum(buf.view_mut()).unwrap();
    comm.join().unwrap();
    // the backend's own work after `join` sees the collectives' results
    let mut sum = up(g, &values, DType::F32);
    g.axpy(1.0, buf.view(), sum.view_mut()).unwrap();
    let twice: Vec<f32> = values.iter().map(|v| v + v).collect();
    assert_eq!(g.download_f32(sum.view()).unwrap(), twice);
    let mut w = up(g, &values, DType::BF16);
    let before = g.download_bytes(w.view()).unwrap();
    comm.all_gather(w.view_mut()).unwrap();
    comm.join().unwrap();
    assert_eq!(g.download_bytes(w.view()).unwrap(), before);
    let e = comm.all_reduce_sum(w.view_mut()).unwrap_err().to_string();
    assert!(e.contains("FP32") && e.contains("bf16"), "{e}");
    assert!(g.device_comm(&id[..10], 0, 1).is_err());
}

struct OptimOut {
    params: Vec<f32>,
    m: Vec<f32>,
    v: Vec<f32>,
    model: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn adamw_run<B: Backend>(
    be: &B,
    pdt: DType,
    gdt: DType,
    mdt: DType,
    p0: &[f32],
    grads: &[Vec<f32>],
    rounding: Rounding,
    off: usize,
) -> OptimOut {
    let n = p0.len() - off;
    let mut p = up(be, p0, pdt);
    let mut m = be.zeros(DType::F32, p0.len()).expect("m");
    let mut v = be.zeros(DType::F32, p0.len()).expect("v");
    let mut model = poisoned(be, mdt, p0.len());
    for (step, gr) in grads.iter().enumerate() {
        let bg = up(be, gr, gdt);
        let hp = AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: step as u64 + 1,
            grad_mult: 0.5,
            rounding,
        };
        be.adamw(
            p.slice_mut(off, n),
            bg.slice(off, n),
            m.slice_mut(off, n),
            v.slice_mut(off, n),
            Some(model.slice_mut(off, n)),
            &hp,
        )
        .expect("adamw");
    }
    OptimOut {
        params: down(be, &p)[off..].to_vec(),
        m: down(be, &m)[off..].to_vec(),
        v: down(be, &v)[off..].to_vec(),
        model: down(be, &model)[off..].to_vec(),
    }
}

/// FP32 master weights, gradients in `gdt`, a bf16 and an f16 model copy; 3 steps.
fn adamw_matches_cpu(gdt: DType) {
    let Some(g) = gpu("adamw_matches_cpu") else {
        return;
    };
    let c = cpu();
    for (n, off) in [(100_003usize, 0usize), (999, 3)] {
        let p0 = random_normal(n + off, 0.5, 81);
        let grads: Vec<Vec<f32>> = (0..3)
            .map(|s| random_normal(n + off, 1.0, 82 + s))
            .collect();
        for mdt in [DType::BF16, DType::F16] {
            for rounding in [Rounding::NearestEven, Rounding::Stochastic { seed: 9 }] {
                let w = adamw_run(&c, DType::F32, gdt, mdt, &p0, &grads, rounding, off);
                let o = adamw_run(g, DType::F32, gdt, mdt, &p0, &grads, rounding, off);
                let what = format!("adamw grads {gdt} model {mdt} {rounding:?} n={n}");
                close(
                    &format!("{what}: params"),
                    &o.params,
                    &w.params,
                    DType::F32,
                    1e-6,
                    64.0,
                );
                close(&format!("{what}: m"), &o.m, &w.m, DType::F32, 1e-6, 64.0);
                close(&format!("{what}: v"), &o.v, &w.v, DType::F32, 1e-6, 64.0);
                // the copy is the rounded master: equal, or one ulp apart where the masters
                // differ in their last bits across a rounding boundary
                close(
                    &format!("{what}: model"),
                    &o.model,
                    &w.model,
                    mdt,
                    1e-6,
                    1.01,
                );
            }
        }
    }
    // pure low-precision mode: bf16 params rounded stochastically, no separate copy
    let p0 = random_normal(5000, 0.5, 91);
    let grads: Vec<Vec<f32>> = (0..2).map(|s| random_normal(5000, 1.0, 92 + s)).collect();
    let r = Rounding::Stochastic { seed: 3 };
    let w = adamw_run(&c, DType::BF16, gdt, DType::BF16, &p0, &grads, r, 0);
    let o = adamw_run(g, DType::BF16, gdt, DType::BF16, &p0, &grads, r, 0);
    close(
        "adamw pure bf16 params",
        &o.params,
        &w.params,
        DType::BF16,
        1e-6,
        1.01,
    );
    close(
        "adamw pure bf16 model",
        &o.model,
        &w.model,
        DType::BF16,
        1e-6,
        1.01,
    );
}
test_per_dtype!(adamw_matches_cpu: f32, f16, bf16);

#[test]
fn sgd_matches_cpu() {
    let Some(g) = gpu("sgd_matches_cpu") else {
        return;
    };
    let c = cpu();
    let n = 20_011;
    let p0 = random_normal(n, 0.5, 101);
    let grads: Vec<Vec<f32>> = (0..3).map(|s| random_vec(n, 102 + s)).collect();
    for (momentum, nesterov) in [(0.0f32, false), (0.9, false), (0.9, true)] {
        fn run<B: Backend>(
            be: &B,
            p0: &[f32],
            grads: &[Vec<f32>],
            momentum: f32,
            nesterov: bool,
        ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
            let n = p0.len();
            let mut p = up(be, p0, DType::F32);
            let mut buf = be.zeros(DType::F32, n).expect("buf");
            let mut model = poisoned(be, DType::BF16, n);
            for (i, gr) in grads.iter().enumerate() {
                let bg = up(be, gr, DType::BF16);
                let hp = Sgd {
                    lr: 0.05,
                    momentum,
                    dampening: 0.1,
                    weight_decay: 0.01,
                    nesterov,
                    first_step: i == 0,
                    grad_mult: 2.0,
                    rounding: Rounding::NearestEven,
                };
                be.sgd(
                    p.view_mut(),
                    bg.view(),
                    buf.view_mut(),
                    Some(model.view_mut()),
                    &hp,
                )
                .expect("sgd");
            }
            (down(be, &p), down(be, &buf), down(be, &model))
        }
        let w = run(&c, &p0, &grads, momentum, nesterov);
        let o = run(g, &p0, &grads, momentum, nesterov);
        let what = format!("sgd momentum={momentum} nesterov={nesterov}");
        close(
            &format!("{what}: params"),
            &o.0,
            &w.0,
            DType::F32,
            1e-6,
            64.0,
        );
        if momentum != 0.0 {
            close(&format!("{what}: buf"), &o.1, &w.1, DType::F32, 1e-6, 64.0);
        }
        close(
            &format!("{what}: model"),
            &o.2,
            &w.2,
            DType::BF16,
            1e-6,
            1.01,
        );
    }
}
