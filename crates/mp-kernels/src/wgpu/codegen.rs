//! WGSL generation: every kernel is a shader body from `crates/mp-kernels/shaders/` preceded
//! by a prelude generated for the dtypes of one call, so one body serves every dtype mix.
//!
//! The prelude declares binding 0 (a uniform of per-tensor element offsets), the tensors from
//! binding 2 on, and for each tensor name `x` the accessors the bodies use:
//! `x_ld(i) -> f32`, `x_bits(i) -> u32`, `x_round(v) -> f32` (rounding to `x`'s dtype and
//! back), and `x_st(i, v)`, `x_st_bits(i, bits)`, `x_st_sr(i, v, random)`; index tensors get
//! `x_idx(i) -> u32`. `i` counts elements from the start of the op's view.
//!
//! Storage: F32 tensors are `array<f32>`. F16, BF16 and FP8 are packed 2 or 4 per `u32`
//! (WGSL has no 16- or 8-bit storage type that every adapter supports), decoded and encoded
//! with the integer code of `common.wgsl`, bit-identical to mp-dtype. A writable packed
//! tensor is `array<atomic<u32>>` and a store clears then sets only its own bits
//! (`atomicAnd` + `atomicOr`), so neighbouring elements written by other invocations, or
//! lying outside the view, are never disturbed: views may start at any element.
//!
//! A body may name tensors an op does not bind (a module holds several entry points); those
//! get accessors that read 0 and store nothing, and so do the store accessors of read-only
//! tensors.

use mp_dtype::DType;
use std::fmt::Write;

/// The shared helpers appended after every prelude.
pub(crate) const COMMON: &str = include_str!("../../shaders/common.wgsl");

/// How a tensor is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    /// Not bound by this op: accessors read 0 and store nothing.
    Absent,
    /// Floating-point data of a dtype, read-only or writable.
    Data { dtype: DType, rw: bool },
    /// `u32` indices, read-only.
    Index,
}

/// A shader body and the tensor names it refers to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shader {
    /// File name, for labels and cache keys.
    pub(crate) name: &'static str,
    /// The WGSL body.
    pub(crate) body: &'static str,
    /// Every tensor name the body uses, in binding order.
    pub(crate) tensors: &'static [&'static str],
    /// Every `C_*` constant the body uses (each defaults to 0).
    pub(crate) consts: &'static [&'static str],
}

/// The codec function suffix of a packed dtype and its bits per element.
fn packed(dtype: DType) -> (&'static str, u32) {
    match dtype {
        DType::F16 => ("f16", 16),
        DType::BF16 => ("bf16", 16),
        DType::F8E4M3 => ("f8e4m3", 8),
        DType::F8E5M2 => ("f8e5m2", 8),
        DType::F32 => ("f32", 32),
    }
}

/// The full WGSL source of `shader` with `slots[k]` bound for `shader.tensors[k]` and the
/// given constant values.
pub(crate) fn source(shader: &Shader, slots: &[Slot], consts: &[(&str, u32)]) -> String {
    let mut s = String::with_capacity(shader.body.len() + 8192);
    s.push_str("struct Meta { o: array<vec4<u32>, 4> }\n");
    s.push_str("@group(0) @binding(0) var<uniform> mt: Meta;\n");
    for name in shader.consts {
        let v = consts
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |&(_, v)| v);
        let _ = writeln!(s, "const {name}: u32 = {v}u;");
    }
    let mut bound = 0usize;
    for (name, slot) in shader.tensors.iter().zip(slots) {
        let off = format!("mt.o[{}][{}]", bound / 4, bound % 4);
        let binding = bound + 2;
        match *slot {
            Slot::Absent => {
                let _ = write!(
                    s,
                    "fn {name}_ld(i: u32) -> f32 {{ return 0.0; }}\n\
                     fn {name}_bits(i: u32) -> u32 {{ return 0u; }}\n\
                     fn {name}_round(v: f32) -> f32 {{ return v; }}\n\
                     fn {name}_st(i: u32, v: f32) {{}}\n\
                     fn {name}_st_bits(i: u32, b: u32) {{}}\n\
                     fn {name}_st_sr(i: u32, v: f32, r: u32) {{}}\n\
                     fn {name}_idx(i: u32) -> u32 {{ return 0u; }}\n"
                );
                continue;
            }
            Slot::Index => {
                let _ = write!(
                    s,
                    "@group(0) @binding({binding}) var<storage, read> {name}_buf: array<u32>;\n\
                     fn {name}_idx(i: u32) -> u32 {{ return {name}_buf[i + {off}]; }}\n"
                );
            }
            Slot::Data { dtype, rw } => {
                data_accessors(&mut s, name, dtype, rw, binding, &off);
            }
        }
        bound += 1;
    }
    s.push_str(COMMON);
    s.push('\n');
    s.push_str(shader.body);
    s
}

