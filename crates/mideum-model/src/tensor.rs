//! Tensors as they sit in a checkpoint: a name, a shape, an element type and bytes that are
//! either a range of a memory-mapped file (the normal case) or a small owned buffer.

use crate::error::{ModelError, Result};
use memmap2::Mmap;
use mideum_kernels::packed::Packed;
use mideum_kernels::quant::{quantize_row, QuantType};
use mideum_kernels::WeightView;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    /// GGML blocks (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K), rows of whole blocks.
    Quant(QuantType),
}

impl DType {
    /// Bytes per element; for block-quantized types, bytes per block (see [`DType::nbytes`]).
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Quant(q) => q.block_bytes(),
        }
    }

    /// Bytes of `numel` elements (`numel` a multiple of the block size for quantized types).
    pub fn nbytes(self, numel: usize) -> usize {
        match self {
            DType::Quant(q) => numel / q.block_elems() * q.block_bytes(),
            d => numel * d.size(),
        }
    }

    /// Alignment the kernels need for mapped data (quantized blocks are read unaligned).
    pub fn align(self) -> usize {
        match self {
            DType::Quant(_) => 1,
            d => d.size(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Quant(q) => q.name(),
        }
    }
}

/// A read-only memory map of a checkpoint file.
pub struct MappedFile {
    map: Mmap,
}

impl MappedFile {
    pub fn open(path: &Path) -> Result<Arc<MappedFile>> {
        let file = std::fs::File::open(path).map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        // SAFETY: the map is read-only. Mideum never writes to checkpoint files; another process
        // truncating the file while it is mapped would fault, a risk every mmap-based loader
        // (llama.cpp, safetensors) accepts in exchange for not copying gigabytes.
        let map = unsafe { Mmap::map(&file) }.map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(Arc::new(MappedFile { map }))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Drops this process's resident pages of `start..end` (they are re-read from the file
    /// if touched again): used after copying a tensor elsewhere, so RSS counts it once.
    fn release(&self, start: usize, end: usize) {
        let page = 4096;
        let (a, b) = (start.div_ceil(page) * page, end / page * page);
        if b > a {
            // SAFETY: MADV_DONTNEED on a private read-only file mapping only discards our page
            // table entries; later reads fault the same file contents back in, so no data that
            // any reference points to changes.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, b - a)
            };
        }
    }
}

/// Anonymous memory holding quantized weights copied out of the file map, backed by
/// transparent huge pages where the kernel allows it (fewer TLB misses while decode streams
/// every weight once per token).
pub struct Arena {
    map: memmap2::MmapMut,
}

#[derive(Clone)]
enum Storage {
    Mapped {
        file: Arc<MappedFile>,
        start: usize,
        end: usize,
    },
    OwnedF32(Arc<Vec<f32>>),
    OwnedU16(Arc<Vec<u16>>),
    OwnedBytes(Arc<Vec<u8>>),
    Arena {
        arena: Arc<Arena>,
        start: usize,
        end: usize,
        /// The interleaved layout the bytes are in, if they are not in GGUF row order.
        packed: Option<Packed>,
    },
}

#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    /// Outermost dimension first, as in PyTorch (`[out_features, in_features]` for a linear weight).
    pub shape: Vec<usize>,
    storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({} {:?} {})",
            self.name,
            self.shape,
            self.dtype.name()
        )
    }
}

impl Tensor {
    /// A tensor over `file[start..end]`; `end - start` must equal the element count times the
    /// dtype size (checked by the format parsers). Misaligned data is copied into an aligned
    /// buffer, since the kernels read whole elements.
    pub fn mapped(
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        file: Arc<MappedFile>,
        start: usize,
        end: usize,
    ) -> Tensor {
        let bytes = &file.bytes()[start..end];
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(dtype.align());
        let storage = if aligned {
            Storage::Mapped { file, start, end }
        } else {
            match dtype {
                DType::F32 => Storage::OwnedF32(Arc::new(
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )),
                DType::F16 | DType::BF16 => Storage::OwnedU16(Arc::new(
                    bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                )),
                DType::Quant(_) => Storage::OwnedBytes(Arc::new(bytes.to_vec())),
            }
        };
        Tensor {
            name: name.to_string(),
            dtype,
            shape,
            storage,
        }
    }

