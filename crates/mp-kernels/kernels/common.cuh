// Shared device code of every mp-kernels CUDA module (prepended to each .cu source before
// NVRTC compiles it): dtype codes, loads that widen to f32, stores that round (nearest-even or
// stochastic, bit-identical to mp-dtype), the counter-based SR generator, block reductions.
#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

// dtype codes (must match DtCode in src/cuda/mod.rs)
#define DT_F32 0
#define DT_F16 1
#define DT_BF16 2
#define DT_E4M3 3
#define DT_E5M2 4

#define MP_WARP 32
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

__device__ __forceinline__ int dt_size(int dt) {
    return dt == DT_F32 ? 4 : (dt <= DT_BF16 ? 2 : 1);
}

// ----- counter-based generator (mp-dtype's sr_random) ----------------------------------------
__device__ __forceinline__ u32 mix32(u32 x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}
// The seed-only part of sr_random; uniform per launch.
__device__ __forceinline__ u32 sr_seed_mix(u64 seed) {
    return mix32((u32)seed ^ mix32((u32)(seed >> 32) ^ 0x9e3779b9u));
}
__device__ __forceinline__ u32 sr_bits(u32 seed_mix, u64 index) {
    return mix32((u32)index ^ mix32((u32)(index >> 32) ^ seed_mix));
}

// ----- widening loads ------------------------------------------------------------------------
// Decoding is a port of mp-dtype's `bits_to_f32` (exact; NaN -> quiet NaN, sign and payload kept).
__device__ __noinline__ float narrow_to_f32(u32 bits, int dt) {
    if (dt == DT_BF16) {
        u32 h = bits & 0xffffu;
        return (h & 0x7fffu) > 0x7f80u ? __uint_as_float((h | 0x40u) << 16) : __uint_as_float(h << 16);
    }
    u32 M, E;
    int bias, has_inf;
    if (dt == DT_F16) { M = 10; E = 5; bias = 15; has_inf = 1; }
    else if (dt == DT_E4M3) { M = 3; E = 4; bias = 7; has_inf = 0; }
    else { M = 2; E = 5; bias = 15; has_inf = 1; }
    u32 sign = ((bits >> (E + M)) & 1u) << 31;
    u32 ex = (bits >> M) & ((1u << E) - 1u);
    u32 man = bits & ((1u << M) - 1u);
    u32 all_ones = (1u << E) - 1u;
    bool is_nan = has_inf ? (ex == all_ones && man != 0u) : (ex == all_ones && man == (1u << M) - 1u);
    if (is_nan) return __uint_as_float(sign | 0x7fc00000u | (man << (23u - M)));
    if (has_inf && ex == all_ones) return __uint_as_float(sign | 0x7f800000u);
    float mag;
    if (ex == 0u) {
        // subnormal or zero: man * 2^(1 - bias - M), exact
        mag = (float)man * __uint_as_float((u32)(1 - bias - (int)M + 127) << 23);
    } else {
        mag = __uint_as_float(((u32)((int)ex - bias + 127) << 23) | (man << (23u - M)));
    }
    return __uint_as_float(sign | __float_as_uint(mag));
}

__device__ __forceinline__ float bits_to_f32(u32 bits, int dt) {
    if (dt == DT_F32) return __uint_as_float(bits);
    if (dt == DT_BF16 && (bits & 0x7fffu) <= 0x7f80u) return __uint_as_float(bits << 16);
    // F16 without NaN: the hardware conversion is exact (NaN payloads follow mp-dtype below)
    if (dt == DT_F16 && ((bits & 0x7c00u) != 0x7c00u || (bits & 0x3ffu) == 0u))
        return __half2float(__ushort_as_half((u16)bits));
    return narrow_to_f32(bits, dt);
}

__device__ __forceinline__ float ld(const void* p, u64 i, int dt) {
    switch (dt) {
    case DT_F32: return ((const float*)p)[i];
    case DT_F16:
    case DT_BF16: return bits_to_f32(((const u16*)p)[i], dt);
    default: return narrow_to_f32(((const u8*)p)[i], dt);
    }
}

// ----- rounding stores -----------------------------------------------------------------------
// Rounding state of one store: nearest-even, or stochastic with the stream's mixed seed and the
// absolute element index of the destination's element 0 (the SR counter is base + i).
struct Rnd {
    int sr;
    u32 seed_mix;
    u64 base;
    int sat;
};
__device__ __forceinline__ Rnd rne() { Rnd r; r.sr = 0; r.seed_mix = 0; r.base = 0; r.sat = 0; return r; }

