//! Causal attention for one KV head and every query head that shares it (grouped-query
//! attention), over a KV cache stored in fixed-size blocks of f32, f16 or q8_0 rows.
//!
//! Each key and value row is read from memory once per call for all the queries of the group
//! (and all the query rows of a prefill chunk), and folded into every output with an online
//! ("flash") softmax, so no score vector as long as the context is ever stored. The kernels
//! work on tiles of up to four queries (one decode step's query heads of a KV head): each
//! chunk of a key or value row is loaded once into a register and used by all four, and f16
//! rows are converted there, on the way. Calls with more queries than one tile (prefill rows,
//! cascade groups) widen each block to f32 into an L1-sized buffer once; from 32 queries on
//! they take the wide path, which also transposes the block's keys so that tiles of six
//! queries score sixteen keys at a time from broadcast query elements, with no horizontal
//! sums, and fold their six softmax states together (maxima and sums reduced across lanes
//! at once). `scalar` is the reference twin of the AVX2 path (F16C for the conversion, FMA, a
//! polynomial `exp`).
//!
//! A q8_0 block (llama.cpp's `-ctk q8_0` layout: groups of [`Q8_GROUP`] int8 values along each
//! head row, one f16 scale per group) is read in place by the decode tiles when the head
//! dimension is a multiple of [`Q8_GROUP`]: only its scales are widened, and each 8-wide chunk
//! is sign-extended, converted and scaled in registers on the way, as f16 chunks are converted.
//! Otherwise, and for calls with more queries, it is dequantized into the f32 buffer first. Both
//! routes form the same products, so they give identical results.

use crate::dot::f16_to_f32;
use std::cell::RefCell;

/// One block of one KV head: `block` rows of `head_dim` keys, then the same for values.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    F32 {
        k: &'a [f32],
        v: &'a [f32],
    },
    F16 {
        k: &'a [u16],
        v: &'a [u16],
    },
    /// q8_0: `k`/`v` hold `block × head_dim` int8 values; row `j`'s group `g` (values
    /// `g * Q8_GROUP..` of the row, the last group shorter when `head_dim` is not a multiple
    /// of [`Q8_GROUP`]) is scaled by f16 `ks`/`vs[j * head_dim.div_ceil(Q8_GROUP) + g]`.
    Q8 {
        k: &'a [i8],
        v: &'a [i8],
        ks: &'a [u16],
        vs: &'a [u16],
    },
}

/// Values per scale in a q8_0 KV row (llama.cpp's `QK8_0`).
pub const Q8_GROUP: usize = 32;

/// Quantizes one head row `x` into `q` (same length) and one f16 scale per [`Q8_GROUP`]
/// values into `scales` (`x.len().div_ceil(Q8_GROUP)`), as llama.cpp's `quantize_row_q8_0`:
/// scale = max |x| / 127, values rounded to nearest. The quotient uses the scale as stored
/// (rounded to f16), so what is read back is the nearest multiple of that scale.
pub fn quantize_q8(x: &[f32], q: &mut [i8], scales: &mut [u16]) {
    for ((xs, qs), d) in x
        .chunks(Q8_GROUP)
        .zip(q.chunks_mut(Q8_GROUP))
        .zip(scales.iter_mut())
    {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let dh = half::f16::from_f32(amax / 127.0);
        let df = dh.to_f32();
        let id = if df > 0.0 && df.is_finite() {
            1.0 / df
        } else {
            0.0
        };
        for (o, &v) in qs.iter_mut().zip(xs) {
            *o = (v * id).round().clamp(-127.0, 127.0) as i8;
        }
        *d = dh.to_bits();
    }
}

/// Dequantizes q8_0 rows of `hd` values (`src`, scales as in [`KvRows::Q8`]) into `dst`
/// (the reference: `dst[i] = src[i] * scale`).
pub fn dequant_q8(src: &[i8], scales: &[u16], hd: usize, dst: &mut [f32]) {
    ScalarOps::widen_q8(src, scales, hd, dst)
}

/// The shape of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub head_dim: usize,
    /// Query heads per KV head.
    pub group: usize,
    /// Consecutive query positions (rows) of one sequence.
    pub rows: usize,
    /// Position of the first row: row `r` sees keys `0..=pos0 + r`.
    pub pos0: usize,
    /// Rows per KV block.
    pub block: usize,
    /// Score multiplier, usually `1/sqrt(head_dim)`.
    pub scale: f32,
}

/// Which implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl AttnKernel {
    /// The fastest path this CPU supports; `MIDEUM_KERNEL=scalar` forces the reference.
    pub fn detect() -> AttnKernel {
        if std::env::var("MIDEUM_KERNEL").is_ok_and(|v| v == "scalar") {
            return AttnKernel::Scalar;
        }
        Self::available()
            .last()
            .copied()
            .unwrap_or(AttnKernel::Scalar)
    }

    /// Every path usable on this CPU (for tests and benchmarks).
    pub fn available() -> Vec<AttnKernel> {
        let mut v = vec![AttnKernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                v.push(AttnKernel::Avx2);
            }
        }
        v
    }
}

/// Per-thread working memory, grown once and reused (no allocation per call after warm-up).
#[derive(Default)]
struct Scratch {
    kbuf: Vec<f32>,
    vbuf: Vec<f32>,
    /// The wide path's transposed key piece (`hd × KW`) and its scaled queries (`nq × hd`).
    ktbuf: Vec<f32>,
    qbuf: Vec<f32>,
    /// Running maximum and denominator per query.
    m: Vec<f32>,
    l: Vec<f32>,
    /// Unnormalized output per query.
    acc: Vec<f32>,
    /// Log of the softmax denominator per query, filled at the end.
    lse: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Attention of `shape.rows × shape.group` queries over one KV head.
///
/// Query `(r, g)` is `q[r * q_stride + g * head_dim..][..head_dim]`. `kv(b)` returns block `b`
/// (positions `b * block..(b + 1) * block`) of this head; blocks up to position
/// `pos0 + rows - 1` are read. For each row `r`, `emit(r, out)` receives the `group *
/// head_dim` outputs of that row (head after head).
///
/// Panics if a block returned by `kv` is shorter than `block * head_dim` (a caller bug).
pub fn attend<'a>(
    kern: AttnKernel,
    shape: &AttnShape,
    q: &[f32],
    q_stride: usize,
    kv: &dyn Fn(usize) -> KvRows<'a>,
    emit: &mut dyn FnMut(usize, &[f32]),
) {
    attend_lse(kern, shape, q, q_stride, kv, &mut |r, out, _| emit(r, out));
}

/// Receives a row index, the row's outputs (query head after query head) and their
/// log-denominators.
pub type EmitLse<'e> = dyn FnMut(usize, &[f32], &[f32]) + 'e;

