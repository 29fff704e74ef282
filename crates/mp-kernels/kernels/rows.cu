// Row kernels (one block per row, FP32 accumulation, warp-shuffle reductions) and column sums
// (chunked partial sums in FP32, then a deterministic final pass).

#define RED_SUM 0
#define RED_MEAN 1
#define RED_MAX 2
#define RED_SUMSQ 3

extern "C" __global__ void mp_reduce_rows(int op, const void* x, int xdt, u64 rows, u64 cols,
                                          void* out, int odt) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 base = r * cols;
        float acc = op == RED_MAX ? -INFINITY : 0.0f;
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) {
            float v = ld(x, base + j, xdt);
            if (op == RED_MAX) acc = nanmax(acc, v);
            else if (op == RED_SUMSQ) acc += v * v;
            else acc += v;
        }
        float t = op == RED_MAX ? block_max(acc) : block_sum(acc);
        if (op == RED_MEAN) t = t / (float)cols;
        if (threadIdx.x == 0) st_rne(out, r, odt, t);
    }
}

// partial[chunk * cols + j] = sum over the chunk's rows of x[r, j].
extern "C" __global__ void mp_sum_cols_partial(const void* x, int xdt, u64 rows, u64 cols,
                                               u64 rows_per_chunk, float* partial) {
    u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 chunk = blockIdx.y;
    if (j >= cols) return;
    u64 r0 = chunk * rows_per_chunk;
    u64 r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    float acc = 0.0f;
    for (u64 r = r0; r < r1; r++) acc += ld(x, r * cols + j, xdt);
    partial[chunk * cols + j] = acc;
}

// out[j] += sum over chunks of partial[chunk * cols + j], for `nout` stacked outputs
// (out0 from partial block 0, out1 from partial block 1).
extern "C" __global__ void mp_sum_cols_final(const float* partial, u64 chunks, u64 cols, void* out0,
                                             int o0dt, void* out1, int o1dt, int nout) {
    u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    for (int o = 0; o < nout; o++) {
        const float* p = partial + (u64)o * chunks * cols;
        float acc = 0.0f;
        for (u64 c = 0; c < chunks; c++) acc += p[c * cols + j];
        void* out = o == 0 ? out0 : out1;
        int odt = o == 0 ? o0dt : o1dt;
        st_rne(out, j, odt, ld(out, j, odt) + acc);
    }
}

// Row softmax / log-softmax; with `causal`, row r sees columns j <= r % cols.
extern "C" __global__ void mp_softmax(const void* x, int xdt, u64 rows, u64 cols, int causal,
                                      int logsm, void* out, int odt) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 base = r * cols;
        u64 lim = causal ? (r % cols) + 1 : cols;
        float mx = -INFINITY;
        for (u64 j = threadIdx.x; j < lim; j += blockDim.x) mx = nanmax(mx, ld(x, base + j, xdt));
        mx = block_max(mx);
        float s = 0.0f;
        for (u64 j = threadIdx.x; j < lim; j += blockDim.x) s += expf(ld(x, base + j, xdt) - mx);
        s = block_sum(s);
        float lse = mx + logf(s);
        float inv = 1.0f / s;
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) {
            float v;
            if (j < lim) {
                float xv = ld(x, base + j, xdt);
                v = logsm ? xv - lse : expf(xv - mx) * inv;
            } else {
                v = logsm ? -INFINITY : 0.0f;
            }
            st_rne(out, base + j, odt, v);
        }
    }
}

// Layer norm over rows of c: out = (x - mean) * rstd * w + b; saves mean and rstd.
extern "C" __global__ void mp_layer_norm(const void* x, int xdt, const void* w, int wdt,
                                         const void* b, int bdt, u64 rows, u64 c, float eps,
                                         void* out, int odt, void* mean, int mdt, void* rstd,
                                         int rdt) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 base = r * c;
        float s = 0.0f;
        for (u64 j = threadIdx.x; j < c; j += blockDim.x) s += ld(x, base + j, xdt);
        float mu = block_sum(s) / (float)c;
        float q = 0.0f;
        for (u64 j = threadIdx.x; j < c; j += blockDim.x) {
            float d = ld(x, base + j, xdt) - mu;
            q += d * d;
        }
        float var = block_sum(q) / (float)c;
        float rs = 1.0f / sqrtf(var + eps);
        for (u64 j = threadIdx.x; j < c; j += blockDim.x) {
            float xh = (ld(x, base + j, xdt) - mu) * rs;
            st_rne(out, base + j, odt, xh * ld(w, j, wdt) + ld(b, j, bdt));
        }
        if (threadIdx.x == 0) {
            st_rne(mean, r, mdt, mu);
            st_rne(rstd, r, rdt, rs);
        }
    }
}

// dx += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * w.
extern "C" __global__ void mp_layer_norm_bwd_dx(const void* dy, int dydt, const void* x, int xdt,
                                                const void* w, int wdt, const void* mean, int mdt,
                                                const void* rstd, int rdt, u64 rows, u64 c,
                                                void* dx, int dxdt) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 base = r * c;
        float mu = ld(mean, r, mdt), rs = ld(rstd, r, rdt);
        float s1 = 0.0f, s2 = 0.0f;
        for (u64 j = threadIdx.x; j < c; j += blockDim.x) {
            float dxh = ld(dy, base + j, dydt) * ld(w, j, wdt);
            float xh = (ld(x, base + j, xdt) - mu) * rs;
            s1 += dxh;
            s2 += dxh * xh;
        }
        float m1 = block_sum(s1) / (float)c;
        float m2 = block_sum(s2) / (float)c;
        for (u64 j = threadIdx.x; j < c; j += blockDim.x) {
            float dxh = ld(dy, base + j, dydt) * ld(w, j, wdt);
            float xh = (ld(x, base + j, xdt) - mu) * rs;
            float g = rs * (dxh - m1 - xh * m2);
            st_rne(dx, base + j, dxdt, ld(dx, base + j, dxdt) + g);
        }
    }
}

