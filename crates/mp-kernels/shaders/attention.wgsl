// Causal multi-head self-attention, FP32 inside, 64 invocations per workgroup.
//
// `fwd`: one workgroup per (batch, head, query row i): the row max and the sum of
// exponentials of the scaled scores (two passes), then tiles of 256 keys whose probabilities
// are rounded to the `probs` dtype, stored, and (as stored) multiplied into V; masked
// probabilities (j > i) are written as 0.
// `bwd_q`: one workgroup per (batch, head, i): `dsum_i = sum_j p_ij (go_i . v_j)` (saved in
// `dsum`) and `dq_i += sum_j g_ij k_j` with `g_ij = scale p_ij (go_i . v_j - dsum_i)`.
// `bwd_kv`: one workgroup per (batch, head, key row j): `dk_j += sum_{i>=j} g_ij q_i` and
// `dv_j += sum_{i>=j} p_ij go_i`. Every element of `dqkv` is written by one invocation.

struct Params {
    t: u32,
    c: u32,
    heads: u32,
    hs: u32,
    scale: f32,
    groups: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

const WG: u32 = 64u;
const TILE: u32 = 256u;
// The largest head size (accumulators per invocation: MAX_HS / WG).
const MAX_HS: u32 = 256u;

var<workgroup> vec_a: array<f32, 256>;
var<workgroup> tile_p: array<f32, 256>;
var<workgroup> tile_g: array<f32, 256>;
var<workgroup> red: array<f32, 64>;

fn wg_reduce(v: f32, li: u32, is_max: bool) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if (li < w) {
            if (is_max) {
                red[li] = max_nan(red[li], red[li + w]);
            } else {
                red[li] = red[li] + red[li + w];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Element index of row `row` (of the b*t rows) of part `part` (0 q, 1 k, 2 v) of head `h`.
fn qkv_at(row: u32, part: u32, h: u32) -> u32 {
    return row * 3u * p.c + part * p.c + h * p.hs;
}

// scale * (vec_a . qkv[row, part, h, :])
fn dot_a(row: u32, part: u32, h: u32) -> f32 {
    let base = qkv_at(row, part, h);
    var s = 0.0;
    for (var d = 0u; d < p.hs; d++) {
        s += vec_a[d] * qkv_ld(base + d);
    }
    return s;
}

@compute @workgroup_size(64)
fn fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) li: u32) {
    let id = linear_group(wg, nwg);
    if (id >= p.groups) {
        return;
    }
    let i = id % p.t;
    let bh = id / p.t;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let row0 = b * p.t;
    for (var d = li; d < p.hs; d += WG) {
        vec_a[d] = qkv_ld(qkv_at(row0 + i, 0u, h) + d);
    }
    workgroupBarrier();
    var m = neg_inf();
    for (var j = li; j <= i; j += WG) {
        m = max_nan(m, p.scale * dot_a(row0 + j, 1u, h));
    }
    m = wg_reduce(m, li, true);
    var s = 0.0;
    for (var j = li; j <= i; j += WG) {
        s += expc(p.scale * dot_a(row0 + j, 1u, h) - m);
    }
    s = wg_reduce(s, li, false);
    let inv = 1.0 / s;
    let prow = id * p.t;
    var acc: array<f32, 4>;
    for (var e = 0u; e < 4u; e++) {
        acc[e] = 0.0;
    }
    for (var j0 = 0u; j0 <= i; j0 += TILE) {
        for (var jj = li; jj < TILE; jj += WG) {
            let j = j0 + jj;
            if (j <= i) {
                let pr = expc(p.scale * dot_a(row0 + j, 1u, h) - m) * inv;
                probs_st(prow + j, pr);
                tile_p[jj] = probs_round(pr);
            }
        }
        workgroupBarrier();
        let jn = min(TILE, i + 1u - j0);
        for (var e = 0u; e < 4u; e++) {
            let d = li + e * WG;
            if (d < p.hs) {
                let vb = qkv_at(row0 + j0, 2u, h) + d;
                var a = acc[e];
                for (var jj = 0u; jj < jn; jj++) {
                    a += tile_p[jj] * qkv_ld(vb + jj * 3u * p.c);
                }
                acc[e] = a;
            }
        }
        workgroupBarrier();
    }
    for (var j = i + 1u + li; j < p.t; j += WG) {
        probs_st(prow + j, 0.0);
    }
    for (var e = 0u; e < 4u; e++) {
        let d = li + e * WG;
        if (d < p.hs) {
            out_st((row0 + i) * p.c + h * p.hs + d, acc[e]);
        }
    }
}

@compute @workgroup_size(64)
fn bwd_q(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) li: u32) {
    let id = linear_group(wg, nwg);
    if (id >= p.groups) {
        return;
    }
    let i = id % p.t;
    let bh = id / p.t;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let row0 = b * p.t;
    // vec_a = go_i
    for (var d = li; d < p.hs; d += WG) {
        vec_a[d] = dout_ld((row0 + i) * p.c + h * p.hs + d);
    }
    workgroupBarrier();
    let prow = id * p.t;
    var s = 0.0;
    for (var j = li; j <= i; j += WG) {
        s += probs_ld(prow + j) * dot_a(row0 + j, 2u, h);
    }
    let dsum = wg_reduce(s, li, false);
    if (li == 0u) {
        dsum_st(id, dsum);
    }
    var acc: array<f32, 4>;
    for (var e = 0u; e < 4u; e++) {
        acc[e] = 0.0;
    }
    for (var j0 = 0u; j0 <= i; j0 += TILE) {
        for (var jj = li; jj < TILE; jj += WG) {
            let j = j0 + jj;
            if (j <= i) {
                tile_g[jj] = p.scale * probs_ld(prow + j) * (dot_a(row0 + j, 2u, h) - dsum);
            }
        }
        workgroupBarrier();
        let jn = min(TILE, i + 1u - j0);
        for (var e = 0u; e < 4u; e++) {
            let d = li + e * WG;
            if (d < p.hs) {
                let kb = qkv_at(row0 + j0, 1u, h) + d;
                var a = acc[e];
                for (var jj = 0u; jj < jn; jj++) {
                    a += tile_g[jj] * qkv_ld(kb + jj * 3u * p.c);
                }
                acc[e] = a;
            }
        }
        workgroupBarrier();
    }
    for (var e = 0u; e < 4u; e++) {
        let d = li + e * WG;
        if (d < p.hs) {
            let at = qkv_at(row0 + i, 0u, h) + d;
            dqkv_st(at, dqkv_ld(at) + acc[e]);
        }
    }
}

