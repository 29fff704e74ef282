//! Host references written from the PyTorch docs formulas, in f64, independent of the kernels.

/// `torch.optim.AdamW` hyper-parameters of one element's group.
#[derive(Clone, Copy)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub wd: f64,
}

/// One AdamW step (1-based `step`) on `p`, `m`, `v` with gradients `g`.
pub fn adamw(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], h: Adam, step: u64) {
    let bc1 = 1.0 - h.beta1.powi(step as i32);
    let bc2 = 1.0 - h.beta2.powi(step as i32);
    for i in 0..p.len() {
        p[i] *= 1.0 - h.lr * h.wd;
        m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g[i];
        v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g[i] * g[i];
        p[i] -= h.lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + h.eps);
    }
}

/// `torch.optim.SGD` hyper-parameters.
#[derive(Clone, Copy)]
pub struct SgdHp {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub wd: f64,
    pub nesterov: bool,
}

/// One SGD step; `buf` is `None` before the first step (PyTorch's lazy momentum buffer).
pub fn sgd(p: &mut [f64], buf: &mut Option<Vec<f64>>, g: &[f64], h: SgdHp) {
    let d: Vec<f64> = g.iter().zip(p.iter()).map(|(g, p)| g + h.wd * p).collect();
    let step: Vec<f64> = if h.momentum != 0.0 {
        let b = match buf.take() {
            None => d.clone(),
            Some(b) => b
                .iter()
                .zip(&d)
                .map(|(b, d)| h.momentum * b + (1.0 - h.dampening) * d)
                .collect(),
        };
        let s = if h.nesterov {
            d.iter().zip(&b).map(|(d, b)| d + h.momentum * b).collect()
        } else {
            b.clone()
        };
        *buf = Some(b);
        s
    } else {
        d
    };
    for (p, s) in p.iter_mut().zip(step) {
        *p -= h.lr * s;
    }
}

/// Asserts `|ours - ref| <= 1e-6 + 1e-6 |ref|` elementwise (f32 results against f64).
pub fn assert_close64(what: &str, ours: &[f32], reference: &[f64]) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    for (i, (&o, &r)) in ours.iter().zip(reference).enumerate() {
        let o = f64::from(o);
        assert!(
            (o - r).abs() <= 1e-6 + 1e-6 * r.abs(),
            "{what}[{i}]: ours {o} vs reference {r}"
        );
    }
}