    pub fn owned_f32(name: &str, shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor {
            name: name.to_string(),
            dtype: DType::F32,
            shape,
            storage: Storage::OwnedF32(Arc::new(data)),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of the stored data.
    pub fn nbytes(&self) -> usize {
        self.dtype.nbytes(self.numel())
    }

    /// The stored bytes exactly as a GGUF/safetensors file holds them (little-endian).
    pub fn raw_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        use std::borrow::Cow;
        match &self.storage {
            Storage::Mapped { file, start, end } => Cow::Borrowed(&file.bytes()[*start..*end]),
            Storage::OwnedBytes(v) => Cow::Borrowed(v),
            Storage::Arena {
                arena,
                start,
                end,
                packed: None,
            } => Cow::Borrowed(&arena.map[*start..*end]),
            Storage::Arena {
                arena,
                start,
                end,
                packed: Some(p),
            } => {
                let (n, k) = (self.shape[0], self.shape[1]);
                let rb = p.source().row_bytes(k);
                let mut out = vec![0u8; n * rb];
                for (r, row) in out.chunks_exact_mut(rb).enumerate() {
                    mideum_kernels::packed::unpack_row(*p, &arena.map[*start..*end], k, r, row);
                }
                Cow::Owned(out)
            }
            Storage::OwnedF32(v) => Cow::Owned(v.iter().flat_map(|f| f.to_le_bytes()).collect()),
            Storage::OwnedU16(v) => Cow::Owned(v.iter().flat_map(|f| f.to_le_bytes()).collect()),
        }
    }

    /// A quantized tensor from raw GGML blocks (`data.len()` must match the shape).
    pub fn owned_quant(
        name: &str,
        qt: QuantType,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) -> Result<Tensor> {
        let numel: usize = shape.iter().product();
        let inner = shape.last().copied().unwrap_or(0);
        if !qt.fits(inner) || DType::Quant(qt).nbytes(numel) != data.len() {
            return Err(ModelError::tensor(
                name,
                format!(
                    "{} data of {} bytes does not fit shape {shape:?}",
                    qt.name(),
                    data.len()
                ),
            ));
        }
        Ok(Tensor {
            name: name.to_string(),
            dtype: DType::Quant(qt),
            shape,
            storage: Storage::OwnedBytes(Arc::new(data)),
        })
    }

    /// This tensor's rows quantized to `qt` (a 2-D tensor whose rows are whole blocks).
    pub fn quantize(&self, qt: QuantType) -> Result<Tensor> {
        let (n, k) = match self.shape[..] {
            [n, k] => (n, k),
            _ => {
                return Err(ModelError::tensor(
                    &self.name,
                    "only matrices can be quantized",
                ))
            }
        };
        if !qt.fits(k) {
            return Err(ModelError::tensor(
                &self.name,
                format!(
                    "rows of {k} elements are not a multiple of {}'s block of {}",
                    qt.name(),
                    qt.block_elems()
                ),
            ));
        }
        let rb = qt.row_bytes(k);
        let mut data = vec![0u8; n * rb];
        let mut row = vec![0f32; k];
        let view = self.view();
        for (j, dst) in data.chunks_exact_mut(rb).enumerate() {
            view.row_f32(j, k, &mut row);
            quantize_row(qt, &row, dst);
        }
        Tensor::owned_quant(&self.name, qt, self.shape.clone(), data)
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self.storage, Storage::Mapped { .. })
    }

    /// The elements as the kernels want them.
    pub fn view(&self) -> WeightView<'_> {
        match &self.storage {
            Storage::OwnedF32(v) => WeightView::F32(v),
            Storage::OwnedU16(v) => match self.dtype {
                DType::BF16 => WeightView::BF16(v),
                _ => WeightView::F16(v),
            },
            Storage::Arena {
                arena,
                start,
                end,
                packed,
            } => match (self.dtype, packed) {
                (_, Some(p)) => WeightView::Packed(*p, &arena.map[*start..*end]),
                (DType::Quant(q), None) => WeightView::Quant(q, &arena.map[*start..*end]),
                _ => WeightView::Quant(QuantType::Q8_0, &[]),
            },
            Storage::OwnedBytes(v) => match self.dtype {
                DType::Quant(q) => WeightView::Quant(q, v),
                // Owned bytes are only ever created for quantized tensors.
                _ => WeightView::Quant(QuantType::Q8_0, &[]),
            },
            Storage::Mapped { file, start, end } => {
                let bytes = &file.bytes()[*start..*end];
                match self.dtype {
                    DType::F32 => WeightView::F32(cast_f32(bytes)),
                    DType::BF16 => WeightView::BF16(cast_u16(bytes)),
                    DType::F16 => WeightView::F16(cast_u16(bytes)),
                    DType::Quant(q) => WeightView::Quant(q, bytes),
                }
            }
        }
    }

    /// All elements widened to f32 (used for small tensors such as norm weights).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let n = self.numel();
        let mut out = vec![0f32; n];
        if n > 0 {
            self.view().row_f32(0, n, &mut out);
        }
        out
    }

    pub(crate) fn expect_shape(&self, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(ModelError::tensor(
                &self.name,
                format!("expected shape {:?}, found {:?}", shape, self.shape),
            ));
        }
        Ok(())
    }
}