fn data_accessors(s: &mut String, name: &str, dtype: DType, rw: bool, binding: usize, off: &str) {
    let access = if rw { "read_write" } else { "read" };
    if dtype == DType::F32 {
        let _ = write!(
            s,
            "@group(0) @binding({binding}) var<storage, {access}> {name}_buf: array<f32>;\n\
             fn {name}_ld(i: u32) -> f32 {{ return {name}_buf[i + {off}]; }}\n\
             fn {name}_bits(i: u32) -> u32 {{ return bitcast<u32>({name}_buf[i + {off}]); }}\n\
             fn {name}_round(v: f32) -> f32 {{ return v; }}\n"
        );
        if rw {
            let _ = write!(
                s,
                "fn {name}_st(i: u32, v: f32) {{ {name}_buf[i + {off}] = v; }}\n\
                 fn {name}_st_bits(i: u32, b: u32) {{ {name}_buf[i + {off}] = bitcast<f32>(b); }}\n\
                 fn {name}_st_sr(i: u32, v: f32, r: u32) {{ {name}_buf[i + {off}] = v; }}\n"
            );
        } else {
            read_only_stores(s, name);
        }
        return;
    }
    let (codec, bits) = packed(dtype);
    let per_word = 32 / bits;
    let mask = if bits == 16 { "0xffffu" } else { "0xffu" };
    let (ty, load) = if rw {
        ("array<atomic<u32>>", format!("atomicLoad(&{name}_buf[w])"))
    } else {
        ("array<u32>", format!("{name}_buf[w]"))
    };
    let _ = write!(
        s,
        "@group(0) @binding({binding}) var<storage, {access}> {name}_buf: {ty};\n\
         fn {name}_bits(i: u32) -> u32 {{\n\
         \x20 let j = i + {off}; let w = j / {per_word}u;\n\
         \x20 return ({load} >> ((j % {per_word}u) * {bits}u)) & {mask};\n}}\n\
         fn {name}_ld(i: u32) -> f32 {{ return dec_{codec}({name}_bits(i)); }}\n\
         fn {name}_round(v: f32) -> f32 {{ return dec_{codec}(enc_{codec}(v, false, 0u)); }}\n"
    );
    if rw {
        let _ = write!(
            s,
            "fn {name}_st_bits(i: u32, b: u32) {{\n\
             \x20 let j = i + {off}; let w = j / {per_word}u; let sh = (j % {per_word}u) * {bits}u;\n\
             \x20 atomicAnd(&{name}_buf[w], ~({mask} << sh));\n\
             \x20 atomicOr(&{name}_buf[w], (b & {mask}) << sh);\n}}\n\
             fn {name}_st(i: u32, v: f32) {{ {name}_st_bits(i, enc_{codec}(v, false, 0u)); }}\n\
             fn {name}_st_sr(i: u32, v: f32, r: u32) {{ {name}_st_bits(i, enc_{codec}(v, true, r)); }}\n"
        );
    } else {
        read_only_stores(s, name);
    }
}

fn read_only_stores(s: &mut String, name: &str) {
    let _ = write!(
        s,
        "fn {name}_st(i: u32, v: f32) {{}}\n\
         fn {name}_st_bits(i: u32, b: u32) {{}}\n\
         fn {name}_st_sr(i: u32, v: f32, r: u32) {{}}\n"
    );
}

/// Every kernel body of the backend.
pub(crate) mod shaders {
    use super::Shader;

