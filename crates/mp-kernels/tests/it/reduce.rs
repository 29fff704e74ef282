//! Row reductions and column sums against float64 references.

use crate::common::{cpu, down, input, up};
use mp_kernels::prelude::*;
use mp_kernels::testing::{TEST_DTYPES, assert_close_tol, for_each_dtype, tolerance};
use mp_kernels::{CpuBuffer, DType, ReduceOp};

fn reduce_ref(op: ReduceOp, row: &[f64]) -> f64 {
    match op {
        ReduceOp::Sum => row.iter().sum(),
        ReduceOp::Mean => row.iter().sum::<f64>() / row.len() as f64,
        ReduceOp::Max => row.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        ReduceOp::SumSq => row.iter().map(|v| v * v).sum(),
    }
}

#[test]
fn reduce_rows_every_op_dtype_and_shape() {
    for_each_dtype(&TEST_DTYPES, |din| {
        // Short rows, long rows (blocked in parallel), and one whole-tensor reduction.
        for (rows, cols) in [(1, 1), (5, 3), (300, 77), (2, 40_000), (1, 100_003)] {
            let (x, xr) = input(rows * cols, 21, din);
            for op in [
                ReduceOp::Sum,
                ReduceOp::Mean,
                ReduceOp::Max,
                ReduceOp::SumSq,
            ] {
                for dout in [DType::F32, din] {
                    let mut out = CpuBuffer::zeros(dout, rows);
                    cpu()
                        .reduce_rows(op, up(&x, din).view(), cols, out.view_mut())
                        .unwrap();
                    let want: Vec<f64> = xr.chunks(cols).map(|r| reduce_ref(op, r)).collect();
                    // f32 accumulation error grows like sqrt(cols) (blocked sums).
                    let (abs, k) = tolerance(dout);
                    let abs = abs + 8.0 * (cols as f64).sqrt() * f64::from(f32::EPSILON);
                    assert_close_tol(
                        &format!("{op:?} {rows}x{cols} {din}->{dout}"),
                        &down(&out),
                        &want,
                        dout,
                        abs,
                        k,
                    );
                }
            }
        }
    });
}

#[test]
fn reduce_max_propagates_nan() {
    let mut x = vec![1.0f32; 50_000];
    x[31_000] = f32::NAN;
    for cols in [50_000, 1000] {
        let mut out = CpuBuffer::zeros(DType::F32, 50_000 / cols);
        cpu()
            .reduce_rows(
                ReduceOp::Max,
                up(&x, DType::F32).view(),
                cols,
                out.view_mut(),
            )
            .unwrap();
        let got = down(&out);
        assert!(got[31_000 / cols].is_nan(), "cols={cols}: {got:?}");
        assert_eq!(got.iter().filter(|v| v.is_nan()).count(), 1);
    }
}

#[test]
fn sum_cols_accumulates() {
    for_each_dtype(&TEST_DTYPES, |dt| {
        for (rows, n) in [(1, 1), (7, 5), (1024, 384), (3000, 2)] {
            let (x, xr) = input(rows * n, 22, dt);
            let (o0, or) = input(n, 23, dt);
            let mut out = up(&o0, dt);
            cpu()
                .sum_cols_acc(up(&x, dt).view(), out.view_mut())
                .unwrap();
            let want: Vec<f64> = (0..n)
                .map(|j| or[j] + (0..rows).map(|r| xr[r * n + j]).sum::<f64>())
                .collect();
            let (abs, k) = tolerance(dt);
            let abs = abs + 4.0 * (rows as f64).sqrt() * f64::from(f32::EPSILON);
            assert_close_tol(
                &format!("sum_cols {rows}x{n}"),
                &down(&out),
                &want,
                dt,
                abs,
                k,
            );
        }
    });
}