fn cast_f32(bytes: &[u8]) -> &[f32] {
    // SAFETY: any 4-byte pattern is a valid f32; `Tensor::mapped` only keeps mapped storage when
    // the start is 4-byte aligned and the length is a multiple of 4, so prefix and suffix are empty.
    let (pre, mid, post) = unsafe { bytes.align_to::<f32>() };
    assert!(
        pre.is_empty() && post.is_empty(),
        "tensor storage misaligned"
    );
    mid
}

fn cast_u16(bytes: &[u8]) -> &[u16] {
    // SAFETY: as in `cast_f32`, for 2-byte elements.
    let (pre, mid, post) = unsafe { bytes.align_to::<u16>() };
    assert!(
        pre.is_empty() && post.is_empty(),
        "tensor storage misaligned"
    );
    mid
}

/// Whether a checkpoint tensor is a weight matrix that load-time quantization converts
/// (every 2-D `.weight`; norms and RoPE factors are 1-D and stay as they are).
pub fn is_quantizable(t: &Tensor) -> bool {
    t.shape.len() == 2 && t.name.ends_with(".weight") && !matches!(t.dtype, DType::Quant(_))
}

/// Quantizes every weight matrix of a checkpoint to `qt` in place, on `threads` threads.
/// Matrices whose rows are not whole blocks of `qt` fall back to Q8_0 (32-element blocks) and
/// stay as they are if even that does not fit.
pub fn quantize_all(
    tensors: &mut std::collections::HashMap<String, Tensor>,
    qt: QuantType,
    threads: usize,
) -> Result<()> {
    let mut names: Vec<String> = tensors
        .iter()
        .filter(|(_, t)| is_quantizable(t))
        .map(|(n, _)| n.clone())
        .collect();
    names.sort();
    let jobs: Vec<(String, QuantType)> = names
        .into_iter()
        .filter_map(|n| {
            let k = tensors[&n].shape[1];
            let q = if qt.fits(k) {
                qt
            } else if QuantType::Q8_0.fits(k) {
                QuantType::Q8_0
            } else {
                return None;
            };
            Some((n, q))
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let src = &*tensors;
    let results: Vec<Result<Vec<(String, Tensor)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((name, q)) = jobs.get(i) else { break };
                        done.push((name.clone(), src[name].quantize(*q)?));
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ModelError::Input("quantization thread panicked".into()))
                })
            })
            .collect()
    });
    for r in results {
        for (name, t) in r? {
            tensors.insert(name, t);
        }
    }
    Ok(())
}

/// One piece of [`move_to_arena`]'s work: rows `rows` of `t` into `dst`.
struct Job<'a> {
    t: &'a Tensor,
    layout: Option<Packed>,
    rows: std::ops::Range<usize>,
    dst: &'a mut [u8],
}

/// Whether quantized weights are repacked at load into the kernels' interleaved layouts
/// (default on; `MIDEUM_REPACK=0` keeps GGUF row order, e.g. to compare kernels).
pub fn repack_enabled() -> bool {
    std::env::var("MIDEUM_REPACK").map_or(true, |v| v != "0")
}

/// Returns the free pages inside the heap to the OS (glibc's `malloc_trim`; elsewhere a no-op).
/// Freed memory that is not at the top of the heap otherwise stays resident: after a GGUF load
/// that was ~17 MB of a Mi:dm Mini process's RSS.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases memory the allocator holds as free; it takes no
    // pointers and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Moves the quantized weight matrices (memory-mapped or quantized at load) into one
