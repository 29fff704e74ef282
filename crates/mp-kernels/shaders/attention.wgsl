// Causal (grouped-query) self-attention saving only the log-sum-exp, FP32 inside: one
// invocation per output row, streaming over the keys with an online softmax
// (FlashAttention-2's algorithm without its tiling), so no t x t matrix is ever stored.
//
// qkv rows: `row` elements per token, the `heads` query heads of `hs` from column 0, the
// `kv_heads` key heads from column `c`, the value heads after them; query head h attends with
// key/value head h / (heads / kv_heads). Scores are (q * scale) . k.
//
// `attn_fwd`, one invocation per (n, h, i): out[n, i, h] and lse[(n heads + h) t + i].
// `attn_delta`, per (n, h, i): delta = rowsum(dout * out) (the softmax backward's D).
// `attn_dq`, per (n, h, i): dqkv[q of h] += scale sum_j dS_ij k_j.
// `attn_dkv`, per (n, kvh, j): dqkv[k of kvh] += sum_{h, i >= j} dS_ij q_i scale and
// dqkv[v of kvh] += sum P_ij dout_i. Each gradient element has one writer: no atomics on
// values, deterministic.

struct Params {
    count: u32,
    t: u32,
    heads: u32,
    kv_heads: u32,
    hs: u32,
    c: u32,
    row: u32,
    scale: f32,
}
@group(0) @binding(1) var<uniform> p: Params;

const MAX_HS: u32 = 256u;

fn inv_index(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return linear_group(wg, nwg) * 64u + li;
}

fn k_col(kvh: u32) -> u32 {
    return p.c + kvh * p.hs;
}

fn v_col(kvh: u32) -> u32 {
    return p.c + (p.kv_heads + kvh) * p.hs;
}

@compute @workgroup_size(64)
fn attn_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let g = inv_index(wg, nwg, li);
    if (g >= p.count) {
        return;
    }
    let i = g % p.t;
    let nh = g / p.t;
    let h = nh % p.heads;
    let n = nh / p.heads;
    let kvh = h / (p.heads / p.kv_heads);
    var q: array<f32, MAX_HS>;
    var o: array<f32, MAX_HS>;
    let qb = (n * p.t + i) * p.row + h * p.hs;
    for (var d = 0u; d < p.hs; d++) {
        q[d] = qkv_ld(qb + d) * p.scale;
        o[d] = 0.0;
    }
    var m = neg_inf();
    var l = 0.0;
    for (var j = 0u; j <= i; j++) {
        let kb = (n * p.t + j) * p.row;
        var s = 0.0;
        for (var d = 0u; d < p.hs; d++) {
            s += q[d] * qkv_ld(kb + k_col(kvh) + d);
        }
        let mn = max_nan(m, s);
        let corr = expc(m - mn);
        let pj = expc(s - mn);
        l = l * corr + pj;
        for (var d = 0u; d < p.hs; d++) {
            o[d] = o[d] * corr + pj * qkv_ld(kb + v_col(kvh) + d);
        }
        m = mn;
    }
    let inv = 1.0 / l;
    let ob = (n * p.t + i) * p.c + h * p.hs;
    for (var d = 0u; d < p.hs; d++) {
        out_st(ob + d, o[d] * inv);
    }
    lse_st(g, m + log(l));
}

@compute @workgroup_size(64)
fn attn_delta(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let g = inv_index(wg, nwg, li);
    if (g >= p.count) {
        return;
    }
    let i = g % p.t;
    let nh = g / p.t;
    let h = nh % p.heads;
    let n = nh / p.heads;
    let ob = (n * p.t + i) * p.c + h * p.hs;
    var s = 0.0;
    for (var d = 0u; d < p.hs; d++) {
        s += dout_ld(ob + d) * out_ld(ob + d);
    }
    delta_st(g, s);
}

@compute @workgroup_size(64)
fn attn_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let g = inv_index(wg, nwg, li);
    if (g >= p.count) {
        return;
    }
    let i = g % p.t;
    let nh = g / p.t;
    let h = nh % p.heads;
    let n = nh / p.heads;
    let kvh = h / (p.heads / p.kv_heads);
    var q: array<f32, MAX_HS>;
    var go: array<f32, MAX_HS>;
    var dq: array<f32, MAX_HS>;
    let qb = (n * p.t + i) * p.row + h * p.hs;
    let ob = (n * p.t + i) * p.c + h * p.hs;
    for (var d = 0u; d < p.hs; d++) {
        q[d] = qkv_ld(qb + d) * p.scale;
        go[d] = dout_ld(ob + d);
        dq[d] = 0.0;
    }
    let lse = lse_ld(g);
    let dl = delta_ld(g);
    for (var j = 0u; j <= i; j++) {
        let kb = (n * p.t + j) * p.row;
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < p.hs; d++) {
            s += q[d] * qkv_ld(kb + k_col(kvh) + d);
            dp += go[d] * qkv_ld(kb + v_col(kvh) + d);
        }
        let ds = expc(s - lse) * (dp - dl);
        for (var d = 0u; d < p.hs; d++) {
            dq[d] += ds * qkv_ld(kb + k_col(kvh) + d);
        }
    }
    for (var d = 0u; d < p.hs; d++) {
        dqkv_st(qb + d, dqkv_ld(qb + d) + dq[d] * p.scale);
    }
}

@compute @workgroup_size(64)
fn attn_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let g = inv_index(wg, nwg, li);
    if (g >= p.count) {
        return;
    }
    let j = g % p.t;
    let nk = g / p.t;
    let kvh = nk % p.kv_heads;
    let n = nk / p.kv_heads;
    let group = p.heads / p.kv_heads;
    var k: array<f32, MAX_HS>;
    var v: array<f32, MAX_HS>;
    var dk: array<f32, MAX_HS>;
    var dv: array<f32, MAX_HS>;
    let kb = (n * p.t + j) * p.row;
    for (var d = 0u; d < p.hs; d++) {
        k[d] = qkv_ld(kb + k_col(kvh) + d);
        v[d] = qkv_ld(kb + v_col(kvh) + d);
        dk[d] = 0.0;
        dv[d] = 0.0;
    }
    for (var r = 0u; r < group; r++) {
        let h = kvh * group + r;
        for (var i = j; i < p.t; i++) {
            let qb = (n * p.t + i) * p.row + h * p.hs;
            let ob = (n * p.t + i) * p.c + h * p.hs;
            let li_ = (n * p.heads + h) * p.t + i;
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < p.hs; d++) {
                s += qkv_ld(qb + d) * p.scale * k[d];
                dp += dout_ld(ob + d) * v[d];
            }
            let pj = expc(s - lse_ld(li_));
            let ds = pj * (dp - delta_ld(li_));
            for (var d = 0u; d < p.hs; d++) {
                dv[d] += pj * dout_ld(ob + d);
                dk[d] += ds * qkv_ld(qb + d) * p.scale;
            }
        }
    }
    for (var d = 0u; d < p.hs; d++) {
        let kd = kb + k_col(kvh) + d;
        let vd = kb + v_col(kvh) + d;
        dqkv_st(kd, dqkv_ld(kd) + dk[d]);
        dqkv_st(vd, dqkv_ld(vd) + dv[d]);
    }
}
