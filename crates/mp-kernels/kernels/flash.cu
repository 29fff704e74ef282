// Causal (grouped-query) self-attention on tensor cores: FlashAttention-2's forward, and its
// backward split into a dK/dV kernel and a dQ kernel, so no two blocks write one gradient
// element (deterministic, no floating-point atomics). BF16 or FP16 inputs (template `BF`),
// FP32 accumulation (`mma.sync.m16n8k16`), tiles staged in shared memory with `cp.async`
// and read into fragments with `ldmatrix`; head sizes 64 and 128 (template `HS`).
//
// Layouts (mp_kernels::Attention): token (n, t) has one packed qkv row of `row` elements,
// `q heads | k heads | v heads` of HS each (H query heads, KVH key/value heads, query head h
// reads key/value head h / (H / KVH)); out, dout: token-major rows of C = H * HS; lse and
// delta: f32 [n][h][t]. lse is the natural log-sum-exp of the scaled scores of each row.
//
// Every block has 4 warps; a warp owns 16 rows of its block's 64 (queries in the forward and
// dQ kernels, keys in the dK/dV kernel). Fragment layouts are those of the PTX ISA for
// m16n8k16: lane = 4 * g + tq; an accumulator holds (row g, cols 2tq, 2tq+1) in c0, c1 and
// row g + 8 in c2, c3, which is also the A-operand layout of the next product (P and dS stay
// in registers). Shared tiles are padded by 8 elements a row, so ldmatrix rows hit distinct
// banks.

#define FL_ROWS 64
#define FL_PAD 8
#define FL_THREADS 128
#define FL_LOG2E 1.4426950408889634f
#define FL_LN2 0.6931471805599453f

