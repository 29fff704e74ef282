// Fused optimizer passes, one invocation per element: AdamW (C_OPT 0, torch.optim.AdamW
// order, the CPU backend's f32 arithmetic) and SGD with momentum (C_OPT 1). Gradients of any
// dtype are multiplied by `grad_mult`; `params` is FP32 or low precision (rounded with
// C_SR: 0 nearest even, 1 stochastic at the element's absolute index); `model` receives the
// low-precision copy when C_MODEL is 1.

struct Params {
    n: u32,
    key: u32,
    p_lo: u32,
    p_hi: u32,
    m_lo: u32,
    m_hi: u32,
    grad_mult: f32,
    // AdamW: decay, w1, beta2, w2, bc2_sqrt, eps, neg_step_size.
    // SGD: neg_lr, momentum, damp, weight_decay, nesterov (0/1), first_step (0/1), momentum != 0.
    c0: f32,
    c1: f32,
    c2: f32,
    c3: f32,
    c4: f32,
    c5: f32,
    c6: f32,
}
@group(0) @binding(1) var<uniform> p: Params;

// PyTorch's scalar lerp.
fn lerp_t(start: f32, end: f32, weight: f32) -> f32 {
    if (abs(weight) < 0.5) {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.n) {
        return;
    }
    let g = grads_ld(i) * p.grad_mult;
    var w = params_ld(i);
    if (C_OPT == 0u) {
        let pi = w * p.c0;
        let mi = lerp_t(s1_ld(i), g, p.c1);
        let vi = s2_ld(i) * p.c2 + p.c3 * g * g;
        let denom = sqrt(vi) / p.c4 + p.c5;
        w = pi + p.c6 * mi / denom;
        s1_st(i, mi);
        s2_st(i, vi);
    } else {
        let gi = g + p.c3 * w;
        if (p.c6 == 0.0) {
            w += p.c0 * gi;
        } else {
            var b = s1_ld(i) * p.c1 + p.c2 * gi;
            if (p.c5 != 0.0) {
                b = gi;
            }
            s1_st(i, b);
            var d = b;
            if (p.c4 != 0.0) {
                d = gi + p.c1 * b;
            }
            w += p.c0 * d;
        }
    }
    if (C_SR == 1u) {
        params_st_sr(i, w, sr_rand_at(p.key, p.p_lo, p.p_hi, i));
        if (C_MODEL == 1u) {
            model_st_sr(i, w, sr_rand_at(p.key, p.m_lo, p.m_hi, i));
        }
    } else {
        params_st(i, w);
        if (C_MODEL == 1u) {
            model_st(i, w);
        }
    }
}