@compute @workgroup_size(64)
fn bwd_kv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let id = linear_group(wg, nwg);
    if (id >= p.groups) {
        return;
    }
    let j = id % p.t;
    let bh = id / p.t;
    let h = bh % p.heads;
    let b = bh / p.heads;
    let row0 = b * p.t;
    // vec_a = v_j
    for (var d = li; d < p.hs; d += WG) {
        vec_a[d] = qkv_ld(qkv_at(row0 + j, 2u, h) + d);
    }
    workgroupBarrier();
    var ak: array<f32, 4>;
    var av: array<f32, 4>;
    for (var e = 0u; e < 4u; e++) {
        ak[e] = 0.0;
        av[e] = 0.0;
    }
    for (var i0 = j; i0 < p.t; i0 += TILE) {
        for (var ii = li; ii < TILE; ii += WG) {
            let i = i0 + ii;
            if (i < p.t) {
                let pij = probs_ld((bh * p.t + i) * p.t + j);
                let gob = (row0 + i) * p.c + h * p.hs;
                var ds = 0.0;
                for (var d = 0u; d < p.hs; d++) {
                    ds += dout_ld(gob + d) * vec_a[d];
                }
                tile_p[ii] = pij;
                tile_g[ii] = p.scale * pij * (ds - dsum_ld(bh * p.t + i));
            }
        }
        workgroupBarrier();
        let n_i = min(TILE, p.t - i0);
        for (var e = 0u; e < 4u; e++) {
            let d = li + e * WG;
            if (d < p.hs) {
                var a = ak[e];
                var v = av[e];
                for (var ii = 0u; ii < n_i; ii++) {
                    let i = i0 + ii;
                    a += tile_g[ii] * qkv_ld(qkv_at(row0 + i, 0u, h) + d);
                    v += tile_p[ii] * dout_ld((row0 + i) * p.c + h * p.hs + d);
                }
                ak[e] = a;
                av[e] = v;
            }
        }
        workgroupBarrier();
    }
    for (var e = 0u; e < 4u; e++) {
        let d = li + e * WG;
        if (d < p.hs) {
            let at_k = qkv_at(row0 + j, 1u, h) + d;
            dqkv_st(at_k, dqkv_ld(at_k) + ak[e]);
            let at_v = qkv_at(row0 + j, 2u, h) + d;
            dqkv_st(at_v, dqkv_ld(at_v) + av[e]);
        }
    }
}
