//! GGML block-quantized weight formats (bit-compatible with GGUF files) and the 8-bit
//! activation format the quantized dot products consume.
//!
//! Weight formats (one block covers `block_elems()` consecutive elements of a row):
//!
//! | type | elems | bytes | layout |
//! |---|---|---|---|
//! | Q8_0 | 32 | 34 | f16 `d`, 32 × i8 `q`; `x = d·q` |
//! | Q4_0 | 32 | 18 | f16 `d`, 16 bytes: element `i < 16` is the low nibble of byte `i`, element `i + 16` its high nibble; `x = d·(n − 8)` |
//! | Q4_K | 256 | 144 | f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales and mins for 8 sub-blocks of 32, 128 bytes of nibbles; `x = d·sc·n − dmin·m` |
//! | Q5_K | 256 | 176 | as Q4_K plus 32 bytes of fifth bits before the nibbles |
//! | Q6_K | 256 | 210 | 128 bytes low nibbles, 64 bytes of 2-bit highs, 16 × i8 scales (one per 16 elements), f16 `d`; `x = d·sc·(n − 32)` |
//!
//! Inside a K-quant super-block the nibbles are stored per 64 elements: 32 bytes whose low
//! nibbles are elements `0..32` and high nibbles elements `32..64` of that chunk.
//!
//! Dequantization follows GGML's reference arithmetic exactly (same operations, same order,
//! no fused multiply-add), so it is bit-identical to llama.cpp's `dequantize_row_*`.
//!
//! Activations are quantized per row to signed 8 bits ([`ActQ8`]): blocks of 32 with their own
//! scale for Q8_0/Q4_0 weights, blocks of 256 with one scale and per-16 sums for K-quants.
//! The dot products keep the weight side unsigned (`n` or `q + 128`) so that AVX-512 VNNI's
//! `vpdpbusd` (u8 × i8) applies directly; the offsets are removed with the activation sums.

use half::f16;

pub const QK_K: usize = 256;
pub const QK8_0: usize = 32;

/// A GGML block-quantized type Mideum computes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4K,
    Q5K,
    Q6K,
}

impl QuantType {
    pub const ALL: [QuantType; 5] = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            QuantType::Q8_0 | QuantType::Q4_0 => 32,
            _ => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantType::Q8_0 => 34,
            QuantType::Q4_0 => 18,
            QuantType::Q4K => 144,
            QuantType::Q5K => 176,
            QuantType::Q6K => 210,
        }
    }

    /// GGML's type id (the number stored in GGUF tensor infos).
    pub fn ggml_type(self) -> u32 {
        match self {
            QuantType::Q8_0 => 8,
            QuantType::Q4_0 => 2,
            QuantType::Q4K => 12,
            QuantType::Q5K => 13,
            QuantType::Q6K => 14,
        }
    }

    pub fn from_ggml_type(t: u32) -> Option<QuantType> {
        QuantType::ALL.into_iter().find(|q| q.ggml_type() == t)
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "Q8_0",
            QuantType::Q4_0 => "Q4_0",
            QuantType::Q4K => "Q4_K",
            QuantType::Q5K => "Q5_K",
            QuantType::Q6K => "Q6_K",
        }
    }

    /// Parses `q8_0`, `Q4_K`, `q4k`, … (case-insensitive, `_` optional before `K`).
    pub fn parse(s: &str) -> Option<QuantType> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect::<String>()
            .to_ascii_uppercase();
        match norm.as_str() {
            "Q80" => Some(QuantType::Q8_0),
            "Q40" => Some(QuantType::Q4_0),
            "Q4K" => Some(QuantType::Q4K),
            "Q5K" => Some(QuantType::Q5K),
            "Q6K" => Some(QuantType::Q6K),
            _ => None,
        }
    }

    /// Bytes of a row of `k` elements (`k` must be a multiple of `block_elems`).
    pub fn row_bytes(self, k: usize) -> usize {
        k / self.block_elems() * self.block_bytes()
    }

    /// Whether rows of `k` elements can be stored in this type.
    pub fn fits(self, k: usize) -> bool {
        k > 0 && k.is_multiple_of(self.block_elems())
    }

    /// Which activation layout the dot products with this weight type read.
    pub fn act_kind(self) -> ActKind {
        match self {
            QuantType::Q8_0 | QuantType::Q4_0 => ActKind::B32,
            _ => ActKind::K256,
        }
    }
}

#[inline]
fn rd_f16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

#[inline]
fn wr_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of a Q4_K/Q5_K block.
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Inverse of [`scale_min_k4`]: packs 8 six-bit scales and mins into 12 bytes.
pub fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8], q: &mut [u8]) {
    for j in 0..4 {
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4);
    }
}