/// anonymous arena backed by transparent huge pages where the kernel allows it (fewer TLB
/// misses while decode streams every weight once per token), repacking each matrix into the
/// kernels' interleaved layout when `repack` is set and one exists for its type and shape
/// ([`mideum_kernels::packed`]), on `threads` threads. File pages are released as they are
/// copied, so resident memory stays about the file size (every packed layout takes exactly the
/// bytes of its rows).
pub fn move_to_arena(
    tensors: &mut std::collections::HashMap<String, Tensor>,
    repack: bool,
    threads: usize,
) -> Result<()> {
    let layout_of = |t: &Tensor| match (t.dtype, t.shape.as_slice()) {
        (DType::Quant(q), &[n, k]) if repack => Packed::for_weights(q, n, k),
        _ => None,
    };
    let mut names: Vec<String> = tensors
        .iter()
        .filter(|(_, t)| {
            matches!(t.dtype, DType::Quant(_))
                && matches!(t.storage, Storage::Mapped { .. } | Storage::OwnedBytes(_))
        })
        .map(|(n, _)| n.clone())
        .collect();
    names.sort();
    let size = |t: &Tensor| match layout_of(t) {
        Some(p) => p.bytes(t.shape[0], t.shape[1]),
        None => t.nbytes(),
    };
    let total: usize = names
        .iter()
        .map(|n| size(&tensors[n]).div_ceil(64) * 64)
        .sum();
    if total == 0 {
        return Ok(());
    }
    let io = |error| ModelError::Io {
        path: "anonymous memory".into(),
        error,
    };
    let mut map = memmap2::MmapOptions::new()
        .len(total)
        .map_anon()
        .map_err(io)?;
    let _ = map.advise(memmap2::Advice::HugePage);
    // Carve the arena into one destination per tensor, then copy/pack them on `threads`
    // threads, largest first to the least-loaded thread.
    // Big matrices (the 131k-row embedding) are split into pieces of whole row groups so that
    // every thread gets a share.
    const PIECE: usize = 16 << 20;
    let mut places = Vec::with_capacity(names.len());
    let mut jobs: Vec<Job<'_>> = Vec::with_capacity(names.len());
    let mut rest: &mut [u8] = &mut map[..];
    let mut at = 0;
    for n in &names {
        let t = &tensors[n];
        let layout = layout_of(t);
        let len = size(t);
        let padded = len.div_ceil(64) * 64;
        let (dst, tail) = rest.split_at_mut(padded);
        rest = tail;
        let mut dst = &mut dst[..len];
        match layout {
            Some(p) => {
                let (n_rows, k) = (t.shape[0], t.shape[1]);
                let gb = p.group_bytes(k);
                let groups_per = (PIECE / gb.max(1)).max(1);
                let mut g0 = 0;
                while g0 * mideum_kernels::packed::ROWS < n_rows {
                    let g1 = (g0 + groups_per).min(n_rows / mideum_kernels::packed::ROWS);
                    let (d, tail) = dst.split_at_mut((g1 - g0) * gb);
                    dst = tail;
                    jobs.push(Job {
                        t,
                        layout,
                        rows: g0 * mideum_kernels::packed::ROWS..g1 * mideum_kernels::packed::ROWS,
                        dst: d,
                    });
                    g0 = g1;
                }
            }
            None => jobs.push(Job {
                t,
                layout,
                rows: 0..t.shape.first().copied().unwrap_or(0),
                dst,
            }),
        }
        places.push((n.clone(), at, at + len, layout));
        at += padded;
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.dst.len()));
    let threads = threads.max(1);
    let mut lanes: Vec<(usize, Vec<Job<'_>>)> = (0..threads).map(|_| (0, Vec::new())).collect();
    for job in jobs {
        if let Some(lane) = lanes.iter_mut().min_by_key(|(load, _)| *load) {
            lane.0 += job.dst.len();
            lane.1.push(job);
        }
    }
    let results: Vec<Result<()>> = std::thread::scope(|sc| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|(_, lane)| {
                sc.spawn(move || -> Result<()> {
                    for Job {
                        t,
                        layout,
                        rows,
                        dst,
                    } in lane
                    {
                        let src = t.raw_bytes();
                        if src.len() != t.nbytes() {
                            return Err(ModelError::tensor(
                                &t.name,
                                "stored size does not match its shape",
                            ));
                        }
                        // The file bytes this piece read (pages wholly inside are released;
                        // release rounds inward, so neighbouring pieces are not affected).
                        let (from, to) = match layout {
                            Some(p) => {
                                let rb = p.source().row_bytes(t.shape[1]);
                                let (from, to) = (rows.start * rb, rows.end * rb);
                                let part = &src[from..to];
                                mideum_kernels::packed::pack(p, part, rows.len(), t.shape[1], dst);
                                (from, to)
                            }
                            None => {
                                dst.copy_from_slice(&src);
                                (0, src.len())
                            }
                        };
                        drop(src);
                        if let Storage::Mapped { file, start, .. } = &t.storage {
                            file.release(start + from, start + to);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ModelError::Input("weight repacking thread panicked".into()))
                })
            })
            .collect()
    });
    for r in results {
        r?;
    }
    // Pages straddling two pieces are released now that both are done.
    for n in &names {
        if let Storage::Mapped { file, start, end } = &tensors[n].storage {
            file.release(*start, *end);
        }
    }
    let arena = Arc::new(Arena { map });
    for (n, start, end, packed) in places {
        if let Some(t) = tensors.get_mut(&n) {
            t.storage = Storage::Arena {
                arena: arena.clone(),
                start,
                end,
                packed,
            };
        }
    }
    Ok(())
}
