// Shared WGSL helpers of the wgpu backend, appended to every kernel after the generated
// binding prelude: bit-exact conversions between f32 and the narrow formats (ports of
// mp-dtype's scalar reference, integer arithmetic only), the stochastic-rounding counter
// generator, the Cephes-style exp of the CPU backend and GELU.

const NEG_INF_BITS: u32 = 0xff800000u;

fn neg_inf() -> f32 {
    return bitcast<f32>(NEG_INF_BITS);
}

fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

fn is_non_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u;
}

// `max` that propagates NaN (the CPU backend's rule).
fn max_nan(a: f32, b: f32) -> f32 {
    if (is_nan(a)) {
        return a;
    }
    if (is_nan(b) || b > a) {
        return b;
    }
    return a;
}

// floor(rem * 2^(32 - s)) for rem < 2^s, rem < 2^24, s >= 1.
fn sr_threshold(rem: u32, s: u32) -> u32 {
    if (s <= 32u) {
        return rem << (32u - s);
    }
    if (s - 32u < 24u) {
        return rem >> (s - 32u);
    }
    return 0u;
}

// f32 -> narrow format bits (mp_dtype::scalar::narrow, saturate = false). `mb`/`eb`: mantissa
// and exponent bits; `maxb`: magnitude bits of the largest finite value; `sr`: stochastic
// rounding with the 32 random bits `r`, else round to nearest even.
fn narrow_bits(x: f32, mb: u32, eb: u32, bias: i32, maxb: u32, has_inf: bool, sr: bool, r: u32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 31u) << (eb + mb);
    let a = b & 0x7fffffffu;
    let exp_mask = ((1u << eb) - 1u) << mb;
    var ovf = exp_mask;
    if (!has_inf) {
        ovf = exp_mask | ((1u << mb) - 1u);
    }
    if (a > 0x7f800000u) {
        if (has_inf) {
            return sign | exp_mask | (1u << (mb - 1u)) | ((a & 0x007fffffu) >> (23u - mb));
        }
        return sign | exp_mask | ((1u << mb) - 1u);
    }
    if (a == 0x7f800000u) {
        return sign | ovf;
    }
    var e: i32 = -126;
    var m: u32 = a;
    if (a >= 0x00800000u) {
        e = i32(a >> 23u) - 127;
        m = (a & 0x007fffffu) | 0x00800000u;
    }
    let emin = 1 - bias;
    let s = (23u - mb) + u32(max(emin - e, 0));
    let base = u32(max(e + bias - 1, 0)) << mb;
    var q = 0u;
    var rem = m;
    if (s < 32u) {
        q = m >> s;
        rem = m & ((1u << s) - 1u);
    }
    var up = false;
    if (sr) {
        up = r < sr_threshold(rem, s);
    } else if (s <= 25u) {
        let half = 1u << (s - 1u);
        up = rem > half || (rem == half && (q & 1u) == 1u);
    }
    let mag = base + q + select(0u, 1u, up);
    if (mag > maxb) {
        return sign | ovf;
    }
    return sign | mag;
}

// Narrow format bits -> f32 (mp_dtype::scalar::widen): exact; NaN stays a quiet NaN.
fn widen_bits(bits: u32, mb: u32, eb: u32, bias: i32, has_inf: bool) -> f32 {
    let sign = ((bits >> (eb + mb)) & 1u) << 31u;
    let ex = (bits >> mb) & ((1u << eb) - 1u);
    let man = bits & ((1u << mb) - 1u);
    let all_ones = (1u << eb) - 1u;
    var nan = ex == all_ones && man != 0u;
    if (!has_inf) {
        nan = ex == all_ones && man == (1u << mb) - 1u;
    }
    if (nan) {
        return bitcast<f32>(sign | 0x7fc00000u | (man << (23u - mb)));
    }
    if (has_inf && ex == all_ones) {
        return bitcast<f32>(sign | 0x7f800000u);
    }
    var mag: u32;
    if (ex == 0u) {
        let scale = bitcast<f32>(u32(1 - bias - i32(mb) + 127) << 23u);
        mag = bitcast<u32>(f32(man) * scale);
    } else {
        mag = (u32(i32(ex) - bias + 127) << 23u) | (man << (23u - mb));
    }
    return bitcast<f32>(sign | mag);
}

