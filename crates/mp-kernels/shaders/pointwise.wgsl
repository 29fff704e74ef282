// Element-wise ops, selected by C_OP: 0 add, 1 mul, 2 scale, 3 axpy (out += alpha a),
// 4 bias add (b indexed by column), 5 gelu, 6 gelu backward (out += gelu'(a) b), 7 fill.

struct Params {
    n: u32,
    cols: u32,
    base: u32,
    alpha: f32,
}
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.n) {
        return;
    }
    switch C_OP {
        case 0u: { out_st(i, a_ld(i) + b_ld(i)); }
        case 1u: { out_st(i, a_ld(i) * b_ld(i)); }
        case 2u: { out_st(i, p.alpha * a_ld(i)); }
        case 3u: { out_st(i, out_ld(i) + p.alpha * a_ld(i)); }
        case 4u: { out_st(i, a_ld(i) + b_ld((p.base + i) % p.cols)); }
        case 5u: { out_st(i, gelu(a_ld(i))); }
        case 6u: { out_st(i, out_ld(i) + gelu_grad(a_ld(i)) * b_ld(i)); }
        default: { out_st(i, p.alpha); }
    }
}
