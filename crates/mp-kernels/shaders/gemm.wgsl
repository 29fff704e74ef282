// Batched GEMM `C = alpha op(A) op(B) + beta C`, FP32 accumulation; with `has_bias`, plus
// `bias[col]` before C's one rounding (a linear layer's forward: GemmOps::gemm_bias).
//
// A workgroup of 256 invocations computes a 64 x 64 tile of C; invocation (tx, ty) owns the
// 4 x 4 block at rows 4 ty.., columns 4 tx... K advances in slices of 16: each invocation
// loads four consecutive rows of A at one k and four consecutive columns of B at one k
// (widened to f32, transposes resolved while loading, edges zero-filled) into workgroup
// memory as one vec4 each, then runs 16 steps of two vec4 loads and four vec4 multiply-adds
// from registers (no dynamically indexed arrays, which some drivers spill to memory).
// Workgroup (x, y) is the tile column and row, z the batch entry (offset by `batch0`).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    batch0: u32,
    alpha: f32,
    beta: f32,
    has_bias: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> a_s: array<vec4<f32>, 256>; // [kk][row group]: rows 4g..4g+3 at k0 + kk
var<workgroup> b_s: array<vec4<f32>, 256>; // [kk][col group]: cols 4g..4g+3 at k0 + kk

// Element (row, kk) of op(A) for this batch entry, 0 outside.
fn a_at(a0: u32, row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) {
        return 0.0;
    }
    if (p.trans_a == 0u) {
        return a_ld(a0 + row * p.k + kk);
    }
    return a_ld(a0 + kk * p.m + row);
}

// Element (kk, col) of op(B) for this batch entry, 0 outside.
fn b_at(b0: u32, kk: u32, col: u32) -> f32 {
    if (col >= p.n || kk >= p.k) {
        return 0.0;
    }
    if (p.trans_b == 0u) {
        return b_ld(b0 + kk * p.n + col);
    }
    return b_ld(b0 + col * p.k + kk);
}

fn store_row(c0: u32, row: u32, col0: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let col = col0 + j;
        if (col < p.n) {
            let i = c0 + row * p.n + col;
            var x = p.alpha * v[j];
            if (p.beta != 0.0) {
                x += p.beta * c_ld(i);
            }
            if (p.has_bias != 0u) {
                x += bias_ld(col);
            }
            c_st(i, x);
        }
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let bz = wg.z + p.batch0;
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let a0 = bz * p.stride_a;
    let b0 = bz * p.stride_b;
    let c0 = bz * p.stride_c;
    let tx = li % 16u;
    let ty = li / 16u;
    // Which (k, group) this invocation loads: consecutive invocations walk the contiguous
    // dimension of each operand's storage.
    var a_kk = li % 16u;
    var a_g = li / 16u;
    if (p.trans_a != 0u) {
        a_kk = li / 16u;
        a_g = li % 16u;
    }
    var b_kk = li / 16u;
    var b_g = li % 16u;
    if (p.trans_b != 0u) {
        b_kk = li % 16u;
        b_g = li / 16u;
    }
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        let ar = row0 + 4u * a_g;
        let ak = k0 + a_kk;
        a_s[a_kk * 16u + a_g] = vec4<f32>(a_at(a0, ar, ak), a_at(a0, ar + 1u, ak),
                                          a_at(a0, ar + 2u, ak), a_at(a0, ar + 3u, ak));
        let bc = col0 + 4u * b_g;
        let bk = k0 + b_kk;
        b_s[b_kk * 16u + b_g] = vec4<f32>(b_at(b0, bk, bc), b_at(b0, bk, bc + 1u),
                                          b_at(b0, bk, bc + 2u), b_at(b0, bk, bc + 3u));
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = a_s[kk * 16u + ty];
            let b = b_s[kk * 16u + tx];
            acc0 += a.x * b;
            acc1 += a.y * b;
            acc2 += a.z * b;
            acc3 += a.w * b;
        }
        workgroupBarrier();
    }
    let r = row0 + 4u * ty;
    let c = col0 + 4u * tx;
    store_row(c0, r, c, acc0);
    store_row(c0, r + 1u, c, acc1);
    store_row(c0, r + 2u, c, acc2);
    store_row(c0, r + 3u, c, acc3);
}
