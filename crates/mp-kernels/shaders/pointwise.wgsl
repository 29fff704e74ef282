// Element-wise ops, selected by C_OP: 0 add, 1 mul, 2 scale, 3 axpy (out += alpha a),
// 4 bias add (b indexed by column), 7 fill, 8 sub, 9..12 broadcast product
// (out = a * rs[row] * b[col]; 9 neither factor, +1 rs, +2 b), 15 dropout
// (out = a * alpha where the random bits of the element are >= cols, else 0),
// 16 + u unary op u (out = f_u(a)), 32 + u its backward (out += f_u'(a) b), with u the code
// of mp_kernels::UnaryOp (0 gelu, 1 relu, 2 silu, 3 sigmoid, 4 tanh, 5 exp, 6 neg, 7 rsqrt).

struct Params {
    n: u32,
    cols: u32,
    base: u32,
    alpha: f32,
    key: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + expc(-x));
}

// tanh from the CPU's exp (the builtin's range and accuracy vary between drivers).
fn tanh_c(x: f32) -> f32 {
    let ax = abs(x);
    if (is_nan(x) || ax < 1e-3) {
        return x;
    }
    let e = expc(-2.0 * ax);
    let t = (1.0 - e) / (1.0 + e);
    return select(t, -t, x < 0.0);
}

fn unary_f(u: u32, x: f32) -> f32 {
    switch u {
        case 0u: { return gelu(x); }
        case 1u: { return select(x, 0.0, x < 0.0); }
        case 2u: { return x * sigmoid(x); }
        case 3u: { return sigmoid(x); }
        case 4u: { return tanh_c(x); }
        case 5u: { return expc(x); }
        case 6u: { return -x; }
        default: { return 1.0 / sqrt(x); }
    }
}

fn unary_df(u: u32, x: f32) -> f32 {
    switch u {
        case 0u: { return gelu_grad(x); }
        case 1u: { return select(0.0, 1.0, x > 0.0); }
        case 2u: { let s = sigmoid(x); return s * (1.0 + x * (1.0 - s)); }
        case 3u: { let s = sigmoid(x); return s * (1.0 - s); }
        case 4u: { let t = tanh_c(x); return 1.0 - t * t; }
        case 5u: { return expc(x); }
        case 6u: { return -1.0; }
        default: { return -0.5 / (x * sqrt(x)); }
    }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.n) {
        return;
    }
    if (C_OP >= 32u) {
        out_st(i, out_ld(i) + unary_df(C_OP - 32u, a_ld(i)) * b_ld(i));
        return;
    }
    if (C_OP >= 16u) {
        out_st(i, unary_f(C_OP - 16u, a_ld(i)));
        return;
    }
    switch C_OP {
        case 0u: { out_st(i, a_ld(i) + b_ld(i)); }
        case 1u: { out_st(i, a_ld(i) * b_ld(i)); }
        case 2u: { out_st(i, p.alpha * a_ld(i)); }
        case 3u: { out_st(i, out_ld(i) + p.alpha * a_ld(i)); }
        case 4u: { out_st(i, a_ld(i) + b_ld((p.base + i) % p.cols)); }
        case 8u: { out_st(i, a_ld(i) - b_ld(i)); }
        case 9u, 10u, 11u, 12u: {
            let e = p.base + i;
            var v = a_ld(i);
            if ((C_OP & 1u) == 0u) {
                v = v * rs_ld(e / p.cols);
            }
            if (C_OP >= 11u) {
                v = v * b_ld(e % p.cols);
            }
            out_st(i, v);
        }
        case 15u: {
            let r = sr_rand(p.key, p.base + i, 0u);
            out_st(i, select(0.0, a_ld(i) * p.alpha, r >= p.cols));
        }
        default: { out_st(i, p.alpha); }
    }
}
