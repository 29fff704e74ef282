//! Memory, casts and fills: bit for bit against the CPU backend (and so mp-dtype); shared by
//! the CUDA and wgpu suites: `crate::common` supplies the backend.

use mp_kernels::prelude::*;
use mp_kernels::testing::random_normal;
use mp_kernels::{DType, Rounding};

use crate::common::{cpu, gpu, poisoned, same_bytes, up};

/// Inputs that exercise every rounding path: normal values over a wide exponent range,
/// subnormals of every format, ties, overflow, infinities and NaN.
fn tricky(len: usize, seed: u64) -> Vec<f32> {
    let mut v = random_normal(len, 1.0, seed);
    for (i, x) in v.iter_mut().enumerate() {
        let scale = match i % 11 {
            0 => 1e-6,
            1 => 1e-3,
            2 => 300.0,
            3 => 7e4,
            4 => 2f32.powi(-20),
            5 => 2f32.powi(-130),
            _ => 1.0,
        };
        *x *= scale;
    }
    let specials = [
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -0.0,
        0.0,
        464.0,
        61440.0,
        1.0 + 2f32.powi(-8),
        65520.0,
        f32::MAX,
        f32::MIN_POSITIVE,
    ];
    for (i, s) in specials.iter().enumerate() {
        if 7 * i < v.len() {
            v[7 * i + 1] = *s;
        }
    }
    v
}

fn cast_bytes<B: Backend>(
    be: &B,
    src: &[f32],
    sdt: DType,
    ddt: DType,
    offset: usize,
    rounding: Rounding,
) -> Vec<u8> {
    // the source is uploaded as f32 then cast to `sdt` with nearest-even (also under test)
    let s = up(be, src, sdt);
    let mut d = poisoned(be, ddt, src.len() + offset + 3);
    be.cast(s.view(), d.slice_mut(offset, src.len()), rounding)
        .expect("cast");
    be.download_bytes(d.view()).expect("download")
}

#[test]
fn cast_every_pair_nearest_even_is_bit_exact() {
    let Some(g) = gpu("cast_every_pair_nearest_even_is_bit_exact") else {
        return;
    };
    let c = cpu();
    // odd length and offsets: vector bodies, scalar tails and unaligned views
    for (len, offset) in [(1 << 16 | 5, 0), (4099, 3), (17, 1)] {
        let x = tricky(len, 7 + len as u64);
        for sdt in DType::ALL {
            for ddt in DType::ALL {
                let want = cast_bytes(&c, &x, sdt, ddt, offset, Rounding::NearestEven);
                let got = cast_bytes(g, &x, sdt, ddt, offset, Rounding::NearestEven);
                same_bytes(
                    &format!("cast {sdt} -> {ddt} (n={len}, offset={offset})"),
                    &got,
                    &want,
                    ddt.size_in_bytes(),
                );
            }
        }
    }
}

#[test]
fn stochastic_rounding_is_bit_exact_with_mp_dtype() {
    let Some(g) = gpu("stochastic_rounding_is_bit_exact_with_mp_dtype") else {
        return;
    };
    let c = cpu();
    for (len, offset, seed) in [(1 << 16 | 3, 0usize, 42u64), (1000, 5, u64::MAX - 7)] {
        let x = tricky(len, seed);
        for ddt in [DType::BF16, DType::F16, DType::F8E4M3, DType::F8E5M2] {
            let r = Rounding::Stochastic { seed };
            let want = cast_bytes(&c, &x, DType::F32, ddt, offset, r);
            let got = cast_bytes(g, &x, DType::F32, ddt, offset, r);
            same_bytes(
                &format!("SR cast f32 -> {ddt} (seed {seed}, offset {offset})"),
                &got,
                &want,
                ddt.size_in_bytes(),
            );
            // and directly against mp-dtype's scalar definition with sr_random(seed, index)
            let w = ddt.size_in_bytes();
            for (i, &xi) in x.iter().enumerate().step_by(97) {
                let idx = (offset + i) as u64;
                let bits = mp_dtype::f32_to_bits_sr(xi, ddt, false, mp_dtype::sr_random(seed, idx));
                let b = &got[(offset + i) * w..(offset + i + 1) * w];
                let mut le = [0u8; 4];
                le[..w].copy_from_slice(b);
                assert_eq!(
                    u32::from_le_bytes(le),
                    bits,
                    "SR {ddt} element {i} of {xi:e}"
                );
            }
        }
    }
}

