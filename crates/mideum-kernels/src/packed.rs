//! Weights repacked at load time into the layout the SIMD kernels want: eight rows of a
//! quantized matrix interleaved, so that one 32-byte load holds four consecutive elements of each
//! of the eight rows and one `vpmaddubsw` against a broadcast group of four activation bytes
//! yields partial sums for all eight rows at once.
//!
//! Compared with the row-by-row GGUF layout this removes, per 256 weights and activation row,
//! the per-row horizontal sums and most of the scale handling: the products of the 32 elements
//! of a sub-block (eight `vpmaddubsw`) are added as 16-bit integers (|sum| ≤ 8 · 2 · 15 · 127 =
//! 30,480 fits i16), and only then multiplied by the eight rows' sub-block scales with one
//! `vpmaddwd`. The eight results are the eight rows' outputs, stored with one vector store.
//!
//! Layout of [`Packed::Q4Kx8`] (`n` a multiple of 8, `k` of 256): groups of 8 rows one after
//! another; inside a group the super-blocks of 256 elements in order, each [`Q4KX8_BYTES`]
//! bytes:
//!
//! | bytes | content |
//! |---|---|
//! | 0..16 | `d` of rows 0..8 (f16) |
//! | 16..32 | `dmin` of rows 0..8 (f16) |
//! | 32..64 | scales, low four bits: for chunk `c` (0..4), 16 values `x`, the scale of sub-block `2c + x / 8` in row `x % 8`; byte `16·(c / 2) + x` holds chunk `2q`'s in its low and chunk `2q + 1`'s in its high nibble |
//! | 64..96 | mins, low four bits, the same way: chunk `c`'s value `x` is the min of sub-block `2c + x % 2` in row `x / 2` |
//! | 96..112 | scales, top two bits: byte `x` holds chunk `c`'s at bits `2c..2c + 2` |
//! | 112..128 | mins, top two bits, the same way |
//! | 128..1152 | nibbles: for chunk `c` (64 elements) and group `e` (0..8), 32 bytes: for row `i`, the 4 bytes `qs[32c + 4e .. 32c + 4e + 4]` of that row's GGUF block (low nibbles: elements `64c + 4e ..`, high nibbles: `64c + 32 + 4e ..`) |
//!
//! Layout of [`Packed::Q6Kx8`] (1680 bytes per group super-block, exactly eight GGUF blocks):
//! bytes 0..16 the eight `d` (f16); 16..144 the i8 scales, byte `16 + 8·j + i` = scale of
//! sub-block `j` (16 elements) in row `i`; then per sub-block `j` 96 bytes: three vectors `e`
//! = 0, 1, 2 of 32 bytes (row `i`'s bytes at `4i..4i + 4`), one per group of four elements
//! `4e..4e + 4` of the sub-block: bits 0..6 hold the element's six-bit value, bits 6..8 bits
//! `2e..2e + 2` of the value of the element in the same place of group 3. One mask then yields
//! a group of the first three, and three shifts and masks the fourth: 11 vector operations per
//! sub-block, where GGUF's split into low nibbles and top bits takes 17 (`pbench`, one
//! activation row: 15.2 GMAC/s per core against 13.5 on a Zen-1 EPYC). The `−32` offset is
//! removed with the activations' per-16 sums.
//!
//! [`Packed::Q8_0x8`] and [`Packed::Q4_0x8`] interleave blocks of 32 the same way (see the
//! variants).
//!
//! The values are exactly those of the GGUF blocks (nothing is re-quantized), so unpacking
//! restores the original bytes and dequantization is unchanged.

use crate::quant::{pack_scale_min_k4, scale_min_k4, ActRow, QuantType, PAIRS_PER_BLOCK, QK_K};
use half::f16;

/// Rows interleaved per group.
pub const ROWS: usize = 8;

/// Bytes of one group super-block of [`Packed::Q4Kx8`].
pub const Q4KX8_BYTES: usize = 1152;

/// Bytes of one group super-block of [`Packed::Q6Kx8`] (eight GGUF blocks' worth).
pub const Q6KX8_BYTES: usize = 1680;

/// A repacked weight layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Packed {
    /// Q4_K, eight rows interleaved (see the module documentation).
    Q4Kx8,
    /// Q6_K, eight rows interleaved (see the module documentation).
    Q6Kx8,
    /// Q8_0, eight rows interleaved: per block of 32, the eight `d` (f16), then 8 vectors of
    /// 32 bytes, vector `e` holding bytes `4e..4e + 4` of each row's values.
    Q8_0x8,
    /// Q4_0, eight rows interleaved: per block of 32, the eight `d` (f16), then 4 vectors of
    /// 32 bytes, vector `e` holding nibble bytes `4e..4e + 4` of each row (low nibbles:
    /// elements `4e..`, high nibbles: elements `16 + 4e..`).
    Q4_0x8,
}

impl Packed {
    /// The GGUF type the layout holds.
    pub fn source(self) -> QuantType {
        match self {
            Packed::Q4Kx8 => QuantType::Q4K,
            Packed::Q6Kx8 => QuantType::Q6K,
            Packed::Q8_0x8 => QuantType::Q8_0,
            Packed::Q4_0x8 => QuantType::Q4_0,
        }
    }

    /// Bytes of one block of a group (eight rows × the source type's block).
    pub fn block_bytes(self) -> usize {
        match self {
            Packed::Q4Kx8 => Q4KX8_BYTES,
            Packed::Q6Kx8 => Q6KX8_BYTES,
            Packed::Q8_0x8 | Packed::Q4_0x8 => ROWS * self.source().block_bytes(),
        }
    }

    /// The packed layout for weights of type `qt` with `n` rows of `k` elements, if any.
    pub fn for_weights(qt: QuantType, n: usize, k: usize) -> Option<Packed> {
        if n == 0 || !n.is_multiple_of(ROWS) || !qt.fits(k) {
            return None;
        }
        match qt {
            QuantType::Q4K => Some(Packed::Q4Kx8),
            QuantType::Q6K => Some(Packed::Q6Kx8),
            QuantType::Q8_0 => Some(Packed::Q8_0x8),
            QuantType::Q4_0 => Some(Packed::Q4_0x8),
            _ => None,
        }
    }

    /// Bytes of an `n × k` matrix in this layout.
    pub fn bytes(self, n: usize, k: usize) -> usize {
        n / ROWS * (k / self.source().block_elems()) * self.block_bytes()
    }

    /// Elements held by `bytes` bytes of this layout.
    pub fn elems(self, bytes: usize) -> usize {
        bytes / self.block_bytes() * ROWS * self.source().block_elems()
    }

    /// Bytes of one group of [`ROWS`] rows of `k` elements.
    pub fn group_bytes(self, k: usize) -> usize {
        self.bytes(ROWS, k)
    }
}

/// Repacks `n` GGUF rows of `k` elements (`src`, `n · row_bytes` bytes) into `out`
/// (`layout.bytes(n, k)` bytes).
///
/// Panics on shapes the layout does not take (checked with [`Packed::for_weights`] first).
pub fn pack(layout: Packed, src: &[u8], n: usize, k: usize, out: &mut [u8]) {
    let qt = layout.source();
    assert_eq!(Packed::for_weights(qt, n, k), Some(layout), "packed shape");
    let rb = qt.row_bytes(k);
    assert_eq!(src.len(), n * rb, "source shape");
    assert_eq!(out.len(), layout.bytes(n, k), "packed size");
    let nb = k / QK_K;
    let gb = layout.group_bytes(k);
    if matches!(layout, Packed::Q8_0x8 | Packed::Q4_0x8) {
        let (bb, nb) = (qt.block_bytes(), k / qt.block_elems());
        let pb = layout.block_bytes();
        for (g, og) in out.chunks_exact_mut(gb).enumerate() {
            for b in 0..nb {
                let o = &mut og[b * pb..(b + 1) * pb];
                for i in 0..ROWS {
                    let at = (g * ROWS + i) * rb + b * bb;
                    let blk = &src[at..at + bb];
                    o[2 * i..2 * i + 2].copy_from_slice(&blk[0..2]);
                    for e in 0..(bb - 2) / 4 {
                        let to = 16 + 32 * e + 4 * i;
                        o[to..to + 4].copy_from_slice(&blk[2 + 4 * e..6 + 4 * e]);
                    }
                }
            }
        }
        return;
    }
    if layout == Packed::Q6Kx8 {
        for (g, og) in out.chunks_exact_mut(gb).enumerate() {
            for b in 0..nb {
                let blocks: [&[u8]; ROWS] = std::array::from_fn(|i| {
                    let at = (g * ROWS + i) * rb + b * 210;
                    &src[at..at + 210]
                });
                pack_q6k_block(&blocks, &mut og[b * Q6KX8_BYTES..(b + 1) * Q6KX8_BYTES]);
            }
        }
        return;
    }
    for (g, og) in out.chunks_exact_mut(gb).enumerate() {
        for b in 0..nb {
            let o = &mut og[b * Q4KX8_BYTES..(b + 1) * Q4KX8_BYTES];
            for i in 0..ROWS {
                let row = g * ROWS + i;
                let blk = &src[row * rb + b * 144..row * rb + (b + 1) * 144];
                o[2 * i..2 * i + 2].copy_from_slice(&blk[0..2]);
                o[16 + 2 * i..16 + 2 * i + 2].copy_from_slice(&blk[2..4]);
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &blk[4..16]);
                    put_q4k_six(o, false, j / 2, 8 * (j % 2) + i, sc);
                    put_q4k_six(o, true, j / 2, 2 * i + j % 2, m);
                }
                for c in 0..4 {
                    for e in 0..8 {
                        let at = 128 + (c * 8 + e) * 32 + 4 * i;
                        o[at..at + 4]
                            .copy_from_slice(&blk[16 + 32 * c + 4 * e..16 + 32 * c + 4 * e + 4]);
                    }
                }
            }
        }
    }
}

