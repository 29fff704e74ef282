// The rotary position embedding (mp_kernels::LayoutOps::rope), rotate-half convention, FP32:
// one invocation per pair (row r, head, j < h = head_dim / 2) at position p = r % t:
// out[j] = x[j] cos[p, j] - x[j + h] sin[p, j], out[j + h] = x[j + h] cos[p, j] + x[j] sin[p, j],
// with the sine times `sign` (-1: the inverse rotation, the backward); heads from `rotated` on
// are copied.

struct Params {
    pairs: u32,
    heads: u32,
    half: u32,
    t: u32,
    sign: f32,
    rotated: u32,
    pad1: u32,
    pad2: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.pairs) {
        return;
    }
    let j = i % p.half;
    let rh = i / p.half;
    let pos = (rh / p.heads) % p.t;
    let at = rh * 2u * p.half + j;
    if (rh % p.heads >= p.rotated) {
        out_st(at, x_ld(at));
        out_st(at + p.half, x_ld(at + p.half));
        return;
    }
    let c = cos_ld(pos * p.half + j);
    let s = sin_ld(pos * p.half + j) * p.sign;
    let x1 = x_ld(at);
    let x2 = x_ld(at + p.half);
    out_st(at, x1 * c - x2 * s);
    out_st(at + p.half, x2 * c + x1 * s);
}
