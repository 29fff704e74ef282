// Head-major <-> token-major copies of one part of attention rows (the GEMM attention path,
// mp_kernels::gemm_attention), one invocation per head-major element
// i = ((n * heads + h) * t + pos) * hs + d, whose token-major element is
// (n * t + pos) * row + col + h * hs + d.
// `split`: dst (head-major) = src (token-major). `merge`: dst (token-major) = src (head-major),
// plus dst when C_ACC = 1 (FP32, one rounding). C_COPY = 1 copies bits (same dtype, no
// accumulation).

struct Params {
    n: u32,
    t: u32,
    heads: u32,
    hs: u32,
    row: u32,
    col: u32,
    pad0: u32,
    pad1: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

fn token_index(i: u32) -> u32 {
    let d = i % p.hs;
    let r = i / p.hs;
    let pos = r % p.t;
    let nh = r / p.t;
    let h = nh % p.heads;
    let n = nh / p.heads;
    return (n * p.t + pos) * p.row + p.col + h * p.hs + d;
}

@compute @workgroup_size(256)
fn split(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.n) {
        return;
    }
    let s = token_index(i);
    if (C_COPY == 1u) {
        dst_st_bits(i, src_bits(s));
    } else {
        dst_st(i, src_ld(s));
    }
}

@compute @workgroup_size(256)
fn merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.n) {
        return;
    }
    let o = token_index(i);
    if (C_COPY == 1u) {
        dst_st_bits(o, src_bits(i));
    } else if (C_ACC == 1u) {
        dst_st(o, dst_ld(o) + src_ld(i));
    } else {
        dst_st(o, src_ld(i));
    }
}