// ----- tensor-core primitives ---------------------------------------------------------------
// c += a * b for one 16x8x16 tile (a: 4 regs of packed 16-bit pairs, b: 2 regs).
template <bool BF>
__device__ __forceinline__ void mma16816(float* c, const u32* a, const u32* b) {
    if (BF) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

// Four 8x8 matrices of 16-bit elements; lane i gives the address of row i % 8 of matrix i / 8.
__device__ __forceinline__ void ldsm4(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm4_t(u32* r, const u16* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

// 16 bytes global -> shared without passing through registers; `bytes` 0 fills zeros.
__device__ __forceinline__ void cp_async16(u16* dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Two floats as one register of the compute type (lo in the low half).
template <bool BF>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    if (BF) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
        return *(u32*)&v;
    }
    __half2 v = __floats2half2_rn(lo, hi);
    return *(u32*)&v;
}

// The A operand (16 rows x 16 columns at `col`) of rows `r0..r0+16` of a tile of stride LD.
template <int LD>
__device__ __forceinline__ void frag_a(u32* a, const u16* tile, int r0, int col, int lane) {
    ldsm4(a, tile + (r0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + col + (lane >> 4) * 8);
}
// B operands of two 8-wide n-tiles (tile rows n0..n0+16 are the n index, columns col..col+16
// the k index): b[0..2] for rows n0..n0+8, b[2..4] for n0+8..n0+16.
template <int LD>
__device__ __forceinline__ void frag_b(u32* b, const u16* tile, int n0, int col, int lane) {
    ldsm4(b, tile + (n0 + (lane & 7) + (lane >> 4) * 8) * LD + col + ((lane >> 3) & 1) * 8);
}
// B operands of two 8-wide n-tiles where the tile's rows k0..k0+16 are the k index and its
// columns n0..n0+16 the n index (transposed load): b[0..2] for columns n0..n0+8.
template <int LD>
__device__ __forceinline__ void frag_bt(u32* b, const u16* tile, int k0, int n0, int lane) {
    ldsm4_t(b, tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 + (lane >> 4) * 8);
}

// acc[16 x 8 * NT] += A[16 x 16 * KT] (rows r0.. of tile `a`, columns from 0) times the
// transpose of rows n0.. of tile `b` (B[k][n] = b[n0 + n][k]).
template <bool BF, int LD, int KT, int NT>
__device__ __forceinline__ void mma_abt(float (*acc)[4], const u16* a, int r0, const u16* b, int n0,
                                        int lane) {
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
        u32 af[4];
        frag_a<LD>(af, a, r0, kk * 16, lane);
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
            u32 bf[4];
            frag_b<LD>(bf, b, n0 + np * 16, kk * 16, lane);
            mma16816<BF>(acc[2 * np], af, bf);
            mma16816<BF>(acc[2 * np + 1], af, bf + 2);
        }
    }
}

// acc[16 x 8 * NT] += P[16 x 16 * KT] (accumulator-layout registers, rounded to the compute
// type) times rows 0.. of tile `b` (B[k][n] = b[k][n]).
template <bool BF, int LD, int KT, int NT>
__device__ __forceinline__ void mma_pb(float (*acc)[4], const float (*p)[4], const u16* b,
                                       int lane) {
#pragma unroll
    for (int kk = 0; kk < KT; kk++) {
        u32 af[4] = {pack2<BF>(p[2 * kk][0], p[2 * kk][1]), pack2<BF>(p[2 * kk][2], p[2 * kk][3]),
                     pack2<BF>(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                     pack2<BF>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
            u32 bf[4];
            frag_bt<LD>(bf, b, kk * 16, np * 16, lane);
            mma16816<BF>(acc[2 * np], af, bf);
            mma16816<BF>(acc[2 * np + 1], af, bf + 2);
        }
    }
}

// Stages `ROWS` rows x HS elements of a token-major matrix in the compute type (element
// (r, j) at (tok0 + r) * stride + col + j; `valid` rows exist, the rest are zero-filled) into a
// shared tile of stride HS + FL_PAD with cp.async. The host guarantees the source's dtype and
// 16-byte alignment (it converts or copies an operand that is not).
template <int HS, int ROWS>
__device__ __forceinline__ void stage(u16* tile, const void* src, u64 tok0, int valid, u64 stride,
                                      u64 col) {
    constexpr int CH = HS / 8;
    for (int i = threadIdx.x; i < ROWS * CH; i += FL_THREADS) {
        const int r = i / CH, ch = i % CH;
        const bool ok = r < valid;
        const u16* from = (const u16*)src + (tok0 + r) * stride + col + ch * 8;
        cp_async16(tile + r * (HS + FL_PAD) + ch * 8, ok ? (const void*)from : src, ok ? 16 : 0);
    }
}

// The epilogue of a 64 x HS accumulator (each warp's 16-row strip in fragment layout): the
// fragments, times `mul`, go to a shared f32 tile `sf` (stride HS + 4) and from there, row by
// row with consecutive threads on consecutive elements, to element (tok0 + r) * stride + col
// + j of `dst` in its dtype, plus what `dst` holds when `accumulate` (one rounding). Rows past
// `valid` are not written. Ends with a barrier, so `sf` may be reused.
template <int HS>
__device__ __forceinline__ void flush(float* sf, const float (*acc)[4], float mul, int warp, int lane,
                                      void* dst, int dt, u64 tok0, int valid, u64 stride, u64 col,
                                      int accumulate) {
    constexpr int LF = HS + 4;
    const int g = lane >> 2, tq = lane & 3;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < HS / 8; j++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float* at = sf + (warp * 16 + g + 8 * r) * LF + j * 8 + tq * 2;
            at[0] = acc[j][2 * r] * mul;
            at[1] = acc[j][2 * r + 1] * mul;
        }
    }
    __syncthreads();
#pragma unroll 1
    for (int i = threadIdx.x; i < valid * HS; i += FL_THREADS) {
        const int r = i / HS, j = i % HS;
        const u64 e = (tok0 + r) * stride + col + j;
        float v = sf[r * LF + j];
        if (accumulate) v += ld(dst, e, dt);
        st_rne(dst, e, dt, v);
    }
    __syncthreads();
}