fn enc_f16(x: f32, sr: bool, r: u32) -> u32 {
    return narrow_bits(x, 10u, 5u, 15, 0x7bffu, true, sr, r);
}
fn enc_bf16(x: f32, sr: bool, r: u32) -> u32 {
    return narrow_bits(x, 7u, 8u, 127, 0x7f7fu, true, sr, r);
}
fn enc_f8e4m3(x: f32, sr: bool, r: u32) -> u32 {
    return narrow_bits(x, 3u, 4u, 7, 0x7eu, false, sr, r);
}
fn enc_f8e5m2(x: f32, sr: bool, r: u32) -> u32 {
    return narrow_bits(x, 2u, 5u, 15, 0x7bu, true, sr, r);
}
fn dec_f16(b: u32) -> f32 {
    return widen_bits(b, 10u, 5u, 15, true);
}
fn dec_bf16(b: u32) -> f32 {
    return bitcast<f32>(b << 16u);
}
fn dec_f8e4m3(b: u32) -> f32 {
    return widen_bits(b, 3u, 4u, 7, false);
}
fn dec_f8e5m2(b: u32) -> f32 {
    return widen_bits(b, 2u, 5u, 15, true);
}

// mp_dtype::mix32.
fn mix32(x0: u32) -> u32 {
    var x = x0;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// mp_dtype::sr_random for a precomputed seed key and a 64-bit index `(hi, lo)`.
fn sr_rand(key: u32, lo: u32, hi: u32) -> u32 {
    return mix32(lo ^ mix32(hi ^ key));
}

// The random bits of element `i` of a view whose first element has absolute index
// `(base_hi, base_lo)`.
fn sr_rand_at(key: u32, base_lo: u32, base_hi: u32, i: u32) -> u32 {
    let lo = base_lo + i;
    let hi = base_hi + select(0u, 1u, lo < base_lo);
    return sr_rand(key, lo, hi);
}

// e^x as the CPU backend computes it (Cephes expf: Cody-Waite reduction, degree-6
// polynomial); inputs are clamped to [-87.3, 88.3], NaN propagates.
fn expc(x: f32) -> f32 {
    if (is_nan(x)) {
        return x;
    }
    let xc = clamp(x, -87.3, 88.3);
    let n = floor(xc * 1.442695040888963 + 0.5);
    let r = xc - n * 0.693359375 - n * -2.12194440e-4;
    var p = 1.9875691500e-4;
    p = p * r + 1.3981999507e-3;
    p = p * r + 8.3334519073e-3;
    p = p * r + 4.1665795894e-2;
    p = p * r + 1.6666665459e-1;
    p = p * r + 5.0e-1;
    let e = p * r * r + r + 1.0;
    let scale = bitcast<f32>(u32(i32(n) + 127) << 23u);
    return e * scale;
}

const GELU_S: f32 = 0.7978846;
const GELU_C: f32 = 0.044715;

// GELU, tanh approximation, as x * sigmoid(2u) (no cancellation for negative x).
fn gelu(x: f32) -> f32 {
    let u = GELU_S * (x + GELU_C * x * x * x);
    return x / (1.0 + expc(-2.0 * u));
}

// The exact derivative of `gelu`.
fn gelu_grad(x: f32) -> f32 {
    let u = GELU_S * (x + GELU_C * x * x * x);
    let e = expc(-2.0 * u);
    let sigma = 1.0 / (1.0 + e);
    let one_minus = e * sigma;
    return sigma + 2.0 * x * sigma * one_minus * GELU_S * (1.0 + 3.0 * GELU_C * x * x);
}

// The id of this workgroup in a dispatch linearised over (x, y) to respect the 65535 limit.
fn linear_group(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}
