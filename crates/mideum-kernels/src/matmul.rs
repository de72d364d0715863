//! `out = x · Wᵀ` for activations `x` (`t` rows of `k` floats) and a row-major weight matrix
//! `W` (`n` rows of `k` elements, the layout of both safetensors and GGUF), parallel over
//! blocks of weight rows so that each weight row is read from memory once for all `t` rows.

use crate::dot::DotKernel;
use crate::packed::{self, Packed, PackedKernel};
use crate::par::{DisjointSlice, ThreadPool};
use crate::qdot::QKernel;
use crate::quant::{dequantize_row, ActKind, ActQ8, QuantType};
use std::cell::RefCell;
use std::sync::OnceLock;

/// A borrowed weight matrix in its stored element type.
#[derive(Clone, Copy, Debug)]
pub enum WeightView<'a> {
    F32(&'a [f32]),
    BF16(&'a [u16]),
    F16(&'a [u16]),
    /// GGML blocks of `QuantType`, rows stored one after another.
    Quant(QuantType, &'a [u8]),
    /// GGML blocks repacked into a SIMD-friendly layout (see [`crate::packed`]).
    Packed(Packed, &'a [u8]),
}

impl WeightView<'_> {
    /// Whether the weights are block-quantized (GGUF rows or a repacked layout).
    pub fn is_quantized(&self) -> bool {
        matches!(self, WeightView::Quant(..) | WeightView::Packed(..))
    }

    pub fn len(&self) -> usize {
        match self {
            WeightView::F32(w) => w.len(),
            WeightView::BF16(w) | WeightView::F16(w) => w.len(),
            WeightView::Quant(qt, b) => b.len() / qt.block_bytes() * qt.block_elems(),
            WeightView::Packed(p, b) => p.elems(b.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies row `r` (of length `k`) into `out` as f32.
    pub fn row_f32(&self, r: usize, k: usize, out: &mut [f32]) {
        let out = &mut out[..k];
        match self {
            WeightView::F32(w) => out.copy_from_slice(&w[r * k..(r + 1) * k]),
            WeightView::BF16(w) => DotKernel::Scalar.widen_bf16(&w[r * k..(r + 1) * k], out),
            WeightView::F16(w) => DotKernel::Scalar.widen_f16(&w[r * k..(r + 1) * k], out),
            WeightView::Quant(qt, b) => {
                let rb = qt.row_bytes(k);
                dequantize_row(*qt, &b[r * rb..(r + 1) * rb], out)
            }
            WeightView::Packed(p, b) => packed::dequantize_row(*p, b, k, r, out),
        }
    }
}

/// Computes `out[ti * n + j] = Σ_i x[ti * k + i] · w[j * k + i]`.
///
/// Panics if the slice lengths do not match `t`, `k` and `n` (a programming error: shapes are
/// validated when the model is loaded).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    pool: &ThreadPool,
    kern: DotKernel,
    x: &[f32],
    t: usize,
    k: usize,
    w: WeightView<'_>,
    n: usize,
    out: &mut [f32],
) {
    assert_eq!(x.len(), t * k, "activation shape");
    assert_eq!(w.len(), n * k, "weight shape");
    assert_eq!(out.len(), t * n, "output shape");
    if t == 0 || n == 0 {
        return;
    }
    if matches!(w, WeightView::Quant(..) | WeightView::Packed(..)) {
        let mut mats = [(w, n, out)];
        return matmul_multi(pool, kern, x, t, k, &mut mats);
    }
    let per_task = (n / (pool.n_threads() * 8)).clamp(1, 256);
    let n_tasks = n.div_ceil(per_task);
    let dst = DisjointSlice::new(out);
    pool.for_each(n_tasks, &|task| {
        let j0 = task * per_task;
        let j1 = (j0 + per_task).min(n);
        // SAFETY: task `task` owns columns j0..j1 of every output row; tasks never overlap.
        let mut outs: Vec<&mut [f32]> = (0..t)
            .map(|tt| unsafe { dst.range(tt * n + j0, tt * n + j1) })
            .collect();
        let mut row = Vec::new();
        for j in j0..j1 {
            let jj = j - j0;
            match w {
                WeightView::F32(w) => {
                    let wr = &w[j * k..(j + 1) * k];
                    for (tt, o) in outs.iter_mut().enumerate() {
                        o[jj] = kern.dot_f32(wr, &x[tt * k..(tt + 1) * k]);
                    }
                }
                WeightView::BF16(wb) if t == 1 => {
                    outs[0][jj] = kern.dot_bf16(&wb[j * k..(j + 1) * k], x)
                }
                WeightView::F16(wh) if t == 1 => {
                    outs[0][jj] = kern.dot_f16(&wh[j * k..(j + 1) * k], x)
                }
                _ => {
                    // Many activation rows: widen the weight row once, use it for all of them.
                    if row.len() != k {
                        row.resize(k, 0.0);
                    }
                    w.row_f32(j, k, &mut row);
                    for (tt, o) in outs.iter_mut().enumerate() {
                        o[jj] = kern.dot_f32(&row, &x[tt * k..(tt + 1) * k]);
                    }
                }
            }
        }
    });
}

thread_local! {
    /// The calling thread's quantized activations (one buffer per activation layout), reused
    /// across calls (no per-token allocation).
    static ACT: RefCell<[ActQ8; 2]> = RefCell::new([ActQ8::default(), ActQ8::default()]);
}

thread_local! {
    /// Normalised activations for [`matmul_multi_rmsnorm`] calls that include float weights.
    static NORMED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn kind_slot(kind: ActKind) -> usize {
    match kind {
        ActKind::B32 => 0,
        ActKind::K256 => 1,
    }
}

fn best_qkernel(kern: DotKernel) -> QKernel {
    static BEST: OnceLock<QKernel> = OnceLock::new();
    if kern == DotKernel::Scalar {
        QKernel::Scalar
    } else {
        *BEST.get_or_init(QKernel::detect)
    }
}

fn best_pkernel(kern: DotKernel) -> PackedKernel {
    static BEST: OnceLock<PackedKernel> = OnceLock::new();
    if kern == DotKernel::Scalar {
        PackedKernel::Scalar
    } else {
        *BEST.get_or_init(PackedKernel::detect)
    }
}

/// Activation rows per tile in the many-rows path on GGUF-order weights: a tile of int8 rows
/// stays in L2 while every weight row of a task is streamed past it.
const T_TILE: usize = 32;

/// The most weight matrices one [`matmul_multi`] call may take.
pub const MAX_MULTI: usize = 8;

/// One quantized product of a multi-matrix dispatch.
struct QJob<'a> {
    qt: QuantType,
    /// The repacked layout of `w`, if it is not in GGUF row order.
    packed: Option<Packed>,
    w: &'a [u8],
    n: usize,
    out: DisjointSlice<'a, f32>,
    /// Weight rows per task.
    per_task: usize,
    /// First global task index of this job.
    task0: usize,
}

/// Several products that share one input: `mats[m].2 = x · W_mᵀ` for every `(W_m, n_m, out_m)`.
///
/// For quantized weights the activations are quantized once per activation layout (at most
/// two: per-32 blocks for Q8_0/Q4_0, per-256 blocks for K-quants) and all the matrices' rows
/// are spread over the pool in a single dispatch, which saves the per-product wake-up and
/// quantization of separate [`matmul`] calls (Q/K/V, gate/up). Float weights in the list are
/// computed with [`matmul`]. The results equal those of separate `matmul` calls exactly.
///
/// Panics on shape mismatches (as [`matmul`]) or more than [`MAX_MULTI`] matrices.
pub fn matmul_multi(
    pool: &ThreadPool,
    kern: DotKernel,
    x: &[f32],
    t: usize,
    k: usize,
    mats: &mut [(WeightView<'_>, usize, &mut [f32])],
) {
    assert_eq!(x.len(), t * k, "activation shape");
    let need = check_multi(k, mats);
    for (w, n, out) in mats.iter_mut() {
        if !w.is_quantized() {
            matmul(pool, kern, x, t, k, *w, *n, out);
        }
    }
    if t == 0 || !need.iter().any(|&b| b) {
        return;
    }
    ACT.with(|cell| {
        let mut acts = cell.borrow_mut();
        for (slot, kind) in [(0, ActKind::B32), (1, ActKind::K256)] {
            if need[slot] {
                acts[slot].quantize_par(pool, x, None, t, k, kind);
            }
        }
        dispatch_quant(
            pool,
            best_qkernel(kern),
            best_pkernel(kern),
            &acts,
            t,
            k,
            mats,
        );
    });
}

/// [`matmul_multi`] of the RMS-normalised rows `rmsnorm(x_r, norm, eps)`: when every matrix
/// is quantized, the normalised rows are quantized directly (no float copy is written).
/// Equal bit for bit to [`crate::ops::rmsnorm`] per row followed by [`matmul_multi`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_multi_rmsnorm(
    pool: &ThreadPool,
    kern: DotKernel,
    x: &[f32],
    norm: &[f32],
    eps: f32,
    t: usize,
    k: usize,
    mats: &mut [(WeightView<'_>, usize, &mut [f32])],
) {
    assert_eq!(x.len(), t * k, "activation shape");
    assert_eq!(norm.len(), k, "norm weight shape");
    let need = check_multi(k, mats);
    if mats.iter().any(|(w, _, _)| !w.is_quantized()) {
        NORMED.with(|cell| {
            let mut normed = cell.borrow_mut();
            normed.resize(t * k, 0.0);
            for r in 0..t {
                crate::ops::rmsnorm(
                    &x[r * k..(r + 1) * k],
                    norm,
                    eps,
                    &mut normed[r * k..(r + 1) * k],
                );
            }
            matmul_multi(pool, kern, &normed, t, k, mats);
        });
        return;
    }
    if t == 0 || !need.iter().any(|&b| b) {
        return;
    }
    ACT.with(|cell| {
        let mut acts = cell.borrow_mut();
        for (slot, kind) in [(0, ActKind::B32), (1, ActKind::K256)] {
            if need[slot] {
                acts[slot].quantize_par(pool, x, Some((norm, eps)), t, k, kind);
            }
        }
        dispatch_quant(
            pool,
            best_qkernel(kern),
            best_pkernel(kern),
            &acts,
            t,
            k,
            mats,
        );
    });
}

/// Checks the shapes of a multi-matrix call; returns which activation layouts it needs.
fn check_multi(k: usize, mats: &[(WeightView<'_>, usize, &mut [f32])]) -> [bool; 2] {
    assert!(mats.len() <= MAX_MULTI, "at most {MAX_MULTI} matrices");
    let mut need = [false; 2];
    for (w, n, out) in mats {
        assert_eq!(w.len(), *n * k, "weight shape");
        assert_eq!(out.len() % n.max(&1), 0, "output shape");
        let qt = match w {
            WeightView::Quant(qt, _) => Some(*qt),
            WeightView::Packed(p, _) => Some(p.source()),
            _ => None,
        };
        if let Some(qt) = qt {
            assert!(
                qt.fits(k),
                "row length {k} is not a multiple of {}",
                qt.block_elems()
            );
            need[kind_slot(qt.act_kind())] = true;
        }
    }
    need
}

impl QJob<'_> {
    /// Writes `v` to output row `tt` at columns `j..j + v.len()`.
    ///
    /// # Safety
    /// The calling task owns those columns of every output row (tasks cover disjoint column
    /// ranges `j0..j1`, and callers only write inside their own).
    #[inline]
    unsafe fn put(&self, tt: usize, j: usize, v: &[f32]) {
        let at = tt * self.n + j;
        // SAFETY: disjointness is the caller's contract; `range` checks the bounds.
        unsafe { self.out.range(at, at + v.len()) }.copy_from_slice(v);
    }
}

/// Runs every quantized matrix of `mats` against the quantized activations in one dispatch.
fn dispatch_quant(
    pool: &ThreadPool,
    qk: QKernel,
    pk: PackedKernel,
    acts: &[ActQ8; 2],
    t: usize,
    k: usize,
    mats: &mut [(WeightView<'_>, usize, &mut [f32])],
) {
    let mut jobs: [Option<QJob<'_>>; MAX_MULTI] = Default::default();
    let mut n_tasks = 0;
    for (slot, (w, n, out)) in jobs.iter_mut().zip(mats.iter_mut()) {
        let (qt, packed, wb) = match *w {
            WeightView::Quant(qt, wb) => (qt, None, wb),
            WeightView::Packed(p, wb) => (p.source(), Some(p), wb),
            _ => continue,
        };
        assert_eq!(out.len(), t * *n, "output shape");
        if *n == 0 {
            continue;
        }
        // All multiples of the packed layouts' 8-row groups.
        let per_task = match (t, packed) {
            (1, _) => DEC_TASK_ROWS,
            (_, Some(_)) => PACKED_TASK_ROWS,
            (_, None) => 16,
        };
        let task0 = n_tasks;
        n_tasks += n.div_ceil(per_task);
        *slot = Some(QJob {
            qt,
            packed,
            w: wb,
            n: *n,
            out: DisjointSlice::new(out),
            per_task,
            task0,
        });
    }
    let jobs = &jobs;
    let run = |task: usize| {
        // The job whose task range holds `task`: the last one starting at or before it.
        let Some(job) = jobs.iter().flatten().take_while(|j| j.task0 <= task).last() else {
            return;
        };
        let act = &acts[kind_slot(job.qt.act_kind())];
        let j0 = (task - job.task0) * job.per_task;
        let j1 = (j0 + job.per_task).min(job.n);
        match job.packed {
            Some(p) => run_packed(pk, p, job, act, k, t, j0, j1),
            None => run_rows(qk, job, act, k, t, j0, j1),
        }
    };
    if t <= STREAM_ROWS {
        // Decode and batched decode (one pass over the weights from DRAM): each thread
        // streams one contiguous stretch of weight rows (the hardware prefetchers and the
        // kernels' software prefetch run ahead within it); small tasks let a thread that
        // finishes early take over the end of the other's stretch.
        pool.for_each_static(n_tasks, &run);
    } else {
        pool.for_each(n_tasks, &run);
    }
}

/// Up to this many activation rows a product is one pass over its weights from DRAM (see
/// [`run_packed`]), scheduled as contiguous stretches per thread.
const STREAM_ROWS: usize = 8;

/// Weight rows per task in the decode (one activation row) dispatch: a multiple of
/// [`DEC_RW`], small enough (~16 KiB of Q4_K) that the end of a loop balances within a
/// microsecond or two.
const DEC_TASK_ROWS: usize = 16;

/// Activation rows per packed micro-kernel call in the many-rows path. In cache (`pbench`
/// example) six rows run the Q4_K kernel at ~111 GMAC/s per core against ~96 with four (Q6_K
/// 81 against 75, Q8_0 62 against 60); the six rows' accumulators fill 12 of the 16 vector
/// registers.
const PACKED_RA: usize = 6;

/// Weight rows per task in the many-rows path: four 8-row groups (32 KiB of Q4_K at
/// k = 1792) pass under each step of activation rows.
const PACKED_TASK_ROWS: usize = 32;

/// Rows `j0..j1` (whole groups) of a packed job against all `t` activation rows.
///
/// The activation rows of one step (at most 8 × k bytes) stay in L1 while the task's few
/// groups pass under them; the groups stay in L1/L2 for the whole task. (Keeping a
/// 32-row activation tile in L2 and passing it under each group instead ran 15–25% slower on
/// one thread: every kernel call then read its activations from L2.)
#[allow(clippy::too_many_arguments)]
fn run_packed(
    pk: PackedKernel,
    layout: Packed,
    job: &QJob<'_>,
    act: &ActQ8,
    k: usize,
    t: usize,
    j0: usize,
    j1: usize,
) {
    let gb = layout.group_bytes(k);
    let mut tt = 0;
    while tt < t {
        // Up to 8 rows in one step, more in steps of six. The first step's kernels prefetch
        // the weight stream from DRAM; later steps find the task's groups in L1/L2, so the
        // weights are read from DRAM once however many steps there are. Q4_K splits 7 or 8
        // rows too with the AVX2 kernels: their 8-row Q4_K kernel runs out of the 16 vector
        // registers (`pbench`: ~23 GMAC/s per core against ~29 with six rows; the other
        // layouts run as fast with 8 as with 6). The VNNI kernels have 32 registers and run
        // Q4_K as fast with 8 rows as with 6, so 8 decode streams take one pass, whose
        // arithmetic overlaps the weight stream, instead of a memory-bound pass of two rows
        // and a compute-bound pass of six.
        let whole = layout != Packed::Q4Kx8 || pk.has_32_registers();
        let n = match t - tt {
            n @ 7..=8 if whole => n,
            n @ ..=6 => n,
            n @ 7..=11 => n - 6,
            _ => PACKED_RA,
        };
        let pf = tt == 0;
        tt += match n {
            8 => packed_step::<8>(pk, layout, job, act, gb, tt, j0, j1, pf),
            7 => packed_step::<7>(pk, layout, job, act, gb, tt, j0, j1, pf),
            6 => packed_step::<6>(pk, layout, job, act, gb, tt, j0, j1, pf),
            5 => packed_step::<5>(pk, layout, job, act, gb, tt, j0, j1, pf),
            4 => packed_step::<4>(pk, layout, job, act, gb, tt, j0, j1, pf),
            3 => packed_step::<3>(pk, layout, job, act, gb, tt, j0, j1, pf),
            2 => packed_step::<2>(pk, layout, job, act, gb, tt, j0, j1, pf),
            _ => packed_step::<1>(pk, layout, job, act, gb, tt, j0, j1, pf),
        };
    }
}

/// Activation rows `tt..tt + R` against the groups of rows `j0..j1`; returns `R`. `pf`: the
/// groups come from DRAM (see [`PackedKernel::group`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn packed_step<const R: usize>(
    pk: PackedKernel,
    layout: Packed,
    job: &QJob<'_>,
    act: &ActQ8,
    gb: usize,
    tt: usize,
    j0: usize,
    j1: usize,
    pf: bool,
) -> usize {
    let kind = job.qt.act_kind();
    let a: [_; R] = std::array::from_fn(|r| act.row(tt + r, kind));
    let grp = |j: usize| &job.w[j / packed::ROWS * gb..(j / packed::ROWS + 1) * gb];
    // Pairs only for groups already in cache: in a pass from DRAM (decode) the two groups'
    // streams ran 1-thread decode slower (`bench -p 0 -n 64 -t 1`: Q8_0 9.5–10.2 against
    // 11.6–12.0 t/s, Q4_K_M 10.8–11.5 against 15.3–16.3).
    let pairs = !pf && pk.prefers_pairs(layout);
    let mut j = j0;
    while j < j1 {
        if pairs && j + 2 * packed::ROWS <= j1 {
            let out = pk.groups::<2, R>(layout, [grp(j), grp(j + packed::ROWS)], &a, pf);
            for (g, o) in out.iter().enumerate() {
                for (r, v) in o.iter().enumerate() {
                    // SAFETY: the calling task owns columns j0..j1 of every output row, and
                    // j..j + 16 lies inside them (tasks cover whole groups).
                    unsafe { job.put(tt + r, j + g * packed::ROWS, v) };
                }
            }
            j += 2 * packed::ROWS;
        } else {
            for (r, v) in pk.group::<R>(layout, grp(j), &a, pf).iter().enumerate() {
                // SAFETY: as above, for j..j + 8.
                unsafe { job.put(tt + r, j, v) };
            }
            j += packed::ROWS;
        }
    }
    R
}

/// Weight rows side by side in the decode (one activation row) micro-kernel.
const DEC_RW: usize = 4;

/// Weight rows `j0..j1` of one job against all `t` activation rows.
fn run_rows(qk: QKernel, job: &QJob<'_>, act: &ActQ8, k: usize, t: usize, j0: usize, j1: usize) {
    let qt = job.qt;
    let kind = qt.act_kind();
    let rb = qt.row_bytes(k);
    let wrow = |j: usize| &job.w[j * rb..(j + 1) * rb];
    // SAFETY: the calling task owns columns j0..j1 of every output row, and every `j` passed
    // here lies inside them.
    let put = |tt: usize, j: usize, v: f32| unsafe { job.put(tt, j, &[v]) };
    if t == 1 {
        let a = [act.row(0, kind)];
        let mut j = j0;
        while j + DEC_RW <= j1 {
            let v = qk.dot_tile::<DEC_RW, 1>(qt, std::array::from_fn(|i| wrow(j + i)), &a);
            for (i, vi) in v.iter().enumerate() {
                put(0, j + i, vi[0]);
            }
            j += DEC_RW;
        }
        for j in j..j1 {
            put(0, j, qk.dot_tile::<1, 1>(qt, [wrow(j)], &a)[0][0]);
        }
        return;
    }
    // Tile shapes chosen by instruction counts (callgrind, t = 64, Mini shapes): Q8_0 2×4
    // 2.14 G vs 4×4 2.47 G vs 2×8 2.37 G; Q4_K 2×8 1.23 G vs 2×4 1.70 G vs 4×4 1.52 G.
    match qt.act_kind() {
        ActKind::B32 => prefill_rows::<2, 4>(qk, job, act, k, t, j0, j1),
        ActKind::K256 => prefill_rows::<2, 8>(qk, job, act, k, t, j0, j1),
    }
}

/// The many-activation-rows path: tiles of `RW` weight rows × `RA` activation rows, over
/// blocks of [`T_TILE`] activation rows that stay in L2 while the task's weight rows pass.
fn prefill_rows<const RW: usize, const RA: usize>(
    qk: QKernel,
    job: &QJob<'_>,
    act: &ActQ8,
    k: usize,
    t: usize,
    j0: usize,
    j1: usize,
) {
    let qt = job.qt;
    let kind = qt.act_kind();
    let rb = qt.row_bytes(k);
    let wrow = |j: usize| &job.w[j * rb..(j + 1) * rb];
    // SAFETY: the calling task owns columns j0..j1 of every output row, and every `j` passed
    // here lies inside them.
    let put = |tt: usize, j: usize, v: f32| unsafe { job.put(tt, j, &[v]) };
    for t0 in (0..t).step_by(T_TILE) {
        let t1 = (t0 + T_TILE).min(t);
        let mut j = j0;
        while j < j1 {
            let full_w = j + RW <= j1;
            let mut tt = t0;
            while tt < t1 {
                let full_a = tt + RA <= t1;
                match (full_w, full_a) {
                    (true, true) => {
                        let a: [_; RA] = std::array::from_fn(|r| act.row(tt + r, kind));
                        let v = qk.dot_tile::<RW, RA>(qt, std::array::from_fn(|i| wrow(j + i)), &a);
                        for (i, vi) in v.iter().enumerate() {
                            for (r, &x) in vi.iter().enumerate() {
                                put(tt + r, j + i, x);
                            }
                        }
                    }
                    (true, false) => {
                        let v = qk.dot_tile::<RW, 1>(
                            qt,
                            std::array::from_fn(|i| wrow(j + i)),
                            &[act.row(tt, kind)],
                        );
                        for (i, vi) in v.iter().enumerate() {
                            put(tt, j + i, vi[0]);
                        }
                    }
                    (false, true) => {
                        let a: [_; RA] = std::array::from_fn(|r| act.row(tt + r, kind));
                        let v = qk.dot_tile::<1, RA>(qt, [wrow(j)], &a);
                        for (r, &x) in v[0].iter().enumerate() {
                            put(tt + r, j, x);
                        }
                    }
                    (false, false) => put(
                        tt,
                        j,
                        qk.dot_tile::<1, 1>(qt, [wrow(j)], &[act.row(tt, kind)])[0][0],
                    ),
                }
                tt += if full_a { RA } else { 1 };
            }
            j += if full_w { RW } else { 1 };
        }
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matmul_matches_naive(t in 1usize..5, k in 1usize..70, n in 1usize..40, seed in 0u32..1000) {
            let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
            let mut rnd = || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; (s % 2001) as f32 / 1000.0 - 1.0 };
            let x: Vec<f32> = (0..t * k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let wb: Vec<u16> = w.iter().map(|&f| half::bf16::from_f32(f).to_bits()).collect();
            let pool = ThreadPool::new(2);
            for kern in DotKernel::available() {
                for view in [WeightView::F32(&w), WeightView::BF16(&wb)] {
                    let mut out = vec![0f32; t * n];
                    matmul(&pool, kern, &x, t, k, view, n, &mut out);
                    let mut row = vec![0f32; k];
                    for tt in 0..t {
                        for j in 0..n {
                            view.row_f32(j, k, &mut row);
                            let r: f32 = (0..k).map(|i| row[i] * x[tt * k + i]).sum();
                            prop_assert!((out[tt * n + j] - r).abs() < 1e-4 * (1.0 + r.abs()) * (k as f32).sqrt());
                        }
                    }
                }
            }
        }

        /// One dispatch over several matrices (mixed quantized types and a float one) gives
        /// exactly what separate `matmul` calls give.
        #[test]
        fn matmul_multi_equals_separate(t in 1usize..11, nb in 1usize..3, n0 in 0usize..37, n1 in 1usize..20, qa in 0usize..5, qb in 0usize..5, seed in 0u32..1000) {
            let k = nb * 256;
            let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
            let mut rnd = || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; (s % 2001) as f32 / 1000.0 - 1.0 };
            let x: Vec<f32> = (0..t * k).map(|_| rnd()).collect();
            let quantized = |qt: QuantType, n: usize, rnd: &mut dyn FnMut() -> f32| {
                let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
                let mut wq = vec![0u8; n * qt.row_bytes(k)];
                for j in 0..n {
                    crate::quant::quantize_row(qt, &wf[j * k..(j + 1) * k], &mut wq[j * qt.row_bytes(k)..(j + 1) * qt.row_bytes(k)]);
                }
                wq
            };
            let (ta, tb) = (QuantType::ALL[qa], QuantType::ALL[qb]);
            let wa = quantized(ta, n0, &mut rnd);
            let wb = quantized(tb, n1, &mut rnd);
            let wc = quantized(QuantType::Q6K, n1, &mut rnd);
            let wf: Vec<f32> = (0..n1 * k).map(|_| rnd()).collect();
            let views = [
                (WeightView::Quant(ta, &wa), n0),
                (WeightView::Quant(tb, &wb), n1),
                (WeightView::F32(&wf), n1),
                (WeightView::Quant(QuantType::Q6K, &wc), n1),
            ];
            let pool = ThreadPool::new(2);
            for kern in DotKernel::available() {
                let want: Vec<Vec<f32>> = views.iter().map(|&(w, n)| {
                    let mut o = vec![0f32; t * n];
                    matmul(&pool, kern, &x, t, k, w, n, &mut o);
                    o
                }).collect();
                let mut outs: Vec<Vec<f32>> = views.iter().map(|&(_, n)| vec![f32::NAN; t * n]).collect();
                {
                    let mut mats: Vec<(WeightView<'_>, usize, &mut [f32])> = views.iter().zip(outs.iter_mut()).map(|(&(w, n), o)| (w, n, &mut o[..])).collect();
                    matmul_multi(&pool, kern, &x, t, k, &mut mats);
                }
                for (m, (got, want)) in outs.iter().zip(&want).enumerate() {
                    prop_assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(want) {
                        prop_assert!(g.to_bits() == w.to_bits(), "matrix {} {:?}: {} vs {}", m, kern, g, w);
                    }
                }
            }
        }

        /// The fused RMSNorm + quantize entry point equals rmsnorm then `matmul_multi`.
        #[test]
        fn matmul_multi_rmsnorm_equals_unfused(t in 1usize..6, nb in 1usize..3, n in 1usize..20, qi in 0usize..5, with_float in any::<bool>(), seed in 0u32..1000) {
            let k = nb * 256;
            let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
            let mut rnd = || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; (s % 2001) as f32 / 1000.0 - 1.0 };
            let x: Vec<f32> = (0..t * k).map(|_| 3.0 * rnd()).collect();
            let norm: Vec<f32> = (0..k).map(|_| rnd()).collect();
            let qt = QuantType::ALL[qi];
            let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let mut wq = vec![0u8; n * qt.row_bytes(k)];
            for j in 0..n {
                crate::quant::quantize_row(qt, &wf[j * k..(j + 1) * k], &mut wq[j * qt.row_bytes(k)..(j + 1) * qt.row_bytes(k)]);
            }
            let mut views = vec![(WeightView::Quant(qt, &wq), n), (WeightView::Quant(QuantType::Q4K, &wq[..0]), 0)];
            if with_float {
                views.push((WeightView::F32(&wf), n));
            }
            let pool = ThreadPool::new(2);
            let mut normed = vec![0f32; t * k];
            for r in 0..t {
                crate::ops::rmsnorm(&x[r * k..(r + 1) * k], &norm, 1e-5, &mut normed[r * k..(r + 1) * k]);
            }
            for kern in DotKernel::available() {
                let mut want: Vec<Vec<f32>> = views.iter().map(|&(_, n)| vec![0f32; t * n]).collect();
                let mut got = want.clone();
                {
                    let mut mats: Vec<(WeightView<'_>, usize, &mut [f32])> = views.iter().zip(want.iter_mut()).map(|(&(w, n), o)| (w, n, &mut o[..])).collect();
                    matmul_multi(&pool, kern, &normed, t, k, &mut mats);
                    let mut mats: Vec<(WeightView<'_>, usize, &mut [f32])> = views.iter().zip(got.iter_mut()).map(|(&(w, n), o)| (w, n, &mut o[..])).collect();
                    matmul_multi_rmsnorm(&pool, kern, &x, &norm, 1e-5, t, k, &mut mats);
                }
                for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                    prop_assert!(g.to_bits() == w.to_bits(), "{:?} {:?}: {} vs {}", qt, kern, g, w);
                }
            }
        }

        /// Repacked Q4_K/Q6_K/Q8_0/Q4_0 weights give the products of the GGUF rows (up to float summation
        /// order), the same values from every kernel, and the same dequantized rows.
        #[test]
        fn packed_matmul_matches_rows(qi in 0usize..5, groups in 1usize..5, nb in 1usize..4, t in 1usize..12, seed in 0u32..1000) {
            let qt = QuantType::ALL[qi];
            prop_assume!(qt != QuantType::Q5K);
            let (n, k) = (groups * packed::ROWS, nb * 256);
            let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
            let mut rnd = || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; (s % 2001) as f32 / 1000.0 - 1.0 };
            let x: Vec<f32> = (0..t * k).map(|_| rnd()).collect();
            let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let rb = qt.row_bytes(k);
            let mut wq = vec![0u8; n * rb];
            for j in 0..n {
                crate::quant::quantize_row(qt, &wf[j * k..(j + 1) * k], &mut wq[j * rb..(j + 1) * rb]);
            }
            let layout = Packed::for_weights(qt, n, k).expect("packable");
            let mut wp = vec![0u8; layout.bytes(n, k)];
            packed::pack(layout, &wq, n, k, &mut wp);
            let (rows, pk) = (WeightView::Quant(qt, &wq), WeightView::Packed(layout, &wp));
            prop_assert_eq!(pk.len(), n * k);
            let (mut ra, mut rp) = (vec![0f32; k], vec![0f32; k]);
            for j in 0..n {
                rows.row_f32(j, k, &mut ra);
                pk.row_f32(j, k, &mut rp);
                prop_assert!(ra.iter().zip(&rp).all(|(a, b)| a.to_bits() == b.to_bits()));
            }
            let pool = ThreadPool::new(2);
            let mut first: Option<Vec<f32>> = None;
            for kern in DotKernel::available() {
                let mut want = vec![0f32; t * n];
                matmul(&pool, kern, &x, t, k, rows, n, &mut want);
                let mut got = vec![f32::NAN; t * n];
                matmul(&pool, kern, &x, t, k, pk, n, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{:?}: {} vs {}", kern, g, w);
                }
                match &first {
                    None => first = Some(got),
                    Some(f) => prop_assert!(f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{:?} differs from scalar", kern),
                }
            }
        }

        #[test]
        fn quant_matmul_matches_dequantized(qi in 0usize..5, t in 1usize..40, nb in 1usize..3, n in 1usize..20, seed in 0u32..1000) {
            let qt = QuantType::ALL[qi];
            let k = nb * qt.block_elems();
            let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
            let mut rnd = || { s ^= s << 13; s ^= s >> 17; s ^= s << 5; (s % 2001) as f32 / 1000.0 - 1.0 };
            let x: Vec<f32> = (0..t * k).map(|_| rnd()).collect();
            let wf: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let mut wq = vec![0u8; n * qt.row_bytes(k)];
            for j in 0..n {
                crate::quant::quantize_row(qt, &wf[j * k..(j + 1) * k], &mut wq[j * qt.row_bytes(k)..(j + 1) * qt.row_bytes(k)]);
            }
            let view = WeightView::Quant(qt, &wq);
            prop_assert_eq!(view.len(), n * k);
            let pool = ThreadPool::new(2);
            for kern in DotKernel::available() {
                let mut out = vec![0f32; t * n];
                matmul(&pool, kern, &x, t, k, view, n, &mut out);
                let mut row = vec![0f32; k];
                for tt in 0..t {
                    let xr = &x[tt * k..(tt + 1) * k];
                    let xn = xr.iter().map(|v| v * v).sum::<f32>().sqrt();
                    for j in 0..n {
                        view.row_f32(j, k, &mut row);
                        let r: f32 = (0..k).map(|i| row[i] * xr[i]).sum();
                        let wn = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                        // 8-bit activations: error ≲ |w|·|x|/127 per row.
                        prop_assert!((out[tt * n + j] - r).abs() <= 0.02 * wn * xn + 1e-5, "{:?} {:?}", qt, kern);
                    }
                }
            }
        }
    }
}
