//! Golden tests against `golden/float_formats.json` (made with ml_dtypes / numpy).
//! Every expected value, and the list of formats, is read from the file.

use serde_json::Value;

use mp_dtype::{DType, EncodeOptions, bits_to_f32, decode, encode, f32_to_bits};

use mp_golden::num as number;

/// The file's format keys and the matching dtype.
fn dtype_of(key: &str) -> Option<DType> {
    match key {
        "f8e4m3fn" => Some(DType::F8E4M3),
        "f8e5m2" => Some(DType::F8E5M2),
        "bf16" => Some(DType::BF16),
        "f16" => Some(DType::F16),
        "f32" => Some(DType::F32),
        _ => None,
    }
}

/// The golden file of the float formats.
fn load() -> Value {
    mp_golden::load_json("float_formats.json")
}

/// Every (format key, dtype, object) in the file that has a field `field`.
fn formats_with<'a>(doc: &'a Value, field: &str) -> Vec<(&'a str, DType, &'a Value)> {
    let obj = doc.as_object().expect("top level is an object");
    let found: Vec<_> = obj
        .iter()
        .filter(|(_, v)| v.get(field).is_some())
        .map(|(k, v)| {
            let d = dtype_of(k).unwrap_or_else(|| panic!("golden format {k:?} has no DType"));
            (k.as_str(), d, v)
        })
        .collect();
    assert!(!found.is_empty(), "no format in the file has {field:?}");
    found
}

fn same(got: f32, want: f64) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else {
        // Exact, including the sign of zero.
        got as f64 == want && got.is_sign_negative() == want.is_sign_negative()
    }
}

#[test]
fn golden_dtype_value_tables() {
    let doc = load();
    for (key, dtype, fmt) in formats_with(&doc, "to_f32") {
        let table = fmt["to_f32"].as_array().expect("to_f32 is an array");
        assert_eq!(
            table.len(),
            1 << (8 * dtype.size_in_bytes()),
            "{key}: table size"
        );
        let bytes: Vec<u8> = (0..table.len())
            .flat_map(|b| (b as u32).to_le_bytes()[..dtype.size_in_bytes()].to_vec())
            .collect();
        let mut bulk = vec![0f32; table.len()];
        decode(&bytes, dtype, &mut bulk).expect("decode");
        for (b, want) in table.iter().enumerate() {
            let want = number(want);
            let got = bits_to_f32(b as u32, dtype);
            assert!(
                same(got, want),
                "{key}: bits {b:#04x}: got {got:e}, want {want:e}"
            );
            assert_eq!(
                got.to_bits(),
                bulk[b].to_bits(),
                "{key}: bulk decode {b:#04x}"
            );
        }
    }
}

#[test]
fn golden_dtype_finfo() {
    let doc = load();
    for (key, dtype, fmt) in formats_with(&doc, "max") {
        let checks = [
            ("max", dtype.max()),
            ("min_normal", dtype.min_normal()),
            ("min_subnormal", dtype.min_subnormal()),
            ("eps", dtype.epsilon()),
        ];
        for (field, got) in checks {
            let want = number(&fmt[field]);
            assert!(same(got, want), "{key}.{field}: got {got:e}, want {want:e}");
        }
    }
}

#[test]
fn golden_dtype_rne_bits() {
    let doc = load();
    let inputs: Vec<f32> = doc["f32_inputs"]
        .as_array()
        .expect("f32_inputs is an array")
        .iter()
        .map(|v| {
            let x = number(v);
            let f = x as f32;
            assert!(x.is_nan() || f as f64 == x, "input {x} is not an f32");
            f
        })
        .collect();
    for (key, dtype, fmt) in formats_with(&doc, "from_f32_rne_bits") {
        let want: Vec<u32> = fmt["from_f32_rne_bits"]
            .as_array()
            .expect("bits array")
            .iter()
            .map(|v| v.as_u64().expect("bits are integers") as u32)
            .collect();
        assert_eq!(want.len(), inputs.len(), "{key}: one result per input");
        let size = dtype.size_in_bytes();
        let mut bytes = vec![0u8; inputs.len() * size];
        encode(&inputs, &mut bytes, dtype, &EncodeOptions::default()).expect("encode");
        for (i, (&x, &w)) in inputs.iter().zip(&want).enumerate() {
            let got = f32_to_bits(x, dtype, false);
            assert_eq!(got, w, "{key}: input {i} = {x:e} ({:#010x})", x.to_bits());
            let mut le = [0u8; 4];
            le[..size].copy_from_slice(&bytes[i * size..(i + 1) * size]);
            assert_eq!(
                u32::from_le_bytes(le),
                w,
                "{key}: bulk encode of input {i} = {x:e}"
            );
        }
    }
}
