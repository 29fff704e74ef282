// Embeddings and causal multi-head attention (explicit probabilities, FP32 scores).
// qkv is b x t x 3c; head h of q at column h*hs, of k at c + h*hs, of v at 2c + h*hs.

extern "C" __global__ void mp_embedding(const void* table, int tdt, const u32* ids, u64 n, u64 c,
                                        void* out, int odt) {
    u64 total = n * c;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        u64 row = i / c, j = i % c;
        st_rne(out, i, odt, ld(table, (u64)ids[row] * c + j, tdt));
    }
}

// acc[ids[i], :] += dout[i, :] with FP32 atomics (acc is the f32 table or an f32 staging copy).
extern "C" __global__ void mp_embedding_bwd(const void* dout, int ddt, const u32* ids, u64 n, u64 c,
                                            float* acc) {
    u64 total = n * c;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        u64 row = i / c, j = i % c;
        atomicAdd(acc + (u64)ids[row] * c + j, ld(dout, i, ddt));
    }
}

// One block per (query row i, head h, batch b). Dynamic shared memory: t + hs floats.
extern "C" __global__ void mp_attention_fwd(const void* qkv, int qdt, u64 T, u64 C, u64 H,
                                            void* out, int odt, void* probs, int pdt) {
    extern __shared__ float sm[];
    u64 i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    u64 hs = C / H;
    float* q = sm;
    float* s = sm + hs;
    float scale = rsqrtf((float)hs);
    u64 row3 = 3 * C;
    const u64 qoff = (b * T + i) * row3 + h * hs;
    for (u64 d = threadIdx.x; d < hs; d += blockDim.x) q[d] = ld(qkv, qoff + d, qdt);
    __syncthreads();
    float mx = -INFINITY;
    for (u64 j = threadIdx.x; j <= i; j += blockDim.x) {
        u64 koff = (b * T + j) * row3 + C + h * hs;
        float acc = 0.0f;
        for (u64 d = 0; d < hs; d++) acc += q[d] * ld(qkv, koff + d, qdt);
        acc *= scale;
        s[j] = acc;
        mx = nanmax(mx, acc);
    }
    mx = block_max(mx);
    float sum = 0.0f;
    for (u64 j = threadIdx.x; j <= i; j += blockDim.x) {
        float e = expf(s[j] - mx);
        s[j] = e;
        sum += e;
    }
    sum = block_sum(sum);
    float inv = 1.0f / sum;
    u64 poff = ((b * H + h) * T + i) * T;
    Rnd rd = rne();
    for (u64 j = threadIdx.x; j < T; j += blockDim.x) {
        float p = j <= i ? s[j] * inv : 0.0f;
        u32 bits = f32_to_bits(p, pdt, rd, 0);
        st_rne(probs, poff + j, pdt, p);
        // P V uses the stored (rounded) probabilities, which the backward differentiates
        if (j <= i) s[j] = bits_to_f32(bits, pdt);
    }
    __syncthreads();
    for (u64 d = threadIdx.x; d < hs; d += blockDim.x) {
        float acc = 0.0f;
        for (u64 j = 0; j <= i; j++) acc += s[j] * ld(qkv, (b * T + j) * row3 + 2 * C + h * hs + d, qdt);
        st_rne(out, (b * T + i) * C + h * hs + d, odt, acc);
    }
}

// ds[b,h,i,j] = scale * P_ij * (dP_ij - sum_k P_ik dP_ik), dP_ij = dout_i . v_j  (j <= i).
// One block per (i, h, b). Dynamic shared memory: hs floats.
extern "C" __global__ void mp_attention_bwd_ds(const void* dout, int ddt, const void* qkv, int qdt,
                                               const void* probs, int pdt, u64 T, u64 C, u64 H,
                                               float* ds) {
    extern __shared__ float sm[];
    u64 i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    u64 hs = C / H;
    float scale = rsqrtf((float)hs);
    u64 row3 = 3 * C;
    float* g = sm;
    for (u64 d = threadIdx.x; d < hs; d += blockDim.x) g[d] = ld(dout, (b * T + i) * C + h * hs + d, ddt);
    __syncthreads();
    u64 poff = ((b * H + h) * T + i) * T;
    float dsum = 0.0f;
    for (u64 j = threadIdx.x; j <= i; j += blockDim.x) {
        u64 voff = (b * T + j) * row3 + 2 * C + h * hs;
        float acc = 0.0f;
        for (u64 d = 0; d < hs; d++) acc += g[d] * ld(qkv, voff + d, qdt);
        ds[poff + j] = acc;
        dsum += ld(probs, poff + j, pdt) * acc;
    }
    dsum = block_sum(dsum);
    for (u64 j = threadIdx.x; j <= i; j += blockDim.x) {
        float p = ld(probs, poff + j, pdt);
        ds[poff + j] = scale * p * (ds[poff + j] - dsum);
    }
}

// dq_i += sum_{j<=i} ds_ij k_j. One block per (i, h, b).
extern "C" __global__ void mp_attention_bwd_dq(const float* ds, const void* qkv, int qdt, u64 T,
                                               u64 C, u64 H, void* dqkv, int gdt) {
    u64 i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    u64 hs = C / H;
    u64 row3 = 3 * C;
    u64 poff = ((b * H + h) * T + i) * T;
    for (u64 d = threadIdx.x; d < hs; d += blockDim.x) {
        float acc = 0.0f;
        for (u64 j = 0; j <= i; j++) acc += ds[poff + j] * ld(qkv, (b * T + j) * row3 + C + h * hs + d, qdt);
        u64 o = (b * T + i) * row3 + h * hs + d;
        st_rne(dqkv, o, gdt, ld(dqkv, o, gdt) + acc);
    }
}

// dk_j += sum_{i>=j} ds_ij q_i; dv_j += sum_{i>=j} P_ij dout_i. One block per (j, h, b).
extern "C" __global__ void mp_attention_bwd_dkv(const float* ds, const void* probs, int pdt,
                                                const void* dout, int ddt, const void* qkv,
                                                int qdt, u64 T, u64 C, u64 H, void* dqkv,
                                                int gdt) {
    u64 j = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
    u64 hs = C / H;
    u64 row3 = 3 * C;
    u64 bh = (b * H + h) * T;
    for (u64 d = threadIdx.x; d < hs; d += blockDim.x) {
        float ak = 0.0f, av = 0.0f;
        for (u64 i = j; i < T; i++) {
            u64 pij = (bh + i) * T + j;
            ak += ds[pij] * ld(qkv, (b * T + i) * row3 + h * hs + d, qdt);
            av += ld(probs, pij, pdt) * ld(dout, (b * T + i) * C + h * hs + d, ddt);
        }
        u64 ko = (b * T + j) * row3 + C + h * hs + d;
        u64 vo = ko + C;
        st_rne(dqkv, ko, gdt, ld(dqkv, ko, gdt) + ak);
        st_rne(dqkv, vo, gdt, ld(dqkv, vo, gdt) + av);
    }
}