// ----- forward ------------------------------------------------------------------------------
// Block (n * H + h, query block): the online softmax over the key tiles up to the diagonal.
template <bool BF, int HS>
__device__ __forceinline__ void flash_fwd(const void* qkv, void* out, int odt, float* lse, u64 T,
                                          u64 H, u64 KVH, u64 row, float scale) {
    constexpr int LD = HS + FL_PAD, B = FL_ROWS;
    extern __shared__ __align__(16) u16 fl_smem[];
    u16* sk = fl_smem;
    u16* sv = fl_smem + B * LD;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const u64 nh = blockIdx.x, n = nh / H, h = nh % H, kvh = h / (H / KVH), C = H * HS;
    const u64 qb = gridDim.y - 1 - blockIdx.y;  // the longest rows first
    const u64 q0 = qb * B, tok0 = n * T;
    const int qvalid = (int)min((u64)B, T - q0);

    // the warp's queries as A fragments, through the key tile
    stage<HS, B>(sk, qkv, tok0 + q0, qvalid, row, h * HS);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    u32 qf[HS / 16][4];
#pragma unroll
    for (int kk = 0; kk < HS / 16; kk++) frag_a<LD>(qf[kk], sk, warp * 16, kk * 16, lane);
    __syncthreads();

    float o[HS / 8][4];
#pragma unroll
    for (int j = 0; j < HS / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const float sl2 = scale * FL_LOG2E;
    const u64 qrow = q0 + warp * 16 + g;  // this thread's rows: qrow, qrow + 8

    for (u64 kb = 0; kb <= qb; kb++) {
        const u64 k0 = kb * B;
        const int kvalid = (int)min((u64)B, T - k0);
        stage<HS, B>(sk, qkv, tok0 + k0, kvalid, row, C + kvh * HS);
        cp_async_commit();
        stage<HS, B>(sv, qkv, tok0 + k0, kvalid, row, C + (KVH + kvh) * HS);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();

        float s[B / 8][4];
#pragma unroll
        for (int j = 0; j < B / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HS / 16; kk++) {
#pragma unroll
            for (int np = 0; np < B / 16; np++) {
                u32 bf[4];
                frag_b<LD>(bf, sk, np * 16, kk * 16, lane);
                mma16816<BF>(s[2 * np], qf[kk], bf);
                mma16816<BF>(s[2 * np + 1], qf[kk], bf + 2);
            }
        }
        const bool diag = kb == qb;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = m[r];
#pragma unroll
            for (int j = 0; j < B / 8; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    u64 key = k0 + j * 8 + tq * 2 + e;
                    float x = s[j][2 * r + e] * sl2;
                    if (diag && key > qrow + 8 * r) x = -INFINITY;
                    s[j][2 * r + e] = x;
                    mx = fmaxf(mx, x);
                }
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            // key k0 <= every row of this block, so mx is finite from the first tile on
            const float alpha = exp2f(m[r] - mx);
            m[r] = mx;
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < B / 8; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float p = exp2f(s[j][2 * r + e] - mx);
                    s[j][2 * r + e] = p;
                    sum += p;
                }
            }
            l[r] = l[r] * alpha + sum;  // this thread's part of the row sum
#pragma unroll
            for (int j = 0; j < HS / 8; j++) {
                o[j][2 * r] *= alpha;
                o[j][2 * r + 1] *= alpha;
            }
        }
        cp_async_wait<0>();
        __syncthreads();
        mma_pb<BF, LD, B / 16, HS / 8>(o, s, sv, lane);
        __syncthreads();
    }

    // normalise the rows, save lse, write the output token-major
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float sum = l[r];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const float inv = 1.0f / sum;
#pragma unroll
        for (int j = 0; j < HS / 8; j++) {
            o[j][2 * r] *= inv;
            o[j][2 * r + 1] *= inv;
        }
        const u64 q = qrow + 8 * r;
        if (q < T && tq == 0) lse[nh * T + q] = (m[r] + log2f(sum)) * FL_LN2;
    }
    flush<HS>((float*)fl_smem, o, 1.0f, warp, lane, out, odt, tok0 + q0, qvalid, C, h * HS, 0);
}

