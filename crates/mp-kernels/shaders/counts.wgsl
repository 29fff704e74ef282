// The precision-health counts: each workgroup reads 4096 elements of one query's range and
// writes its counts into `part`, 5 values per group from `5 * (first_part + group)` for
// `range_main`, 2 for `lost_main`; the host adds them in u64. Counts of at most 4096 are exact
// in f32; the amax bits go as two 16-bit halves, so no store can flush them.
//
// range_main: over the finite non-zero x, with a = |x * scale|'s bits (|x|'s own bits when the
// scale is 1, so no product can flush), how many underflow (a < nonzero_from), are subnormal
// (a < normal_from) or overflow (a >= overflow_from), and the largest |x| bits: exactly
// mp_dtype::range_stats with mp_dtype::RangeThresholds.
// lost_main: how many updates d = y - x (after - before) are non-zero and finite, and how many
// of those weights stored in dtype C_DT lose (w = rne(x), rne(w + d) == w).

struct Params {
    n: u32,
    first_part: u32,
    scale_bits: u32,
    nonzero_from: u32,
    normal_from: u32,
    overflow_from: u32,
    pad0: u32,
    pad1: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

var<workgroup> c0: array<u32, 256>;
var<workgroup> c1: array<u32, 256>;
var<workgroup> c2: array<u32, 256>;
var<workgroup> c3: array<u32, 256>;

// Tree sums (c0..c2) and max (c3) over the workgroup; the totals end in slot 0.
fn reduce(li: u32) {
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) {
            c0[li] = c0[li] + c0[li + w];
            c1[li] = c1[li] + c1[li + w];
            c2[li] = c2[li] + c2[li + w];
            c3[li] = max(c3[li], c3[li + w]);
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(256)
fn range_main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let gi = linear_group(wg, nwg);
    if (gi * 4096u >= p.n) {
        return;
    }
    let unit = p.scale_bits == 0x3f800000u;
    let scale = bitcast<f32>(p.scale_bits);
    var under = 0u;
    var sub = 0u;
    var over = 0u;
    var amax = 0u;
    for (var e = 0u; e < 16u; e++) {
        let i = gi * 4096u + e * 256u + li;
        if (i < p.n) {
            let v = x_ld(i);
            let b = bitcast<u32>(v) & 0x7fffffffu;
            if (b != 0u && b < 0x7f800000u) {
                amax = max(amax, b);
                var a = b;
                if (!unit) {
                    a = bitcast<u32>(v * scale) & 0x7fffffffu;
                }
                if (a < p.nonzero_from) {
                    under += 1u;
                } else if (a < p.normal_from) {
                    sub += 1u;
                }
                if (a >= p.overflow_from) {
                    over += 1u;
                }
            }
        }
    }
    c0[li] = under;
    c1[li] = sub;
    c2[li] = over;
    c3[li] = amax;
    reduce(li);
    if (li == 0u) {
        let at = 5u * (p.first_part + gi);
        part_st(at, f32(c0[0]));
        part_st(at + 1u, f32(c1[0]));
        part_st(at + 2u, f32(c2[0]));
        part_st(at + 3u, f32(c3[0] >> 16u));
        part_st(at + 4u, f32(c3[0] & 0xffffu));
    }
}

// Round to nearest even into dtype C_DT (mp-kernels' dtype codes) and back.
fn round_dt(v: f32) -> f32 {
    switch C_DT {
        case 1u: { return dec_f16(enc_f16(v, false, 0u)); }
        case 2u: { return dec_bf16(enc_bf16(v, false, 0u)); }
        case 3u: { return dec_f8e4m3(enc_f8e4m3(v, false, 0u)); }
        case 4u: { return dec_f8e5m2(enc_f8e5m2(v, false, 0u)); }
        default: { return v; }
    }
}

@compute @workgroup_size(256)
fn lost_main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let gi = linear_group(wg, nwg);
    if (gi * 4096u >= p.n) {
        return;
    }
    var updated = 0u;
    var lost = 0u;
    for (var e = 0u; e < 16u; e++) {
        let i = gi * 4096u + e * 256u + li;
        if (i < p.n) {
            let b = x_ld(i);
            let d = y_ld(i) - b;
            if (d != 0.0 && !is_non_finite(d)) {
                updated += 1u;
                let w = round_dt(b);
                if (round_dt(w + d) == w) {
                    lost += 1u;
                }
            }
        }
    }
    c0[li] = updated;
    c1[li] = lost;
    c2[li] = 0u;
    c3[li] = 0u;
    reduce(li);
    if (li == 0u) {
        let at = 2u * (p.first_part + gi);
        part_st(at, f32(c0[0]));
        part_st(at + 1u, f32(c1[0]));
    }
}