/// Restores the GGUF bytes of row `r` (`row_bytes(k)` bytes) from a packed matrix.
pub fn unpack_row(layout: Packed, packed: &[u8], k: usize, r: usize, out: &mut [u8]) {
    let nb = k / QK_K;
    let gb = layout.group_bytes(k);
    let (g, i) = (r / ROWS, r % ROWS);
    let grp = &packed[g * gb..(g + 1) * gb];
    if matches!(layout, Packed::Q8_0x8 | Packed::Q4_0x8) {
        let qt = layout.source();
        let (bb, pb) = (qt.block_bytes(), layout.block_bytes());
        for b in 0..k / qt.block_elems() {
            let o = &grp[b * pb..(b + 1) * pb];
            let blk = &mut out[b * bb..(b + 1) * bb];
            blk[0..2].copy_from_slice(&o[2 * i..2 * i + 2]);
            for e in 0..(bb - 2) / 4 {
                let from = 16 + 32 * e + 4 * i;
                blk[2 + 4 * e..6 + 4 * e].copy_from_slice(&o[from..from + 4]);
            }
        }
        return;
    }
    if layout == Packed::Q6Kx8 {
        for b in 0..nb {
            let o = &grp[b * Q6KX8_BYTES..(b + 1) * Q6KX8_BYTES];
            unpack_q6k_block(o, i, &mut out[b * 210..(b + 1) * 210]);
        }
        return;
    }
    for b in 0..nb {
        let o = &grp[b * Q4KX8_BYTES..(b + 1) * Q4KX8_BYTES];
        let blk = &mut out[b * 144..(b + 1) * 144];
        blk[0..2].copy_from_slice(&o[2 * i..2 * i + 2]);
        blk[2..4].copy_from_slice(&o[16 + 2 * i..16 + 2 * i + 2]);
        let sc: [u8; 8] = std::array::from_fn(|j| q4k_scale(o, j, i));
        let m: [u8; 8] = std::array::from_fn(|j| q4k_min(o, j, i));
        pack_scale_min_k4(&sc, &m, &mut blk[4..16]);
        for c in 0..4 {
            for e in 0..8 {
                let at = 128 + (c * 8 + e) * 32 + 4 * i;
                blk[16 + 32 * c + 4 * e..16 + 32 * c + 4 * e + 4].copy_from_slice(&o[at..at + 4]);
            }
        }
    }
}

/// Row `r` of a packed `? × k` matrix as f32, equal to dequantizing the GGUF row (no
/// allocation: one block at a time).
pub fn dequantize_row(layout: Packed, packed: &[u8], k: usize, r: usize, out: &mut [f32]) {
    let qt = layout.source();
    let (be, nb) = (qt.block_elems(), k / qt.block_elems());
    let (gb, bb) = (layout.group_bytes(k), layout.block_bytes());
    let (g, i) = (r / ROWS, r % ROWS);
    let grp = &packed[g * gb..(g + 1) * gb];
    let mut blk = [0u8; 210];
    let blk = &mut blk[..qt.block_bytes()];
    for b in 0..nb {
        // A one-block "row" of one block of the group: unpack just that block.
        unpack_row(layout, &grp[b * bb..(b + 1) * bb], be, i, blk);
        crate::quant::dequantize_row(qt, blk, &mut out[b * be..(b + 1) * be]);
    }
}

/// Offsets in a packed Q4_K super-block of the low nibbles and of the top two bits of the
/// scales (`mins` false) or the mins.
const fn q4k_six_at(mins: bool) -> (usize, usize) {
    if mins {
        (64, 112)
    } else {
        (32, 96)
    }
}

/// Stores six-bit value `x` of chunk `c` of a packed Q4_K super-block's scales or mins (see
/// the module documentation).
fn put_q4k_six(o: &mut [u8], mins: bool, c: usize, x: usize, v: u8) {
    let (low, top) = q4k_six_at(mins);
    let at = low + 16 * (c / 2) + x;
    o[at] = o[at] & !(0xF << (4 * (c % 2))) | (v & 0xF) << (4 * (c % 2));
    o[top + x] = o[top + x] & !(3 << (2 * c)) | (v >> 4 & 3) << (2 * c);
}

/// Six-bit value `x` of chunk `c` stored by [`put_q4k_six`].
fn q4k_six(o: &[u8], mins: bool, c: usize, x: usize) -> u8 {
    let (low, top) = q4k_six_at(mins);
    (o[low + 16 * (c / 2) + x] >> (4 * (c % 2)) & 0xF) | (o[top + x] >> (2 * c) & 3) << 4
}

/// The scale of sub-block `j` in row `i` of a packed Q4_K super-block.
fn q4k_scale(o: &[u8], j: usize, i: usize) -> u8 {
    q4k_six(o, false, j / 2, 8 * (j % 2) + i)
}

/// The min of sub-block `j` in row `i` of a packed Q4_K super-block.
fn q4k_min(o: &[u8], j: usize, i: usize) -> u8 {
    q4k_six(o, true, j / 2, 2 * i + j % 2)
}

/// The 256 six-bit values of a GGUF Q6_K block in element order.
fn q6k_values(blk: &[u8]) -> [u8; QK_K] {
    let mut q = [0u8; QK_K];
    for n in 0..2 {
        for l in 0..32 {
            let (ql0, ql1) = (blk[64 * n + l], blk[64 * n + 32 + l]);
            let qh = blk[128 + 32 * n + l];
            q[128 * n + l] = (ql0 & 0xF) | (qh & 3) << 4;
            q[128 * n + l + 32] = (ql1 & 0xF) | ((qh >> 2) & 3) << 4;
            q[128 * n + l + 64] = (ql0 >> 4) | ((qh >> 4) & 3) << 4;
            q[128 * n + l + 96] = (ql1 >> 4) | ((qh >> 6) & 3) << 4;
        }
    }
    q
}

/// Packs the same super-block of eight Q6_K rows (see the module documentation).
fn pack_q6k_block(blocks: &[&[u8]; ROWS], o: &mut [u8]) {
    for (i, blk) in blocks.iter().enumerate() {
        o[2 * i..2 * i + 2].copy_from_slice(&blk[208..210]);
        for j in 0..16 {
            o[16 + 8 * j + i] = blk[192 + j];
        }
        let q = q6k_values(blk);
        for j in 0..16 {
            let v = &mut o[144 + 96 * j..144 + 96 * (j + 1)];
            for e4 in 0..4 {
                let g = |e: usize| q[16 * j + 4 * e + e4];
                let at = 4 * i + e4;
                for e in 0..3 {
                    // Group e's six bits, and bits 2e..2e + 2 of group 3 on top.
                    v[32 * e + at] = g(e) | ((g(3) >> (2 * e)) & 3) << 6;
                }
            }
        }
    }
}

