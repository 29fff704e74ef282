// The fused scaler and optimizer passes over flat arenas: one launch each, 8 elements per
// thread per iteration with 16-byte accesses where aligned.

// Per block: the FP32 sum of (g * mult)^2 and whether any g is non-finite.
extern "C" __global__ void mp_grad_stats_partial(const void* g, int gdt, u64 n, int vec, float mult,
                                                 float* part_sum, u32* part_flag) {
    u64 chunks = (n + 7) / 8;
    u64 stride = (u64)gridDim.x * blockDim.x;
    float acc = 0.0f;
    u32 bad = 0u;
    for (u64 ch = (u64)blockIdx.x * blockDim.x + threadIdx.x; ch < chunks; ch += stride) {
        float v[8];
        ld8(g, ch * 8, gdt, n, vec, v);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            bad |= (__float_as_uint(v[k]) & 0x7f800000u) == 0x7f800000u ? 1u : 0u;
            float x = v[k] * mult;
            acc += x * x;
        }
    }
    float s = block_sum(acc);
    int anybad = __syncthreads_or((int)bad);
    if (threadIdx.x == 0) {
        part_sum[blockIdx.x] = s;
        part_flag[blockIdx.x] = anybad ? 1u : 0u;
    }
}

// One block: out = NaN if any flag, else the f64 sum of the partials (fixed order per thread,
// then a fixed-shape tree: deterministic).
extern "C" __global__ void mp_grad_stats_final(const float* part_sum, const u32* part_flag, u64 nparts,
                                               double* out) {
    double acc = 0.0;
    u32 bad = 0u;
    for (u64 i = threadIdx.x; i < nparts; i += blockDim.x) {
        acc += (double)part_sum[i];
        bad |= part_flag[i];
    }
    __shared__ double sh[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    acc = warp_sum_d(acc);
    if (lane == 0) sh[w] = acc;
    int anybad = __syncthreads_or((int)bad);
    if (w == 0) {
        double t = lane < nw ? sh[lane] : 0.0;
        t = warp_sum_d(t);
        if (lane == 0) *out = anybad ? __longlong_as_double(0x7ff8000000000000ll) : t;
    }
}

// torch.optim.AdamW: p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= step_size * m / (sqrt(v) / sqrt_bc2 + eps), step_size = lr / bc1. g = grad * grad_mult.
// params may be FP32 (master) or BF16/F16 (pure low-precision, rounded with `sr`); model, when
// non-null, receives the new params rounded to its dtype.
extern "C" __global__ void mp_adamw(void* p, int pdt, const void* g, int gdt, float* m, float* v,
                                    void* model, int mdt, u64 n, int vec, float lr, float beta1,
                                    float beta2, float eps, float wd, float step_size,
                                    float sqrt_bc2, float grad_mult, int sr, u64 seed, u64 p_base,
                                    u64 model_base) {
    Rnd rp, rm;
    rp.sr = sr; rp.seed_mix = sr ? sr_seed_mix(seed) : 0u; rp.base = p_base; rp.sat = 0;
    rm = rp; rm.base = model_base;
    float decay = 1.0f - lr * wd;
    u64 chunks = (n + 7) / 8;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 ch = (u64)blockIdx.x * blockDim.x + threadIdx.x; ch < chunks; ch += stride) {
        u64 i = ch * 8;
        float vp[8], vg[8], vm[8], vv[8];
        ld8(p, i, pdt, n, vec, vp);
        ld8(g, i, gdt, n, vec, vg);
        ld8(m, i, DT_F32, n, vec, vm);
        ld8(v, i, DT_F32, n, vec, vv);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float gr = vg[k] * grad_mult;
            float pk = vp[k] * decay;
            vm[k] = beta1 * vm[k] + (1.0f - beta1) * gr;
            vv[k] = beta2 * vv[k] + (1.0f - beta2) * gr * gr;
            float denom = sqrtf(vv[k]) / sqrt_bc2 + eps;
            vp[k] = pk - step_size * (vm[k] / denom);
        }
        st8(m, i, DT_F32, n, vec, vm, rp);
        st8(v, i, DT_F32, n, vec, vv, rp);
        st8(p, i, pdt, n, vec, vp, rp);
        // the copy rounds the updated FP32 value (as the CPU oracle does, also when the
        // params themselves are stored low-precision)
        if (model) st8(model, i, mdt, n, vec, vp, rm);
    }
}