// partial[0][chunk][j] = sum dy * xhat, partial[1][chunk][j] = sum dy over the chunk's rows.
extern "C" __global__ void mp_layer_norm_bwd_dwb_partial(const void* dy, int dydt, const void* x,
                                                         int xdt, const void* mean, int mdt,
                                                         const void* rstd, int rdt, u64 rows,
                                                         u64 c, u64 rows_per_chunk, u64 chunks,
                                                         float* partial) {
    u64 j = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 chunk = blockIdx.y;
    if (j >= c) return;
    u64 r0 = chunk * rows_per_chunk;
    u64 r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    float aw = 0.0f, ab = 0.0f;
    for (u64 r = r0; r < r1; r++) {
        float g = ld(dy, r * c + j, dydt);
        float xh = (ld(x, r * c + j, xdt) - ld(mean, r, mdt)) * ld(rstd, r, rdt);
        aw += g * xh;
        ab += g;
    }
    partial[chunk * c + j] = aw;
    partial[(chunks + chunk) * c + j] = ab;
}

// losses[r] = logsumexp(logits[r]) - logits[r, t[r]]
extern "C" __global__ void mp_cross_entropy(const void* logits, int ldt, const u32* targets,
                                            u64 rows, u64 vocab, void* losses, int lossdt) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 base = r * vocab;
        float mx = -INFINITY;
        for (u64 j = threadIdx.x; j < vocab; j += blockDim.x) mx = nanmax(mx, ld(logits, base + j, ldt));
        mx = block_max(mx);
        float s = 0.0f;
        for (u64 j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(ld(logits, base + j, ldt) - mx);
        s = block_sum(s);
        if (threadIdx.x == 0) {
            float lse = mx + logf(s);
            st_rne(losses, r, lossdt, lse - ld(logits, base + targets[r], ldt));
        }
    }
}

// dlogits = (softmax(logits) - onehot(t)) * dloss  (overwrites)
extern "C" __global__ void mp_cross_entropy_bwd(const void* logits, int ldt, const u32* targets,
                                                u64 rows, u64 vocab, float dloss, void* dlogits,
                                                int dldt) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 base = r * vocab;
        float mx = -INFINITY;
        for (u64 j = threadIdx.x; j < vocab; j += blockDim.x) mx = nanmax(mx, ld(logits, base + j, ldt));
        mx = block_max(mx);
        float s = 0.0f;
        for (u64 j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(ld(logits, base + j, ldt) - mx);
        s = block_sum(s);
        float inv = 1.0f / s;
        u64 t = targets[r];
        for (u64 j = threadIdx.x; j < vocab; j += blockDim.x) {
            float p = expf(ld(logits, base + j, ldt) - mx) * inv;
            st_rne(dlogits, base + j, dldt, (p - (j == t ? 1.0f : 0.0f)) * dloss);
        }
    }
}

// The fused classifier: losses[r] = logsumexp - logits[t] and dlogits = (softmax - onehot(t))
// * dloss from one block's pass over the row (the row is read for the max, the sum and the
// gradient, from L2 after the first read; written once).
extern "C" __global__ void mp_cross_entropy_fused(const void* logits, int ldt, const u32* targets,
                                                  u64 rows, u64 vocab, float dloss, void* losses,
                                                  int lossdt, void* dlogits, int dldt) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 base = r * vocab;
        float mx = -INFINITY;
        for (u64 j = threadIdx.x; j < vocab; j += blockDim.x) mx = nanmax(mx, ld(logits, base + j, ldt));
        mx = block_max(mx);
        float s = 0.0f;
        for (u64 j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(ld(logits, base + j, ldt) - mx);
        s = block_sum(s);
        u64 t = targets[r];
        if (threadIdx.x == 0) st_rne(losses, r, lossdt, mx + logf(s) - ld(logits, base + t, ldt));
        float inv = 1.0f / s;
        for (u64 j = threadIdx.x; j < vocab; j += blockDim.x) {
            float p = expf(ld(logits, base + j, ldt) - mx) * inv;
            st_rne(dlogits, base + j, dldt, (p - (j == t ? 1.0f : 0.0f)) * dloss);
        }
    }
}

// Softmax backward from the output y: dx += y (dy - sum dy y), or for log-softmax
// dx += dy - exp(y) sum dy; masked entries (log-softmax y = -inf) get and pass no gradient.
extern "C" __global__ void mp_softmax_bwd(const void* y, int ydt, const void* dy, int dydt, u64 rows,
                                          u64 cols, int logsm, void* dx, int dxdt) {
    for (u64 r = blockIdx.x; r < rows; r += gridDim.x) {
        u64 base = r * cols;
        float s = 0.0f;
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) {
            float yv = ld(y, base + j, ydt), g = ld(dy, base + j, dydt);
            if (logsm) { if (yv != -INFINITY) s += g; }
            else s += g * yv;
        }
        s = block_sum(s);
        for (u64 j = threadIdx.x; j < cols; j += blockDim.x) {
            float yv = ld(y, base + j, ydt), g = ld(dy, base + j, dydt);
            float d;
            if (logsm) {
                if (yv == -INFINITY) continue;
                d = g - expf(yv) * s;
            } else {
                d = yv * (g - s);
            }
            st_rne(dx, base + j, dxdt, ld(dx, base + j, dxdt) + d);
        }
    }
}