// ----- backward -----------------------------------------------------------------------------
// delta[n][h][t] = rowsum(dout ∘ out) over each head's HS elements: one warp a row.
extern "C" __global__ void mp_flash_delta(const void* dout, int ddt, const void* out, int odt,
                                          float* delta, u64 B, u64 T, u64 H, u64 HS) {
    const u64 rows = B * T * H;
    const u64 warps = (u64)gridDim.x * blockDim.x / MP_WARP;
    const int lane = threadIdx.x & 31;
    for (u64 w = ((u64)blockIdx.x * blockDim.x + threadIdx.x) / MP_WARP; w < rows; w += warps) {
        const u64 h = w % H, tok = w / H;
        float acc = 0.0f;
        for (u64 d = lane; d < HS; d += MP_WARP) {
            u64 i = tok * H * HS + h * HS + d;
            acc += ld(dout, i, ddt) * ld(out, i, odt);
        }
        acc = warp_sum(acc);
        if (lane == 0) delta[((tok / T) * H + h) * T + tok % T] = acc;
    }
}

// Block (n * KVH + kvh, key block): dK and dV of 64 keys, over every query head of the group
// and every query tile at or after the block's first key. A warp owns 16 keys; products are
// transposed (Sᵀ = K Qᵀ) so Pᵀ and dSᵀ are A operands in registers.
template <bool BF, int HS>
__device__ __forceinline__ void flash_bwd_dkv(const void* qkv, const void* dout, const float* lse,
                                              const float* delta, void* dqkv, int gdt, u64 T, u64 H,
                                              u64 KVH, u64 row, float scale) {
    constexpr int LD = HS + FL_PAD, B = FL_ROWS;
    constexpr int BQ = HS > 64 ? 32 : 64;  // query tile (registers: dK and dV take HS each)
    extern __shared__ __align__(16) u16 fl_smem[];
    u16* sk = fl_smem;
    u16* sv = sk + B * LD;
    u16* sq = sv + B * LD;
    u16* sdo = sq + BQ * LD;
    float* slse = (float*)(sdo + BQ * LD);
    float* sdel = slse + BQ;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const u64 nk = blockIdx.x, n = nk / KVH, kvh = nk % KVH, G = H / KVH, C = H * HS;
    const u64 k0 = (u64)blockIdx.y * B, tok0 = n * T;
    const int kvalid = (int)min((u64)B, T - k0);

    stage<HS, B>(sk, qkv, tok0 + k0, kvalid, row, C + kvh * HS);
    stage<HS, B>(sv, qkv, tok0 + k0, kvalid, row, C + (KVH + kvh) * HS);
    cp_async_commit();

    float dk[HS / 8][4], dv[HS / 8][4];
#pragma unroll
    for (int j = 0; j < HS / 8; j++) {
        dk[j][0] = dk[j][1] = dk[j][2] = dk[j][3] = 0.0f;
        dv[j][0] = dv[j][1] = dv[j][2] = dv[j][3] = 0.0f;
    }
    const float sl2 = scale * FL_LOG2E;
    const u64 krow = k0 + warp * 16 + g;  // this thread's keys: krow, krow + 8
    const u64 nqt = (T + BQ - 1) / BQ;

    for (u64 gi = 0; gi < G; gi++) {
        const u64 h = kvh * G + gi, lrow = (n * H + h) * T;
        for (u64 qt = k0 / BQ; qt < nqt; qt++) {
            const u64 q0 = qt * BQ;
            const int qvalid = (int)min((u64)BQ, T - q0);
            stage<HS, BQ>(sq, qkv, tok0 + q0, qvalid, row, h * HS);
            stage<HS, BQ>(sdo, dout, tok0 + q0, qvalid, C, h * HS);
            cp_async_commit();
            for (int i = threadIdx.x; i < BQ; i += FL_THREADS) {
                slse[i] = i < qvalid ? lse[lrow + q0 + i] * FL_LOG2E : 0.0f;
                sdel[i] = i < qvalid ? delta[lrow + q0 + i] : 0.0f;
            }
            cp_async_wait<0>();
            __syncthreads();

            // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ (16 keys x BQ queries per warp)
            float s[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
            for (int j = 0; j < BQ / 8; j++) {
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
                dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
            }
            mma_abt<BF, LD, HS / 16, BQ / 8>(s, sk, warp * 16, sq, 0, lane);
            mma_abt<BF, LD, HS / 16, BQ / 8>(dp, sv, warp * 16, sdo, 0, lane);
            // Pᵀ = exp(S - lse), masked where key > query (and past the last query);
            // dSᵀ = Pᵀ ∘ (dPᵀ - delta)
#pragma unroll
            for (int j = 0; j < BQ / 8; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int qi = j * 8 + tq * 2 + (e & 1);
                    const u64 key = krow + 8 * (e >> 1), q = q0 + qi;
                    float p = (key > q || qi >= qvalid) ? 0.0f : exp2f(s[j][e] * sl2 - slse[qi]);
                    s[j][e] = p;
                    dp[j][e] = p * (dp[j][e] - sdel[qi]);
                }
            }
            mma_pb<BF, LD, BQ / 16, HS / 8>(dv, s, sdo, lane);   // dV += Pᵀ dO
            mma_pb<BF, LD, BQ / 16, HS / 8>(dk, dp, sq, lane);   // dK += dSᵀ Q
            __syncthreads();
        }
    }

    float* sf = (float*)fl_smem;
    flush<HS>(sf, dk, scale, warp, lane, dqkv, gdt, tok0 + k0, kvalid, row, C + kvh * HS, 1);
    flush<HS>(sf, dv, 1.0f, warp, lane, dqkv, gdt, tok0 + k0, kvalid, row, C + (KVH + kvh) * HS, 1);
}

