// SwiGLU of packed rows (mp_kernels::PointwiseOps::swiglu): `gu` holds rows of 2f, a gate g
// then an up u. Forward (C_BWD = 0), one invocation per output element (row r, j < f):
// out[r, j] = silu(g) * u. Backward (C_BWD = 1), one per (r, j) too:
// dgu[r, j] += dy * u * silu'(g) and dgu[r, f + j] += dy * silu(g). FP32 throughout, with
// silu(x) = x / (1 + exp(-x)) through the CPU's exp.

struct Params {
    n: u32,
    f: u32,
    pad0: u32,
    pad1: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.n) {
        return;
    }
    let r = i / p.f;
    let at = i + r * p.f;  // r * 2f + j
    let g = gu_ld(at);
    let u = gu_ld(at + p.f);
    let s = 1.0 / (1.0 + expc(-g));
    if (C_BWD == 0u) {
        out_st(i, g * s * u);
        return;
    }
    let y = dy_ld(i);
    dgu_st(at, dgu_ld(at) + y * u * (s * (1.0 + g * (1.0 - s))));
    dgu_st(at + p.f, dgu_ld(at + p.f) + y * (g * s));
}
