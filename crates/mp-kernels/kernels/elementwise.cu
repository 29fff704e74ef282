// Element-wise kernels: one launch shape for every op, 8 elements per thread per iteration
// (16-byte accesses where every operand is aligned), grid-stride, FP32 arithmetic.

#define OP_CAST 0
#define OP_FILL 1
#define OP_ADD 2
#define OP_MUL 3
#define OP_SCALE 4
#define OP_AXPY 5
#define OP_SUB 6
// unary op u (mp_kernels::UnaryOp::code): OP_UNARY + u is c = f(a), OP_UNARY_BWD + u is
// c = c + f'(a) b.
#define OP_UNARY 16
#define OP_UNARY_BWD 32

#define UOP_GELU 0
#define UOP_RELU 1
#define UOP_SILU 2
#define UOP_SIGMOID 3
#define UOP_TANH 4
#define UOP_EXP 5
#define UOP_NEG 6
#define UOP_RSQRT 7

// GELU, tanh approximation, in the cancellation-free form 0.5 (1 + tanh u) = sigmoid(2u):
// gelu(x) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3).
__device__ __forceinline__ float gelu_f(float x) {
    const float k0 = 0.7978845608028654f; // sqrt(2/pi)
    float u = k0 * (x + 0.044715f * x * x * x);
    return x / (1.0f + expf(-2.0f * u));
}
// d/dx: s + x * 2 s (1 - s) * du/dx with s = sigmoid(2u) (1 - tanh^2 u = 4 s (1 - s)).
__device__ __forceinline__ float gelu_grad(float x) {
    const float k0 = 0.7978845608028654f;
    float x2 = x * x;
    float u = k0 * (x + 0.044715f * x2 * x);
    float s = 1.0f / (1.0f + expf(-2.0f * u));
    return s + x * 2.0f * s * (1.0f - s) * k0 * (1.0f + 3.0f * 0.044715f * x2);
}

__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

// f(x) of unary op `u` (NaN propagates through every one of them).
__device__ __forceinline__ float unary_f(int u, float x) {
    switch (u) {
    case UOP_GELU: return gelu_f(x);
    case UOP_RELU: return x < 0.0f ? 0.0f : x;
    case UOP_SILU: return x * sigmoid_f(x);
    case UOP_SIGMOID: return sigmoid_f(x);
    case UOP_TANH: return tanhf(x);
    case UOP_EXP: return expf(x);
    case UOP_NEG: return -x;
    default: return 1.0f / sqrtf(x);
    }
}

// f'(x) of unary op `u`.
__device__ __forceinline__ float unary_df(int u, float x) {
    switch (u) {
    case UOP_GELU: return gelu_grad(x);
    case UOP_RELU: return x > 0.0f ? 1.0f : 0.0f;
    case UOP_SILU: { float s = sigmoid_f(x); return s * (1.0f + x * (1.0f - s)); }
    case UOP_SIGMOID: { float s = sigmoid_f(x); return s * (1.0f - s); }
    case UOP_TANH: { float t = tanhf(x); return 1.0f - t * t; }
    case UOP_EXP: return expf(x);
    case UOP_NEG: return -1.0f;
    default: return -0.5f / (x * sqrtf(x));
    }
}

// c = op(a, b, c, alpha) over n elements.
//   CAST: c = a        FILL: c = alpha       ADD: c = a + b     MUL: c = a * b
//   SCALE: c = alpha a AXPY: c = c + alpha a SUB: c = a - b
//   UNARY + u: c = f_u(a)                    UNARY_BWD + u: c = c + f_u'(a) b
// `c` is rounded with nearest-even, or stochastically when `sr` (counter c_base + i).
extern "C" __global__ void mp_pointwise(int op, const void* a, int adt, const void* b, int bdt,
                                        void* c, int cdt, u64 n, int vec, float alpha, int sr,
                                        u64 seed, u64 c_base, int sat) {
    Rnd rd;
    rd.sr = sr;
    rd.seed_mix = sr ? sr_seed_mix(seed) : 0u;
    rd.base = c_base;
    rd.sat = sat;
    u64 chunks = (n + 7) / 8;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 ch = (u64)blockIdx.x * blockDim.x + threadIdx.x; ch < chunks; ch += stride) {
        u64 i = ch * 8;
        float va[8], vb[8], vc[8];
        if (op != OP_FILL) ld8(a, i, adt, n, vec, va);
        bool bwd = op >= OP_UNARY_BWD;
        if (op == OP_ADD || op == OP_MUL || op == OP_SUB || bwd) ld8(b, i, bdt, n, vec, vb);
        if (op == OP_AXPY || bwd) ld8(c, i, cdt, n, vec, vc);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float r;
            switch (op) {
            case OP_CAST: r = va[k]; break;
            case OP_FILL: r = alpha; break;
            case OP_ADD: r = va[k] + vb[k]; break;
            case OP_MUL: r = va[k] * vb[k]; break;
            case OP_SCALE: r = alpha * va[k]; break;
            case OP_AXPY: r = vc[k] + alpha * va[k]; break;
            case OP_SUB: r = va[k] - vb[k]; break;
            default:
                r = bwd ? vc[k] + unary_df(op - OP_UNARY_BWD, va[k]) * vb[k]
                        : unary_f(op - OP_UNARY, va[k]);
                break;
            }
            vc[k] = r;
        }
        st8(c, i, cdt, n, vec, vc, rd);
    }
}