// Layout of a narrow format (mp-dtype's scalar.rs `Layout`).
struct Lay {
    u32 mbits, ebits;
    int bias;
    u32 max_bits;
    int has_inf;
};
__device__ __forceinline__ Lay layout_of(int dt) {
    Lay l;
    switch (dt) {
    case DT_F16: l.mbits = 10; l.ebits = 5; l.bias = 15; l.max_bits = 0x7bffu; l.has_inf = 1; break;
    case DT_BF16: l.mbits = 7; l.ebits = 8; l.bias = 127; l.max_bits = 0x7f7fu; l.has_inf = 1; break;
    case DT_E4M3: l.mbits = 3; l.ebits = 4; l.bias = 7; l.max_bits = 0x7eu; l.has_inf = 0; break;
    default: l.mbits = 2; l.ebits = 5; l.bias = 15; l.max_bits = 0x7bu; l.has_inf = 1; break;
    }
    return l;
}
__device__ __forceinline__ u32 exp_mask(const Lay& l) { return ((1u << l.ebits) - 1u) << l.mbits; }
__device__ __forceinline__ u32 overflow_magnitude(const Lay& l, int sat) {
    if (sat) return l.max_bits;
    if (l.has_inf) return exp_mask(l);
    return exp_mask(l) | ((1u << l.mbits) - 1u);
}
__device__ __forceinline__ u32 nan_magnitude(const Lay& l, u32 a) {
    if (l.has_inf) return exp_mask(l) | (1u << (l.mbits - 1u)) | ((a & 0x007fffffu) >> (23u - l.mbits));
    return exp_mask(l) | ((1u << l.mbits) - 1u);
}
// floor(rem * 2^(32 - s)) for rem < 2^s, rem < 2^24, s >= 1 (mp-dtype's sr_threshold).
__device__ __forceinline__ u32 sr_threshold(u32 rem, u32 s) {
    if (s <= 32u) return s == 32u ? rem : rem << (32u - s);
    if (s - 32u < 24u) return rem >> (s - 32u);
    return 0u;
}

// f32 -> the bits of a narrow `dt`: a line-by-line port of mp-dtype's `narrow` (scalar.rs), so
// nearest-even and stochastic results are bit-identical to the CPU reference. `idx` is the
// element's absolute index in its buffer (the SR counter).
__device__ __noinline__ u32 f32_to_narrow(float x, int dt, const Rnd& rd, u64 idx) {
    Lay l = layout_of(dt);
    u32 b = __float_as_uint(x);
    u32 sign = (b >> 31) << (l.ebits + l.mbits);
    u32 a = b & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | nan_magnitude(l, a);
    if (a == 0x7f800000u) return sign | overflow_magnitude(l, rd.sat);
    int e;
    u32 m;
    if (a >= 0x00800000u) { e = (int)(a >> 23) - 127; m = (a & 0x007fffffu) | 0x00800000u; }
    else { e = -126; m = a; }
    int emin = 1 - l.bias;
    u32 s = (23u - l.mbits) + (u32)(emin - e > 0 ? emin - e : 0);
    int be = e + l.bias - 1;
    u32 base = (u32)(be > 0 ? be : 0) << l.mbits;
    u32 q, rem;
    if (s < 32u) { q = m >> s; rem = m & ((1u << s) - 1u); }
    else { q = 0u; rem = m; }
    bool up;
    if (rd.sr) {
        up = sr_bits(rd.seed_mix, idx) < sr_threshold(rem, s);
    } else if (s > 25u) {
        up = false;
    } else {
        u32 half = 1u << (s - 1u);
        up = rem > half || (rem == half && (q & 1u));
    }
    u32 mag = base + q + (up ? 1u : 0u);
    if (mag > l.max_bits) return sign | overflow_magnitude(l, rd.sat);
    return sign | mag;
}

__device__ __forceinline__ u32 f32_to_bits(float x, int dt, const Rnd& rd, u64 idx) {
    if (dt == DT_F32) return __float_as_uint(x);
    if (dt == DT_BF16 && !rd.sr && !rd.sat) {
        // the classic nearest-even bias trick, identical to the general rule for BF16
        u32 u = __float_as_uint(x);
        if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
        return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    }
    if (dt == DT_F16 && !rd.sr && !rd.sat && x == x) {
        // hardware round-to-nearest-even: identical to the general rule except for NaN payloads
        return (u32)__half_as_ushort(__float2half_rn(x));
    }
    return f32_to_narrow(x, dt, rd, idx);
}