/// What the device says it has free (where it can say: CUDA) is positive and shrinks by
/// about what a 256 MiB buffer takes; a backend without the query says `None`.
#[test]
fn free_memory_is_reported_and_shrinks_with_an_allocation() {
    let Some(g) = gpu("free_memory_is_reported_and_shrinks_with_an_allocation") else {
        return;
    };
    let Some(before) = g.free_memory() else {
        eprintln!("{}: no free-memory query (None)", g.name());
        return;
    };
    assert!(before > 0);
    let big = g.zeros(DType::F32, 64 << 20).unwrap();
    let after = g
        .free_memory()
        .expect("a backend that answered once answers again");
    assert!(
        before.saturating_sub(after) >= 200 << 20,
        "{}: free {before} -> {after} after a 256 MiB buffer",
        g.name()
    );
    drop(big);
}

#[test]
fn upload_download_and_fill_are_bit_exact() {
    let Some(g) = gpu("upload_download_and_fill_are_bit_exact") else {
        return;
    };
    let c = cpu();
    let x = tricky(3001, 5);
    for dt in DType::ALL {
        let (bg, bc) = (up(g, &x, dt), up(&c, &x, dt));
        same_bytes(
            &format!("upload_f32 {dt}"),
            &g.download_bytes(bg.view()).unwrap(),
            &c.download_bytes(bc.view()).unwrap(),
            dt.size_in_bytes(),
        );
        let (fg, fc) = (
            g.download_f32(bg.slice(3, 2000)).unwrap(),
            c.download_f32(bc.slice(3, 2000)).unwrap(),
        );
        let fgb: Vec<u32> = fg.iter().map(|v| v.to_bits()).collect();
        let fcb: Vec<u32> = fc.iter().map(|v| v.to_bits()).collect();
        assert_eq!(fgb, fcb, "download_f32 {dt}");
        // raw bytes round trip
        let raw = c.download_bytes(bc.view()).unwrap();
        let br = g.upload_bytes(&raw, dt).unwrap();
        assert_eq!(
            g.download_bytes(br.view()).unwrap(),
            raw,
            "upload_bytes {dt}"
        );
        for value in [0.1f32, -3.0e5, 1.0e-7, 448.5] {
            let mut a = poisoned(g, dt, 1029);
            let mut b = poisoned(&c, dt, 1029);
            g.fill(a.slice_mut(2, 1025), value).unwrap();
            c.fill(b.slice_mut(2, 1025), value).unwrap();
            same_bytes(
                &format!("fill {dt} {value}"),
                &g.download_bytes(a.view()).unwrap(),
                &c.download_bytes(b.view()).unwrap(),
                dt.size_in_bytes(),
            );
        }
        let z = g.zeros(dt, 77).unwrap();
        assert!(g.download_bytes(z.view()).unwrap().iter().all(|&b| b == 0));
    }
}

#[test]
fn bad_shapes_are_typed_errors() {
    let Some(g) = gpu("bad_shapes_are_typed_errors") else {
        return;
    };
    let a = up(g, &[1.0, 2.0, 3.0], DType::F32);
    let mut b = g.zeros(DType::BF16, 4).unwrap();
    let e = g
        .cast(a.view(), b.view_mut(), Rounding::NearestEven)
        .unwrap_err();
    assert!(matches!(e, mp_kernels::KernelError::Shape { .. }), "{e}");
    let ids = g.upload_index(&[0, 9]).unwrap();
    let t = up(g, &[0.5; 8], DType::F32);
    let mut o = g.zeros(DType::F32, 8).unwrap();
    let e = g.embedding(t.view(), &ids, 4, o.view_mut()).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = g.upload_bytes(&[1, 2, 3], DType::F16).unwrap_err();
    assert!(
        matches!(e, mp_kernels::KernelError::DType(_)),
        "ragged bytes must be the CPU's dtype error: {e}"
    );
}
