//! CUDA backend benchmark: cast vs copy bandwidth, cuBLASLt GEMM rates, the fused AdamW and
//! gradient-check passes over GPT-2-small-sized arenas.
//!
//! `cargo run --release -p mp-kernels --features cuda --example cuda_bench`
//!
//! Timing: CUDA events around each op after warm-up, median of several runs, random data.
//! `grad_stats` returns a host value, so it is timed on the host (launches, the kernels and
//! the one 8-byte read). Prints a table and writes `$OUT/cuda_bench.json` (`.` without OUT).

use std::time::Instant;

use mp_kernels::cuda::{CudaBackend, CudaOptions};
use mp_kernels::prelude::*;
use mp_kernels::testing::{random_normal, random_vec};
use mp_kernels::{AdamW, DType, Gemm, Rounding};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds of `f` timed with events on the backend's stream.
fn time_events(be: &CudaBackend, warm: usize, reps: usize, mut f: impl FnMut()) -> AnyResult<f64> {
    for _ in 0..warm {
        f();
    }
    be.synchronize()?;
    let ctx = be.context();
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let mut ts = Vec::with_capacity(reps);
    for _ in 0..reps {
        let (s, e) = (ctx.new_event(flags)?, ctx.new_event(flags)?);
        s.record(be.stream())?;
        f();
        e.record(be.stream())?;
        ts.push(f64::from(s.elapsed_ms(&e)?) / 1e3);
    }
    Ok(median(ts))
}

/// GPT-2 parameter count (the shapes of `torch_gpu_reference.py`'s `gpt_shapes`).
fn gpt_params(layers: usize, d: usize, vocab: usize, ctx: usize) -> usize {
    let per_layer =
        2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + 4 * d * d + 4 * d + 4 * d * d + d;
    vocab * d + ctx * d + layers * per_layer + 2 * d
}

struct Row {
    key: String,
    value: f64,
    unit: &'static str,
    note: String,
}