// Stores x into element i of p (SR counter rd.base + i).
__device__ __forceinline__ void st(void* p, u64 i, int dt, float x, const Rnd& rd) {
    u32 b = f32_to_bits(x, dt, rd, rd.base + i);
    switch (dt) {
    case DT_F32: ((float*)p)[i] = x; break;
    case DT_F16:
    case DT_BF16: ((u16*)p)[i] = (u16)b; break;
    default: ((u8*)p)[i] = (u8)b; break;
    }
}
__device__ __forceinline__ void st_rne(void* p, u64 i, int dt, float x) {
    Rnd r = rne();
    st(p, i, dt, x, r);
}

// ----- vectorized 8-element chunks ---------------------------------------------------------------
// Loads elements [i, i+8) widened to f32. `vec`: the chunk is aligned for 16-byte (8-byte for
// FP8) accesses; `n`: elements in the buffer (scalar tail when i + 8 > n).
__device__ __forceinline__ void ld8(const void* p, u64 i, int dt, u64 n, int vec, float v[8]) {
    if (vec && i + 8 <= n) {
        if (dt == DT_F32) {
            float4 a = *(const float4*)((const float*)p + i);
            float4 b = *(const float4*)((const float*)p + i + 4);
            v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
            v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        } else if (dt == DT_F16 || dt == DT_BF16) {
            uint4 a = *(const uint4*)((const u16*)p + i);
            u32 w[4] = {a.x, a.y, a.z, a.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                v[2 * k] = bits_to_f32(w[k] & 0xffffu, dt);
                v[2 * k + 1] = bits_to_f32(w[k] >> 16, dt);
            }
        } else {
            uint2 a = *(const uint2*)((const u8*)p + i);
            u32 w[2] = {a.x, a.y};
#pragma unroll
            for (int k = 0; k < 8; k++) v[k] = narrow_to_f32((w[k >> 2] >> (8 * (k & 3))) & 0xffu, dt);
        }
    } else {
        // unaligned or tail: scalar
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = i + k < n ? ld(p, i + k, dt) : 0.0f;
    }
}

__device__ __forceinline__ void st8(void* p, u64 i, int dt, u64 n, int vec, const float v[8], const Rnd& rd) {
    if (vec && i + 8 <= n) {
        if (dt == DT_F32) {
            *(float4*)((float*)p + i) = make_float4(v[0], v[1], v[2], v[3]);
            *(float4*)((float*)p + i + 4) = make_float4(v[4], v[5], v[6], v[7]);
        } else if (dt == DT_F16 || dt == DT_BF16) {
            u32 w[4];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                u32 lo = f32_to_bits(v[2 * k], dt, rd, rd.base + i + 2 * k);
                u32 hi = f32_to_bits(v[2 * k + 1], dt, rd, rd.base + i + 2 * k + 1);
                w[k] = (lo & 0xffffu) | (hi << 16);
            }
            *(uint4*)((u16*)p + i) = make_uint4(w[0], w[1], w[2], w[3]);
        } else {
            u32 w[2] = {0u, 0u};
#pragma unroll
            for (int k = 0; k < 8; k++) w[k >> 2] |= (f32_to_bits(v[k], dt, rd, rd.base + i + k) & 0xffu) << (8 * (k & 3));
            *(uint2*)((u8*)p + i) = make_uint2(w[0], w[1]);
        }
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (i + k < n) st(p, i + k, dt, v[k], rd);
    }
}

// ----- reductions ----------------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = MP_WARP / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ double warp_sum_d(double x) {
#pragma unroll
    for (int o = MP_WARP / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
// max that propagates NaN
__device__ __forceinline__ float nanmax(float a, float b) {
    return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b);
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
    for (int o = MP_WARP / 2; o > 0; o >>= 1) x = nanmax(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
// Block-wide sum/max (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float x) {
    __shared__ float sh_sum[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    x = warp_sum(x);
    __syncthreads();
    if (lane == 0) sh_sum[w] = x;
    __syncthreads();
    x = lane < nw ? sh_sum[lane] : 0.0f;
    return warp_sum(x);
}
__device__ __forceinline__ float block_max(float x) {
    __shared__ float sh_max[32];
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    x = warp_max(x);
    __syncthreads();
    if (lane == 0) sh_max[w] = x;
    __syncthreads();
    x = lane < nw ? sh_max[lane] : -INFINITY;
    return warp_max(x);
}