// Block (n * H + h, query block): dQ of 64 queries over the key tiles up to the diagonal.
template <bool BF, int HS>
__device__ __forceinline__ void flash_bwd_dq(const void* qkv, const void* dout, const float* lse,
                                             const float* delta, void* dqkv, int gdt, u64 T, u64 H,
                                             u64 KVH, u64 row, float scale) {
    constexpr int LD = HS + FL_PAD, B = FL_ROWS;
    extern __shared__ __align__(16) u16 fl_smem[];
    u16* sq = fl_smem;
    u16* sdo = sq + B * LD;
    u16* sk = sdo + B * LD;
    u16* sv = sk + B * LD;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, tq = lane & 3;
    const u64 nh = blockIdx.x, n = nh / H, h = nh % H, kvh = h / (H / KVH), C = H * HS;
    const u64 qb = gridDim.y - 1 - blockIdx.y;
    const u64 q0 = qb * B, tok0 = n * T;
    const int qvalid = (int)min((u64)B, T - q0);

    stage<HS, B>(sq, qkv, tok0 + q0, qvalid, row, h * HS);
    stage<HS, B>(sdo, dout, tok0 + q0, qvalid, C, h * HS);
    cp_async_commit();
    const u64 qrow = q0 + warp * 16 + g;  // this thread's rows: qrow, qrow + 8
    float lse2[2], del[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const u64 q = qrow + 8 * r;
        lse2[r] = q < T ? lse[nh * T + q] * FL_LOG2E : 0.0f;
        del[r] = q < T ? delta[nh * T + q] : 0.0f;
    }
    float dq[HS / 8][4];
#pragma unroll
    for (int j = 0; j < HS / 8; j++) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.0f;
    const float sl2 = scale * FL_LOG2E;

    for (u64 kb = 0; kb <= qb; kb++) {
        const u64 k0 = kb * B;
        const int kvalid = (int)min((u64)B, T - k0);
        stage<HS, B>(sk, qkv, tok0 + k0, kvalid, row, C + kvh * HS);
        stage<HS, B>(sv, qkv, tok0 + k0, kvalid, row, C + (KVH + kvh) * HS);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        float s[B / 8][4], dp[B / 8][4];
#pragma unroll
        for (int j = 0; j < B / 8; j++) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            dp[j][0] = dp[j][1] = dp[j][2] = dp[j][3] = 0.0f;
        }
        mma_abt<BF, LD, HS / 16, B / 8>(s, sq, warp * 16, sk, 0, lane);   // S = Q Kᵀ
        mma_abt<BF, LD, HS / 16, B / 8>(dp, sdo, warp * 16, sv, 0, lane); // dP = dO Vᵀ
        const bool diag = kb == qb;
#pragma unroll
        for (int j = 0; j < B / 8; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = e >> 1;
                const u64 key = k0 + j * 8 + tq * 2 + (e & 1);
                float p = (diag && key > qrow + 8 * r) ? 0.0f : exp2f(s[j][e] * sl2 - lse2[r]);
                dp[j][e] = p * (dp[j][e] - del[r]);
            }
        }
        mma_pb<BF, LD, B / 16, HS / 8>(dq, dp, sk, lane);  // dQ += dS K
        __syncthreads();
    }

    flush<HS>((float*)fl_smem, dq, scale, warp, lane, dqkv, gdt, tok0 + q0, qvalid, row, h * HS, 1);
}