/// The six-bit value of element `16j + 4e + e4` of row `i` in a packed Q6_K super-block.
fn q6k_packed_value(o: &[u8], i: usize, j: usize, e: usize, e4: usize) -> u8 {
    let v = &o[144 + 96 * j..144 + 96 * (j + 1)];
    let at = 4 * i + e4;
    if e < 3 {
        v[32 * e + at] & 0x3F
    } else {
        (0..3).fold(0, |q, e| q | (v[32 * e + at] >> 6) << (2 * e))
    }
}

/// Restores row `i`'s GGUF Q6_K block from a packed super-block.
fn unpack_q6k_block(o: &[u8], i: usize, blk: &mut [u8]) {
    blk.fill(0);
    for t in 0..QK_K {
        let (j, e, e4) = (t / 16, t % 16 / 4, t % 4);
        let q = q6k_packed_value(o, i, j, e, e4);
        let (n, m, l) = (t / 128, t % 128 / 32, t % 32);
        blk[64 * n + l + 32 * (m % 2)] |= if m < 2 { q & 0xF } else { (q & 0xF) << 4 };
        blk[128 + 32 * n + l] |= (q >> 4) << (2 * m);
    }
    for j in 0..16 {
        blk[192 + j] = o[16 + 8 * j + i];
    }
    blk[208..210].copy_from_slice(&o[2 * i..2 * i + 2]);
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The scalar twin of the SIMD kernels: `out[r][i] = row_i · a[r]` for the [`ROWS`] rows of
/// one group (`grp`, `group_bytes(k)` bytes) and `RA` K256 activation rows. Integer sums are
/// exact; the float steps are the kernels' operations in the kernels' order, so both agree bit
/// for bit.
pub fn scalar_group<const RA: usize>(
    layout: Packed,
    grp: &[u8],
    a: &[ActRow<'_>; RA],
) -> [[f32; ROWS]; RA] {
    match layout {
        Packed::Q4Kx8 => scalar_q4k(grp, a),
        Packed::Q6Kx8 => scalar_q6k(grp, a),
        Packed::Q8_0x8 | Packed::Q4_0x8 => scalar_b32(layout, grp, a),
    }
}

/// Q8_0/Q4_0 groups against B32 activations: per block of 32 an exact integer sum per row
/// (Q4_0's `−8` offset removed with the activation block sum), then one fused multiply-add.
fn scalar_b32<const RA: usize>(
    layout: Packed,
    grp: &[u8],
    a: &[ActRow<'_>; RA],
) -> [[f32; ROWS]; RA] {
    let mut out = [[0f32; ROWS]; RA];
    let Some(first) = a.first() else {
        return out;
    };
    let pb = layout.block_bytes();
    for b in 0..first.qs.len() / 32 {
        let o = &grp[b * pb..(b + 1) * pb];
        for (r, ar) in a.iter().enumerate() {
            let qs = &ar.qs[b * 32..(b + 1) * 32];
            for i in 0..ROWS {
                let mut s = 0i32;
                for t in 0..32 {
                    let q = match layout {
                        Packed::Q8_0x8 => o[16 + 32 * (t / 4) + 4 * i + t % 4] as i8 as i32,
                        _ => {
                            let byte = o[16 + 32 * (t % 16 / 4) + 4 * i + t % 4];
                            (if t < 16 { byte & 0xF } else { byte >> 4 }) as i32
                        }
                    };
                    s += q * qs[t] as i32;
                }
                if layout == Packed::Q4_0x8 {
                    s -= 8 * ar.sums[b];
                }
                let d = f16_at(o, 2 * i);
                out[r][i] = (s as f32).mul_add(d * ar.d[b], out[r][i]);
            }
        }
    }
    out
}

fn scalar_q6k<const RA: usize>(grp: &[u8], a: &[ActRow<'_>; RA]) -> [[f32; ROWS]; RA] {
    let mut out = [[0f32; ROWS]; RA];
    let Some(first) = a.first() else {
        return out;
    };
    let nb = first.qs.len() / QK_K;
    for b in 0..nb {
        let o = &grp[b * Q6KX8_BYTES..(b + 1) * Q6KX8_BYTES];
        for (r, ar) in a.iter().enumerate() {
            let qs = &ar.qs[b * QK_K..(b + 1) * QK_K];
            let da = ar.d[b];
            for i in 0..ROWS {
                let (mut sumi, mut corr) = (0i32, 0i32);
                for j in 0..16 {
                    let sc = o[16 + 8 * j + i] as i8 as i32;
                    let mut s = 0i32;
                    for e in 0..4 {
                        for e4 in 0..4 {
                            let q = q6k_packed_value(o, i, j, e, e4) as i32;
                            s += q * qs[16 * j + 4 * e + e4] as i32;
                        }
                    }
                    sumi += sc * s;
                    corr += sc * ar.sums[b * 16 + j];
                }
                let d = f16_at(o, 2 * i);
                out[r][i] = ((sumi - 32 * corr) as f32).mul_add(d * da, out[r][i]);
            }
        }
    }
    out
}

fn scalar_q4k<const RA: usize>(grp: &[u8], a: &[ActRow<'_>; RA]) -> [[f32; ROWS]; RA] {
    let mut out = [[0f32; ROWS]; RA];
    let Some(first) = a.first() else {
        return out;
    };
    let nb = first.qs.len() / QK_K;
    for b in 0..nb {
        let o = &grp[b * Q4KX8_BYTES..(b + 1) * Q4KX8_BYTES];
        for (r, ar) in a.iter().enumerate() {
            let qs = &ar.qs[b * QK_K..(b + 1) * QK_K];
            let da = ar.d[b];
            for i in 0..ROWS {
                let mut sumi = 0i32;
                for j in 0..8 {
                    let mut s = 0i32;
                    for l in 0..32 {
                        // Element 32j + l: chunk j/2, low nibble for even j, high for odd.
                        let c = j / 2;
                        let (e, e4) = (l / 4, l % 4);
                        let byte = o[128 + (c * 8 + e) * 32 + 4 * i + e4];
                        let q = if j.is_multiple_of(2) {
                            byte & 0xF
                        } else {
                            byte >> 4
                        };
                        s += q as i32 * qs[32 * j + l] as i32;
                    }
                    sumi += q4k_scale(o, j, i) as i32 * s;
                }
                let mut mn = 0i32;
                for j in 0..8 {
                    let bsum: i32 = ar.sums[b * 16 + 2 * j] + ar.sums[b * 16 + 2 * j + 1];
                    mn += q4k_min(o, j, i) as i32 * bsum;
                }
                let d = f16_at(o, 2 * i);
                let dmin = f16_at(o, 16 + 2 * i);
                let acc = (sumi as f32).mul_add(d * da, out[r][i]);
                out[r][i] = (-(mn as f32)).mul_add(dmin * da, acc);
            }
        }
    }
    out
}

/// Which implementation computes packed groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedKernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// `vpdpbusd` on 256-bit vectors (AVX-512 VNNI with VL): one instruction per four bytes
    /// of eight rows where AVX2 needs two (`vpmaddubsw` and an add) to four (Q8_0's sign
    /// trick).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl PackedKernel {
    /// The fastest kernel this CPU supports. `MIDEUM_KERNEL=scalar` forces the reference and
    /// `MIDEUM_KERNEL=avx2` the AVX2 kernels on a CPU that has more (to compare the two).
    pub fn detect() -> PackedKernel {
        let avail = PackedKernel::available();
        let want = std::env::var("MIDEUM_KERNEL").unwrap_or_default();
        let pick = match want.as_str() {
            "scalar" => Some(PackedKernel::Scalar),
            #[cfg(target_arch = "x86_64")]
            "avx2" => Some(PackedKernel::Avx2),
            _ => None,
        };
        pick.filter(|k| avail.contains(k))
            .or_else(|| avail.last().copied())
            .unwrap_or(PackedKernel::Scalar)
    }

    pub fn available() -> Vec<PackedKernel> {
        #[allow(unused_mut)]
        let mut v = vec![PackedKernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                v.push(PackedKernel::Avx2);
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                    v.push(PackedKernel::Avx512Vnni);
                }
            }
        }
        v
    }

    /// `out[r][i] = row_i · a[r]` for one group of [`ROWS`] packed rows (`grp`) and `RA`
    /// activation rows (of the source type's kind) of `k` elements each.
    ///
    /// `prefetch`: the group comes from DRAM (decode, or the first pass over a task's weights):
    /// the SIMD kernels then prefetch the weight stream 2 KiB ahead, which carries on into the
    /// groups that follow `grp` in memory. Without it, a pass that reads each group from DRAM
    /// only once or twice (batched decode) waits on memory latency.
    ///
    /// Panics if the shapes do not match.
    #[inline]
    pub fn group<const RA: usize>(
        self,
        layout: Packed,
        grp: &[u8],
        a: &[ActRow<'_>; RA],
        prefetch: bool,
    ) -> [[f32; ROWS]; RA] {
        let [out] = self.groups::<1, RA>(layout, [grp], a, prefetch);
        out
    }

    /// Whether the kernel is compiled for 32 vector registers (AVX-512), so that its
    /// accumulators for eight activation rows fit without spilling.
    pub fn has_32_registers(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == PackedKernel::Avx512Vnni {
            return true;
        }
        false
    }

    /// Whether [`PackedKernel::groups`] with two groups runs faster than two calls of
    /// [`PackedKernel::group`] for `layout` on groups in cache: with the VNNI kernels for the
    /// 32-element blocks, where one activation broadcast then feeds two `vpdpbusd` (Q8_0
    /// `pbench`, six activation rows, in L1 on a Zen 4: ~195 GMAC/s per core against ~170;
    /// `bench -p 512 -t 2`: 109–115 t/s against 91–99). Q4_K gains in L1 (~190 against ~175)
    /// but lost in the model (pp512 75–101 against 93–110 t/s), and Q6_K, whose unpacking is
    /// the larger part, gains nothing.
    pub fn prefers_pairs(self, layout: Packed) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == PackedKernel::Avx512Vnni {
            return matches!(layout, Packed::Q8_0x8 | Packed::Q4_0x8);
        }
        let _ = layout;
        false
    }

    /// [`PackedKernel::group`] for `G` groups at once: `out[g]` is group `grps[g]`'s. The
    /// VNNI kernels share each activation broadcast between the groups; the others run one
    /// group after the other. Results equal `G` calls of `group`.
    ///
    /// Panics if the shapes do not match.
    #[inline]
    pub fn groups<const G: usize, const RA: usize>(
        self,
        layout: Packed,
        grps: [&[u8]; G],
        a: &[ActRow<'_>; RA],
        prefetch: bool,
    ) -> [[[f32; ROWS]; RA]; G] {
        let Some(first) = a.first() else {
            return [[[0f32; ROWS]; RA]; G];
        };
        let k = first.qs.len();
        let be = layout.source().block_elems();
        assert!(k.is_multiple_of(be), "activation row shape");
        for grp in grps {
            assert!(grp.len() >= layout.group_bytes(k), "packed group shape");
        }
        for r in a {
            let sums_ok = if be == QK_K {
                r.sums.len() * 16 >= k && r.pairs.len() * QK_K >= k * crate::quant::PAIRS_PER_BLOCK
            } else {
                r.sums.len() * be >= k
            };
            assert!(
                r.qs.len() == k && r.d.len() * be >= k && sums_ok,
                "activation row shape"
            );
        }
        match self {
            PackedKernel::Scalar => grps.map(|grp| scalar_group(layout, grp, a)),
            // SAFETY: `available`/`detect` only return this variant on CPUs with AVX2, FMA and
            // F16C; the shapes the raw reads rely on were checked above.
            #[cfg(target_arch = "x86_64")]
            PackedKernel::Avx2 => grps.map(|grp| unsafe {
                match layout {
                    Packed::Q4Kx8 => x86::q4kx8::<RA>(grp.as_ptr(), a, prefetch),
                    Packed::Q6Kx8 => x86::q6kx8::<RA>(grp.as_ptr(), a, prefetch),
                    Packed::Q8_0x8 => x86::b32x8::<false, RA>(grp.as_ptr(), a, prefetch),
                    Packed::Q4_0x8 => x86::b32x8::<true, RA>(grp.as_ptr(), a, prefetch),
                }
            }),
            // SAFETY: only returned on CPUs with AVX2, FMA, F16C, AVX-512 F/BW/VL and VNNI;
            // shapes checked above.
            #[cfg(target_arch = "x86_64")]
            PackedKernel::Avx512Vnni => unsafe {
                let w = grps.map(|grp| grp.as_ptr());
                match layout {
                    Packed::Q4Kx8 => vnni::q4kx8::<G, RA>(w, a, prefetch),
                    Packed::Q6Kx8 => vnni::q6kx8::<G, RA>(w, a, prefetch),
                    Packed::Q8_0x8 => vnni::b32x8::<false, G, RA>(w, a, prefetch),
                    Packed::Q4_0x8 => vnni::b32x8::<true, G, RA>(w, a, prefetch),
                }
            },
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Bytes ahead that decode prefetches in the group's single weight stream. 2 KiB against
    /// 4 KiB: 1-thread Q8_0 decode (`bench -p 0 -n 64 -t 1 -r 3`, six interleaved rounds) ran
    /// 6.38–6.85 t/s against 5.86–6.26, faster in every round; Q4_K_M and 2-thread decode did
    /// not move beyond the noise (Q4_K_M 2 threads: 16.13, 14.81 against 15.66, 14.74).
    pub(super) const PF: usize = 2048;

    /// Prefetches the cache lines `PF` bytes ahead of bytes `from..to` of the block at `p` (no
    /// effect on results). The K-quant kernels call it once per part of a super-block, so that
    /// the prefetches spread over the block's work instead of arriving in one burst that fills
    /// the core's miss queues (Q4_K_M decode ran ~5–25% faster that way on a Zen 4).
    #[inline(always)]
    pub(super) fn prefetch_lines(p: *const u8, from: usize, to: usize) {
        let mut off = from & !63;
        while off < to {
            // SAFETY: a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF + off) as *const i8) };
            off += 64;
        }
    }

    /// # Safety
    /// AVX2, FMA and F16C are available; `w` points at a full group of `k / 256` super-blocks;
    /// every `a[r]` has `k` values, `k / 256` scales and `k / 16` sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q4kx8<const RA: usize>(
        w: *const u8,
        a: &[ActRow<'_>; RA],
        pf: bool,
    ) -> [[f32; ROWS]; RA] {
        const SCALES: (usize, usize) = q4k_six_at(false);
        const MINS: (usize, usize) = q4k_six_at(true);
        let nb = a[0].qs.len() / QK_K;
        let m4 = _mm256_set1_epi8(0xF);
        let mut facc = [_mm256_setzero_ps(); RA];
        for b in 0..nb {
            // SAFETY (whole body): super-block b < nb of the group and of every activation row
            // (the caller's contract); every offset stays inside one 1152-byte super-block.
            unsafe {
                let blk = w.add(b * Q4KX8_BYTES);
                let mut sumi = [_mm256_setzero_si256(); RA];
                for c in 0..4 {
                    if pf {
                        prefetch_lines(blk, c * Q4KX8_BYTES / 4, (c + 1) * Q4KX8_BYTES / 4);
                    }
                    let mut acc_lo = [_mm256_setzero_si256(); RA];
                    let mut acc_hi = [_mm256_setzero_si256(); RA];
                    for e in 0..8 {
                        let v =
                            _mm256_loadu_si256(blk.add(128 + (c * 8 + e) * 32) as *const __m256i);
                        let lo = _mm256_and_si256(v, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                        for r in 0..RA {
                            let aq = a[r].qs.as_ptr().add(b * QK_K + 64 * c + 4 * e);
                            let alo = _mm256_set1_epi32((aq as *const i32).read_unaligned());
                            let ahi =
                                _mm256_set1_epi32((aq.add(32) as *const i32).read_unaligned());
                            // Nibble × i8 pair sums ≤ 2·15·127; eight of them fit i16.
                            acc_lo[r] = _mm256_add_epi16(acc_lo[r], _mm256_maddubs_epi16(lo, alo));
                            acc_hi[r] = _mm256_add_epi16(acc_hi[r], _mm256_maddubs_epi16(hi, ahi));
                        }
                    }
                    // Sub-block scales of 2c and 2c + 1, each row's in both i16 halves of its lane.
                    let sc = six_bits(blk.add(SCALES.0), blk.add(SCALES.1), c);
                    let s0 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(sc, sc));
                    let s1 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sc, sc));
                    for r in 0..RA {
                        sumi[r] = _mm256_add_epi32(
                            sumi[r],
                            _mm256_add_epi32(
                                _mm256_madd_epi16(acc_lo[r], s0),
                                _mm256_madd_epi16(acc_hi[r], s1),
                            ),
                        );
                    }
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                let dmin = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
                let mins: [__m256i; 4] = std::array::from_fn(|p| {
                    _mm256_cvtepu8_epi16(six_bits(blk.add(MINS.0), blk.add(MINS.1), p))
                });
                for r in 0..RA {
                    // Sums of sub-blocks 2p and 2p + 1 as an i16 pair (ActQ8::pairs).
                    let mn = pair_dot(&mins, a[r].pairs.as_ptr().add(b * PAIRS_PER_BLOCK + 8));
                    let da = _mm256_set1_ps(*a[r].d.get_unchecked(b));
                    facc[r] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r]), _mm256_mul_ps(d, da), facc[r]);
                    facc[r] =
                        _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mn), _mm256_mul_ps(dmin, da), facc[r]);
                }
            }
        }
        store(facc)
    }

    /// # Safety
    /// As [`q4kx8`], for a [`Packed::Q8_0x8`] (`Q4 = false`) or [`Packed::Q4_0x8`] group and
    /// B32 activation rows (`k / 32` scales and sums).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn b32x8<const Q4: bool, const RA: usize>(
        w: *const u8,
        a: &[ActRow<'_>; RA],
        pf: bool,
    ) -> [[f32; ROWS]; RA] {
        let nb = a[0].qs.len() / 32;
        let pb = if Q4 { 144 } else { 272 };
        let m4 = _mm256_set1_epi8(0xF);
        let ones = _mm256_set1_epi16(1);
        let mut facc = [_mm256_setzero_ps(); RA];
        for b in 0..nb {
            // SAFETY (whole body): block b < nb of the group and of every activation row (the
            // caller's contract); every offset stays inside one block of the group.
            unsafe {
                let blk = w.add(b * pb);
                if pf && b % 2 == 0 {
                    for off in (0..2 * pb).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PF + off) as *const i8);
                    }
                }
                let mut sumi = [_mm256_setzero_si256(); RA];
                if Q4 {
                    let mut acc = [_mm256_setzero_si256(); RA];
                    for e in 0..4 {
                        let v = _mm256_loadu_si256(blk.add(16 + 32 * e) as *const __m256i);
                        let lo = _mm256_and_si256(v, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                        for r in 0..RA {
                            let aq = a[r].qs.as_ptr().add(b * 32 + 4 * e);
                            let alo = _mm256_set1_epi32((aq as *const i32).read_unaligned());
                            let ahi =
                                _mm256_set1_epi32((aq.add(16) as *const i32).read_unaligned());
                            // Nibble × i8 pair sums ≤ 2·15·127; eight of them fit i16.
                            acc[r] = _mm256_add_epi16(
                                acc[r],
                                _mm256_add_epi16(
                                    _mm256_maddubs_epi16(lo, alo),
                                    _mm256_maddubs_epi16(hi, ahi),
                                ),
                            );
                        }
                    }
                    for r in 0..RA {
                        let off = _mm256_set1_epi32(8 * *a[r].sums.get_unchecked(b));
                        sumi[r] = _mm256_sub_epi32(_mm256_madd_epi16(acc[r], ones), off);
                    }
                } else {
                    for e in 0..8 {
                        let v = _mm256_loadu_si256(blk.add(16 + 32 * e) as *const __m256i);
                        let av = _mm256_sign_epi8(v, v);
                        for r in 0..RA {
                            let aq = a[r].qs.as_ptr().add(b * 32 + 4 * e);
                            let x = _mm256_set1_epi32((aq as *const i32).read_unaligned());
                            // |w| × sign-adjusted x: pair sums ≤ 2·127·127 fit i16.
                            let p = _mm256_maddubs_epi16(av, _mm256_sign_epi8(x, v));
                            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, ones));
                        }
                    }
                }
                let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                for r in 0..RA {
                    let da = _mm256_set1_ps(*a[r].d.get_unchecked(b));
                    facc[r] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[r]), _mm256_mul_ps(d, da), facc[r]);
                }
            }
        }
        store(facc)
    }

    /// The 16 six-bit values of chunk `c` (0..4) of a packed Q4_K super-block's scales or
    /// mins, from their 32 low-nibble bytes at `low` and 16 top-bit bytes at `top` (see the
    /// module documentation).
    ///
    /// # Safety
    /// AVX2 is available; `low` and `top` point at 32 and 16 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn six_bits(low: *const u8, top: *const u8, c: usize) -> __m128i {
        // SAFETY: 16-byte loads inside the two ranges (the caller's contract).
        let (nib, top) = unsafe {
            (
                _mm_loadu_si128(low.add(16 * (c / 2)) as *const __m128i),
                _mm_loadu_si128(top as *const __m128i),
            )
        };
        let m4 = _mm_set1_epi8(0xF);
        let lo = if c.is_multiple_of(2) {
            _mm_and_si128(nib, m4)
        } else {
            _mm_and_si128(_mm_srli_epi16(nib, 4), m4)
        };
        // Bits 2c..2c + 2 to 4..6; the 16-bit shifts carry bits across bytes, the mask drops them.
        let hi = match c {
            0 => _mm_slli_epi16(top, 4),
            1 => _mm_slli_epi16(top, 2),
            2 => top,
            _ => _mm_srli_epi16(top, 2),
        };
        _mm_or_si128(lo, _mm_and_si128(hi, _mm_set1_epi8(0x30)))
    }

    /// The four groups of four elements of a packed Q6_K sub-block whose three vectors start
    /// at `v`, as six-bit values for 8 rows each: the low six bits of each vector, and group 3
    /// from their top two bits (the 16-bit shifts move bits across bytes; the masks keep only
    /// the wanted ones).
    ///
    /// # Safety
    /// AVX2 is available; `v` points at 96 readable bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6k_groups(v: *const u8) -> [__m256i; 4] {
        let (m3f, m3) = (_mm256_set1_epi8(0x3F), _mm256_set1_epi8(3));
        let (mc, m30) = (_mm256_set1_epi8(0xC), _mm256_set1_epi8(0x30));
        // SAFETY: three 32-byte loads inside the 96 bytes (the caller's contract).
        let (v0, v1, v2) = unsafe {
            (
                _mm256_loadu_si256(v as *const __m256i),
                _mm256_loadu_si256(v.add(32) as *const __m256i),
                _mm256_loadu_si256(v.add(64) as *const __m256i),
            )
        };
        let top = _mm256_or_si256(
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(v0, 6), m3),
                _mm256_and_si256(_mm256_srli_epi16(v1, 4), mc),
            ),
            _mm256_and_si256(_mm256_srli_epi16(v2, 2), m30),
        );
        [
            _mm256_and_si256(v0, m3f),
            _mm256_and_si256(v1, m3f),
            _mm256_and_si256(v2, m3f),
            top,
        ]
    }

    /// The i8 scales of a packed Q6_K super-block at `blk`, sub-blocks `2p` and `2p + 1`
    /// interleaved per row as i16 pairs (pair `p` in vector `p`).
    ///
    /// # Safety
    /// AVX2 is available; `blk` points at a whole 1680-byte super-block.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q6k_scale_pairs(blk: *const u8) -> [__m256i; 8] {
        std::array::from_fn(|p| {
            // SAFETY: bytes 16 + 16p .. 32 + 16p lie inside the scales (the caller's
            // contract). Each 16-byte load holds sub-blocks 2p (low 8 bytes) and 2p + 1.
            let x = unsafe { _mm_loadu_si128(blk.add(16 + 16 * p) as *const __m128i) };
            _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x, _mm_srli_si128(x, 8)))
        })
    }

    /// `Σ_p vpmaddwd(w[p], pair p of an activation row)`: per row, the row's i16 pairs of
    /// scales or mins against the activation's i16 pairs of sub-block sums at `pr`
    /// ([`ActQ8::pairs`](crate::quant::ActQ8::pairs)).
    ///
    /// # Safety
    /// AVX2 is available; `pr` points at `N` readable i32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn pair_dot<const N: usize>(w: &[__m256i; N], pr: *const i32) -> __m256i {
        let mut acc = _mm256_setzero_si256();
        for (p, wp) in w.iter().enumerate() {
            // SAFETY: p < N (the caller's contract).
            let x = unsafe { *pr.add(p) };
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(*wp, _mm256_set1_epi32(x)));
        }
        acc
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn store<const RA: usize>(facc: [__m256; RA]) -> [[f32; ROWS]; RA] {
        let mut out = [[0f32; ROWS]; RA];
        for r in 0..RA {
            // SAFETY: `out[r]` holds 8 f32.
            unsafe { _mm256_storeu_ps(out[r].as_mut_ptr(), facc[r]) };
        }
        out
    }

    /// # Safety
    /// As [`q4kx8`], for a [`Packed::Q6Kx8`] group.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q6kx8<const RA: usize>(
        w: *const u8,
        a: &[ActRow<'_>; RA],
        pf: bool,
    ) -> [[f32; ROWS]; RA] {
        let nb = a[0].qs.len() / QK_K;
        let mut facc = [_mm256_setzero_ps(); RA];
        for b in 0..nb {
            // SAFETY (whole body): super-block b < nb of the group and of every activation row
            // (the caller's contract); every offset stays inside one 1680-byte super-block.
            unsafe {
                let blk = w.add(b * Q6KX8_BYTES);
                let mut sumi = [_mm256_setzero_si256(); RA];
                for j in 0..16 {
                    if pf && j % 4 == 0 {
                        prefetch_lines(blk, j * Q6KX8_BYTES / 16, (j + 4) * Q6KX8_BYTES / 16);
                    }
                    let q = q6k_groups(blk.add(144 + 96 * j));
                    // Row i's i8 scale of sub-block j in both i16 halves of lane i.
                    let sc8 = _mm_loadl_epi64(blk.add(16 + 8 * j) as *const __m128i);
                    let sc = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(sc8, sc8));
                    for r in 0..RA {
                        let aq = a[r].qs.as_ptr().add(b * QK_K + 16 * j);
                        let m: [__m256i; 4] = std::array::from_fn(|e| {
                            let av =
                                _mm256_set1_epi32((aq.add(4 * e) as *const i32).read_unaligned());
                            _mm256_maddubs_epi16(q[e], av)
                        });
                        // Six-bit × i8 pair sums ≤ 2·63·127; two of them fit i16.
                        let p01 = _mm256_add_epi16(m[0], m[1]);
                        let p23 = _mm256_add_epi16(m[2], m[3]);
                        sumi[r] = _mm256_add_epi32(
                            sumi[r],
                            _mm256_add_epi32(
                                _mm256_madd_epi16(p01, sc),
                                _mm256_madd_epi16(p23, sc),
                            ),
                        );
                    }
                }
                // The −32 offset: Σ_j sc_j · (sum of the activations of sub-block j), with the
                // scales of sub-blocks 2p and 2p + 1 interleaved per row as i16 pairs.
                let pairs = q6k_scale_pairs(blk);
                let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                for r in 0..RA {
                    let corr = pair_dot(&pairs, a[r].pairs.as_ptr().add(b * PAIRS_PER_BLOCK));
                    let tot = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32(corr, 5));
                    let da = _mm256_set1_ps(*a[r].d.get_unchecked(b));
                    facc[r] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(tot), _mm256_mul_ps(d, da), facc[r]);
                }
            }
        }
        store(facc)
    }
}

