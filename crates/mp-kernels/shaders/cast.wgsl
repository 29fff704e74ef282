// dst = src converted to dst's dtype. C_MODE: 0 copies the bits (same dtype), 1 rounds to
// nearest even, 2 rounds stochastically with the counter at the element's absolute index.

struct Params {
    n: u32,
    key: u32,
    base_lo: u32,
    base_hi: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.n) {
        return;
    }
    if (C_MODE == 0u) {
        dst_st_bits(i, src_bits(i));
    } else if (C_MODE == 1u) {
        dst_st(i, src_ld(i));
    } else {
        dst_st_sr(i, src_ld(i), sr_rand_at(p.key, p.base_lo, p.base_hi, i));
    }
}