// torch.optim.SGD with momentum (see mp_kernels::Sgd); momentum buffer FP32.
extern "C" __global__ void mp_sgd(void* p, int pdt, const void* g, int gdt, float* buf,
                                  void* model, int mdt, u64 n, int vec, float lr, float momentum,
                                  float dampening, float wd, int nesterov, int first_step,
                                  float grad_mult, int sr, u64 seed, u64 p_base, u64 model_base) {
    Rnd rp, rm;
    rp.sr = sr; rp.seed_mix = sr ? sr_seed_mix(seed) : 0u; rp.base = p_base; rp.sat = 0;
    rm = rp; rm.base = model_base;
    u64 chunks = (n + 7) / 8;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 ch = (u64)blockIdx.x * blockDim.x + threadIdx.x; ch < chunks; ch += stride) {
        u64 i = ch * 8;
        float vp[8], vg[8], vb[8];
        ld8(p, i, pdt, n, vec, vp);
        ld8(g, i, gdt, n, vec, vg);
        if (momentum != 0.0f && !first_step) ld8(buf, i, DT_F32, n, vec, vb);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float gr = vg[k] * grad_mult + wd * vp[k];
            if (momentum != 0.0f) {
                vb[k] = first_step ? gr : momentum * vb[k] + (1.0f - dampening) * gr;
                gr = nesterov ? gr + momentum * vb[k] : vb[k];
            }
            vp[k] = vp[k] - lr * gr;
        }
        if (momentum != 0.0f) st8(buf, i, DT_F32, n, vec, vb, rp);
        st8(p, i, pdt, n, vec, vp, rp);
        // the copy rounds the updated FP32 value (as the CPU oracle does, also when the
        // params themselves are stored low-precision)
        if (model) st8(model, i, mdt, n, vec, vp, rm);
    }
}

// Precision-health counts. Integer counts added with atomics (deterministic); one warp adds
// its sums at a time.
__device__ __forceinline__ u32 warp_sum_u32(u32 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ u32 warp_max_u32(u32 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}

// Per query (8 u32: offset lo/hi, len lo/hi, scale bits, then mp_dtype::RangeThresholds'
// nonzero_from, normal_from, overflow_from): over the finite non-zero x of the range, with
// a = |x * scale|'s bits (|x|'s own bits when scale is 1, so no product can flush), how many
// underflow (a < nonzero_from), are subnormal, overflow (a >= overflow_from), and the largest
// |x| bits, into out[4q + 0..4] (zeroed before the launch). Queries stride over grid.y.
extern "C" __global__ void mp_range_counts(const void* x, int xdt, const u32* queries, u32 nq,
                                           unsigned long long* out) {
    for (u32 q = blockIdx.y; q < nq; q += gridDim.y) {
        const u32* Q = queries + 8u * q;
        u64 off = (u64)Q[0] | ((u64)Q[1] << 32), n = (u64)Q[2] | ((u64)Q[3] << 32);
        float scale = __uint_as_float(Q[4]);
        int unit = Q[4] == 0x3f800000u;
        u32 nz = Q[5], nm = Q[6], of = Q[7];
        u32 cu = 0u, cs = 0u, co = 0u, am = 0u;
        u64 stride = (u64)gridDim.x * blockDim.x;
        for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
            float v = ld(x, off + i, xdt);
            u32 b = __float_as_uint(v) & 0x7fffffffu;
            if (b == 0u || b >= 0x7f800000u) continue;
            am = max(am, b);
            u32 a = unit ? b : (__float_as_uint(v * scale) & 0x7fffffffu);
            cu += a < nz ? 1u : 0u;
            cs += (a >= nz && a < nm) ? 1u : 0u;
            co += a >= of ? 1u : 0u;
        }
        cu = warp_sum_u32(cu);
        cs = warp_sum_u32(cs);
        co = warp_sum_u32(co);
        am = warp_max_u32(am);
        if ((threadIdx.x & 31) == 0) {
            unsigned long long* o = out + 4u * q;
            if (cu) atomicAdd(o, (unsigned long long)cu);
            if (cs) atomicAdd(o + 1, (unsigned long long)cs);
            if (co) atomicAdd(o + 2, (unsigned long long)co);
            if (am) atomicMax(o + 3, (unsigned long long)am);
        }
    }
}

// Per range (4 u32: offset lo/hi, len lo/hi) of two views: how many updates d = after - before
// are non-zero and finite, and how many of those weights stored in `dt` lose (w = rne(before),
// rne(w + d) == w), into out[2r + 0..2] (zeroed before the launch).
extern "C" __global__ void mp_lost_update_counts(const void* before, int bdt, const void* after,
                                                 int adt, int dt, const u32* ranges, u32 nr,
                                                 unsigned long long* out) {
    Rnd rd = rne();
    for (u32 r = blockIdx.y; r < nr; r += gridDim.y) {
        const u32* R = ranges + 4u * r;
        u64 off = (u64)R[0] | ((u64)R[1] << 32), n = (u64)R[2] | ((u64)R[3] << 32);
        u32 cu = 0u, cl = 0u;
        u64 stride = (u64)gridDim.x * blockDim.x;
        for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
            float b = ld(before, off + i, bdt);
            float d = ld(after, off + i, adt) - b;
            if (d == 0.0f || !isfinite(d)) continue;
            cu += 1u;
            float w = bits_to_f32(f32_to_bits(b, dt, rd, 0), dt);
            cl += bits_to_f32(f32_to_bits(w + d, dt, rd, 0), dt) == w ? 1u : 0u;
        }
        cu = warp_sum_u32(cu);
        cl = warp_sum_u32(cl);
        if ((threadIdx.x & 31) == 0) {
            unsigned long long* o = out + 2u * r;
            if (cu) atomicAdd(o, (unsigned long long)cu);
            if (cl) atomicAdd(o + 1, (unsigned long long)cl);
        }
    }
}