    /// Casts and copies.
    pub(crate) const CAST: Shader = Shader {
        name: "cast",
        body: include_str!("../../shaders/cast.wgsl"),
        tensors: &["src", "dst"],
        consts: &["C_MODE"],
    };
    /// Element-wise ops and fill.
    pub(crate) const POINTWISE: Shader = Shader {
        name: "pointwise",
        body: include_str!("../../shaders/pointwise.wgsl"),
        tensors: &["a", "b", "out", "rs"],
        consts: &["C_OP"],
    };
    /// Row reductions and column sums.
    pub(crate) const REDUCE: Shader = Shader {
        name: "reduce",
        body: include_str!("../../shaders/reduce.wgsl"),
        tensors: &["x", "out"],
        consts: &["C_OP"],
    };
    /// Softmax, layer norm and cross-entropy, forward and backward.
    pub(crate) const ROWS: Shader = Shader {
        name: "rows",
        body: include_str!("../../shaders/rows.wgsl"),
        tensors: &[
            "x", "y", "dy", "w", "b", "tg", "out", "dx", "mean", "rstd", "dweight", "dbias",
        ],
        consts: &["C_LOG", "C_CAUSAL"],
    };
    /// Embedding gather and scatter-add.
    pub(crate) const EMBED: Shader = Shader {
        name: "embed",
        body: include_str!("../../shaders/embed.wgsl"),
        tensors: &["table", "ids", "out", "dout", "csr", "dtable"],
        consts: &["C_COPY"],
    };
    /// Head-major <-> token-major copies of attention rows.
    pub(crate) const HEADS: Shader = Shader {
        name: "heads",
        body: include_str!("../../shaders/heads.wgsl"),
        tensors: &["src", "dst"],
        consts: &["C_COPY", "C_ACC"],
    };
    /// The rotary position embedding.
    pub(crate) const ROPE: Shader = Shader {
        name: "rope",
        body: include_str!("../../shaders/rope.wgsl"),
        tensors: &["x", "cos", "sin", "out"],
        consts: &[],
    };
    /// SwiGLU of packed gate/up rows, forward and backward.
    pub(crate) const SWIGLU: Shader = Shader {
        name: "swiglu",
        body: include_str!("../../shaders/swiglu.wgsl"),
        tensors: &["gu", "dy", "out", "dgu"],
        consts: &["C_BWD"],
    };
    /// The fused gradient check.
    pub(crate) const STATS: Shader = Shader {
        name: "stats",
        body: include_str!("../../shaders/stats.wgsl"),
        tensors: &["g", "part"],
        consts: &[],
    };
    /// The precision-health counts (range classes and amax; lost updates).
    pub(crate) const COUNTS: Shader = Shader {
        name: "counts",
        body: include_str!("../../shaders/counts.wgsl"),
        tensors: &["x", "y", "part"],
        consts: &["C_DT"],
    };
    /// Fused AdamW and SGD.
    pub(crate) const OPTIM: Shader = Shader {
        name: "optim",
        body: include_str!("../../shaders/optim.wgsl"),
        tensors: &["params", "grads", "s1", "s2", "model"],
        consts: &["C_OPT", "C_SR", "C_MODEL"],
    };
    /// Causal attention saving the log-sum-exp, and its backward.
    pub(crate) const ATTENTION: Shader = Shader {
        name: "attention",
        body: include_str!("../../shaders/attention.wgsl"),
        tensors: &["qkv", "out", "lse", "dout", "delta", "dqkv"],
        consts: &[],
    };
    /// Tiled GEMM.
    pub(crate) const GEMM: Shader = Shader {
        name: "gemm",
        body: include_str!("../../shaders/gemm.wgsl"),
        tensors: &["a", "b", "c", "bias"],
        consts: &[],
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shader_validates_for_every_dtype_and_slot_kind() {
        let all = [
            shaders::CAST,
            shaders::POINTWISE,
            shaders::REDUCE,
            shaders::ROWS,
            shaders::EMBED,
            shaders::HEADS,
            shaders::ROPE,
            shaders::SWIGLU,
            shaders::STATS,
            shaders::COUNTS,
            shaders::OPTIM,
            shaders::GEMM,
            shaders::ATTENTION,
        ];
        for dtype in DType::ALL {
            for sh in &all {
                let slots: Vec<Slot> = sh
                    .tensors
                    .iter()
                    .enumerate()
                    .map(|(k, n)| match (*n, k % 3) {
                        ("ids" | "tg" | "csr", _) => Slot::Index,
                        (_, 0) => Slot::Absent,
                        (_, 1) => Slot::Data { dtype, rw: false },
                        _ => Slot::Data { dtype, rw: true },
                    })
                    .collect();
                let src = source(sh, &slots, &[]);
                let module = match ::wgpu::naga::front::wgsl::parse_str(&src) {
                    Ok(m) => m,
                    Err(e) => panic!("{} [{dtype}]: {}", sh.name, e.emit_to_string(&src)),
                };
                let mut v = ::wgpu::naga::valid::Validator::new(
                    ::wgpu::naga::valid::ValidationFlags::all(),
                    ::wgpu::naga::valid::Capabilities::empty(),
                );
                if let Err(e) = v.validate(&module) {
                    panic!("{} [{dtype}]: {}", sh.name, e.emit_to_string(&src));
                }
            }
        }
    }
}