/// The same kernels with `vpdpbusd`: the integer sums are the AVX2 kernels' exactly (sums of
/// four products accumulated in i32 instead of pairs in i16), so results are bit for bit the
/// scalar twin's. Sub-block scales are applied with `vpmulld` on the i32 sums.
///
/// Each kernel takes `G` groups of eight rows at once: one broadcast of four activation bytes
/// then feeds `G` `vpdpbusd`, so with two groups the broadcasts per multiply-add halve (the 32
/// vector registers of AVX-512 hold the accumulators of both).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // row, group and vector indices run over several arrays
mod vnni {
    use super::x86::{pair_dot, prefetch_lines, q6k_groups, q6k_scale_pairs, six_bits, PF};
    use super::*;
    use std::arch::x86_64::*;

    /// `G` groups' outputs from their accumulators.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn store<const G: usize, const RA: usize>(facc: [[__m256; RA]; G]) -> [[[f32; ROWS]; RA]; G] {
        let mut out = [[[0f32; ROWS]; RA]; G];
        for g in 0..G {
            for r in 0..RA {
                // SAFETY: `out[g][r]` holds 8 f32.
                unsafe { _mm256_storeu_ps(out[g][r].as_mut_ptr(), facc[g][r]) };
            }
        }
        out
    }

    /// Prefetches the weight stream `PF` bytes ahead of `len` bytes at `p` (no effect on
    /// results).
    #[inline(always)]
    fn prefetch(p: *const u8, len: usize) {
        for off in (0..len).step_by(64) {
            // SAFETY: a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PF + off) as *const i8) };
        }
    }

    /// # Safety
    /// As [`super::x86::q4kx8`] for each of the `G` groups at `w`, and AVX-512 F, BW, VL and
    /// VNNI are available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q4kx8<const G: usize, const RA: usize>(
        w: [*const u8; G],
        a: &[ActRow<'_>; RA],
        pf: bool,
    ) -> [[[f32; ROWS]; RA]; G] {
        const SCALES: (usize, usize) = q4k_six_at(false);
        const MINS: (usize, usize) = q4k_six_at(true);
        let nb = a[0].qs.len() / QK_K;
        let m4 = _mm256_set1_epi8(0xF);
        let mut facc = [[_mm256_setzero_ps(); RA]; G];
        for b in 0..nb {
            // SAFETY (whole body): super-block b < nb of each group and of every activation
            // row (the caller's contract); every offset stays inside one 1152-byte super-block.
            unsafe {
                let blk: [*const u8; G] = std::array::from_fn(|g| w[g].add(b * Q4KX8_BYTES));

                let mut sumi = [[_mm256_setzero_si256(); RA]; G];
                for c in 0..4 {
                    if pf {
                        for p in blk {
                            prefetch_lines(p, c * Q4KX8_BYTES / 4, (c + 1) * Q4KX8_BYTES / 4);
                        }
                    }
                    let sc: [__m128i; G] = std::array::from_fn(|g| {
                        six_bits(blk[g].add(SCALES.0), blk[g].add(SCALES.1), c)
                    });
                    // The low nibbles are sub-block 2c, the high ones 2c + 1. One group takes
                    // both in one pass over the chunk's 8 vectors; two groups take two passes
                    // (the vectors are reloaded from L1), so that only one sub-block's
                    // accumulators are live at a time.
                    let passes = if G == 1 { 1 } else { 2 };
                    for pass in 0..passes {
                        let halves = if G == 1 { 0..2 } else { pass..pass + 1 };
                        let mut acc = [[[_mm256_setzero_si256(); RA]; G]; 2];
                        for e in 0..8 {
                            let v: [__m256i; G] = std::array::from_fn(|g| {
                                _mm256_loadu_si256(
                                    blk[g].add(128 + (c * 8 + e) * 32) as *const __m256i
                                )
                            });
                            for h in halves.clone() {
                                let q = v.map(|x| {
                                    if h == 0 {
                                        _mm256_and_si256(x, m4)
                                    } else {
                                        _mm256_and_si256(_mm256_srli_epi16(x, 4), m4)
                                    }
                                });
                                for r in 0..RA {
                                    let aq =
                                        a[r].qs.as_ptr().add(b * QK_K + 64 * c + 32 * h + 4 * e);
                                    let x = _mm256_set1_epi32((aq as *const i32).read_unaligned());
                                    for g in 0..G {
                                        acc[h][g][r] = _mm256_dpbusd_epi32(acc[h][g][r], q[g], x);
                                    }
                                }
                            }
                        }
                        // Bytes 0..8 of `sc`: the scales of sub-block 2c in rows 0..8; 8..16:
                        // of 2c + 1.
                        for h in halves {
                            for g in 0..G {
                                let s = if h == 0 {
                                    sc[g]
                                } else {
                                    _mm_srli_si128(sc[g], 8)
                                };
                                let s = _mm256_cvtepu8_epi32(s);
                                for r in 0..RA {
                                    sumi[g][r] = _mm256_add_epi32(
                                        sumi[g][r],
                                        _mm256_mullo_epi32(acc[h][g][r], s),
                                    );
                                }
                            }
                        }
                    }
                }
                for g in 0..G {
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(blk[g] as *const __m128i));
                    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(blk[g].add(16) as *const __m128i));
                    let mins: [__m256i; 4] = std::array::from_fn(|p| {
                        _mm256_cvtepu8_epi16(six_bits(blk[g].add(MINS.0), blk[g].add(MINS.1), p))
                    });
                    for r in 0..RA {
                        let mn = pair_dot(&mins, a[r].pairs.as_ptr().add(b * PAIRS_PER_BLOCK + 8));
                        let da = _mm256_set1_ps(*a[r].d.get_unchecked(b));
                        let f = &mut facc[g][r];
                        *f = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(sumi[g][r]),
                            _mm256_mul_ps(d, da),
                            *f,
                        );
                        *f = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mn), _mm256_mul_ps(dmin, da), *f);
                    }
                }
            }
        }
        store(facc)
    }

    /// Q8_0 weights are signed and `vpdpbusd` wants one unsigned operand: the weight bytes are
    /// flipped to `w + 128` (one `vpxor` per vector, shared by all activation rows) and
    /// `128 · Σx` is taken off each block's sum afterwards. Q4_0's nibbles are unsigned already.
    ///
    /// # Safety
    /// As [`super::x86::b32x8`] for each of the `G` groups at `w`, and AVX-512 F, BW, VL and
    /// VNNI are available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn b32x8<const Q4: bool, const G: usize, const RA: usize>(
        w: [*const u8; G],
        a: &[ActRow<'_>; RA],
        pf: bool,
    ) -> [[[f32; ROWS]; RA]; G] {
        let nb = a[0].qs.len() / 32;
        let pb = if Q4 { 144 } else { 272 };
        let m4 = _mm256_set1_epi8(0xF);
        let flip = _mm256_set1_epi8(-128);
        let mut facc = [[_mm256_setzero_ps(); RA]; G];
        for b in 0..nb {
            // SAFETY (whole body): block b < nb of each group and of every activation row (the
            // caller's contract); every offset stays inside one block of a group.
            unsafe {
                let blk: [*const u8; G] = std::array::from_fn(|g| w[g].add(b * pb));
                if pf && b % 2 == 0 {
                    for p in blk {
                        prefetch(p, 2 * pb);
                    }
                }
                let mut sumi = [[_mm256_setzero_si256(); RA]; G];
                if Q4 {
                    for e in 0..4 {
                        let v: [__m256i; G] = std::array::from_fn(|g| {
                            _mm256_loadu_si256(blk[g].add(16 + 32 * e) as *const __m256i)
                        });
                        let lo = v.map(|x| _mm256_and_si256(x, m4));
                        let hi = v.map(|x| _mm256_and_si256(_mm256_srli_epi16(x, 4), m4));
                        for r in 0..RA {
                            let aq = a[r].qs.as_ptr().add(b * 32 + 4 * e);
                            let alo = _mm256_set1_epi32((aq as *const i32).read_unaligned());
                            let ahi =
                                _mm256_set1_epi32((aq.add(16) as *const i32).read_unaligned());
                            for g in 0..G {
                                sumi[g][r] = _mm256_dpbusd_epi32(sumi[g][r], lo[g], alo);
                                sumi[g][r] = _mm256_dpbusd_epi32(sumi[g][r], hi[g], ahi);
                            }
                        }
                    }
                } else {
                    for e in 0..8 {
                        let u: [__m256i; G] = std::array::from_fn(|g| {
                            let v = _mm256_loadu_si256(blk[g].add(16 + 32 * e) as *const __m256i);
                            _mm256_xor_si256(v, flip)
                        });
                        for r in 0..RA {
                            let aq = a[r].qs.as_ptr().add(b * 32 + 4 * e);
                            let x = _mm256_set1_epi32((aq as *const i32).read_unaligned());
                            for g in 0..G {
                                sumi[g][r] = _mm256_dpbusd_epi32(sumi[g][r], u[g], x);
                            }
                        }
                    }
                }
                let off = if Q4 { 8 } else { 128 };
                for g in 0..G {
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(blk[g] as *const __m128i));
                    for r in 0..RA {
                        let s = _mm256_set1_epi32(off * *a[r].sums.get_unchecked(b));
                        let tot = _mm256_sub_epi32(sumi[g][r], s);
                        let da = _mm256_set1_ps(*a[r].d.get_unchecked(b));
                        facc[g][r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(tot),
                            _mm256_mul_ps(d, da),
                            facc[g][r],
                        );
                    }
                }
            }
        }
        store(facc)
    }

    /// # Safety
    /// As [`super::x86::q6kx8`] for each of the `G` groups at `w`, and AVX-512 F, BW, VL and
    /// VNNI are available.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    pub unsafe fn q6kx8<const G: usize, const RA: usize>(
        w: [*const u8; G],
        a: &[ActRow<'_>; RA],
        pf: bool,
    ) -> [[[f32; ROWS]; RA]; G] {
        let nb = a[0].qs.len() / QK_K;
        let mut facc = [[_mm256_setzero_ps(); RA]; G];
        for b in 0..nb {
            // SAFETY (whole body): super-block b < nb of each group and of every activation
            // row (the caller's contract); every offset stays inside one 1680-byte super-block.
            unsafe {
                let blk: [*const u8; G] = std::array::from_fn(|g| w[g].add(b * Q6KX8_BYTES));

                let mut sumi = [[_mm256_setzero_si256(); RA]; G];
                for j in 0..16 {
                    if pf && j % 4 == 0 {
                        for p in blk {
                            prefetch_lines(p, j * Q6KX8_BYTES / 16, (j + 4) * Q6KX8_BYTES / 16);
                        }
                    }
                    let q: [[__m256i; 4]; G] =
                        std::array::from_fn(|g| q6k_groups(blk[g].add(144 + 96 * j)));
                    // Row i's i8 scale of sub-block j in lane i.
                    let sc: [__m256i; G] = std::array::from_fn(|g| {
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            blk[g].add(16 + 8 * j) as *const __m128i
                        ))
                    });
                    for r in 0..RA {
                        let aq = a[r].qs.as_ptr().add(b * QK_K + 16 * j);
                        let mut s = [_mm256_setzero_si256(); G];
                        for e in 0..4 {
                            let av =
                                _mm256_set1_epi32((aq.add(4 * e) as *const i32).read_unaligned());
                            for g in 0..G {
                                s[g] = _mm256_dpbusd_epi32(s[g], q[g][e], av);
                            }
                        }
                        for g in 0..G {
                            sumi[g][r] =
                                _mm256_add_epi32(sumi[g][r], _mm256_mullo_epi32(s[g], sc[g]));
                        }
                    }
                }
                for g in 0..G {
                    let pairs = q6k_scale_pairs(blk[g]);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(blk[g] as *const __m128i));
                    for r in 0..RA {
                        let corr = pair_dot(&pairs, a[r].pairs.as_ptr().add(b * PAIRS_PER_BLOCK));
                        let tot = _mm256_sub_epi32(sumi[g][r], _mm256_slli_epi32(corr, 5));
                        let da = _mm256_set1_ps(*a[r].d.get_unchecked(b));
                        facc[g][r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(tot),
                            _mm256_mul_ps(d, da),
                            facc[g][r],
                        );
                    }
                }
            }
        }
        store(facc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row, ActKind, ActQ8};
    use proptest::prelude::*;

    fn rnd(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    const LAYOUTS: [Packed; 4] = [Packed::Q4Kx8, Packed::Q6Kx8, Packed::Q8_0x8, Packed::Q4_0x8];

    /// Row lengths: whole 256-blocks for the K-quants, odd multiples of 32 for the others.
    fn row_len(qt: QuantType, nb: usize) -> usize {
        if qt.block_elems() == QK_K {
            nb * QK_K
        } else {
            nb * 96
        }
    }

    fn matrix(qt: QuantType, n: usize, k: usize, seed: u64) -> Vec<u8> {
        let rb = qt.row_bytes(k);
        let wf = rnd(seed, n * k);
        let mut w = vec![0u8; n * rb];
        for j in 0..n {
            quantize_row(qt, &wf[j * k..(j + 1) * k], &mut w[j * rb..(j + 1) * rb]);
        }
        w
    }

    proptest! {
        /// Packing keeps every byte: unpacking each row restores the GGUF row exactly.
        #[test]
        fn pack_roundtrip(li in 0usize..4, groups in 1usize..4, nb in 1usize..4, seed in 0u64..10_000) {
            let layout = LAYOUTS[li];
            let qt = layout.source();
            let (n, k) = (groups * ROWS, row_len(qt, nb));
            let w = matrix(qt, n, k, seed);
            let rb = qt.row_bytes(k);
            prop_assert_eq!(Packed::for_weights(qt, n, k), Some(layout));
            let mut p = vec![0u8; layout.bytes(n, k)];
            pack(layout, &w, n, k, &mut p);
            let mut row = vec![0u8; rb];
            let (mut want, mut got) = (vec![0f32; k], vec![0f32; k]);
            for r in 0..n {
                unpack_row(layout, &p, k, r, &mut row);
                prop_assert_eq!(&row[..], &w[r * rb..(r + 1) * rb]);
                dequantize_row(qt, &w[r * rb..(r + 1) * rb], &mut want);
                super::dequantize_row(layout, &p, k, r, &mut got);
                prop_assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }

        /// Every kernel equals the scalar twin bit for bit, and the twin equals the float dot
        /// of the dequantized weights within the 8-bit activation error.
        #[test]
        fn kernels_match_scalar(li in 0usize..4, nb in 1usize..5, seed in 0u64..100_000, scale in 0.01f32..30.0) {
            let layout = LAYOUTS[li];
            let qt = layout.source();
            let (n, k) = (ROWS, row_len(qt, nb));
            let w = matrix(qt, n, k, seed);
            let mut p = vec![0u8; layout.bytes(n, k)];
            pack(layout, &w, n, k, &mut p);
            let x: Vec<f32> = rnd(seed ^ 0xabc, 5 * k).iter().map(|v| v * scale).collect();
            let mut act = ActQ8::default();
            act.quantize(&x, 5, k, qt.act_kind());
            let rows: [ActRow<'_>; 5] = std::array::from_fn(|r| act.row(r, qt.act_kind()));
            let want5 = scalar_group::<5>(layout, &p, &rows);
            // A second matrix of two groups for the two-group kernels.
            let w2 = matrix(qt, 2 * ROWS, k, seed ^ 0x5eed);
            let gb = layout.group_bytes(k);
            let mut p2 = vec![0u8; layout.bytes(2 * ROWS, k)];
            pack(layout, &w2, 2 * ROWS, k, &mut p2);
            let want2a = scalar_group::<5>(layout, &p2[..gb], &rows);
            let want2b = scalar_group::<5>(layout, &p2[gb..], &rows);
            for kern in PackedKernel::available() {
                let g1 = kern.group::<1>(layout, &p, &[rows[3]], true);
                let g4 = kern.group::<4>(layout, &p, &[rows[0], rows[1], rows[2], rows[4]], false);
                let g5 = kern.group::<5>(layout, &p, &rows, false);
                for i in 0..ROWS {
                    prop_assert_eq!(g1[0][i].to_bits(), want5[3][i].to_bits(), "{:?}", kern);
                    for (gi, r) in [(0, 0), (1, 1), (2, 2), (3, 4)] {
                        prop_assert_eq!(g4[gi][i].to_bits(), want5[r][i].to_bits(), "{:?}", kern);
                    }
                    for r in 0..5 {
                        prop_assert_eq!(g5[r][i].to_bits(), want5[r][i].to_bits(), "{:?}", kern);
                    }
                }
                // Two groups at once: the same as each alone.
                let g2 = kern.groups::<2, 5>(layout, [&p2[..gb], &p2[gb..]], &rows, false);
                for (g, w) in [&want2a, &want2b].iter().enumerate() {
                    for r in 0..5 {
                        for i in 0..ROWS {
                            prop_assert_eq!(g2[g][r][i].to_bits(), w[r][i].to_bits(), "{:?}", kern);
                        }
                    }
                }
                // The wider steps of the many-rows path (rows repeat: the twin is per row).
                let rows8: [ActRow<'_>; 8] = std::array::from_fn(|r| rows[r % 5]);
                let want8: [[f32; ROWS]; 8] = std::array::from_fn(|r| want5[r % 5]);
                let g6 = kern.group::<6>(layout, &p, &std::array::from_fn(|r| rows8[r]), true);
                let g7 = kern.group::<7>(layout, &p, &std::array::from_fn(|r| rows8[r]), false);
                let g8 = kern.group::<8>(layout, &p, &rows8, true);
                for i in 0..ROWS {
                    for r in 0..8 {
                        prop_assert_eq!(g8[r][i].to_bits(), want8[r][i].to_bits(), "{:?}", kern);
                        if r < 7 {
                            prop_assert_eq!(g7[r][i].to_bits(), want8[r][i].to_bits(), "{:?}", kern);
                        }
                        if r < 6 {
                            prop_assert_eq!(g6[r][i].to_bits(), want8[r][i].to_bits(), "{:?}", kern);
                        }
                    }
                }
            }
            // Against floats: the dequantized row times the (unquantized) activation row.
            let rb = qt.row_bytes(k);
            let mut wf = vec![0f32; k];
            for i in 0..ROWS {
                dequantize_row(qt, &w[i * rb..(i + 1) * rb], &mut wf);
                for r in 0..5 {
                    let xr = &x[r * k..(r + 1) * k];
                    let exact: f32 = wf.iter().zip(xr).map(|(a, b)| a * b).sum();
                    let wn = wf.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let xn = xr.iter().map(|v| v * v).sum::<f32>().sqrt();
                    prop_assert!((want5[r][i] - exact).abs() <= 0.02 * wn * xn + 1e-4,
                        "row {} act {}: {} vs {}", i, r, want5[r][i], exact);
                }
            }
        }
    }

    /// Q6_K's extreme values: every six-bit value 63 (weight +31·d) or 0 (−32·d) with scale
    /// ±128/127 against activations of ±127 (the i16 partial sums reach their bound).
    #[test]
    fn q6k_extreme_values_do_not_overflow() {
        let k = QK_K;
        for (qv, sc) in [(63u8, 127i8), (63, -128), (0, 127), (0, -128)] {
            let mut w = vec![0u8; ROWS * 210];
            for blk in w.chunks_exact_mut(210) {
                let ql = qv & 0xF;
                blk[0..128].fill(ql | ql << 4);
                let qh = qv >> 4;
                blk[128..192].fill(qh | qh << 2 | qh << 4 | qh << 6);
                blk[192..208].fill(sc as u8);
                blk[208..210].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
            }
            let mut p = vec![0u8; Packed::Q6Kx8.bytes(ROWS, k)];
            pack(Packed::Q6Kx8, &w, ROWS, k, &mut p);
            for sign in [1.0f32, -1.0] {
                let x = vec![sign; k];
                let mut act = ActQ8::default();
                act.quantize(&x, 1, k, ActKind::K256);
                let row = act.row(0, ActKind::K256);
                // Activations are all −127·sign with d = −sign/127, i.e. exactly `sign`.
                let want = (qv as f32 - 32.0) * sc as f32 * k as f32 * sign;
                for kern in PackedKernel::available() {
                    let g = kern.group::<1>(Packed::Q6Kx8, &p, &[row], true);
                    for v in g[0] {
                        assert!(
                            (v - want).abs() <= want.abs() * 1e-5,
                            "{kern:?} q={qv} sc={sc}: {v} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The extreme values: every nibble 15 against activations of ±127 (the i16 partial sums
    /// reach their bound and must not wrap).
    #[test]
    fn extreme_values_do_not_overflow() {
        let k = QK_K;
        let rb = QuantType::Q4K.row_bytes(k);
        let mut w = vec![0u8; ROWS * rb];
        for blk in w.chunks_exact_mut(144) {
            blk[0..2].copy_from_slice(&f16::from_f32(1.0).to_bits().to_le_bytes());
            blk[2..4].copy_from_slice(&f16::from_f32(0.0).to_bits().to_le_bytes());
            pack_scale_min_k4(&[63; 8], &[0; 8], &mut blk[4..16]);
            blk[16..].fill(0xFF);
        }
        let mut p = vec![0u8; Packed::Q4Kx8.bytes(ROWS, k)];
        pack(Packed::Q4Kx8, &w, ROWS, k, &mut p);
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; k];
            let mut act = ActQ8::default();
            act.quantize(&x, 1, k, ActKind::K256);
            let row = act.row(0, ActKind::K256);
            assert!(row.qs.iter().all(|&q| q.abs() == 127));
            let want = 15.0 * 63.0 * k as f32 * sign;
            for kern in PackedKernel::available() {
                let g = kern.group::<1>(Packed::Q4Kx8, &p, &[row], true);
                for v in g[0] {
                    assert!(
                        (v - want).abs() <= want.abs() * 1e-5,
                        "{kern:?}: {v} vs {want}"
                    );
                }
            }
        }
    }
}
