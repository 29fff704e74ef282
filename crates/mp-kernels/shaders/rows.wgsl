// Row-wise kernels, one workgroup of 256 invocations per row, FP32 inside:
// softmax / log-softmax (entry `softmax`, C_LOG, C_CAUSAL), its backward (`softmax_bwd`),
// layer norm (`ln_fwd`), its dx part (`ln_bwd_dx`, per row) and its dweight/dbias part
// (`ln_bwd_dw`, one invocation per column), cross-entropy (`ce_fwd`), its backward
// (`ce_bwd`), and both at once (`ce_fused`: the fused classifier).

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
    dloss: f32,
}
@group(0) @binding(1) var<uniform> p: Params;

var<workgroup> red: array<f32, 256>;

fn wg_sum(v: f32, li: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) {
            red[li] = red[li] + red[li + w];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn wg_max(v: f32, li: u32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) {
            red[li] = max_nan(red[li], red[li + w]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn softmax(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let r = linear_group(wg, nwg);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    var vis = p.cols;
    if (C_CAUSAL == 1u) {
        vis = r % p.cols + 1u;
    }
    var m = neg_inf();
    for (var j = li; j < vis; j += 256u) {
        m = max_nan(m, x_ld(base + j));
    }
    m = wg_max(m, li);
    var s = 0.0;
    for (var j = li; j < vis; j += 256u) {
        s += expc(x_ld(base + j) - m);
    }
    s = wg_sum(s, li);
    if (C_LOG == 1u) {
        let ls = log(s);
        for (var j = li; j < p.cols; j += 256u) {
            if (j < vis) {
                out_st(base + j, x_ld(base + j) - m - ls);
            } else {
                out_st(base + j, neg_inf());
            }
        }
    } else {
        let inv = 1.0 / s;
        for (var j = li; j < p.cols; j += 256u) {
            if (j < vis) {
                out_st(base + j, expc(x_ld(base + j) - m) * inv);
            } else {
                out_st(base + j, 0.0);
            }
        }
    }
}

@compute @workgroup_size(256)
fn softmax_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let r = linear_group(wg, nwg);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    var s = 0.0;
    for (var j = li; j < p.cols; j += 256u) {
        let y = y_ld(base + j);
        let g = dy_ld(base + j);
        if (C_LOG == 1u) {
            if (bitcast<u32>(y) != NEG_INF_BITS) {
                s += g;
            }
        } else {
            s += y * g;
        }
    }
    s = wg_sum(s, li);
    for (var j = li; j < p.cols; j += 256u) {
        let y = y_ld(base + j);
        let g = dy_ld(base + j);
        if (C_LOG == 1u) {
            if (bitcast<u32>(y) != NEG_INF_BITS) {
                dx_st(base + j, dx_ld(base + j) + (g - expc(y) * s));
            }
        } else if (y != 0.0) {
            dx_st(base + j, dx_ld(base + j) + y * (g - s));
        }
    }
}

@compute @workgroup_size(256)
fn ln_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let r = linear_group(wg, nwg);
    if (r >= p.rows) {
        return;
    }
    let c = p.cols;
    let base = r * c;
    var s = 0.0;
    for (var j = li; j < c; j += 256u) {
        s += x_ld(base + j);
    }
    let mu = wg_sum(s, li) / f32(c);
    var v = 0.0;
    for (var j = li; j < c; j += 256u) {
        let d = x_ld(base + j) - mu;
        v += d * d;
    }
    let var_ = wg_sum(v, li);
    let rs = 1.0 / sqrt(var_ / f32(c) + p.eps);
    if (li == 0u) {
        mean_st(r, mu);
        rstd_st(r, rs);
    }
    for (var j = li; j < c; j += 256u) {
        out_st(base + j, (x_ld(base + j) - mu) * rs * w_ld(j) + b_ld(j));
    }
}

@compute @workgroup_size(256)
fn ln_bwd_dx(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let r = linear_group(wg, nwg);
    if (r >= p.rows) {
        return;
    }
    let c = p.cols;
    let base = r * c;
    let mu = mean_ld(r);
    let rs = rstd_ld(r);
    var s1 = 0.0;
    var s2 = 0.0;
    for (var j = li; j < c; j += 256u) {
        let xh = (x_ld(base + j) - mu) * rs;
        let d = dy_ld(base + j) * w_ld(j);
        s1 += d;
        s2 += d * xh;
    }
    let m1 = wg_sum(s1, li) / f32(c);
    let m2 = wg_sum(s2, li) / f32(c);
    for (var j = li; j < c; j += 256u) {
        let xh = (x_ld(base + j) - mu) * rs;
        let d = dy_ld(base + j) * w_ld(j);
        dx_st(base + j, dx_ld(base + j) + rs * (d - m1 - xh * m2));
    }
}

@compute @workgroup_size(256)
fn ln_bwd_dw(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let j = linear_group(wg, nwg) * 256u + li;
    if (j >= p.cols) {
        return;
    }
    var dw = 0.0;
    var db = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let i = r * p.cols + j;
        let g = dy_ld(i);
        db += g;
        dw += g * ((x_ld(i) - mean_ld(r)) * rstd_ld(r));
    }
    dweight_st(j, dweight_ld(j) + dw);
    dbias_st(j, dbias_ld(j) + db);
}

// The max and the sum of exp(x - max) of logits row `base` over the workgroup (every
// invocation gets both).
fn row_max_sum(base: u32, li: u32) -> vec2<f32> {
    var m = neg_inf();
    for (var j = li; j < p.cols; j += 256u) {
        m = max_nan(m, x_ld(base + j));
    }
    m = wg_max(m, li);
    var s = 0.0;
    for (var j = li; j < p.cols; j += 256u) {
        s += expc(x_ld(base + j) - m);
    }
    return vec2<f32>(m, wg_sum(s, li));
}

@compute @workgroup_size(256)
fn ce_fwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let r = linear_group(wg, nwg);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    let ms = row_max_sum(base, li);
    let m = ms.x;
    let s = ms.y;
    if (li == 0u) {
        let t = tg_idx(r);
        out_st(r, m + log(s) - x_ld(base + t));
    }
}

// dx[base + j] = (softmax_j - onehot(t)_j) * dloss for the row whose max and sum are `ms`.
fn ce_grad_row(base: u32, ms: vec2<f32>, t: u32, li: u32) {
    let k = p.dloss / ms.y;
    for (var j = li; j < p.cols; j += 256u) {
        var v = expc(x_ld(base + j) - ms.x) * k;
        if (j == t) {
            v -= p.dloss;
        }
        dx_st(base + j, v);
    }
}

@compute @workgroup_size(256)
fn ce_bwd(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let r = linear_group(wg, nwg);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    ce_grad_row(base, row_max_sum(base, li), tg_idx(r), li);
}

// The fused classifier: the loss of row r into `out[r]` and its gradient into `dx`, from one
// workgroup's pass over the row (read for the max, the sum and the gradient; written once):
// ce_fwd and ce_bwd with the max and the sum found once.
@compute @workgroup_size(256)
fn ce_fused(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let r = linear_group(wg, nwg);
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    let ms = row_max_sum(base, li);
    let t = tg_idx(r);
    if (li == 0u) {
        out_st(r, ms.x + log(ms.y) - x_ld(base + t));
    }
    ce_grad_row(base, ms, t, li);
}
