// Batched GEMM `C = alpha op(A) op(B) + beta C`, FP32 accumulation.
//
// A workgroup of 256 invocations computes a 64 x 64 tile of C (each invocation a 4 x 4
// block, rows `ty + 16 r`, columns `tx + 16 c`), stepping through K in slices of 16: the
// slices of A (64 x 16) and B (16 x 64) are widened to f32 into workgroup memory (transposes
// resolved while loading), then every invocation runs 16 rank-1 updates from registers.
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
    pad: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

const BM: u32 = 64u;
const BN: u32 = 64u;
const BK: u32 = 16u;

var<workgroup> a_s: array<f32, 1024>; // [kk][row]
var<workgroup> b_s: array<f32, 1024>; // [kk][col]

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
    var acc: array<vec4<f32>, 4>;
    for (var r = 0u; r < 4u; r++) {
        acc[r] = vec4<f32>(0.0);
    }
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        for (var e = 0u; e < 4u; e++) {
            let idx = li + e * 256u;
            // A: consecutive invocations walk K (row-major A) or rows (transposed A).
            var r: u32;
            var kk: u32;
            if (p.trans_a == 0u) {
                r = idx / BK;
                kk = idx % BK;
            } else {
                r = idx % BM;
                kk = idx / BM;
            }
            let gr = row0 + r;
            let gk = k0 + kk;
            var va = 0.0;
            if (gr < p.m && gk < p.k) {
                if (p.trans_a == 0u) {
                    va = a_ld(a0 + gr * p.k + gk);
                } else {
                    va = a_ld(a0 + gk * p.m + gr);
                }
            }
            a_s[kk * BM + r] = va;
            // B: consecutive invocations walk columns (row-major B) or K (transposed B).
            var cc: u32;
            var kb: u32;
            if (p.trans_b == 0u) {
                cc = idx % BN;
                kb = idx / BN;
            } else {
                cc = idx / BK;
                kb = idx % BK;
            }
            let gc = col0 + cc;
            let gkb = k0 + kb;
            var vb = 0.0;
            if (gc < p.n && gkb < p.k) {
                if (p.trans_b == 0u) {
                    vb = b_ld(b0 + gkb * p.n + gc);
                } else {
                    vb = b_ld(b0 + gc * p.k + gkb);
                }
            }
            b_s[kb * BN + cc] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let bv = vec4<f32>(b_s[kk * BN + tx], b_s[kk * BN + tx + 16u],
                               b_s[kk * BN + tx + 32u], b_s[kk * BN + tx + 48u]);
            for (var r = 0u; r < 4u; r++) {
                acc[r] += a_s[kk * BM + ty + 16u * r] * bv;
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let gr = row0 + ty + 16u * r;
        if (gr < p.m) {
            for (var cix = 0u; cix < 4u; cix++) {
                let gc = col0 + tx + 16u * cix;
                if (gc < p.n) {
                    let i = c0 + gr * p.n + gc;
                    var v = p.alpha * acc[r][cix];
                    if (p.beta != 0.0) {
                        v += p.beta * c_ld(i);
                    }
                    c_st(i, v);
                }
            }
        }
    }
}
