// Row reductions (entry `main`, one workgroup per row; C_OP: 0 sum, 1 mean, 2 max, 3 sum of
// squares) and column sums accumulated into `out` (entry `cols`, one invocation per column).

struct Params {
    rows: u32,
    cols: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

var<workgroup> sh: array<f32, 256>;

fn combine(a: f32, b: f32) -> f32 {
    if (C_OP == 2u) {
        return max_nan(a, b);
    }
    return a + b;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let r = linear_group(wg, nwg);
    if (r >= p.rows) {
        return;
    }
    var acc = 0.0;
    if (C_OP == 2u) {
        acc = neg_inf();
    }
    for (var j = li; j < p.cols; j += 256u) {
        let v = x_ld(r * p.cols + j);
        if (C_OP == 3u) {
            acc += v * v;
        } else {
            acc = combine(acc, v);
        }
    }
    sh[li] = acc;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (li < w) {
            sh[li] = combine(sh[li], sh[li + w]);
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        var v = sh[0];
        if (C_OP == 1u) {
            v = v / f32(p.cols);
        }
        out_st(r, v);
    }
}

@compute @workgroup_size(256)
fn cols(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let j = linear_group(wg, nwg) * 256u + li;
    if (j >= p.cols) {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        acc += x_ld(r * p.cols + j);
    }
    out_st(j, out_ld(j) + acc);
}
