// Embedding gather (`gather`, one invocation per output element; C_COPY copies bits when the
// table and output share a dtype) and its scatter-add backward (`scatter`, one invocation per
// (used table row, column)): `csr` holds, for the `nu` distinct ids, `starts` (nu + 1 entries
// into `pos`), `rows` (nu ids) and `pos` (positions grouped by id, ascending), so every table
// element is updated by exactly one invocation, in position order: no atomics, no races.

struct Params {
    n: u32,
    c: u32,
    nu: u32,
    pad: u32,
}
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let i = linear_group(wg, nwg) * 256u + li;
    if (i >= p.n) {
        return;
    }
    let src = ids_idx(i / p.c) * p.c + i % p.c;
    if (C_COPY == 1u) {
        out_st_bits(i, table_bits(src));
    } else {
        out_st(i, table_ld(src));
    }
}

@compute @workgroup_size(256)
fn scatter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) li: u32) {
    let t = linear_group(wg, nwg) * 256u + li;
    if (t >= p.n) {
        return;
    }
    let u = t / p.c;
    let j = t % p.c;
    let start = csr_idx(u);
    let end = csr_idx(u + 1u);
    let row = csr_idx(p.nu + 1u + u);
    let pos0 = 2u * p.nu + 1u;
    let dst = row * p.c + j;
    var acc = dtable_ld(dst);
    for (var k = start; k < end; k++) {
        acc += dout_ld(csr_idx(pos0 + k) * p.c + j);
    }
    dtable_st(dst, acc);
}