/// Dequantizes one row: `src` holds `out.len() / block_elems` blocks.
pub fn dequantize_row(qt: QuantType, src: &[u8], out: &mut [f32]) {
    let (be, bb) = (qt.block_elems(), qt.block_bytes());
    assert!(
        out.len().is_multiple_of(be),
        "row length not a block multiple"
    );
    assert!(src.len() >= out.len() / be * bb, "quantized row too short");
    for (blk, y) in src.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        match qt {
            QuantType::Q8_0 => {
                let d = rd_f16(blk, 0);
                for (o, &q) in y.iter_mut().zip(&blk[2..34]) {
                    *o = (q as i8) as f32 * d;
                }
            }
            QuantType::Q4_0 => {
                let d = rd_f16(blk, 0);
                for j in 0..16 {
                    let b = blk[2 + j];
                    y[j] = ((b & 0xF) as i32 - 8) as f32 * d;
                    y[j + 16] = ((b >> 4) as i32 - 8) as f32 * d;
                }
            }
            QuantType::Q4K => {
                let (d, dmin) = (rd_f16(blk, 0), rd_f16(blk, 2));
                let scales = &blk[4..16];
                let qs = &blk[16..144];
                for c in 0..4 {
                    let (s1, m1) = scale_min_k4(2 * c, scales);
                    let (s2, m2) = scale_min_k4(2 * c + 1, scales);
                    let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
                    let q = &qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        y[64 * c + l] = d1 * (q[l] & 0xF) as f32 - m1;
                        y[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
            QuantType::Q5K => {
                let (d, dmin) = (rd_f16(blk, 0), rd_f16(blk, 2));
                let scales = &blk[4..16];
                let qh = &blk[16..48];
                let qs = &blk[48..176];
                for c in 0..4 {
                    let (s1, m1) = scale_min_k4(2 * c, scales);
                    let (s2, m2) = scale_min_k4(2 * c + 1, scales);
                    let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
                    let q = &qs[32 * c..32 * c + 32];
                    for l in 0..32 {
                        let h1 = ((qh[l] >> (2 * c)) & 1) << 4;
                        let h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
                        y[64 * c + l] = d1 * ((q[l] & 0xF) | h1) as f32 - m1;
                        y[64 * c + 32 + l] = d2 * ((q[l] >> 4) | h2) as f32 - m2;
                    }
                }
            }
            QuantType::Q6K => {
                let d = rd_f16(blk, 208);
                for half in 0..2 {
                    let ql = &blk[64 * half..64 * half + 64];
                    let qh = &blk[128 + 32 * half..128 + 32 * half + 32];
                    let sc = &blk[192 + 8 * half..192 + 8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
    }
}

/// Quantizes one row of `x.len()` floats into `out` (`qt.row_bytes(x.len())` bytes).
///
/// Q8_0 and Q4_0 use GGML's reference rounding. The K-quants pick each sub-block's scale and
/// min from its range, refine them by a few least-squares steps, and store them with 6-bit
/// (Q4_K/Q5_K) or 8-bit (Q6_K) super-block-relative precision; any valid encoding loads in
/// every GGUF reader, this one aims at a low squared error.
pub fn quantize_row(qt: QuantType, x: &[f32], out: &mut [u8]) {
    let (be, bb) = (qt.block_elems(), qt.block_bytes());
    assert!(
        x.len().is_multiple_of(be),
        "row length not a block multiple"
    );
    assert!(out.len() >= x.len() / be * bb, "output too short");
    for (xb, blk) in x.chunks_exact(be).zip(out.chunks_exact_mut(bb)) {
        match qt {
            QuantType::Q8_0 => {
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                wr_f16(blk, 0, d);
                for (o, &v) in blk[2..34].iter_mut().zip(xb) {
                    *o = ((v * id).round() as i32).clamp(-128, 127) as i8 as u8;
                }
            }
            QuantType::Q4_0 => {
                let mut max = 0f32;
                for &v in xb {
                    if v.abs() > max.abs() {
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                wr_f16(blk, 0, d);
                for j in 0..16 {
                    let q0 = ((xb[j] * id + 8.5) as i32).clamp(0, 15) as u8;
                    let q1 = ((xb[j + 16] * id + 8.5) as i32).clamp(0, 15) as u8;
                    blk[2 + j] = q0 | (q1 << 4);
                }
            }
            QuantType::Q4K | QuantType::Q5K => quantize_k_asym(qt, xb, blk),
            QuantType::Q6K => quantize_q6k(xb, blk),
        }
    }
}

/// Scale `s ≥ 0` and offset `m ≥ 0` so that `x ≈ s·n − m` with `n` in `0..=nmax`.
fn fit_asym(x: &[f32], nmax: i32) -> (f32, f32) {
    let mut lo = x.iter().fold(f32::INFINITY, |a, &v| a.min(v)).min(0.0);
    let hi = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    if hi <= lo {
        return (0.0, -lo);
    }
    let mut s = (hi - lo) / nmax as f32;
    // A few alternating least-squares steps: fix n, solve for (s, lo).
    for _ in 0..3 {
        let (mut sn, mut snn, mut sx, mut snx) = (0f32, 0f32, 0f32, 0f32);
        let cnt = x.len() as f32;
        for &v in x {
            let n = (((v - lo) / s).round() as i32).clamp(0, nmax) as f32;
            sn += n;
            snn += n * n;
            sx += v;
            snx += n * v;
        }
        let det = cnt * snn - sn * sn;
        if det <= 0.0 {
            break;
        }
        let ns = (cnt * snx - sn * sx) / det;
        let nlo = (sx - ns * sn) / cnt;
        if ns <= 0.0 || nlo > 0.0 {
            break;
        }
        s = ns;
        lo = nlo;
    }
    (s, -lo)
}

fn quantize_k_asym(qt: QuantType, x: &[f32], blk: &mut [u8]) {
    let nmax = if qt == QuantType::Q4K { 15 } else { 31 };
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for j in 0..8 {
        (scales[j], mins[j]) = fit_asym(&x[32 * j..32 * j + 32], nmax);
    }
    let max_scale = scales.iter().fold(0f32, |a, &v| a.max(v));
    let max_min = mins.iter().fold(0f32, |a, &v| a.max(v));
    let d = f16::from_f32(max_scale / 63.0).to_f32();
    let dmin = f16::from_f32(max_min / 63.0).to_f32();
    let mut sc = [0u8; 8];
    let mut mq = [0u8; 8];
    for j in 0..8 {
        sc[j] = if d > 0.0 {
            ((scales[j] / d).round() as i32).clamp(0, 63) as u8
        } else {
            0
        };
        mq[j] = if dmin > 0.0 {
            ((mins[j] / dmin).round() as i32).clamp(0, 63) as u8
        } else {
            0
        };
    }
    wr_f16(blk, 0, d);
    wr_f16(blk, 2, dmin);
    pack_scale_min_k4(&sc, &mq, &mut blk[4..16]);
    let mut n = [0u8; QK_K];
    for j in 0..8 {
        let ds = d * sc[j] as f32;
        let dm = dmin * mq[j] as f32;
        for l in 0..32 {
            let v = x[32 * j + l];
            n[32 * j + l] = if ds > 0.0 {
                (((v + dm) / ds).round() as i32).clamp(0, nmax) as u8
            } else {
                0
            };
        }
    }
    let qs_at = if qt == QuantType::Q4K { 16 } else { 48 };
    if qt == QuantType::Q5K {
        blk[16..48].iter_mut().for_each(|b| *b = 0);
    }
    for c in 0..4 {
        for l in 0..32 {
            let (a, b) = (n[64 * c + l], n[64 * c + 32 + l]);
            blk[qs_at + 32 * c + l] = (a & 0xF) | ((b & 0xF) << 4);
            if qt == QuantType::Q5K {
                blk[16 + l] |= ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1));
            }
        }
    }
}

fn quantize_q6k(x: &[f32], blk: &mut [u8]) {
    let mut scales = [0f32; 16];
    for g in 0..16 {
        let mut max = 0f32;
        for &v in &x[16 * g..16 * g + 16] {
            if v.abs() > max.abs() {
                max = v;
            }
        }
        // The extreme value maps to -32, the one level that has no positive twin.
        scales[g] = max / -32.0;
    }
    let mut amax = 0f32;
    for &s in &scales {
        if s.abs() > amax.abs() {
            amax = s;
        }
    }
    let d = f16::from_f32(amax / -128.0).to_f32();
    let mut sc = [0i8; 16];
    for g in 0..16 {
        sc[g] = if d != 0.0 {
            ((scales[g] / d).round() as i32).clamp(-128, 127) as i8
        } else {
            0
        };
    }
    let mut n = [0u8; QK_K];
    for g in 0..16 {
        let ds = d * sc[g] as f32;
        for l in 0..16 {
            let v = x[16 * g + l];
            n[16 * g + l] = if ds != 0.0 {
                ((v / ds).round() as i32).clamp(-32, 31) + 32
            } else {
                32
            } as u8;
        }
    }
    for half in 0..2 {
        let nn = &n[128 * half..128 * half + 128];
        for l in 0..32 {
            let (q1, q2, q3, q4) = (nn[l], nn[l + 32], nn[l + 64], nn[l + 96]);
            blk[64 * half + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            blk[64 * half + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            blk[128 + 32 * half + l] =
                (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    for g in 0..16 {
        blk[192 + g] = sc[g] as u8;
    }
    wr_f16(blk, 208, d);
}

/// Packed pair sums per K256 activation block (see [`ActQ8::pairs`]).
pub const PAIRS_PER_BLOCK: usize = 12;

/// Which block structure activations are quantized to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActKind {
    /// Blocks of 32 with an f32 scale each (rounded through f16, as GGML's Q8_0) and the
    /// sum of each block's quantized values.
    B32,
    /// Blocks of 256 with one f32 scale and the sum of every 16 quantized values.
    K256,
}

impl ActKind {
    /// Elements per scale block.
    pub fn block_elems(self) -> usize {
        match self {
            ActKind::B32 => QK8_0,
            ActKind::K256 => QK_K,
        }
    }
}

/// Activation rows quantized to 8 bits. Buffers grow to the largest shape seen and are then
/// reused, so quantizing per token allocates nothing.
#[derive(Default, Debug)]
pub struct ActQ8 {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub sums: Vec<i32>,
    /// K256 only, [`PAIRS_PER_BLOCK`] per block: the per-16 sums of sub-blocks `2p` and
    /// `2p + 1` packed as two i16 in one i32 (`p < 8`), then the per-32 sums of `2p` and `2p + 1`
    /// (`p < 4`) likewise, ready to broadcast as `vpmaddwd` operands (|sum| ≤ 32 · 127 fits i16).
    pub pairs: Vec<i32>,
    pub rows: usize,
    pub k: usize,
}

impl ActQ8 {
    /// Quantizes `rows` rows of `k` floats (`k` a multiple of the kind's block size).
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize, kind: ActKind) {
        assert_eq!(x.len(), rows * k, "activation shape");
        self.prepare(rows, k, kind);
        quantize_rows(x, None, 0.0, k, kind, self.rows_mut());
    }

    /// Quantizes the RMS-normalised rows `rmsnorm(x_r, weight, eps)` without writing them out
    /// as floats first; the result equals [`crate::ops::rmsnorm`] followed by
    /// [`ActQ8::quantize`] bit for bit.
    pub fn quantize_rmsnorm(
        &mut self,
        x: &[f32],
        weight: &[f32],
        eps: f32,
        rows: usize,
        k: usize,
        kind: ActKind,
    ) {
        assert_eq!(x.len(), rows * k, "activation shape");
        assert_eq!(weight.len(), k, "norm weight shape");
        self.prepare(rows, k, kind);
        quantize_rows(x, Some(weight), eps, k, kind, self.rows_mut());
    }

    /// [`ActQ8::quantize`] (`norm == None`) or [`ActQ8::quantize_rmsnorm`] (`norm` = weight
    /// and epsilon) with the rows spread over `pool`; the same result bit for bit, since rows
    /// are independent.
    pub fn quantize_par(
        &mut self,
        pool: &crate::par::ThreadPool,
        x: &[f32],
        norm: Option<(&[f32], f32)>,
        rows: usize,
        k: usize,
        kind: ActKind,
    ) {
        assert_eq!(x.len(), rows * k, "activation shape");
        if let Some((w, _)) = norm {
            assert_eq!(w.len(), k, "norm weight shape");
        }
        self.prepare(rows, k, kind);
        let (weight, eps) = match norm {
            Some((w, e)) => (Some(w), e),
            None => (None, 0.0),
        };
        if rows < 2 || pool.n_threads() < 2 {
            return quantize_rows(x, weight, eps, k, kind, self.rows_mut());
        }
        let per = ActLayout::new(k, kind);
        let chunk = rows.div_ceil(pool.n_threads() * 2).max(1);
        let qs = crate::par::DisjointSlice::new(&mut self.qs);
        let d = crate::par::DisjointSlice::new(&mut self.d);
        let sums = crate::par::DisjointSlice::new(&mut self.sums);
        let pairs = crate::par::DisjointSlice::new(&mut self.pairs);
        pool.for_each(rows.div_ceil(chunk), &|task| {
            let (r0, r1) = (task * chunk, ((task + 1) * chunk).min(rows));
            // SAFETY: task `task` owns rows r0..r1 of every buffer; tasks never overlap.
            let out = unsafe {
                ActRowsMut {
                    qs: qs.range(r0 * k, r1 * k),
                    d: d.range(r0 * per.d, r1 * per.d),
                    sums: sums.range(r0 * per.sums, r1 * per.sums),
                    pairs: pairs.range(r0 * per.pairs, r1 * per.pairs),
                }
            };
            quantize_rows(&x[r0 * k..r1 * k], weight, eps, k, kind, out);
        });
    }

    fn rows_mut(&mut self) -> ActRowsMut<'_> {
        ActRowsMut {
            qs: &mut self.qs,
            d: &mut self.d,
            sums: &mut self.sums,
            pairs: &mut self.pairs,
        }
    }

    fn prepare(&mut self, rows: usize, k: usize, kind: ActKind) {
        assert!(
            k.is_multiple_of(kind.block_elems()),
            "activation row not a block multiple"
        );
        let per = ActLayout::new(k, kind);
        self.qs.resize(rows * k, 0);
        self.d.resize(rows * per.d, 0.0);
        self.sums.resize(rows * per.sums, 0);
        self.pairs.resize(rows * per.pairs, 0);
        self.rows = rows;
        self.k = k;
    }

    /// Row `r`'s quantized values, scales and sums.
    pub fn row(&self, r: usize, kind: ActKind) -> ActRow<'_> {
        let k = self.k;
        let (nd, ns) = match kind {
            ActKind::B32 => (k / 32, k / 32),
            ActKind::K256 => (k / QK_K, k / 16),
        };
        let np = match kind {
            ActKind::B32 => 0,
            ActKind::K256 => k / QK_K * PAIRS_PER_BLOCK,
        };
        ActRow {
            qs: &self.qs[r * k..(r + 1) * k],
            d: &self.d[r * nd..(r + 1) * nd],
            sums: &self.sums[r * ns..(r + 1) * ns],
            pairs: &self.pairs[r * np..(r + 1) * np],
        }
    }
}

/// Scales and sums per activation row of `k` elements.
struct ActLayout {
    d: usize,
    sums: usize,
    pairs: usize,
}

impl ActLayout {
    fn new(k: usize, kind: ActKind) -> ActLayout {
        match kind {
            ActKind::B32 => ActLayout {
                d: k / QK8_0,
                sums: k / QK8_0,
                pairs: 0,
            },
            ActKind::K256 => ActLayout {
                d: k / QK_K,
                sums: k / 16,
                pairs: k / QK_K * PAIRS_PER_BLOCK,
            },
        }
    }
}

/// The output buffers of a run of whole activation rows.
struct ActRowsMut<'a> {
    qs: &'a mut [i8],
    d: &'a mut [f32],
    sums: &'a mut [i32],
    pairs: &'a mut [i32],
}

/// Quantizes the rows `x` (each `k` long, RMS-normalised first when `norm` is given) into
/// `out`, block by block.
fn quantize_rows(
    x: &[f32],
    norm: Option<&[f32]>,
    eps: f32,
    k: usize,
    kind: ActKind,
    out: ActRowsMut<'_>,
) {
    let be = kind.block_elems();
    let (ns, np) = match kind {
        ActKind::B32 => (1, 0),
        ActKind::K256 => (16, PAIRS_PER_BLOCK),
    };
    let mut buf = [0f32; QK_K];
    for (r, xr) in x.chunks_exact(k).enumerate() {
        let inv = norm.map(|_| crate::ops::rms_inv(xr, eps));
        for c in 0..k / be {
            let mut xb = &xr[c * be..(c + 1) * be];
            if let (Some(w), Some(inv)) = (norm, inv) {
                let nb = &mut buf[..be];
                for ((o, &v), &w) in nb.iter_mut().zip(xb).zip(&w[c * be..(c + 1) * be]) {
                    *o = w * (v * inv);
                }
                xb = &buf[..be];
            }
            let b = r * (k / be) + c;
            put_block(
                xb,
                kind,
                &mut out.qs[b * be..(b + 1) * be],
                &mut out.d[b],
                &mut out.sums[b * ns..(b + 1) * ns],
                &mut out.pairs[b * np..(b + 1) * np],
            );
        }
    }
}

/// Quantizes one block from the floats `xb`, with the arithmetic of llama.cpp's x86 builds, so
/// that both engines feed the same integers to the dot products:
/// - B32 (its `quantize_row_q8_0`, AVX2 path): `d = amax/127` stored as f16, values
///   `x·(127/amax)` rounded to nearest, ties to even;
/// - K256 (its `quantize_row_q8_K_ref`): the element of largest magnitude `max` (signed)
///   maps to exactly −127, `q = min(127, round_ties_even(x·(−127/max)))`, `d = −max/127`
///   as f32 (so `d` is negative when `max` is positive).
///
#[inline]
fn put_block(
    xb: &[f32],
    kind: ActKind,
    qb: &mut [i8],
    d: &mut f32,
    sums: &mut [i32],
    pairs: &mut [i32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2_fma() {
        // SAFETY: `avx2_fma` checked AVX2 and FMA.
        return unsafe { x86::put_block_avx2(xb, kind, qb, d, sums, pairs) };
    }
    put_block_scalar(xb, kind, qb, d, sums, pairs)
}

/// The reference of [`put_block`] (and its path on CPUs without AVX2).
fn put_block_scalar(
    xb: &[f32],
    kind: ActKind,
    qb: &mut [i8],
    d: &mut f32,
    sums: &mut [i32],
    pairs: &mut [i32],
) {
    match kind {
        ActKind::B32 => {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            *d = f16::from_f32(amax / 127.0).to_f32();
            for (q, &v) in qb.iter_mut().zip(xb) {
                *q = (round_q8(v * id) as i32).clamp(-127, 127) as i8;
            }
            sums[0] = qb.iter().map(|&q| q as i32).sum();
        }
        ActKind::K256 => {
            let (mut max, mut amax) = (0f32, 0f32);
            for &v in xb {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                qb.iter_mut().for_each(|q| *q = 0);
                *d = 0.0;
            } else {
                let iscale = -127.0 / max;
                for (q, &v) in qb.iter_mut().zip(xb) {
                    *q = (round_q8(iscale * v) as i32).clamp(-127, 127) as i8;
                }
                *d = 1.0 / iscale;
            }
            k256_sums(qb, sums, pairs);
        }
    }
}

/// The per-16 sums of a K256 block's quantized values and their packed pairs (see
/// [`ActQ8::pairs`]).
#[inline]
fn k256_sums(qb: &[i8], sums: &mut [i32], pairs: &mut [i32]) {
    for (g, s) in sums.iter_mut().enumerate() {
        *s = qb[16 * g..16 * g + 16].iter().map(|&q| q as i32).sum();
    }
    let pack = |lo: i32, hi: i32| (lo & 0xFFFF) | (hi << 16);
    for p in 0..8 {
        pairs[p] = pack(sums[2 * p], sums[2 * p + 1]);
    }
    for p in 0..4 {
        pairs[8 + p] = pack(
            sums[4 * p] + sums[4 * p + 1],
            sums[4 * p + 2] + sums[4 * p + 3],
        );
    }
}

/// AVX2 activation quantization, bit-identical to [`put_block_scalar`].
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{f16, k256_sums, ActKind};
    use std::arch::x86_64::*;

    /// Largest |x| over `x` (a multiple of 8 long); NaNs are skipped, as in the scalar loops.
    #[inline(always)]
    unsafe fn amax(x: &[f32]) -> f32 {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
        let mut m = _mm256_setzero_ps();
        for c in x.chunks_exact(8) {
            // SAFETY: `c` holds 8 f32. `max_ps` returns its second operand when the first is
            // NaN, so a NaN element leaves the running maximum alone.
            m = unsafe { _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(c.as_ptr()), abs), m) };
        }
        let mut l = [0f32; 8];
        // SAFETY: `l` holds 8 f32.
        unsafe { _mm256_storeu_ps(l.as_mut_ptr(), m) };
        l.iter().fold(0f32, |a, &b| if b > a { b } else { a })
    }

    /// `q[i] = clamp(round_ties_even(x[i] · s), −127, 127)`, NaN → 0 (as `round_q8` and the
    /// `as i32` cast), for `x` a multiple of 32 long.
    #[inline(always)]
    unsafe fn quant(x: &[f32], s: f32, q: &mut [i8]) {
        let sv = _mm256_set1_ps(s);
        let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (c, o) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)) {
            // SAFETY: `c` holds 32 f32 and `o` 32 bytes.
            unsafe {
                let mut v = [_mm256_setzero_si256(); 4];
                for (u, vu) in v.iter_mut().enumerate() {
                    let p = _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr().add(8 * u)), sv);
                    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p);
                    // NaN lanes become +0.
                    let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
                    *vu = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
                }
                let ab = _mm256_packs_epi32(v[0], v[1]);
                let cd = _mm256_packs_epi32(v[2], v[3]);
                let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
                _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, b);
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn put_block_avx2(
        xb: &[f32],
        kind: ActKind,
        qb: &mut [i8],
        d: &mut f32,
        sums: &mut [i32],
        pairs: &mut [i32],
    ) {
        // SAFETY (whole body): the helpers need AVX2, enabled here; slice lengths are the
        // kind's block size (32 or 256), multiples of 32.
        unsafe {
            let am = amax(xb);
            match kind {
                ActKind::B32 => {
                    let id = if am != 0.0 { 127.0 / am } else { 0.0 };
                    *d = f16::from_f32(am / 127.0).to_f32();
                    quant(xb, id, qb);
                    sums[0] = qb.iter().map(|&q| q as i32).sum();
                }
                ActKind::K256 => {
                    if am == 0.0 {
                        qb.iter_mut().for_each(|q| *q = 0);
                        *d = 0.0;
                    } else {
                        // The first element of largest magnitude, with its sign.
                        let max = xb.iter().copied().find(|v| v.abs() == am).unwrap_or(am);
                        let iscale = -127.0 / max;
                        quant(xb, iscale, qb);
                        *d = 1.0 / iscale;
                    }
                    k256_sums(qb, sums, pairs);
                }
            }
        }
    }

    /// [`put_block_avx2`] for tests against the scalar reference.
    #[cfg(test)]
    pub(super) fn put_block_checked(
        xb: &[f32],
        kind: ActKind,
        qb: &mut [i8],
        d: &mut f32,
        sums: &mut [i32],
        pairs: &mut [i32],
    ) -> bool {
        if !crate::avx2_fma() {
            return false;
        }
        // SAFETY: `avx2_fma` checked AVX2 and FMA.
        unsafe { put_block_avx2(xb, kind, qb, d, sums, pairs) };
        true
    }
}

/// `x.round_ties_even()` for every `x` whose result is then clamped to ±127 (and NaN for NaN),
/// without a call: on the baseline x86-64 target `round_ties_even` is a libm call (`rintf`)
/// per element, which made activation quantization several percent of a decode step. Adding
/// and subtracting 1.5·2²³ rounds to an integer in the default rounding mode (ties to even)
/// for |x| < 2²²; larger magnitudes are first clamped to ±256, where they round to the same
/// clamped value.
#[inline(always)]
fn round_q8(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x.clamp(-256.0, 256.0) + MAGIC) - MAGIC
}

