// Embeddings, and the head layout copies of the GEMM attention path (its products and softmax
// run on cuBLASLt and the row kernels).

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

// Head-major <-> token-major copies of one part of attention rows (the GEMM attention path,
// mp_kernels::gemm_attention). Head-major index i = ((n*H + h)*T + t)*HS + d; token-major
// (n*T + t)*row + col + h*HS + d. merge = 0: dst(head-major) = src(token-major);
// merge = 1: dst(token-major) = src(head-major), plus dst when acc = 1 (one rounding).
// Consecutive threads take consecutive d, so both sides are read and written in runs of HS.
extern "C" __global__ void mp_heads(const void* src, int sdt, void* dst, int ddt, u64 B, u64 T,
                                    u64 H, u64 HS, u64 row, u64 col, int merge, int acc) {
    u64 total = B * H * T * HS;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        u64 d = i % HS, r = i / HS;
        u64 t = r % T;
        r /= T;
        u64 h = r % H, n = r / H;
        u64 tok = (n * T + t) * row + col + h * HS + d;
        if (merge) {
            float v = ld(src, i, sdt);
            if (acc) v += ld(dst, tok, ddt);
            st_rne(dst, tok, ddt, v);
        } else {
            st_rne(dst, i, ddt, ld(src, tok, sdt));
        }
    }
}

// The rotary position embedding (mp_kernels::LayoutOps::rope), rotate-half convention, FP32:
// one thread per pair (row r, head, j < half) at position p = r % t, the sine times `sign`
// (-1: the inverse rotation, the backward); heads from `rotated` on are copied. Products and
// sums rounded one by one (no FMA contraction), as the CPU computes them.
extern "C" __global__ void mp_rope(const void* x, int xdt, const float* cosv, const float* sinv,
                                   void* out, int odt, u64 pairs, u64 heads, u64 rotated,
                                   u64 half, u64 t, float sign) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < pairs; i += stride) {
        u64 j = i % half, rh = i / half;
        u64 pos = (rh / heads) % t;
        u64 at = rh * 2 * half + j;
        if (rh % heads >= rotated) {  // an unrotated head (the values of packed q | k | v)
            st_rne(out, at, odt, ld(x, at, xdt));
            st_rne(out, at + half, odt, ld(x, at + half, xdt));
            continue;
        }
        float c = cosv[pos * half + j], s = sinv[pos * half + j] * sign;
        float x1 = ld(x, at, xdt), x2 = ld(x, at + half, xdt);
        st_rne(out, at, odt, __fadd_rn(__fmul_rn(x1, c), -__fmul_rn(x2, s)));
        st_rne(out, at + half, odt, __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s)));
    }
}