// out[r, j] = x[r, j] + bias[j]; `vec` requires cols % 8 == 0 and aligned operands.
extern "C" __global__ void mp_bias_add(const void* x, int xdt, const void* bias, int bdt, void* out,
                                       int odt, u64 rows, u64 cols, int vec) {
    u64 n = rows * cols;
    u64 chunks = (n + 7) / 8;
    u64 stride = (u64)gridDim.x * blockDim.x;
    Rnd rd = rne();
    for (u64 ch = (u64)blockIdx.x * blockDim.x + threadIdx.x; ch < chunks; ch += stride) {
        u64 i = ch * 8;
        float vx[8], vb[8];
        ld8(x, i, xdt, n, vec, vx);
        if (vec) {
            ld8(bias, i % cols, bdt, cols, 1, vb);
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) vb[k] = i + k < n ? ld(bias, (i + k) % cols, bdt) : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < 8; k++) vx[k] += vb[k];
        st8(out, i, odt, n, vec, vx, rd);
    }
}

// out[r, j] = x[r, j] * rs[r] * cs[j] over rows of `cols`; a null factor is 1.
extern "C" __global__ void mp_mul_broadcast(const void* x, int xdt, const void* rs, int rdt,
                                            const void* cs, int cdt, void* out, int odt, u64 rows,
                                            u64 cols) {
    u64 n = rows * cols;
    u64 stride = (u64)gridDim.x * blockDim.x;
    Rnd rd = rne();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = ld(x, i, xdt);
        if (rs) v *= ld(rs, i / cols, rdt);
        if (cs) v *= ld(cs, i % cols, cdt);
        st(out, i, odt, v, rd);
    }
}

// Inverted dropout: out[i] = x[i] * scale when sr_bits(seed, i) >= threshold, else 0.
extern "C" __global__ void mp_dropout(const void* x, int xdt, void* out, int odt, u64 n,
                                      u32 threshold, float scale, u64 seed) {
    u32 mix = sr_seed_mix(seed);
    u64 stride = (u64)gridDim.x * blockDim.x;
    Rnd rd = rne();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float v = ld(x, i, xdt);
        st(out, i, odt, sr_bits(mix, i) >= threshold ? v * scale : 0.0f, rd);
    }
}

// SwiGLU of packed rows of 2f (a gate g, then an up u): out[r, j] = silu(g) * u, one thread
// per output element (mp_kernels::PointwiseOps::swiglu).
extern "C" __global__ void mp_swiglu(const void* gu, int gdt, void* out, int odt, u64 n, u64 f) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    Rnd rd = rne();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        u64 at = i + (i / f) * f;  // r * 2f + j
        float g = ld(gu, at, gdt), u = ld(gu, at + f, gdt);
        st(out, i, odt, g * sigmoid_f(g) * u, rd);
    }
}

// Its gradient added into the packed dgu: dg += dy u silu'(g), du += dy silu(g).
extern "C" __global__ void mp_swiglu_bwd(const void* gu, int gdt, const void* dy, int ydt,
                                         void* dgu, int ddt, u64 n, u64 f) {
    u64 stride = (u64)gridDim.x * blockDim.x;
    Rnd rd = rne();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        u64 at = i + (i / f) * f;
        float g = ld(gu, at, gdt), u = ld(gu, at + f, gdt), y = ld(dy, i, ydt);
        float s = sigmoid_f(g);
        st(dgu, at, ddt, ld(dgu, at, ddt) + y * u * (s * (1.0f + g * (1.0f - s))), rd);
        st(dgu, at + f, ddt, ld(dgu, at + f, ddt) + y * (g * s), rd);
    }
}