/// One quantized activation row.
#[derive(Clone, Copy, Debug)]
pub struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub sums: &'a [i32],
    /// K256 only: see [`ActQ8::pairs`].
    pub pairs: &'a [i32],
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    /// The parallel quantizer writes exactly what the sequential one does.
    #[test]
    fn parallel_quantization_equals_sequential() {
        let pool = crate::par::ThreadPool::new(3);
        for kind in [ActKind::B32, ActKind::K256] {
            for rows in [1usize, 2, 5, 13] {
                let k = 512;
                let x: Vec<f32> = (0..rows * k)
                    .map(|i| ((i * 7919) % 2001) as f32 / 97.0 - 10.0)
                    .collect();
                let w: Vec<f32> = (0..k).map(|i| 0.5 + (i % 7) as f32 / 10.0).collect();
                let (mut a, mut b) = (ActQ8::default(), ActQ8::default());
                a.quantize_rmsnorm(&x, &w, 1e-5, rows, k, kind);
                b.quantize_par(&pool, &x, Some((&w, 1e-5)), rows, k, kind);
                assert_eq!((&a.qs, &a.sums, &a.pairs), (&b.qs, &b.sums, &b.pairs));
                assert!(a
                    .d
                    .iter()
                    .zip(&b.d)
                    .all(|(p, q)| p.to_bits() == q.to_bits()));
                a.quantize(&x, rows, k, kind);
                b.quantize_par(&pool, &x, None, rows, k, kind);
                assert_eq!((&a.qs, &a.sums, &a.pairs), (&b.qs, &b.sums, &b.pairs));
            }
        }
    }

    fn rnd_vec(seed: u32, n: usize, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((s % 20001) as f32 / 10000.0 - 1.0) * scale
            })
            .collect()
    }

    #[test]
    fn round_q8_matches_round_ties_even() {
        let clamp = |v: f32| (v as i32).clamp(-127, 127);
        let mut xs: Vec<f32> = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            -2.5,
            126.5,
            127.49999,
            127.5,
            -127.5,
            128.5,
            1e9,
            -1e9,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
        ];
        xs.extend((-300_000..300_000).map(|i| i as f32 / 1000.0));
        xs.extend((-600..600).map(|i| i as f32 * 0.5));
        xs.extend((0..100_000u32).map(|i| f32::from_bits(i.wrapping_mul(2654435761))));
        for x in xs {
            assert_eq!(clamp(round_q8(x)), clamp(x.round_ties_even()), "{x}");
        }
    }

    #[test]
    fn scale_min_packing_roundtrips() {
        let sc = [0u8, 63, 17, 42, 5, 33, 62, 1];
        let m = [63u8, 0, 21, 7, 48, 2, 31, 60];
        let mut q = [0u8; 12];
        pack_scale_min_k4(&sc, &m, &mut q);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (sc[j], m[j]));
        }
    }

    #[test]
    fn quantize_dequantize_error_is_small() {
        for qt in QuantType::ALL {
            let k = 512;
            let x = rnd_vec(7, k, 2.0);
            let mut q = vec![0u8; qt.row_bytes(k)];
            quantize_row(qt, &x, &mut q);
            let mut y = vec![0f32; k];
            dequantize_row(qt, &q, &mut y);
            let err: f32 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
                / k as f32;
            let pow: f32 = x.iter().map(|a| a * a).sum::<f32>() / k as f32;
            let bound = match qt {
                QuantType::Q8_0 => 1e-4,
                QuantType::Q6K => 2e-3,
                QuantType::Q5K => 5e-3,
                _ => 2e-2,
            };
            assert!(err / pow < bound, "{:?}: relative mse {}", qt, err / pow);
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// The AVX2 activation quantizer equals the scalar reference bit for bit, on blocks
        /// with ties, zeros, huge values, infinities and NaNs.
        #[test]
        fn avx2_activation_quantization_is_identical_to_scalar(
            vals in proptest::collection::vec(
                prop_oneof![
                    8 => -4.0f32..4.0,
                    2 => (-300i32..300).prop_map(|i| i as f32 * 0.5),
                    1 => proptest::sample::select(vec![0.0f32, -0.0, 1e30, -1e30, f32::INFINITY, f32::NEG_INFINITY, f32::NAN]),
                ],
                256,
            ),
            scale in proptest::sample::select(vec![1e-3f32, 1.0, 1e3]),
            k256 in proptest::bool::ANY,
        ) {
            let x: Vec<f32> = vals.iter().map(|v| v * scale).collect();
            let kind = if k256 { ActKind::K256 } else { ActKind::B32 };
            let be = kind.block_elems();
            let (ns, np) = if k256 { (16, PAIRS_PER_BLOCK) } else { (1, 0) };
            for xb in x.chunks_exact(be) {
                let (mut q0, mut d0, mut s0, mut p0) = (vec![0i8; be], 0f32, vec![0i32; ns], vec![0i32; np]);
                put_block_scalar(xb, kind, &mut q0, &mut d0, &mut s0, &mut p0);
                let (mut q1, mut d1, mut s1, mut p1) = (vec![1i8; be], 1f32, vec![1i32; ns], vec![1i32; np]);
                #[cfg(target_arch = "x86_64")]
                if !x86::put_block_checked(xb, kind, &mut q1, &mut d1, &mut s1, &mut p1) {
                    return Ok(());
                }
                #[cfg(not(target_arch = "x86_64"))]
                return Ok(());
                prop_assert_eq!(&q0, &q1);
                prop_assert_eq!(d0.to_bits(), d1.to_bits());
                prop_assert_eq!(&s0, &s1);
                prop_assert_eq!(&p0, &p1);
            }
        }
    }

    #[test]
    fn parse_names() {
        for qt in QuantType::ALL {
            assert_eq!(QuantType::parse(qt.name()), Some(qt));
            assert_eq!(QuantType::parse(&qt.name().to_lowercase()), Some(qt));
            assert_eq!(QuantType::from_ggml_type(qt.ggml_type()), Some(qt));
        }
        assert_eq!(QuantType::parse("q4_k_m"), None);
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod golden {
    use super::*;

    /// Bit-exact against the `gguf` package's numpy port of GGML's reference
    /// (`scripts/make_quant_golden.py`).
    #[test]
    fn dequantize_and_quantize_match_reference_bits() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../testdata/golden/quant_blocks.bin"
        );
        let data = std::fs::read(path).expect("golden file");
        let mut pos = 0;
        let u32_at =
            |p: usize| u32::from_le_bytes([data[p], data[p + 1], data[p + 2], data[p + 3]]);
        let f32s = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let mut seen = 0;
        while pos < data.len() {
            let (t, kind, nb) = (u32_at(pos), u32_at(pos + 4), u32_at(pos + 8) as usize);
            pos += 12;
            let qt = QuantType::from_ggml_type(t).expect("type");
            let (nbytes, nel) = (nb * qt.block_bytes(), nb * qt.block_elems());
            if kind == 0 {
                let raw = &data[pos..pos + nbytes];
                let want = f32s(&data[pos + nbytes..pos + nbytes + 4 * nel]);
                let mut got = vec![0f32; nel];
                dequantize_row(qt, raw, &mut got);
                for i in 0..nel {
                    assert_eq!(got[i].to_bits(), want[i].to_bits(), "{qt:?} element {i}");
                }
            } else {
                let x = f32s(&data[pos..pos + 4 * nel]);
                let want = &data[pos + 4 * nel..pos + 4 * nel + nbytes];
                let mut got = vec![0u8; nbytes];
                quantize_row(qt, &x, &mut got);
                assert_eq!(&got[..], want, "{qt:?} quantization");
            }
            pos += nbytes + 4 * nel;
            seen += 1;
        }
        assert_eq!(seen, 7);
    }
}
