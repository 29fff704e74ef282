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