// ----- entry points: one per (compute type, head size) ---------------------------------------
#define FL_FWD_ARGS \
    const void *qkv, void *out, int odt, float *lse, u64 T, u64 H, u64 KVH, u64 row, float scale
#define FL_FWD_PASS qkv, out, odt, lse, T, H, KVH, row, scale
#define FL_BWD_ARGS                                                                             \
    const void *qkv, const void *dout, const float *lse, const float *delta, void *dqkv, int gdt, \
        u64 T, u64 H, u64 KVH, u64 row, float scale
#define FL_BWD_PASS qkv, dout, lse, delta, dqkv, gdt, T, H, KVH, row, scale

extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_fwd_bf16_64(FL_FWD_ARGS) { flash_fwd<true, 64>(FL_FWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_fwd_bf16_128(FL_FWD_ARGS) { flash_fwd<true, 128>(FL_FWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_fwd_f16_64(FL_FWD_ARGS) { flash_fwd<false, 64>(FL_FWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_fwd_f16_128(FL_FWD_ARGS) { flash_fwd<false, 128>(FL_FWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_bwd_dkv_bf16_64(FL_BWD_ARGS) { flash_bwd_dkv<true, 64>(FL_BWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_bwd_dkv_bf16_128(FL_BWD_ARGS) { flash_bwd_dkv<true, 128>(FL_BWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_bwd_dkv_f16_64(FL_BWD_ARGS) { flash_bwd_dkv<false, 64>(FL_BWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_bwd_dkv_f16_128(FL_BWD_ARGS) { flash_bwd_dkv<false, 128>(FL_BWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_bwd_dq_bf16_64(FL_BWD_ARGS) { flash_bwd_dq<true, 64>(FL_BWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_bwd_dq_bf16_128(FL_BWD_ARGS) { flash_bwd_dq<true, 128>(FL_BWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_bwd_dq_f16_64(FL_BWD_ARGS) { flash_bwd_dq<false, 64>(FL_BWD_PASS); }
extern "C" __global__ void __launch_bounds__(FL_THREADS) mp_flash_bwd_dq_f16_128(FL_BWD_ARGS) { flash_bwd_dq<false, 128>(FL_BWD_PASS); }
