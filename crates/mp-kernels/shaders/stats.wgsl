// The fused gradient check: each workgroup reads 4096 elements, writes the f32 sum of
// squares of `g * mult` and a non-finite flag (1.0 when any `g` is +-inf or NaN) into
// `part[2 * (first_part + group)]`; the host adds the partials in f64.

struct Params {
    n: u32,
    first_part: u32,
    mult: f32,
    pad: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

var<workgroup> ssq: array<f32, 256>;
var<workgroup> bad: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let gi = linear_group(wg, nwg);
    if (gi * 4096u >= p.n) {
        return;
    }
    var acc = 0.0;
    var flag = 0u;
    for (var e = 0u; e < 16u; e++) {
        let i = gi * 4096u + e * 256u + li;
        if (i < p.n) {
            let g = g_ld(i);
            let y = g * p.mult;
            acc += y * y;
            if (is_non_finite(g)) {
                flag = 1u;
            }
        }
    }
    ssq[li] = acc;
    bad[li] = flag;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) {
            ssq[li] = ssq[li] + ssq[li + w];
            bad[li] = bad[li] | bad[li + w];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        part_st(2u * (p.first_part + gi), ssq[0]);
        part_st(2u * (p.first_part + gi) + 1u, f32(bad[0]));
    }
}