fn main() -> AnyResult<()> {
    let be = match CudaBackend::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cuda_bench: no CUDA device: {e}");
            std::process::exit(2);
        }
    };
    be.warm_up()?;
    println!("device: {} (NVRTC {})", be.name(), be.arch());
    let mut rows: Vec<Row> = Vec::new();
    let mut log = |key: &str, value: f64, unit: &'static str, note: String| {
        println!("{key:<44} {value:>12.3} {unit:<8} {note}");
        rows.push(Row {
            key: key.into(),
            value,
            unit,
            note,
        });
    };

    // ---- copy vs cast bandwidth (1 GiB of f32) -----------------------------------------
    let n = 1usize << 28;
    let src = be.upload_f32(&random_vec(n, 1), DType::F32)?;
    let mut dst = be.zeros(DType::F32, n)?;
    let t = time_events(&be, 3, 10, || {
        be.cast(src.view(), dst.view_mut(), Rounding::NearestEven)
            .expect("copy");
    })?;
    let copy_gbps = 8.0 * n as f64 / t / 1e9;
    log(
        "copy_GBps(read+write)",
        copy_gbps,
        "GB/s",
        "device-to-device copy of 1 GiB f32".into(),
    );
    drop(dst);
    for (name, dt) in [("bf16", DType::BF16), ("f16", DType::F16)] {
        let mut h = be.zeros(dt, n)?;
        let t = time_events(&be, 3, 10, || {
            be.cast(src.view(), h.view_mut(), Rounding::NearestEven)
                .expect("cast");
        })?;
        let gbps = 6.0 * n as f64 / t / 1e9;
        log(
            &format!("cast_f32_to_{name}_GBps(read+write)"),
            gbps,
            "GB/s",
            format!("{:.1}% of copy", 100.0 * gbps / copy_gbps),
        );
        if dt == DType::BF16 {
            let t = time_events(&be, 3, 10, || {
                be.cast(src.view(), h.view_mut(), Rounding::Stochastic { seed: 1 })
                    .expect("cast");
            })?;
            let gbps = 6.0 * n as f64 / t / 1e9;
            log(
                "cast_f32_to_bf16_sr_GBps(read+write)",
                gbps,
                "GB/s",
                format!("{:.1}% of copy", 100.0 * gbps / copy_gbps),
            );
        }
    }
    drop(src);

    // ---- GEMM ---------------------------------------------------------------------------
    let tf32 = CudaBackend::with_options(CudaOptions {
        device: 0,
        allow_tf32: true,
    })?;
    for size in [4096usize, 8192] {
        let a = random_normal(size * size, 1.0, 2);
        let b = random_normal(size * size, 1.0, 3);
        for (name, dt, backend) in [
            ("bf16", DType::BF16, &be),
            ("fp16", DType::F16, &be),
            ("tf32", DType::F32, &tf32),
            ("fp32", DType::F32, &be),
        ] {
            let (ba, bb) = (backend.upload_f32(&a, dt)?, backend.upload_f32(&b, dt)?);
            let mut c = backend.zeros(dt, size * size)?;
            let spec = Gemm::new(size, size, size);
            let reps = if name == "fp32" { 5 } else { 10 };
            let t = time_events(backend, 2, reps, || {
                backend
                    .gemm(ba.view(), bb.view(), c.view_mut(), &spec)
                    .expect("gemm");
            })?;
            let tflops = 2.0 * (size as f64).powi(3) / t / 1e12;
            log(
                &format!("gemm_{size}_{name}_TFLOPs"),
                tflops,
                "TFLOP/s",
                format!("{:.3} ms", t * 1e3),
            );
        }
    }
    drop(tf32);

    // ---- fused AdamW and the gradient check over GPT-2 small --------------------------------
    let np = gpt_params(12, 768, 50304, 1024);
    log(
        "adamw_params",
        np as f64,
        "params",
        "GPT-2 small shapes, one flat arena".into(),
    );
    let mut p = be.upload_f32(&random_normal(np, 0.02, 4), DType::F32)?;
    let mut m = be.zeros(DType::F32, np)?;
    let mut v = be.zeros(DType::F32, np)?;
    let mut model = be.zeros(DType::BF16, np)?;
    let g32 = be.upload_f32(&random_normal(np, 1e-3, 5), DType::F32)?;
    let g16 = be.upload_f32(&random_normal(np, 1e-3, 6), DType::BF16)?;
    let mut step = 0u64;
    for (name, g, gbytes) in [("f32", &g32, 4.0), ("bf16", &g16, 2.0)] {
        let t = time_events(&be, 3, 20, || {
            step += 1;
            let hp = AdamW {
                lr: 1e-4,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weight_decay: 0.1,
                step,
                grad_mult: 1.0 / 65536.0,
                rounding: Rounding::NearestEven,
            };
            be.adamw(
                p.view_mut(),
                g.view(),
                m.view_mut(),
                v.view_mut(),
                Some(model.view_mut()),
                &hp,
            )
            .expect("adamw");
        })?;
        let bytes = (24.0 + gbytes + 2.0) * np as f64;
        log(
            &format!("adamw_fused_{name}_grads_bf16_copy_ms"),
            t * 1e3,
            "ms",
            format!(
                "{:.0} GB/s ({} B/param), {:.1}% of copy bandwidth",
                bytes / t / 1e9,
                24.0 + gbytes + 2.0,
                100.0 * bytes / t / 1e9 / copy_gbps
            ),
        );
    }
    let t = time_events(&be, 3, 20, || {
        let hp = AdamW {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            step: 10,
            grad_mult: 1.0,
            rounding: Rounding::Stochastic { seed: 7 },
        };
        be.adamw(
            p.view_mut(),
            g16.view(),
            m.view_mut(),
            v.view_mut(),
            Some(model.view_mut()),
            &hp,
        )
        .expect("adamw");
    })?;
    log(
        "adamw_fused_bf16_grads_bf16_copy_sr_ms",
        t * 1e3,
        "ms",
        "stochastic rounding of the copy".into(),
    );
    drop((p, m, v, model, g32));
    for _ in 0..3 {
        be.grad_stats(g16.view(), 1.0 / 65536.0)?;
    }
    let mut ts = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let s = be.grad_stats(g16.view(), 1.0 / 65536.0)?;
        ts.push(t0.elapsed().as_secs_f64());
        assert!(!s.non_finite && s.sum_sq > 0.0);
    }
    let t = median(ts);
    log(
        "grad_stats_bf16_ms",
        t * 1e3,
        "ms",
        format!(
            "host-timed incl. the 8-byte read; {:.0} GB/s of grads",
            2.0 * np as f64 / t / 1e9
        ),
    );
    let mem = be.memory();
    log(
        "peak_buffer_bytes",
        mem.buffers_peak as f64,
        "bytes",
        format!(
            "scratch {} B, gemm workspace {} B",
            mem.scratch, mem.gemm_workspace
        ),
    );

    // ---- JSON ---------------------------------------------------------------------------------
    let dir = std::env::var("OUT").unwrap_or_else(|_| ".".into());
    let mut json = String::from("{\n");
    json.push_str(&format!(
        "  \"device\": \"{}\",\n",
        be.name().replace('"', "'")
    ));
    for (i, r) in rows.iter().enumerate() {
        let comma = if i + 1 == rows.len() { "" } else { "," };
        json.push_str(&format!(
            "  \"{}\": {{\"value\": {}, \"unit\": \"{}\", \"note\": \"{}\"}}{comma}\n",
            r.key,
            r.value,
            r.unit,
            r.note.replace('"', "'")
        ));
    }
    json.push_str("}\n");
    let path = std::path::Path::new(&dir).join("cuda_bench.json");
    std::fs::write(&path, json)?;
    println!("wrote {}", path.display());
    Ok(())
}