/// As [`attend`], and `emit` also receives, per query head of the row, the log of the softmax
/// denominator: `lse = max + ln Σ exp(score − max)` (−∞ when the row saw no key). Two
/// attentions of the same queries over disjoint key sets combine into the attention over their
/// union with [`merge_lse`]: how a prefix shared by several sequences is read once for all of
/// them (cascade attention).
pub fn attend_lse<'a>(
    kern: AttnKernel,
    shape: &AttnShape,
    q: &[f32],
    q_stride: usize,
    kv: &dyn Fn(usize) -> KvRows<'a>,
    emit: &mut EmitLse<'_>,
) {
    let s = shape;
    if s.rows == 0 || s.group == 0 || s.head_dim == 0 {
        return;
    }
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let sc = &mut *guard;
        let nq = s.rows * s.group;
        let hd = s.head_dim;
        grow(&mut sc.kbuf, s.block * hd);
        grow(&mut sc.vbuf, s.block * hd);
        if nq >= WIDE_FROM {
            grow(&mut sc.ktbuf, hd * KW);
            grow(&mut sc.qbuf, nq * hd);
        }
        grow(&mut sc.m, nq);
        grow(&mut sc.l, nq);
        grow(&mut sc.acc, nq * hd);
        grow(&mut sc.lse, nq);
        sc.m[..nq].fill(f32::NEG_INFINITY);
        sc.l[..nq].fill(0.0);
        sc.acc[..nq * hd].fill(0.0);
        match kern {
            AttnKernel::Scalar => run::<ScalarOps>(s, q, q_stride, kv, sc),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` is only handed out by `available`/`detect` when the CPU has AVX2,
            // FMA and F16C.
            AttnKernel::Avx2 => unsafe { x86::run_avx2(s, q, q_stride, kv, sc) },
        }
        for r in 0..s.rows {
            let row = &mut sc.acc[r * s.group * hd..(r + 1) * s.group * hd];
            let lse = &mut sc.lse[r * s.group..(r + 1) * s.group];
            for g in 0..s.group {
                let (l, m) = (sc.l[r * s.group + g], sc.m[r * s.group + g]);
                let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
                row[g * hd..(g + 1) * hd].iter_mut().for_each(|x| *x *= inv);
                lse[g] = if l > 0.0 {
                    m + l.ln()
                } else {
                    f32::NEG_INFINITY
                };
            }
            emit(r, row, lse);
        }
    });
}

/// Folds the attention `(b, lse_b)` of one query head over some keys into `(a, lse_a)`, its
/// attention over other keys, giving the attention over both key sets (see [`attend_lse`]).
pub fn merge_lse(a: &mut [f32], lse_a: &mut f32, b: &[f32], lse_b: f32) {
    let m = lse_a.max(lse_b);
    if m == f32::NEG_INFINITY {
        return;
    }
    let (wa, wb) = ((*lse_a - m).exp(), (lse_b - m).exp());
    let inv = 1.0 / (wa + wb);
    for (x, &y) in a.iter_mut().zip(b) {
        *x = (*x * wa + y * wb) * inv;
    }
    *lse_a = m + (wa + wb).ln();
}

/// Queries scored together against each key row: Mi:dm's four query heads per KV head, so one
/// decode step's whole group shares every load of a key or value row.
const QT: usize = 4;
/// Keys scored at once (a block longer than this is processed in pieces).
const PIECE: usize = 32;
/// Above this many queries per call (prefill rows, cascade groups), a block is widened to f32
/// once and read from there; below it f16 rows are converted where they are used, which saves
/// the store and reload of the widened copy.
const WIDEN_ABOVE: usize = QT;
/// From this many queries per call on, the wide path (see [`run_wide`]) runs. It pays a
/// transposition per block that fewer queries do not earn back: over 1,008 cached positions
/// (`kvbench hot rows=N`, four queries per row) it took 52 ms against 35 for 2 rows, 86
/// against 65 for 4, and broke even at 6–8 rows; at 64 rows it took 870 ms against 1,190.
const WIDE_FROM: usize = 32;

/// A block's key or value rows as the tile kernels read them.
trait Rows: Copy {
    /// Elements held.
    fn len(self) -> usize;
    /// Element `i` (row `i / head_dim`, column `i % head_dim`) as f32.
    fn get(self, i: usize) -> f32;
    /// Elements `i..i + 8` as f32.
    ///
    /// # Safety
    /// `i + 8` must not exceed the length, and the CPU must have AVX (and F16C for f16 rows).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(self, i: usize) -> std::arch::x86_64::__m256;
}

impl Rows for &[f32] {
    #[inline(always)]
    fn len(self) -> usize {
        <[f32]>::len(self)
    }
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        self[i]
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(self, i: usize) -> std::arch::x86_64::__m256 {
        debug_assert!(i + 8 <= self.len());
        // SAFETY: the caller keeps i + 8 within the slice and has AVX.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(self.as_ptr().add(i)) }
    }
}

/// f16 rows (bit patterns), converted on use.
#[derive(Clone, Copy)]
struct Half<'a>(&'a [u16]);

impl Rows for Half<'_> {
    #[inline(always)]
    fn len(self) -> usize {
        self.0.len()
    }
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        f16_to_f32(self.0[i])
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(self, i: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        debug_assert!(i + 8 <= self.0.len());
        // SAFETY: the caller keeps i + 8 within the slice and has F16C.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(self.0.as_ptr().add(i) as *const __m128i)) }
    }
}

/// q8_0 rows whose head dimension is a multiple of [`Q8_GROUP`], dequantized on use: element
/// `i` is `q[i] × d[i / Q8_GROUP]` (the scales already widened to f32), the same product the
/// widening path stores, so both give identical results.
#[derive(Clone, Copy)]
struct Q8Rows<'a> {
    q: &'a [i8],
    d: &'a [f32],
}

impl Rows for Q8Rows<'_> {
    #[inline(always)]
    fn len(self) -> usize {
        self.q.len()
    }
    #[inline(always)]
    fn get(self, i: usize) -> f32 {
        self.q[i] as f32 * self.d[i / Q8_GROUP]
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(self, i: usize) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        debug_assert!(i + 8 <= self.q.len() && i / Q8_GROUP < self.d.len());
        // SAFETY: the caller keeps i + 8 within the values, whose scales `d` covers (one per
        // group of Q8_GROUP, and 8 divides Q8_GROUP so the 8 share one); it has AVX2.
        unsafe {
            let x = _mm_loadl_epi64(self.q.as_ptr().add(i) as *const __m128i);
            let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x));
            _mm256_mul_ps(f, _mm256_broadcast_ss(&*self.d.as_ptr().add(i / Q8_GROUP)))
        }
    }
}

/// Scores of up to [`QT`] queries, [`PIECE`] keys each.
type Tile = [[f32; PIECE]; QT];

/// Queries per tile of the wide path: 6 queries × 16 keys of scores (or × 16 value columns)
/// fill 12 of the 16 vector registers.
const QW: usize = 6;
/// Keys per piece of the wide path: two 8-lane vectors of a transposed key block.
const KW: usize = 16;
/// Head elements summed in one run of the wide scores before the run's sum is added to the
/// total: blocked summation, whose rounding error grows with `SUM_RUN + head_dim / SUM_RUN`
/// terms rather than `head_dim`.
const SUM_RUN: usize = 32;
const _: () = assert!(
    KW == 16,
    "the AVX2 wide kernels hold a piece in two 8-lane vectors"
);
/// Scores of up to [`QW`] queries, [`KW`] keys each.
type WTile = [[f32; KW]; QW];

/// The key and value bytes of the block read next. The kernels fetch them a few cache lines at
/// a time while they work on the current block: the pool's blocks are scattered pages, which
/// the hardware prefetchers do not run into, and a burst of prefetches for a whole block at
/// once fills the core's miss queues and stalls it.
#[derive(Clone, Copy)]
struct Ahead {
    k: (*const u8, usize),
    v: (*const u8, usize),
}

impl Ahead {
    const NONE: Ahead = Ahead {
        k: (std::ptr::null(), 0),
        v: (std::ptr::null(), 0),
    };

    fn of(rows: &KvRows<'_>) -> Ahead {
        fn span<T>(x: &[T]) -> (*const u8, usize) {
            (x.as_ptr() as *const u8, std::mem::size_of_val(x))
        }
        match *rows {
            KvRows::F32 { k, v } => Ahead {
                k: span(k),
                v: span(v),
            },
            KvRows::F16 { k, v } => Ahead {
                k: span(k),
                v: span(v),
            },
            KvRows::Q8 { k, v, .. } => Ahead {
                k: span(k),
                v: span(v),
            },
        }
    }
}

/// The inner operations, once per implementation. Every slice length is checked by the
/// caller (`run`).
trait Ops: Sized {
    /// Starts loading the small parts of a block read next (q8_0 scales; no effect on
    /// results).
    fn prefetch_scales(_rows: &KvRows<'_>) {}
    /// Starts loading part `part` of `parts` equal parts of the byte range `r` (no effect on
    /// results).
    fn prefetch_part(_r: (*const u8, usize), _part: usize, _parts: usize) {}
    /// Widens `src` (f16 bits) into `dst` (same length).
    fn widen(src: &[u16], dst: &mut [f32]);
    /// Dequantizes `src` (q8_0 rows of `hd` values, scales as in [`KvRows::Q8`]) into `dst`
    /// (same length as `src`).
    fn widen_q8(src: &[i8], scales: &[u16], hd: usize, dst: &mut [f32]);
    /// `out[i][j] = scale * q_i · k_row(j0 + j)` for query `i < qt` (`q[i * hd..][..hd]`) and
    /// `j < n`, prefetching the bytes `ahead` on the way.
    #[allow(clippy::too_many_arguments)]
    fn scores<S: Rows>(
        q: &[f32],
        qt: usize,
        k: S,
        j0: usize,
        n: usize,
        hd: usize,
        scale: f32,
        out: &mut Tile,
        ahead: (*const u8, usize),
    );
    /// `out[i][j] = q_i · kt[.., j]` for query `i < qt` (`q[i * hd..][..hd]`) and all [`KW`]
    /// keys of a transposed piece (`kt[d * KW + j]`, `d < hd`).
    fn scores_kt(q: &[f32], qt: usize, kt: &[f32], hd: usize, out: &mut WTile);
    /// The largest of `x` (−∞ when empty).
    fn max(x: &[f32]) -> f32 {
        x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }
    /// `x[i] = exp(x[i] - m)`, returning the sum.
    fn exp_sum(x: &mut [f32], m: f32) -> f32;
    /// Folds a wide tile: query `i < qt` sees the first `cnt[i]` (1 to [`KW`]) of its scores
    /// `p[i]`, which become `exp(p - m_new)` (the rest 0), with its running maximum `m[i]` and
    /// denominator `l[i]` updated as [`fold`] does; returns each query's rescale factor.
    fn fold_tile(
        p: &mut WTile,
        qt: usize,
        cnt: &[usize; QW],
        m: &mut [f32],
        l: &mut [f32],
    ) -> [f32; QW] {
        let mut corr = [0f32; QW];
        for (i, c) in corr.iter_mut().enumerate().take(qt) {
            *c = fold::<Self>(&mut p[i][..cnt[i]], &mut m[i], &mut l[i]);
            p[i][cnt[i]..].fill(0.0);
        }
        corr
    }
    /// Transposes the `pn ≤ KW` key rows of `k` (`hd` each) into `kt[d * KW + j]`, zero in the
    /// columns `j ≥ pn`.
    fn transpose(k: &[f32], pn: usize, hd: usize, kt: &mut [f32]) {
        transpose_scalar(k, pn, hd, kt)
    }
    /// `acc_i = acc_i * corr[i] + Σ_j p[i][j] · v_row(j0 + j)` for query `i < qt ≤ QW`
    /// (`acc[i * hd..][..hd]`) and `j < n ≤ PW`, prefetching the bytes `ahead` on the way.
    #[allow(clippy::too_many_arguments)]
    fn mix<S: Rows, const PW: usize>(
        acc: &mut [f32],
        qt: usize,
        corr: &[f32],
        p: &[[f32; PW]],
        n: usize,
        v: S,
        j0: usize,
        hd: usize,
        ahead: (*const u8, usize),
    );
}

/// The shared algorithm: blocks outermost so that each is read (and widened) once for all
/// queries.
#[inline(always)]
fn run<'a, O: Ops>(
    s: &AttnShape,
    q: &[f32],
    q_stride: usize,
    kv: &dyn Fn(usize) -> KvRows<'a>,
    sc: &mut Scratch,
) {
    if s.rows * s.group >= WIDE_FROM {
        return run_wide::<O>(s, q, q_stride, kv, sc);
    }
    let hd = s.head_dim;
    let n_keys = s.pos0 + s.rows;
    let n_blocks = n_keys.div_ceil(s.block);
    let widen_all = s.rows * s.group > WIDEN_ABOVE;
    let Scratch {
        kbuf,
        vbuf,
        m,
        l,
        acc,
        ..
    } = sc;
    let mut st = State {
        m,
        l,
        acc,
        p: [[0f32; PIECE]; QT],
    };
    for b in 0..n_blocks {
        let j0 = b * s.block;
        let jn = s.block.min(n_keys - j0);
        let ahead = ahead::<O>(kv, b, n_blocks);
        let e = jn * hd;
        match kv(b) {
            KvRows::F16 { k, v } if !widen_all => block::<O, Half>(
                s,
                q,
                q_stride,
                &mut st,
                Half(&k[..e]),
                Half(&v[..e]),
                j0,
                jn,
                ahead,
            ),
            // Dequantized on use: only the block's scales are widened (into the spare scratch).
            KvRows::Q8 { k, v, ks, vs } if !widen_all && hd.is_multiple_of(Q8_GROUP) => {
                let ns = jn * hd / Q8_GROUP;
                O::widen(&ks[..ns], &mut kbuf[..ns]);
                O::widen(&vs[..ns], &mut vbuf[..ns]);
                let (kr, vr) = (
                    Q8Rows {
                        q: &k[..e],
                        d: &kbuf[..ns],
                    },
                    Q8Rows {
                        q: &v[..e],
                        d: &vbuf[..ns],
                    },
                );
                block::<O, Q8Rows>(s, q, q_stride, &mut st, kr, vr, j0, jn, ahead)
            }
            rows => {
                let (k, v) = as_f32::<O>(rows, jn, hd, kbuf, vbuf);
                block::<O, &[f32]>(s, q, q_stride, &mut st, k, v, j0, jn, ahead)
            }
        }
    }
}

/// The block after `b` (of `n_blocks`) to prefetch while `b` is processed; its q8 scales are
/// requested at once.
#[inline(always)]
fn ahead<'a, O: Ops>(kv: &dyn Fn(usize) -> KvRows<'a>, b: usize, n_blocks: usize) -> Ahead {
    if b + 1 < n_blocks {
        let next = kv(b + 1);
        O::prefetch_scales(&next);
        Ahead::of(&next)
    } else {
        Ahead::NONE
    }
}

/// The first `jn` key and value rows of a block as f32: f32 rows as they are, f16 and q8_0
/// rows widened into `kbuf`/`vbuf`.
#[inline(always)]
fn as_f32<'b, O: Ops>(
    rows: KvRows<'b>,
    jn: usize,
    hd: usize,
    kbuf: &'b mut [f32],
    vbuf: &'b mut [f32],
) -> (&'b [f32], &'b [f32]) {
    let e = jn * hd;
    match rows {
        KvRows::F32 { k, v } => (&k[..e], &v[..e]),
        KvRows::F16 { k, v } => {
            O::widen(&k[..e], &mut kbuf[..e]);
            O::widen(&v[..e], &mut vbuf[..e]);
            (&kbuf[..e], &vbuf[..e])
        }
        KvRows::Q8 { k, v, ks, vs } => {
            let ns = jn * hd.div_ceil(Q8_GROUP);
            O::widen_q8(&k[..e], &ks[..ns], hd, &mut kbuf[..e]);
            O::widen_q8(&v[..e], &vs[..ns], hd, &mut vbuf[..e]);
            (&kbuf[..e], &vbuf[..e])
        }
    }
}

/// The wide path, for calls with at least [`WIDE_FROM`] queries (prefill rows, cascade
/// groups).
///
/// Each block is widened to f32 once and its keys are transposed, [`KW`] at a time, into
/// `kt[d * KW + j]`; tiles of [`QW`] queries then score a whole piece with one broadcast query
/// element against two key vectors per step, with no horizontal sums. The queries are copied
/// once per call, contiguous and pre-multiplied by the scale. Rows that cannot see a piece
/// yet (causality) are skipped; the others mask the keys past their own position. Over 1,048
/// cached positions and 22 new rows (`kvbench 1048 3 hot rows=22`), the register transpose
/// and the tile fold took the best round from 310 to 275 ms.
#[inline(always)]
fn run_wide<'a, O: Ops>(
    s: &AttnShape,
    q: &[f32],
    q_stride: usize,
    kv: &dyn Fn(usize) -> KvRows<'a>,
    sc: &mut Scratch,
) {
    let hd = s.head_dim;
    let nq = s.rows * s.group;
    let n_keys = s.pos0 + s.rows;
    let n_blocks = n_keys.div_ceil(s.block);
    let Scratch {
        kbuf,
        vbuf,
        ktbuf,
        qbuf,
        m,
        l,
        acc,
        ..
    } = sc;
    for r in 0..s.rows {
        for g in 0..s.group {
            let src = &q[r * q_stride + g * hd..][..hd];
            let dst = &mut qbuf[(r * s.group + g) * hd..][..hd];
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = x * s.scale;
            }
        }
    }
    let kt = &mut ktbuf[..hd * KW];
    let mut p: WTile = [[0f32; KW]; QW];
    for b in 0..n_blocks {
        let j0 = b * s.block;
        let jn = s.block.min(n_keys - j0);
        let ahead = ahead::<O>(kv, b, n_blocks);
        let (k, v) = as_f32::<O>(kv(b), jn, hd, kbuf, vbuf);
        let mut p0 = 0;
        while p0 < jn {
            let pn = (jn - p0).min(KW);
            let kpos = j0 + p0;
            O::transpose(&k[p0 * hd..(p0 + pn) * hd], pn, hd, kt);
            // Rows before `first` see none of this piece; n_keys = pos0 + rows keeps it below
            // `rows`, and every row from it on sees at least the piece's first key.
            let first = kpos.saturating_sub(s.pos0) * s.group;
            let tiles = (nq - first).div_ceil(QW);
            let mut qi0 = first;
            let mut tile = 0;
            while qi0 < nq {
                let qt = (nq - qi0).min(QW);
                if p0 == 0 {
                    O::prefetch_part(ahead.k, tile, tiles);
                    O::prefetch_part(ahead.v, tile, tiles);
                }
                O::scores_kt(&qbuf[qi0 * hd..(qi0 + qt) * hd], qt, kt, hd, &mut p);
                let mut cnt = [0usize; QW];
                for (i, c) in cnt.iter_mut().enumerate().take(qt) {
                    *c = (s.pos0 + (qi0 + i) / s.group + 1 - kpos).min(pn);
                }
                let corr = O::fold_tile(&mut p, qt, &cnt, &mut m[qi0..], &mut l[qi0..]);
                O::mix(
                    &mut acc[qi0 * hd..(qi0 + qt) * hd],
                    qt,
                    &corr,
                    &p,
                    pn,
                    v,
                    p0,
                    hd,
                    (std::ptr::null(), 0),
                );
                qi0 += qt;
                tile += 1;
            }
            p0 += pn;
        }
    }
}

/// [`Ops::transpose`] element by element.
fn transpose_scalar(k: &[f32], pn: usize, hd: usize, kt: &mut [f32]) {
    kt[..hd * KW].fill(0.0);
    for (j, row) in k[..pn * hd].chunks_exact(hd).enumerate() {
        for (d, &x) in row.iter().enumerate() {
            kt[d * KW + j] = x;
        }
    }
}

/// The online-softmax state of every query of a call, and the score tile.
struct State<'s> {
    m: &'s mut [f32],
    l: &'s mut [f32],
    acc: &'s mut [f32],
    p: Tile,
}

/// Folds one query's scores `p` (at least one) into its running maximum `m` and denominator
/// `l` (online softmax): `p` becomes `exp(p - m_new)`; returns the factor that rescales the
/// query's accumulated output.
#[inline(always)]
fn fold<O: Ops>(p: &mut [f32], m: &mut f32, l: &mut f32) -> f32 {
    let m_old = *m;
    let m_new = m_old.max(O::max(p));
    let c = if m_old == f32::NEG_INFINITY {
        0.0
    } else if m_old == m_new {
        1.0
    } else {
        (m_old - m_new).exp()
    };
    let sum = O::exp_sum(p, m_new);
    *l = *l * c + sum;
    *m = m_new;
    c
}

/// Folds the `jn` keys of one block (positions `j0..`) into every query that sees them, up to
/// [`QT`] query heads of a row at a time.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn block<O: Ops, S: Rows>(
    s: &AttnShape,
    q: &[f32],
    q_stride: usize,
    st: &mut State<'_>,
    k: S,
    v: S,
    j0: usize,
    jn: usize,
    mut ahead: Ahead,
) {
    let hd = s.head_dim;
    for r in 0..s.rows {
        let visible = s.pos0 + r + 1;
        if visible <= j0 {
            continue;
        }
        let cnt = jn.min(visible - j0);
        let mut g0 = 0;
        while g0 < s.group {
            let qt = (s.group - g0).min(QT);
            let qa = r * q_stride + g0 * hd;
            let q0 = r * s.group + g0;
            let mut j = 0;
            while j < cnt {
                let n = (cnt - j).min(PIECE);
                O::scores(
                    &q[qa..qa + qt * hd],
                    qt,
                    k,
                    j,
                    n,
                    hd,
                    s.scale,
                    &mut st.p,
                    ahead.k,
                );
                let mut corr = [0f32; QT];
                for (i, c) in corr.iter_mut().enumerate().take(qt) {
                    let qi = q0 + i;
                    *c = fold::<O>(&mut st.p[i][..n], &mut st.m[qi], &mut st.l[qi]);
                }
                O::mix(
                    &mut st.acc[q0 * hd..(q0 + qt) * hd],
                    qt,
                    &corr,
                    &st.p,
                    n,
                    v,
                    j,
                    hd,
                    ahead.v,
                );
                // The first tile fetches the next block for all of them.
                ahead = Ahead::NONE;
                j += n;
            }
            g0 += qt;
        }
    }
}

struct ScalarOps;

impl Ops for ScalarOps {
    fn widen(src: &[u16], dst: &mut [f32]) {
        for (d, &h) in dst.iter_mut().zip(src) {
            *d = f16_to_f32(h);
        }
    }

    fn widen_q8(src: &[i8], scales: &[u16], hd: usize, dst: &mut [f32]) {
        let gpr = hd.div_ceil(Q8_GROUP);
        for (j, (sr, dr)) in src.chunks(hd).zip(dst.chunks_mut(hd)).enumerate() {
            for (g, (sg, dg)) in sr.chunks(Q8_GROUP).zip(dr.chunks_mut(Q8_GROUP)).enumerate() {
                let d = f16_to_f32(scales[j * gpr + g]);
                for (o, &x) in dg.iter_mut().zip(sg) {
                    *o = x as f32 * d;
                }
            }
        }
    }

    fn scores<S: Rows>(
        q: &[f32],
        qt: usize,
        k: S,
        j0: usize,
        n: usize,
        hd: usize,
        scale: f32,
        out: &mut Tile,
        _ahead: (*const u8, usize),
    ) {
        for (i, o) in out.iter_mut().enumerate().take(qt) {
            let qv = &q[i * hd..(i + 1) * hd];
            for (j, x) in o.iter_mut().enumerate().take(n) {
                let base = (j0 + j) * hd;
                *x = qv
                    .iter()
                    .enumerate()
                    .map(|(e, a)| a * k.get(base + e))
                    .sum::<f32>()
                    * scale;
            }
        }
    }

    fn scores_kt(q: &[f32], qt: usize, kt: &[f32], hd: usize, out: &mut WTile) {
        for (i, o) in out.iter_mut().enumerate().take(qt) {
            let qv = &q[i * hd..(i + 1) * hd];
            for (j, x) in o.iter_mut().enumerate() {
                *x = qv.iter().enumerate().map(|(d, a)| a * kt[d * KW + j]).sum();
            }
        }
    }

    fn exp_sum(x: &mut [f32], m: f32) -> f32 {
        let mut s = 0.0;
        for v in x.iter_mut() {
            *v = (*v - m).exp();
            s += *v;
        }
        s
    }

    fn mix<S: Rows, const PW: usize>(
        acc: &mut [f32],
        qt: usize,
        corr: &[f32],
        p: &[[f32; PW]],
        n: usize,
        v: S,
        j0: usize,
        hd: usize,
        _ahead: (*const u8, usize),
    ) {
        for i in 0..qt {
            let a = &mut acc[i * hd..(i + 1) * hd];
            a.iter_mut().for_each(|x| *x *= corr[i]);
            for (j, &pj) in p[i][..n].iter().enumerate() {
                let base = (j0 + j) * hd;
                for (e, x) in a.iter_mut().enumerate() {
                    *x += pj * v.get(base + e);
                }
            }
        }
    }
}

/// The reference: a plain softmax over the full score vector per query, in f64 (for tests).
#[allow(clippy::too_many_arguments)]
pub fn attend_naive<'a>(
    shape: &AttnShape,
    q: &[f32],
    q_stride: usize,
    kv: &dyn Fn(usize) -> KvRows<'a>,
    out: &mut [f32],
) {
    let s = shape;
    let hd = s.head_dim;
    let key = |j: usize, is_v: bool| -> Vec<f32> {
        let (b, o) = (j / s.block, (j % s.block) * hd);
        match kv(b) {
            KvRows::F32 { k, v } => (if is_v { v } else { k })[o..o + hd].to_vec(),
            KvRows::F16 { k, v } => (if is_v { v } else { k })[o..o + hd]
                .iter()
                .map(|&h| f16_to_f32(h))
                .collect(),
            KvRows::Q8 { k, v, ks, vs } => {
                let (x, sc) = if is_v { (v, vs) } else { (k, ks) };
                let gpr = hd.div_ceil(Q8_GROUP);
                let row = &sc[(j % s.block) * gpr..][..gpr];
                x[o..o + hd]
                    .iter()
                    .enumerate()
                    .map(|(e, &q)| q as f32 * f16_to_f32(row[e / Q8_GROUP]))
                    .collect()
            }
        }
    };
    for r in 0..s.rows {
        let n = s.pos0 + r + 1;
        for g in 0..s.group {
            let qv = &q[r * q_stride + g * hd..r * q_stride + (g + 1) * hd];
            let sc: Vec<f64> = (0..n)
                .map(|j| {
                    let k = key(j, false);
                    qv.iter()
                        .zip(&k)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * s.scale as f64
                })
                .collect();
            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            let o = &mut out[(r * s.group + g) * hd..(r * s.group + g + 1) * hd];
            let mut acc = vec![0f64; hd];
            for (j, &w) in e.iter().enumerate() {
                for (a, x) in acc.iter_mut().zip(key(j, true)) {
                    *a += w / z * x as f64;
                }
            }
            for (d, a) in o.iter_mut().zip(acc) {
                *d = a as f32;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{
        run, AttnShape, KvRows, Ops, Rows, Scratch, Tile, WTile, KW, PIECE, Q8_GROUP, QT, QW,
        SUM_RUN,
    };
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn run_avx2<'a>(
        s: &AttnShape,
        q: &[f32],
        q_stride: usize,
        kv: &dyn Fn(usize) -> KvRows<'a>,
        sc: &mut Scratch,
    ) {
        run::<Avx2Ops>(s, q, q_stride, kv, sc)
    }

    /// The AVX2 `widen_q8` on its own (for the test against the scalar twin).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn widen_q8_avx2(src: &[i8], scales: &[u16], hd: usize, dst: &mut [f32]) {
        Avx2Ops::widen_q8(src, scales, hd, dst)
    }

    /// The AVX2 `transpose` on its own (for the test against the scalar twin).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn transpose_avx2(k: &[f32], pn: usize, hd: usize, kt: &mut [f32]) {
        Avx2Ops::transpose(k, pn, hd, kt)
    }

    /// The AVX2 `fold_tile` on its own (for the test against the scalar twin).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn fold_tile_avx2(
        p: &mut WTile,
        qt: usize,
        cnt: &[usize; QW],
        m: &mut [f32],
        l: &mut [f32],
    ) -> [f32; QW] {
        Avx2Ops::fold_tile(p, qt, cnt, m, l)
    }

    struct Avx2Ops;

    /// Horizontal sum of 8 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }

    /// `exp(x)` on 8 lanes (Cephes' polynomial, relative error ~2e-7; inputs below -88.4
    /// give exactly 0).
    #[inline(always)]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.376_26));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-88.376_26));
        let fx = _mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        );
        let fx = _mm256_floor_ps(fx);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
        let z = _mm256_mul_ps(x, x);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.398_199_9e-3));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.333_452e-3));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.166_579_6e-2));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.666_666_5e-1));
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(0.5));
        y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, _mm256_set1_ps(1.0)));
        let n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
        // fx ≥ -127 after the clamp, so n ≥ 0; n == 0 yields +0.0, the correct limit.
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(n));
        _mm256_mul_ps(y, pow2)
    }

    /// Walks a byte range in `parts` steps, prefetching the cache lines of one step into L2
    /// per [`Prefetcher::step`] call (one division per range, none per step).
    struct Prefetcher {
        p: *const u8,
        len: usize,
        off: usize,
        step: usize,
    }

    impl Prefetcher {
        #[inline(always)]
        fn new(r: (*const u8, usize), parts: usize) -> Prefetcher {
            let step = (r.1.div_ceil(parts.max(1)) + 63) & !63;
            Prefetcher {
                p: r.0,
                len: r.1,
                off: 0,
                step,
            }
        }

        #[inline(always)]
        fn step(&mut self) {
            let end = (self.off + self.step).min(self.len);
            while self.off < end {
                // SAFETY: a prefetch never faults; the address lies inside the range.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(self.p.wrapping_add(self.off) as *const i8) };
                self.off += 64;
            }
        }
    }

    impl Ops for Avx2Ops {
        #[inline(always)]
        fn prefetch_scales(rows: &KvRows<'_>) {
            if let KvRows::Q8 { ks, vs, .. } = *rows {
                for x in [ks, vs] {
                    let r = (x.as_ptr() as *const u8, std::mem::size_of_val(x));
                    Prefetcher::new(r, 1).step();
                }
            }
        }

        #[inline(always)]
        fn prefetch_part(r: (*const u8, usize), part: usize, parts: usize) {
            let step = (r.1.div_ceil(parts.max(1)) + 63) & !63;
            let (a, b) = ((part * step).min(r.1), ((part + 1) * step).min(r.1));
            let mut off = a;
            while off < b {
                // SAFETY: a prefetch never faults; the address lies inside the range.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(r.0.wrapping_add(off) as *const i8) };
                off += 64;
            }
        }

        #[inline(always)]
        fn widen(src: &[u16], dst: &mut [f32]) {
            let n = src.len().min(dst.len());
            let mut i = 0;
            // SAFETY: reads 8 u16 and writes 8 f32 at i with i + 8 <= n; this impl is only
            // instantiated inside `run_avx2`, which requires F16C.
            unsafe {
                while i + 8 <= n {
                    let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                    _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
                    i += 8;
                }
            }
            for j in i..n {
                dst[j] = super::f16_to_f32(src[j]);
            }
        }

        #[inline(always)]
        fn widen_q8(src: &[i8], scales: &[u16], hd: usize, dst: &mut [f32]) {
            let gpr = hd.div_ceil(Q8_GROUP);
            let rows = src.len().min(dst.len()) / hd;
            assert!(scales.len() >= rows * gpr);
            for j in 0..rows {
                for g in 0..gpr {
                    let bits = scales[j * gpr + g];
                    let (a, b) = (j * hd + g * Q8_GROUP, j * hd + ((g + 1) * Q8_GROUP).min(hd));
                    let mut i = a;
                    // SAFETY: reads 8 i8 and writes 8 f32 at i with i + 8 <= b <= rows * hd,
                    // within both slices; this impl is only instantiated inside `run_avx2` (or
                    // the test wrapper), which require AVX2 and F16C.
                    let d = unsafe {
                        // F16C widens the scale exactly, as `f16_to_f32` does, without the
                        // per-call feature check of the portable conversion.
                        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)));
                        let dv = _mm256_set1_ps(d);
                        while i + 8 <= b {
                            let x = _mm_loadl_epi64(src.as_ptr().add(i) as *const __m128i);
                            let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(x));
                            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_mul_ps(f, dv));
                            i += 8;
                        }
                        d
                    };
                    for e in i..b {
                        dst[e] = src[e] as f32 * d;
                    }
                }
            }
        }

        #[inline(always)]
        fn scores<S: Rows>(
            q: &[f32],
            qt: usize,
            k: S,
            j0: usize,
            n: usize,
            hd: usize,
            scale: f32,
            out: &mut Tile,
            ahead: (*const u8, usize),
        ) {
            assert!(qt <= QT && n <= PIECE && q.len() >= qt * hd && k.len() >= (j0 + n) * hd);
            // SAFETY: AVX2/FMA/F16C are enabled by `run_avx2`, the only caller; the kernels
            // read q rows `< qt` and key rows `j0..j0 + n` at columns `< hd`, which the
            // assertion above checked exist.
            unsafe {
                match qt {
                    1 => scores_t::<1, S>(q, k, j0, n, hd, scale, out, ahead),
                    2 => scores_t::<2, S>(q, k, j0, n, hd, scale, out, ahead),
                    3 => scores_t::<3, S>(q, k, j0, n, hd, scale, out, ahead),
                    _ => scores_t::<4, S>(q, k, j0, n, hd, scale, out, ahead),
                }
            }
        }

        #[inline(always)]
        fn scores_kt(q: &[f32], qt: usize, kt: &[f32], hd: usize, out: &mut WTile) {
            assert!(qt <= QW && q.len() >= qt * hd && kt.len() >= hd * KW);
            // SAFETY: AVX2/FMA are enabled by `run_avx2`, the only caller; the kernel reads q
            // rows `< qt` and kt rows `< hd`, which the assertion above checked exist.
            unsafe {
                match qt {
                    1 => scores_kt_t::<1>(q, kt, hd, out),
                    2 => scores_kt_t::<2>(q, kt, hd, out),
                    3 => scores_kt_t::<3>(q, kt, hd, out),
                    4 => scores_kt_t::<4>(q, kt, hd, out),
                    5 => scores_kt_t::<5>(q, kt, hd, out),
                    _ => scores_kt_t::<6>(q, kt, hd, out),
                }
            }
        }

        #[inline(always)]
        fn max(x: &[f32]) -> f32 {
            let n = x.len();
            let mut i = 0;
            let mut m = f32::NEG_INFINITY;
            // SAFETY: loads 8 f32 at i with i + 8 <= n; AVX enabled by `run_avx2`.
            unsafe {
                if n >= 8 {
                    let mut v = _mm256_loadu_ps(x.as_ptr());
                    i = 8;
                    while i + 8 <= n {
                        v = _mm256_max_ps(v, _mm256_loadu_ps(x.as_ptr().add(i)));
                        i += 8;
                    }
                    let h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
                    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
                    let h = _mm_max_ss(h, _mm_shuffle_ps::<1>(h, h));
                    m = _mm_cvtss_f32(h);
                }
            }
            x[i..].iter().fold(m, |a, &b| a.max(b))
        }

        #[inline(always)]
        fn exp_sum(x: &mut [f32], m: f32) -> f32 {
            let n = x.len();
            let mut i = 0;
            // SAFETY: loads/stores 8 f32 at i with i + 8 <= n; AVX2/FMA enabled by `run_avx2`.
            unsafe {
                let mv = _mm256_set1_ps(m);
                let mut acc = _mm256_setzero_ps();
                while i + 8 <= n {
                    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), mv));
                    _mm256_storeu_ps(x.as_mut_ptr().add(i), e);
                    acc = _mm256_add_ps(acc, e);
                    i += 8;
                }
                if i < n {
                    let mut buf = [f32::NEG_INFINITY; 8];
                    buf[..n - i].copy_from_slice(&x[i..]);
                    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), mv));
                    _mm256_storeu_ps(buf.as_mut_ptr(), e);
                    x[i..].copy_from_slice(&buf[..n - i]);
                    acc = _mm256_add_ps(acc, e);
                }
                hsum(acc)
            }
        }

        /// All queries of the tile at once: their maxima and sums are reduced across lanes
        /// together (one vector each), and the rescale factors come from one `exp8`.
        #[inline(always)]
        fn fold_tile(
            p: &mut WTile,
            qt: usize,
            cnt: &[usize; QW],
            m: &mut [f32],
            l: &mut [f32],
        ) -> [f32; QW] {
            assert!(qt <= QW && m.len() >= qt && l.len() >= qt);
            assert!(cnt[..qt].iter().all(|&c| (1..=KW).contains(&c)));
            // SAFETY: AVX2/FMA are enabled by `run_avx2`, the only caller; every load and
            // store is of a whole 8-lane half of a `p` row (KW = 16) or of a local array.
            unsafe {
                let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
                let idx_lo = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let idx_hi = _mm256_add_epi32(idx_lo, _mm256_set1_epi32(8));
                let mut mx = [ninf; 8];
                for i in 0..qt {
                    let (lo, hi) = (p[i].as_mut_ptr(), p[i].as_mut_ptr().add(8));
                    let (mut a, mut b) = (_mm256_loadu_ps(lo), _mm256_loadu_ps(hi));
                    if cnt[i] < KW {
                        // Keys past the query's position: −∞, so that exp gives 0.
                        let c = _mm256_set1_epi32(cnt[i] as i32);
                        let keep_a = _mm256_castsi256_ps(_mm256_cmpgt_epi32(c, idx_lo));
                        let keep_b = _mm256_castsi256_ps(_mm256_cmpgt_epi32(c, idx_hi));
                        a = _mm256_blendv_ps(ninf, a, keep_a);
                        b = _mm256_blendv_ps(ninf, b, keep_b);
                        _mm256_storeu_ps(lo, a);
                        _mm256_storeu_ps(hi, b);
                    }
                    mx[i] = _mm256_max_ps(a, b);
                }
                let mut m_old = [f32::NEG_INFINITY; 8];
                let mut l_old = [0f32; 8];
                m_old[..qt].copy_from_slice(&m[..qt]);
                l_old[..qt].copy_from_slice(&l[..qt]);
                let mo = _mm256_loadu_ps(m_old.as_ptr());
                let mn = _mm256_max_ps(mo, hmax8(&mx));
                // exp(−∞) = 0 for a query's first keys, exp(0) = 1 exactly where the maximum
                // stayed (as `fold`); lanes past `qt` are never read.
                let c = exp8(_mm256_sub_ps(mo, mn));
                let mut m_new = [0f32; 8];
                _mm256_storeu_ps(m_new.as_mut_ptr(), mn);
                let mut sums = [_mm256_setzero_ps(); 8];
                for i in 0..qt {
                    let (lo, hi) = (p[i].as_mut_ptr(), p[i].as_mut_ptr().add(8));
                    let mb = _mm256_set1_ps(m_new[i]);
                    let ea = exp8(_mm256_sub_ps(_mm256_loadu_ps(lo), mb));
                    let eb = exp8(_mm256_sub_ps(_mm256_loadu_ps(hi), mb));
                    _mm256_storeu_ps(lo, ea);
                    _mm256_storeu_ps(hi, eb);
                    sums[i] = _mm256_add_ps(ea, eb);
                }
                let ln = _mm256_add_ps(
                    _mm256_mul_ps(_mm256_loadu_ps(l_old.as_ptr()), c),
                    hsum8(&sums),
                );
                let (mut l_new, mut cs) = ([0f32; 8], [0f32; 8]);
                _mm256_storeu_ps(l_new.as_mut_ptr(), ln);
                _mm256_storeu_ps(cs.as_mut_ptr(), c);
                m[..qt].copy_from_slice(&m_new[..qt]);
                l[..qt].copy_from_slice(&l_new[..qt]);
                let mut corr = [0f32; QW];
                corr.copy_from_slice(&cs[..QW]);
                corr
            }
        }

        /// Eight keys at a time: eight rows' chunk of eight elements are loaded and transposed
        /// in registers (unpack, shuffle, lane permute) into eight `kt` rows.
        #[inline(always)]
        fn transpose(k: &[f32], pn: usize, hd: usize, kt: &mut [f32]) {
            if !hd.is_multiple_of(8) || !pn.is_multiple_of(8) {
                return super::transpose_scalar(k, pn, hd, kt);
            }
            assert!(pn <= KW && k.len() >= pn * hd && kt.len() >= hd * KW);
            if pn < KW {
                kt[..hd * KW].fill(0.0);
            }
            // SAFETY: AVX enabled by `run_avx2`; reads rows `g + t < pn` at columns
            // `d + 8 ≤ hd`, writes `kt` rows `d + t < hd` at columns `g..g + 8 ≤ KW`, all
            // inside the lengths asserted above.
            unsafe {
                let (kp, tp) = (k.as_ptr(), kt.as_mut_ptr());
                for g in (0..pn).step_by(8) {
                    for d in (0..hd).step_by(8) {
                        let r: [__m256; 8] =
                            std::array::from_fn(|t| _mm256_loadu_ps(kp.add((g + t) * hd + d)));
                        for (t, o) in transpose8(&r).iter().enumerate() {
                            _mm256_storeu_ps(tp.add((d + t) * KW + g), *o);
                        }
                    }
                }
            }
        }

        #[inline(always)]
        fn mix<S: Rows, const PW: usize>(
            acc: &mut [f32],
            qt: usize,
            corr: &[f32],
            p: &[[f32; PW]],
            n: usize,
            v: S,
            j0: usize,
            hd: usize,
            ahead: (*const u8, usize),
        ) {
            assert!(
                qt <= QW
                    && qt <= p.len()
                    && qt <= corr.len()
                    && n <= PW
                    && acc.len() >= qt * hd
                    && v.len() >= (j0 + n) * hd
            );
            // SAFETY: as in `scores`: acc rows `< qt`, value rows `j0..j0 + n`, columns `< hd`.
            unsafe {
                match qt {
                    1 => mix_t::<1, PW, S>(acc, corr, p, n, v, j0, hd, ahead),
                    2 => mix_t::<2, PW, S>(acc, corr, p, n, v, j0, hd, ahead),
                    3 => mix_t::<3, PW, S>(acc, corr, p, n, v, j0, hd, ahead),
                    4 => mix_t::<4, PW, S>(acc, corr, p, n, v, j0, hd, ahead),
                    5 => mix_t::<5, PW, S>(acc, corr, p, n, v, j0, hd, ahead),
                    _ => mix_t::<6, PW, S>(acc, corr, p, n, v, j0, hd, ahead),
                }
            }
        }
    }

    /// Sums each of 4 vectors: lane `i` of the result is the sum of `a[i]`.
    #[inline(always)]
    unsafe fn hsum4(a: &[__m256; 4]) -> __m128 {
        let t = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps::<1>(t))
    }

    /// The largest element of each of 8 vectors: lane `i` of the result is the maximum of
    /// `a[i]`.
    #[inline(always)]
    unsafe fn hmax8(a: &[__m256; 8]) -> __m256 {
        // Pairwise maxima in `_mm256_hadd_ps`'s layout.
        #[inline(always)]
        unsafe fn hmax(x: __m256, y: __m256) -> __m256 {
            _mm256_max_ps(
                _mm256_shuffle_ps::<0b10_00_10_00>(x, y),
                _mm256_shuffle_ps::<0b11_01_11_01>(x, y),
            )
        }
        let t0 = hmax(hmax(a[0], a[1]), hmax(a[2], a[3]));
        let t1 = hmax(hmax(a[4], a[5]), hmax(a[6], a[7]));
        let lo = _mm256_permute2f128_ps::<0x20>(t0, t1);
        let hi = _mm256_permute2f128_ps::<0x31>(t0, t1);
        _mm256_max_ps(lo, hi)
    }

    /// The 8×8 transpose: lane `j` of result `t` is lane `t` of `r[j]`.
    #[inline(always)]
    unsafe fn transpose8(r: &[__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// Sums each of 8 vectors: lane `i` of the result is the sum of `a[i]`.
    #[inline(always)]
    unsafe fn hsum8(a: &[__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let t1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        let lo = _mm256_permute2f128_ps::<0x20>(t0, t1);
        let hi = _mm256_permute2f128_ps::<0x31>(t0, t1);
        _mm256_add_ps(lo, hi)
    }

    /// `T` queries against three keys at a time (then a pair and a single key for the rest):
    /// each key chunk is loaded (and converted) once for all `T` queries, and with four queries
    /// `3T` = 12 accumulators (independent FMA chains, 15 of the 16 vector registers with the
    /// keys) leave the out-of-order core more slack than the 8 of two keys: decode attention
    /// took ~8% less time that way (`kvbench 1024 6 hot`, best rounds 15.0 against 16.3 ms).
    ///
    /// # Safety
    /// AVX2, FMA (and F16C for f16 rows); `q` holds `T` rows of `hd`, `k` rows `j0..j0 + n`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn scores_t<const T: usize, S: Rows>(
        q: &[f32],
        k: S,
        j0: usize,
        n: usize,
        hd: usize,
        scale: f32,
        out: &mut Tile,
        ahead: (*const u8, usize),
    ) {
        // One prefetch step per iteration: ⌈n / 3⌉ of them (triples, then a pair or a single).
        let mut pf = Prefetcher::new(ahead, n.div_ceil(3));
        let mut j = 0;
        while j < n {
            pf.step();
            match n - j {
                1 => score_keys::<T, 1, S>(q, k, j0, j, hd, scale, out),
                2 => score_keys::<T, 2, S>(q, k, j0, j, hd, scale, out),
                _ => score_keys::<T, 3, S>(q, k, j0, j, hd, scale, out),
            }
            j += 3;
        }
    }

    /// Scores of `T` queries against the `K` (≤ 3) keys `j0 + j ..`, into `out[i][j ..]`.
    ///
    /// # Safety
    /// As [`scores_t`]; key rows `j0 + j .. j0 + j + K` exist.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn score_keys<const T: usize, const K: usize, S: Rows>(
        q: &[f32],
        k: S,
        j0: usize,
        j: usize,
        hd: usize,
        scale: f32,
        out: &mut Tile,
    ) {
        let hd8 = hd / 8 * 8;
        let qp = q.as_ptr();
        let r: [usize; K] = std::array::from_fn(|t| (j0 + j + t) * hd);
        // Accumulator K·i + t: query i against key j + t (at most 12 with four queries).
        let mut a = [_mm256_setzero_ps(); 12];
        let mut d = 0;
        while d < hd8 {
            let kv: [__m256; K] = std::array::from_fn(|t| k.load8(r[t] + d));
            for i in 0..T {
                let qv = _mm256_loadu_ps(qp.add(i * hd + d));
                for t in 0..K {
                    a[K * i + t] = _mm256_fmadd_ps(qv, kv[t], a[K * i + t]);
                }
            }
            d += 8;
        }
        // Lane K·i + t holds the sum of accumulator K·i + t.
        let mut lanes = [0f32; 12];
        _mm256_storeu_ps(
            lanes.as_mut_ptr(),
            hsum8(&[a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        );
        if K * T > 8 {
            _mm_storeu_ps(
                lanes.as_mut_ptr().add(8),
                hsum4(&[a[8], a[9], a[10], a[11]]),
            );
        }
        for i in 0..T {
            for t in 0..K {
                let tail: f32 = (hd8..hd).map(|e| q[i * hd + e] * k.get(r[t] + e)).sum();
                out[i][j + t] = (lanes[K * i + t] + tail) * scale;
            }
        }
    }

    /// `T` queries against the [`KW`] keys of a transposed piece (`kt[d * KW + j]`): per head
    /// element, one broadcast query value times two key vectors, so each accumulator holds 8
    /// finished scores at the end and no horizontal sum is needed.
    ///
    /// # Safety
    /// AVX2 and FMA; `q` holds `T` rows of `hd`, `kt` holds `hd` rows of [`KW`].
    #[inline(always)]
    unsafe fn scores_kt_t<const T: usize>(q: &[f32], kt: &[f32], hd: usize, out: &mut WTile) {
        let (qp, kp) = (q.as_ptr(), kt.as_ptr());
        let mut d0 = 0;
        while d0 < hd {
            let d1 = (d0 + SUM_RUN).min(hd);
            let mut a = [[_mm256_setzero_ps(); 2]; T];
            for d in d0..d1 {
                let k0 = _mm256_loadu_ps(kp.add(d * KW));
                let k1 = _mm256_loadu_ps(kp.add(d * KW + 8));
                for (i, x) in a.iter_mut().enumerate() {
                    let qb = _mm256_broadcast_ss(&*qp.add(i * hd + d));
                    x[0] = _mm256_fmadd_ps(qb, k0, x[0]);
                    x[1] = _mm256_fmadd_ps(qb, k1, x[1]);
                }
            }
            for (o, x) in out.iter_mut().zip(&a) {
                let (lo, hi) = (o.as_mut_ptr(), o.as_mut_ptr().add(8));
                if d0 == 0 {
                    _mm256_storeu_ps(lo, x[0]);
                    _mm256_storeu_ps(hi, x[1]);
                } else {
                    _mm256_storeu_ps(lo, _mm256_add_ps(_mm256_loadu_ps(lo), x[0]));
                    _mm256_storeu_ps(hi, _mm256_add_ps(_mm256_loadu_ps(hi), x[1]));
                }
            }
            d0 = d1;
        }
    }

    /// `T` output rows, 16 columns at a time: each value chunk is loaded (and converted) once
    /// for all `T` queries.
    ///
    /// # Safety
    /// AVX2, FMA (and F16C for f16 rows); `acc` holds `T` rows of `hd`, `v` rows `j0..j0 + n`.
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    #[inline(always)]
    unsafe fn mix_t<const T: usize, const PW: usize, S: Rows>(
        acc: &mut [f32],
        corr: &[f32],
        p: &[[f32; PW]],
        n: usize,
        v: S,
        j0: usize,
        hd: usize,
        ahead: (*const u8, usize),
    ) {
        let hd8 = hd / 8 * 8;
        let ap = acc.as_mut_ptr();
        let parts = hd8 / 16;
        let mut pf = Prefetcher::new(ahead, parts);
        if parts == 0 {
            pf.step();
        }
        let mut d = 0;
        while d + 16 <= hd8 {
            pf.step();
            let mut a = [[_mm256_setzero_ps(); 2]; T];
            for (i, x) in a.iter_mut().enumerate() {
                let c = _mm256_set1_ps(corr[i]);
                x[0] = _mm256_mul_ps(_mm256_loadu_ps(ap.add(i * hd + d)), c);
                x[1] = _mm256_mul_ps(_mm256_loadu_ps(ap.add(i * hd + d + 8)), c);
            }
            for j in 0..n {
                let base = (j0 + j) * hd + d;
                let v0 = v.load8(base);
                let v1 = v.load8(base + 8);
                for (i, x) in a.iter_mut().enumerate() {
                    let pb = _mm256_set1_ps(p[i][j]);
                    x[0] = _mm256_fmadd_ps(pb, v0, x[0]);
                    x[1] = _mm256_fmadd_ps(pb, v1, x[1]);
                }
            }
            for (i, x) in a.iter().enumerate() {
                _mm256_storeu_ps(ap.add(i * hd + d), x[0]);
                _mm256_storeu_ps(ap.add(i * hd + d + 8), x[1]);
            }
            d += 16;
        }
        if d < hd8 {
            let mut a = [_mm256_setzero_ps(); T];
            for (i, x) in a.iter_mut().enumerate() {
                *x = _mm256_mul_ps(_mm256_loadu_ps(ap.add(i * hd + d)), _mm256_set1_ps(corr[i]));
            }
            for j in 0..n {
                let v0 = v.load8((j0 + j) * hd + d);
                for (i, x) in a.iter_mut().enumerate() {
                    *x = _mm256_fmadd_ps(_mm256_set1_ps(p[i][j]), v0, *x);
                }
            }
            for (i, x) in a.iter().enumerate() {
                _mm256_storeu_ps(ap.add(i * hd + d), *x);
            }
        }
        for i in 0..T {
            for e in hd8..hd {
                let mut x = acc[i * hd + e] * corr[i];
                for j in 0..n {
                    x += p[i][j] * v.get((j0 + j) * hd + e);
                }
                acc[i * hd + e] = x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rnd(seed: u32) -> impl FnMut() -> f32 {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 20001) as f32 / 10000.0 - 1.0
        }
    }

    proptest! {
        #[test]
        fn every_path_matches_the_naive_softmax(
            hd in 1usize..80, group in 1usize..5, rows in 1usize..20, pos0 in 0usize..70,
            block in 1usize..40, ty in 0u8..3, big in any::<bool>(), seed in 0u32..10000,
        ) {
            let mut r = rnd(seed);
            // `big` makes scores span a wide range (sharp softmax, underflowing exps).
            let amp = if big { 8.0 } else { 1.0 };
            let n_keys = pos0 + rows;
            let n_blocks = n_keys.div_ceil(block);
            let kf: Vec<f32> = (0..n_blocks * block * hd).map(|_| r() * amp).collect();
            let vf: Vec<f32> = (0..n_blocks * block * hd).map(|_| r()).collect();
            let kh: Vec<u16> = kf.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
            let vh: Vec<u16> = vf.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
            // q8_0: each head row quantized on its own, as the KV pool writes it.
            let gpr = hd.div_ceil(Q8_GROUP);
            let q8 = |x: &[f32]| {
                let mut q = vec![0i8; x.len()];
                let mut sc = vec![0u16; x.len() / hd * gpr];
                for ((xr, qr), sr) in x.chunks(hd).zip(q.chunks_mut(hd)).zip(sc.chunks_mut(gpr)) {
                    quantize_q8(xr, qr, sr);
                }
                (q, sc)
            };
            let ((kq, ks), (vq, vs)) = (q8(&kf), q8(&vf));
            let q_stride = group * hd + 3;
            let q: Vec<f32> = (0..rows * q_stride).map(|_| r()).collect();
            let shape = AttnShape { head_dim: hd, group, rows, pos0, block, scale: 1.0 / (hd as f32).sqrt() };
            let bl = block * hd;
            let sl = block * gpr;
            let kv = |b: usize| match ty {
                0 => KvRows::F32 { k: &kf[b * bl..(b + 1) * bl], v: &vf[b * bl..(b + 1) * bl] },
                1 => KvRows::F16 { k: &kh[b * bl..(b + 1) * bl], v: &vh[b * bl..(b + 1) * bl] },
                _ => KvRows::Q8 {
                    k: &kq[b * bl..(b + 1) * bl],
                    v: &vq[b * bl..(b + 1) * bl],
                    ks: &ks[b * sl..(b + 1) * sl],
                    vs: &vs[b * sl..(b + 1) * sl],
                },
            };
            let mut want = vec![0f32; rows * group * hd];
            attend_naive(&shape, &q, q_stride, &kv, &mut want);
            for kern in AttnKernel::available() {
                let mut got = vec![f32::NAN; rows * group * hd];
                let mut seen = vec![false; rows];
                attend(kern, &shape, &q, q_stride, &kv, &mut |row, o| {
                    seen[row] = true;
                    got[row * group * hd..(row + 1) * group * hd].copy_from_slice(o);
                });
                prop_assert!(seen.iter().all(|&s| s));
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    prop_assert!((a - b).abs() <= 2e-5 * (1.0 + (hd as f32).sqrt()), "{kern:?} [{i}] {a} vs {b}");
                }
            }
        }
    }

    proptest! {
        /// Cascade attention: a shared prefix of whole blocks attended once (every row sees
        /// all of it), the rest per row with block indices and positions shifted past it, and
        /// the two merged by their log-denominators, equal one causal pass over everything.
        #[test]
        fn split_attention_merged_by_lse_equals_one_pass(
            hd in 1usize..40, group in 1usize..40, shared_blocks in 1usize..5, extra in 1usize..40,
            block in 1usize..12, big in any::<bool>(), seed in 0u32..10000,
        ) {
            let mut r = rnd(seed);
            let amp = if big { 8.0 } else { 1.0 };
            let shared = shared_blocks * block;
            let n_keys = shared + extra;
            let n_blocks = n_keys.div_ceil(block);
            let kf: Vec<f32> = (0..n_blocks * block * hd).map(|_| r() * amp).collect();
            let vf: Vec<f32> = (0..n_blocks * block * hd).map(|_| r()).collect();
            let q: Vec<f32> = (0..group * hd).map(|_| r()).collect();
            let bl = block * hd;
            let kv = |b: usize| KvRows::F32 { k: &kf[b * bl..(b + 1) * bl], v: &vf[b * bl..(b + 1) * bl] };
            let shape = |pos0| AttnShape { head_dim: hd, group, rows: 1, pos0, block, scale: 1.0 / (hd as f32).sqrt() };
            for kern in AttnKernel::available() {
                let mut want = vec![0f32; group * hd];
                attend(kern, &shape(n_keys - 1), &q, group * hd, &kv, &mut |_, o| want.copy_from_slice(o));
                let (mut a, mut la) = (vec![0f32; group * hd], vec![0f32; group]);
                attend_lse(kern, &shape(shared - 1), &q, group * hd, &kv, &mut |_, o, l| {
                    a.copy_from_slice(o);
                    la.copy_from_slice(l);
                });
                let (mut b, mut lb) = (vec![0f32; group * hd], vec![0f32; group]);
                let tail = |i: usize| kv(shared_blocks + i);
                attend_lse(kern, &shape(extra - 1), &q, group * hd, &tail, &mut |_, o, l| {
                    b.copy_from_slice(o);
                    lb.copy_from_slice(l);
                });
                for g in 0..group {
                    merge_lse(&mut a[g * hd..(g + 1) * hd], &mut la[g], &b[g * hd..(g + 1) * hd], lb[g]);
                }
                for (i, (x, y)) in a.iter().zip(&want).enumerate() {
                    prop_assert!((x - y).abs() <= 2e-5 * (1.0 + (hd as f32).sqrt()), "{kern:?} [{i}] {x} vs {y}");
                }
            }
        }

        #[test]
        fn q8_rows_read_in_place_equal_their_dequantized_f32_rows(
            groups in 1usize..5, group in 1usize..5, rows in 1usize..3, pos0 in 0usize..90,
            block in 1usize..40, seed in 0u32..10000, amp in 0.01f32..20.0,
        ) {
            // Decode-sized calls (≤ 4 queries) over q8 rows of whole scale groups take the
            // dequantize-on-use path; f32 rows holding the dequantized values take the same
            // tile kernels, so the outputs must agree bit for bit.
            prop_assume!(rows * group <= WIDEN_ABOVE);
            let hd = groups * Q8_GROUP;
            let mut r = rnd(seed);
            let n_blocks = (pos0 + rows).div_ceil(block);
            let n = n_blocks * block * hd;
            let gpr = hd / Q8_GROUP;
            let q8 = |x: &[f32]| {
                let mut q = vec![0i8; x.len()];
                let mut sc = vec![0u16; x.len() / hd * gpr];
                for ((xr, qr), sr) in x.chunks(hd).zip(q.chunks_mut(hd)).zip(sc.chunks_mut(gpr)) {
                    quantize_q8(xr, qr, sr);
                }
                let mut f = vec![0f32; x.len()];
                dequant_q8(&q, &sc, hd, &mut f);
                (q, sc, f)
            };
            let kx: Vec<f32> = (0..n).map(|_| r() * amp).collect();
            let vx: Vec<f32> = (0..n).map(|_| r()).collect();
            let ((kq, ks, kf), (vq, vs, vf)) = (q8(&kx), q8(&vx));
            let q: Vec<f32> = (0..rows * group * hd).map(|_| r()).collect();
            let shape = AttnShape { head_dim: hd, group, rows, pos0, block, scale: 1.0 / (hd as f32).sqrt() };
            let (bl, sl) = (block * hd, block * gpr);
            let f32_rows = |b: usize| KvRows::F32 { k: &kf[b * bl..(b + 1) * bl], v: &vf[b * bl..(b + 1) * bl] };
            let q8_rows = |b: usize| KvRows::Q8 {
                k: &kq[b * bl..(b + 1) * bl],
                v: &vq[b * bl..(b + 1) * bl],
                ks: &ks[b * sl..(b + 1) * sl],
                vs: &vs[b * sl..(b + 1) * sl],
            };
            fn run<'a>(
                kern: AttnKernel, shape: &AttnShape, q: &[f32], kv: &dyn Fn(usize) -> KvRows<'a>,
            ) -> Vec<f32> {
                let w = shape.group * shape.head_dim;
                let mut out = vec![f32::NAN; shape.rows * w];
                attend(kern, shape, q, w, kv, &mut |row, o| {
                    out[row * w..(row + 1) * w].copy_from_slice(o);
                });
                out
            }
            for kern in AttnKernel::available() {
                let (want, got) = (run(kern, &shape, &q, &f32_rows), run(kern, &shape, &q, &q8_rows));
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    prop_assert_eq!(a.to_bits(), b.to_bits(), "{:?} [{}] {} vs {}", kern, i, a, b);
                }
            }
        }

        #[test]
        fn avx2_q8_dequant_is_identical_to_scalar(
            hd in 1usize..140, rows in 1usize..20, seed in 0u32..10000, amp in 0.001f32..100.0,
        ) {
            let mut r = rnd(seed);
            let gpr = hd.div_ceil(Q8_GROUP);
            let x: Vec<f32> = (0..rows * hd).map(|_| r() * amp).collect();
            let mut q = vec![0i8; rows * hd];
            let mut sc = vec![0u16; rows * gpr];
            for ((xr, qr), sr) in x.chunks(hd).zip(q.chunks_mut(hd)).zip(sc.chunks_mut(gpr)) {
                quantize_q8(xr, qr, sr);
            }
            let mut want = vec![f32::NAN; rows * hd];
            dequant_q8(&q, &sc, hd, &mut want);
            // Round-to-nearest on the stored scale: within half a step of the input.
            for (row, (xr, wr)) in x.chunks(hd).zip(want.chunks(hd)).enumerate() {
                for (e, (a, b)) in xr.iter().zip(wr).enumerate() {
                    let d = f16_to_f32(sc[row * gpr + e / Q8_GROUP]);
                    prop_assert!((a - b).abs() <= d * 0.5001 + 1e-7, "{a} vs {b} (scale {d})");
                }
            }
            #[cfg(target_arch = "x86_64")]
            if AttnKernel::available().contains(&AttnKernel::Avx2) {
                let mut got = vec![f32::NAN; rows * hd];
                // SAFETY: `available` lists Avx2 only when AVX2, FMA and F16C are present.
                unsafe { x86::widen_q8_avx2(&q, &sc, hd, &mut got) };
                for (a, b) in got.iter().zip(&want) {
                    prop_assert_eq!(a.to_bits(), b.to_bits());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn avx2_transpose_is_identical_to_scalar(
            hd in 1usize..140, pn in 1usize..=KW, seed in 0u32..10000,
        ) {
            let mut r = rnd(seed);
            let k: Vec<f32> = (0..pn * hd).map(|_| r()).collect();
            let mut want = vec![f32::NAN; hd * KW];
            ScalarOps::transpose(&k, pn, hd, &mut want);
            for j in 0..KW {
                for d in 0..hd {
                    let x = if j < pn { k[j * hd + d] } else { 0.0 };
                    prop_assert_eq!(want[d * KW + j].to_bits(), x.to_bits());
                }
            }
            #[cfg(target_arch = "x86_64")]
            if AttnKernel::available().contains(&AttnKernel::Avx2) {
                let mut got = vec![f32::NAN; hd * KW];
                // SAFETY: `available` lists Avx2 only when AVX2, FMA and F16C are present.
                unsafe { x86::transpose_avx2(&k, pn, hd, &mut got) };
                for (a, b) in got.iter().zip(&want) {
                    prop_assert_eq!(a.to_bits(), b.to_bits());
                }
            }
        }

        #[test]
        fn avx2_tile_fold_matches_the_scalar_fold(
            qt in 1usize..=QW, seed in 0u32..10000, first in proptest::bool::ANY,
            cnts in proptest::array::uniform6(1usize..=KW), amp in 0.01f32..30.0,
        ) {
            let mut r = rnd(seed);
            let mut p: WTile = [[0f32; KW]; QW];
            p.iter_mut().flatten().for_each(|x| *x = r() * amp);
            // A first piece (no state yet) or a running state whose maximum some queries beat.
            let m0: Vec<f32> = (0..qt)
                .map(|_| if first { f32::NEG_INFINITY } else { r() * amp })
                .collect();
            let l0: Vec<f32> = (0..qt).map(|_| if first { 0.0 } else { 1.0 + r().abs() * 5.0 }).collect();
            let (mut pw, mut mw, mut lw) = (p, m0.clone(), l0.clone());
            let cw = ScalarOps::fold_tile(&mut pw, qt, &cnts, &mut mw, &mut lw);
            for i in 0..qt {
                prop_assert!(pw[i][cnts[i]..].iter().all(|&x| x == 0.0));
                prop_assert!(lw[i] >= 1.0 - 1e-6 && mw[i] >= m0[i]);
            }
            #[cfg(target_arch = "x86_64")]
            if AttnKernel::available().contains(&AttnKernel::Avx2) {
                let (mut pg, mut mg, mut lg) = (p, m0.clone(), l0.clone());
                // SAFETY: `available` lists Avx2 only when AVX2, FMA and F16C are present.
                let cg = unsafe { x86::fold_tile_avx2(&mut pg, qt, &cnts, &mut mg, &mut lg) };
                let close = |a: f32, b: f32| (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()));
                for i in 0..qt {
                    prop_assert_eq!(mg[i].to_bits(), mw[i].to_bits());
                    prop_assert!(close(cg[i], cw[i]), "corr {i}: {} vs {}", cg[i], cw[i]);
                    prop_assert!(close(lg[i], lw[i]), "l {i}: {} vs {}", lg[i], lw[i]);
                    for j in 0..KW {
                        prop_assert!(close(pg[i][j], pw[i][j]), "p[{i}][{j}]: {} vs {}", pg[i][j], pw[i][j]);
                    }
                }
            }
        }
    }

    #[test]
    fn merging_with_an_empty_part_keeps_the_other() {
        let (mut a, mut la) = (vec![1.0f32, 2.0], f32::NEG_INFINITY);
        merge_lse(&mut a, &mut la, &[3.0, 4.0], 0.5);
        assert_eq!((a.as_slice(), la), (&[3.0f32, 4.0][..], 0.5));
        merge_lse(&mut a, &mut la, &[9.0, 9.0], f32::NEG_INFINITY);
        assert_eq!((a.as_slice(), la), (&[3.0f32, 4.0][..], 0.5));
    }

    #[test]
    fn q8_quantization_handles_zero_rows_and_partial_groups() {
        // 40 values: one full group of 32, then a partial group of 8 with its own scale.
        let mut x = vec![0f32; 40];
        x[32..].copy_from_slice(&[1.0, -2.0, 0.5, 0.0, 3.0, -3.0, 0.25, 1.5]);
        let (mut q, mut sc) = (vec![1i8; 40], vec![0u16; 2]);
        quantize_q8(&x, &mut q, &mut sc);
        assert!(q[..32].iter().all(|&v| v == 0));
        assert_eq!(f16_to_f32(sc[0]), 0.0);
        assert_eq!(q[36], 127);
        assert_eq!(q[37], -127);
        let mut back = vec![f32::NAN; 40];
        dequant_q8(&q, &sc, 40, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= 3.0 / 254.0 * 1.001, "{a} vs {b}");
        }
    }

    #[test]
    fn one_key_returns_its_value() {
        let hd = 16;
        let k: Vec<f32> = (0..hd).map(|i| i as f32).collect();
        let v: Vec<f32> = (0..hd).map(|i| 100.0 - i as f32).collect();
        let q = vec![0.5f32; 2 * hd];
        let shape = AttnShape {
            head_dim: hd,
            group: 2,
            rows: 1,
            pos0: 0,
            block: 1,
            scale: 1.0,
        };
        for kern in AttnKernel::available() {
            let mut out = vec![0f32; 2 * hd];
            attend(
                kern,
                &shape,
                &q,
                2 * hd,
                &|_| KvRows::F32 { k: &k, v: &v },
                &mut |_, o| out.copy_from_slice(o),
            );
            assert_eq!(&out[..hd], &v[..]);
            assert_eq!(&out[hd..], &v[..]);
        }
    }
}
