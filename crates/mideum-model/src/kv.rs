//! The KV cache in fixed-size blocks, shared by all sequences under one memory budget, with
//! automatic prefix caching: every full block is registered under a hash of the whole token
//! prefix it completes, so a later request starting with the same tokens (Mi:dm's long system
//! prompt, a shared document, earlier turns of a chat) reuses those blocks instead of
//! recomputing them. Unreferenced cached blocks are evicted least-recently-used first.
//!
//! Only full blocks are ever shared, and a sequence only writes into its last, partial block,
//! so shared blocks are read-only without copy-on-write. A prompt that shares only the first
//! `m < BLOCK_TOKENS` tokens of a cached block (a system prompt that ends mid-block, followed
//! by another conversation's tokens) gets a private copy of that block and counts those `m`
//! positions as reused; the copy is registered only once its owner fills it.
//!
//! Keys and values are stored as f16 by default (half the bytes of f32: decode at depth reads
//! half as much, and a memory budget holds twice the tokens); f32 stays selectable. Inside a
//! block, each (layer, K or V, KV head) owns `BLOCK_TOKENS × head_dim` contiguous elements, so
//! attention streams one head's rows without striding over the others.
//!
//! `KvType::Q8` stores llama.cpp's q8_0 instead: each head row in groups of 32 int8 values
//! with one f16 scale (34 bytes per 32 values, 53% of f16), quantized as it is written.
//! The values of a (layer, K or V, head) are contiguous as above, and their scales (one per
//! row and group) are contiguous in a second, parallel array of the block.

use crate::error::{ModelError, Result};
use mideum_kernels::attn::{quantize_q8, KvRows, Q8_GROUP};
use std::collections::{BTreeMap, HashMap};

mod persist;
pub(crate) use persist::fingerprint;

/// Positions per block.
pub const BLOCK_TOKENS: usize = 16;

pub type BlockId = u32;

/// Identifies a full block by everything before it and its own tokens.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct PrefixKey {
    parent: u64,
    tokens: [u32; BLOCK_TOKENS],
}

fn chain_hash(parent: u64, tokens: &[u32]) -> u64 {
    // FNV-1a over the parent hash and the token ids: deterministic across runs, and the key
    // also stores the block's own tokens, so a collision needs two equal 64-bit prefix hashes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ parent.rotate_left(17);
    for &t in tokens {
        for b in t.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    h
}

/// Per-sequence view of the cache: the block table and the tokens stored so far.
#[derive(Default, Debug)]
pub struct SeqKv {
    blocks: Vec<BlockId>,
    tokens: Vec<u32>,
    /// Chain hash after each full block.
    chain: Vec<u64>,
}

impl SeqKv {
    /// An empty sequence with room for `tokens` positions, so that growing to that length
    /// never reallocates its tables.
    pub fn with_capacity(tokens: usize) -> SeqKv {
        SeqKv {
            blocks: Vec::with_capacity(tokens.div_ceil(BLOCK_TOKENS)),
            tokens: Vec::with_capacity(tokens),
            chain: Vec::with_capacity(tokens / BLOCK_TOKENS),
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub(crate) fn block_of(&self, pos: usize) -> BlockId {
        self.blocks[pos / BLOCK_TOKENS]
    }

    /// The block table: block `i` holds positions `i * BLOCK_TOKENS..`. Two sequences that
    /// hold the same block id share those positions (only full, registered blocks are shared;
    /// a partial match is copied).
    pub(crate) fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    pub blocks_total: usize,
    pub blocks_in_use: usize,
    pub blocks_cached: usize,
    pub prefix_lookup_tokens: u64,
    /// Prompt positions taken from the cache instead of computed (full and partial blocks).
    pub prefix_hit_tokens: u64,
    /// The part of `prefix_hit_tokens` that came from copying the first positions of a block.
    pub prefix_partial_hit_tokens: u64,
}

/// The element type of the KV cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// IEEE half precision (the default).
    #[default]
    F16,
    F32,
    /// llama.cpp's q8_0: int8 values, one f16 scale per 32 values of a head row.
    Q8,
}

impl KvType {
    pub fn parse(s: &str) -> Option<KvType> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Some(KvType::F16),
            "f32" => Some(KvType::F32),
            "q8_0" | "q8" => Some(KvType::Q8),
            _ => None,
        }
    }

    /// Every accepted `--kv-type` name, for error messages.
    pub const NAMES: &'static str = "f16, f32, q8_0";

    /// Bytes of one head row of `head_dim` keys (or values), scales included.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvType::F16 => 2 * head_dim,
            KvType::F32 => 4 * head_dim,
            KvType::Q8 => head_dim + 2 * head_dim.div_ceil(Q8_GROUP),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
            KvType::Q8 => "q8_0",
        }
    }
}

/// Element types of the block storage: plain numbers, valid for every bit pattern (zero
/// included), so that fresh anonymous memory is a valid block of them.
trait Elem: Copy + 'static {}
impl Elem for f32 {}
impl Elem for u16 {}
impl Elem for i8 {}

/// Target size of one storage chunk (rounded down to a power of two of blocks, at least one).
const CHUNK_BYTES: usize = 32 << 20;

/// Blocks of `block_len` elements, reserved a chunk of `1 << shift` blocks at a time in
/// anonymous memory. The kernel commits the pages of a chunk as blocks are first written, so
/// the memory in use follows the blocks in use (to within a huge page at the end of the last
/// block written).
///
/// The chunks are advised for transparent huge pages. Decode reads one `BLOCK_TOKENS ×
/// head_dim` run of every block per (layer, K or V, KV head), 4 KiB each for Mi:dm Mini's f16
/// cache: with 4 KiB pages, 196,608 pages per token at 4,096 positions, far more than the TLB
/// holds, against ~400 huge pages. Measured on a 2-core Zen 3 VM (`bench -p 0 -n 32 -d 4096
/// --depth-fill synthetic -t 2`, four interleaved pairs against one 4 KiB-paged allocation
/// per block): 5.47 against 5.21 tok/s (medians; per-pair ratios 0.99–1.18).
struct Blocks<T: Elem> {
    chunks: Vec<memmap2::MmapMut>,
    block_len: usize,
    /// Blocks per chunk: `1 << shift`, so that finding a block (twice per block and head in
    /// every attention call) takes a shift and a mask, not two divisions.
    shift: u32,
    len: usize,
    _elem: std::marker::PhantomData<T>,
}

impl<T: Elem> Blocks<T> {
    /// Storage for blocks of `block_len` elements, at most `max_blocks` of them.
    fn new(block_len: usize, max_blocks: usize) -> Blocks<T> {
        let block_bytes = (block_len * std::mem::size_of::<T>()).max(1);
        // The largest power of two of blocks within CHUNK_BYTES, and no more than the pool
        // can use (rounded up to a power of two: unused address space is never committed).
        let fit = (CHUNK_BYTES / block_bytes).max(1).ilog2();
        let need = max_blocks.max(1).next_power_of_two().ilog2();
        Blocks {
            chunks: Vec::new(),
            block_len,
            shift: fit.min(need),
            len: 0,
            _elem: std::marker::PhantomData,
        }
    }

    fn per_chunk(&self) -> usize {
        1 << self.shift
    }

    /// Chunk and element offset of block `b`.
    #[inline]
    fn place(&self, b: usize) -> (usize, usize) {
        (
            b >> self.shift,
            (b & (self.per_chunk() - 1)) * self.block_len,
        )
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Maps the chunk the next block needs, if it is not mapped yet.
    fn reserve(&mut self) -> Result<()> {
        if self.len < self.chunks.len() * self.per_chunk() {
            return Ok(());
        }
        let bytes = (self.per_chunk() * self.block_len * std::mem::size_of::<T>()).max(1);
        let map = memmap2::MmapOptions::new()
            .len(bytes)
            .map_anon()
            .map_err(|error| ModelError::Io {
                path: "anonymous memory (KV cache)".into(),
                error,
            })?;
        // Only advice: without huge pages the cache works the same, with more page walks.
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::HugePage);
        self.chunks.push(map);
        Ok(())
    }

    /// Adds a zeroed block; after a successful [`Blocks::reserve`] it cannot fail.
    fn push(&mut self) -> Result<()> {
        self.reserve()?;
        self.len += 1;
        Ok(())
    }

    /// The elements of chunk `c`.
    fn chunk(&self, c: usize) -> &[T] {
        let m = &self.chunks[c];
        // SAFETY: an anonymous map is page-aligned (so aligned for `T`) and zero-filled, is
        // `per_chunk() · block_len · size_of::<T>()` bytes long (or 1 byte when that is 0, giving
        // an empty slice), and every bit pattern is a valid `T` (`Elem`); the slice borrows the
        // map, which lives as long as `self`.
        unsafe {
            std::slice::from_raw_parts(m.as_ptr().cast::<T>(), m.len() / std::mem::size_of::<T>())
        }
    }

    /// The elements of chunk `c`, writable.
    fn chunk_mut(m: &mut memmap2::MmapMut) -> &mut [T] {
        let n = m.len() / std::mem::size_of::<T>();
        // SAFETY: as in `chunk`; the map is borrowed mutably for the slice's lifetime.
        unsafe { std::slice::from_raw_parts_mut(m.as_mut_ptr().cast::<T>(), n) }
    }

    /// Copies block `from` over block `to`.
    fn copy(&mut self, from: usize, to: usize) {
        assert!(from < self.len && to < self.len, "block out of range");
        if from == to {
            return;
        }
        let bl = self.block_len;
        let ((cf, of), (ct, ot)) = (self.place(from), self.place(to));
        if cf == ct {
            Self::chunk_mut(&mut self.chunks[cf]).copy_within(of..of + bl, ot);
            return;
        }
        let (lo, hi) = self.chunks.split_at_mut(cf.max(ct));
        let (a, b) = (
            Self::chunk_mut(&mut lo[cf.min(ct)]),
            Self::chunk_mut(&mut hi[0]),
        );
        if cf < ct {
            b[ot..ot + bl].copy_from_slice(&a[of..of + bl]);
        } else {
            a[ot..ot + bl].copy_from_slice(&b[of..of + bl]);
        }
    }
}

impl<T: Elem> std::ops::Index<usize> for Blocks<T> {
    type Output = [T];

    fn index(&self, b: usize) -> &[T] {
        assert!(b < self.len, "block out of range");
        let (c, at) = self.place(b);
        &self.chunk(c)[at..at + self.block_len]
    }
}

impl<T: Elem> std::ops::IndexMut<usize> for Blocks<T> {
    fn index_mut(&mut self, b: usize) -> &mut [T] {
        assert!(b < self.len, "block out of range");
        let ((c, at), bl) = (self.place(b), self.block_len);
        &mut Self::chunk_mut(&mut self.chunks[c])[at..at + bl]
    }
}

enum Storage {
    F32(Blocks<f32>),
    F16(Blocks<u16>),
    /// Per block: the int8 values (laid out as f16/f32 elements are) and the f16 scales.
    Q8(Blocks<i8>, Blocks<u16>),
}

impl Storage {
    fn new(kv_type: KvType, elems: usize, scales: usize, max_blocks: usize) -> Storage {
        match kv_type {
            KvType::F16 => Storage::F16(Blocks::new(elems, max_blocks)),
            KvType::F32 => Storage::F32(Blocks::new(elems, max_blocks)),
            KvType::Q8 => Storage::Q8(
                Blocks::new(elems, max_blocks),
                Blocks::new(scales, max_blocks),
            ),
        }
    }

    fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::Q8(v, _) => v.len(),
        }
    }

    /// Elements of one block and q8 scales of one block (0 without scales).
    fn block_lens(&self) -> (usize, usize) {
        match self {
            Storage::F32(v) => (v.block_len, 0),
            Storage::F16(v) => (v.block_len, 0),
            Storage::Q8(v, s) => (v.block_len, s.block_len),
        }
    }

    /// Adds a zeroed block.
    fn push_block(&mut self) -> Result<()> {
        match self {
            Storage::F32(v) => v.push(),
            Storage::F16(v) => v.push(),
            // Both maps first, so that a failure leaves the two lengths equal.
            Storage::Q8(v, s) => {
                v.reserve()?;
                s.reserve()?;
                v.push()?;
                s.push()
            }
        }
    }

    fn copy_block(&mut self, from: usize, to: usize) {
        match self {
            Storage::F32(v) => v.copy(from, to),
            Storage::F16(v) => v.copy(from, to),
            Storage::Q8(v, s) => {
                v.copy(from, to);
                s.copy(from, to);
            }
        }
    }
}

pub struct KvPool {
    layers: usize,
    n_kv_heads: usize,
    head_dim: usize,
    kv_type: KvType,
    max_blocks: usize,
    storage: Storage,
    refcount: Vec<u32>,
    key_of: Vec<Option<PrefixKey>>,
    last_used: Vec<u64>,
    free: Vec<BlockId>,
    map: HashMap<PrefixKey, BlockId>,
    /// Registered blocks by the chain hash of the prefix before them: the candidates for a
    /// partial-block match after a run of full blocks.
    children: HashMap<u64, Vec<BlockId>>,
    /// Registered blocks nobody references, by last use: the eviction order.
    evictable: BTreeMap<(u64, BlockId), ()>,
    tick: u64,
    lookup_tokens: u64,
    hit_tokens: u64,
    partial_hit_tokens: u64,
}

impl KvPool {
    /// A pool of at most `max_blocks` blocks; storage is reserved in chunks of blocks and
    /// committed as blocks are first used (see [`Blocks`]).
    pub fn new(
        layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        max_blocks: usize,
        kv_type: KvType,
    ) -> KvPool {
        KvPool {
            layers,
            n_kv_heads,
            head_dim,
            kv_type,
            max_blocks: max_blocks.max(1),
            storage: {
                let rows = layers * 2 * BLOCK_TOKENS * n_kv_heads;
                let scales = rows * head_dim.div_ceil(Q8_GROUP);
                Storage::new(kv_type, rows * head_dim, scales, max_blocks.max(1))
            },
            refcount: Vec::new(),
            key_of: Vec::new(),
            last_used: Vec::new(),
            free: Vec::new(),
            map: HashMap::new(),
            children: HashMap::new(),
            evictable: BTreeMap::new(),
            tick: 0,
            lookup_tokens: 0,
            hit_tokens: 0,
            partial_hit_tokens: 0,
        }
    }

    /// Bytes one block takes (keys and values of every layer, q8 scales included).
    pub fn block_bytes(
        layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        kv_type: KvType,
    ) -> usize {
        layers * 2 * BLOCK_TOKENS * n_kv_heads * kv_type.row_bytes(head_dim)
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Keys (or values) per position and layer: KV heads × head dimension.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Values per block (keys and values of every layer).
    fn block_elems(&self) -> usize {
        self.storage.block_lens().0
    }

    /// q8 scales per head row.
    fn row_groups(&self) -> usize {
        self.head_dim.div_ceil(Q8_GROUP)
    }

    /// q8 scales per block (0 for the other types).
    fn block_scales(&self) -> usize {
        self.storage.block_lens().1
    }

    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    pub fn max_tokens(&self) -> usize {
        self.max_blocks * BLOCK_TOKENS
    }

    pub fn stats(&self) -> KvStats {
        let in_use = self.refcount.iter().filter(|&&r| r > 0).count();
        KvStats {
            blocks_total: self.max_blocks,
            blocks_in_use: in_use,
            blocks_cached: self.evictable.len(),
            prefix_lookup_tokens: self.lookup_tokens,
            prefix_hit_tokens: self.hit_tokens,
            prefix_partial_hit_tokens: self.partial_hit_tokens,
        }
    }

    /// Blocks that can still be handed out (free, never allocated, or evictable).
    pub fn available_blocks(&self) -> usize {
        self.free.len() + (self.max_blocks - self.storage.len()) + self.evictable.len()
    }

    fn touch(&mut self, b: BlockId) {
        self.tick += 1;
        self.last_used[b as usize] = self.tick;
    }

    fn take_block(&mut self) -> Result<BlockId> {
        let b = if let Some(b) = self.free.pop() {
            b
        } else if self.storage.len() < self.max_blocks {
            let b = self.storage.len() as BlockId;
            self.storage.push_block()?;
            self.refcount.push(0);
            self.key_of.push(None);
            self.last_used.push(0);
            b
        } else if let Some((&(t, b), _)) = self.evictable.iter().next() {
            self.evictable.remove(&(t, b));
            self.unregister(b);
            b
        } else {
            return Err(ModelError::KvCacheFull {
                blocks: self.max_blocks,
                tokens: self.max_tokens(),
            });
        };
        self.refcount[b as usize] = 1;
        self.touch(b);
        Ok(b)
    }

    /// Removes `b` from the prefix cache (both indexes), if it is registered.
    fn unregister(&mut self, b: BlockId) {
        let Some(k) = self.key_of[b as usize].take() else {
            return;
        };
        self.map.remove(&k);
        if let Some(v) = self.children.get_mut(&k.parent) {
            v.retain(|&c| c != b);
            if v.is_empty() {
                self.children.remove(&k.parent);
            }
        }
    }

    /// Takes a reference to `b`, taking it off the eviction list if it was unreferenced.
    fn acquire(&mut self, b: BlockId) {
        if self.refcount[b as usize] == 0 {
            self.evictable.remove(&(self.last_used[b as usize], b));
        }
        self.refcount[b as usize] += 1;
        self.touch(b);
    }

    /// Drops one reference to `b`; an unreferenced block stays cached if registered.
    fn drop_ref(&mut self, b: BlockId) {
        let r = &mut self.refcount[b as usize];
        *r = r.saturating_sub(1);
        if *r == 0 {
            if self.key_of[b as usize].is_some() {
                self.evictable.insert((self.last_used[b as usize], b), ());
            } else {
                self.free.push(b);
            }
        }
    }

    /// Starts `seq` (which must be empty) with the longest cached prefix of `prompt`, keeping
    /// at least one prompt token to compute (its logits are needed). Returns the number of
    /// prompt tokens reused.
    pub fn attach_prefix(&mut self, seq: &mut SeqKv, prompt: &[u32]) -> usize {
        debug_assert!(seq.is_empty());
        self.lookup_tokens += prompt.len() as u64;
        self.extend_prefix(seq, prompt)
    }

    /// Extends `seq`, whose tokens are the start of `prompt` and whose length is a whole number
    /// of blocks, with the cached blocks that continue it along `prompt`: first whole blocks,
    /// then a copy of a cached block that starts with the next `m < BLOCK_TOKENS` prompt
    /// tokens. At least one prompt token is always left to compute. Returns the number of
    /// positions added (0 when `seq` is not block-aligned or does not start `prompt`).
    pub fn extend_prefix(&mut self, seq: &mut SeqKv, prompt: &[u32]) -> usize {
        let start = seq.len();
        if !start.is_multiple_of(BLOCK_TOKENS)
            || start >= prompt.len()
            || prompt[..start] != seq.tokens[..]
        {
            return 0;
        }
        // Blocks reserved past the end hold nothing yet: give them back so that cached
        // blocks can take their places.
        while seq.blocks.len() > start / BLOCK_TOKENS {
            if let Some(b) = seq.blocks.pop() {
                self.drop_ref(b);
            }
        }
        let usable = prompt.len().saturating_sub(1) / BLOCK_TOKENS;
        let mut parent = seq.chain.last().copied().unwrap_or(0);
        for chunk in prompt
            .chunks_exact(BLOCK_TOKENS)
            .take(usable)
            .skip(start / BLOCK_TOKENS)
        {
            let mut tokens = [0u32; BLOCK_TOKENS];
            tokens.copy_from_slice(chunk);
            let key = PrefixKey { parent, tokens };
            let Some(&b) = self.map.get(&key) else { break };
            self.acquire(b);
            parent = chain_hash(parent, chunk);
            seq.blocks.push(b);
            seq.chain.push(parent);
            seq.tokens.extend_from_slice(chunk);
        }
        let m = self.copy_partial(seq, prompt, parent);
        self.hit_tokens += (seq.len() - start) as u64;
        self.partial_hit_tokens += m as u64;
        seq.len() - start
    }

    /// After the whole blocks of `seq` (chain hash `parent`), finds the registered block after
    /// `parent` that shares the longest run of the next prompt tokens (at most
    /// `BLOCK_TOKENS - 1`, and never the last prompt token), and gives `seq` a private copy of
    /// it holding that run. Returns the run's length (0 when nothing matches or no block is
    /// free for the copy).
    fn copy_partial(&mut self, seq: &mut SeqKv, prompt: &[u32], parent: u64) -> usize {
        let pos = seq.len();
        let want = (BLOCK_TOKENS - 1).min(prompt.len().saturating_sub(pos + 1));
        if want == 0 {
            return 0;
        }
        let next = &prompt[pos..pos + want];
        let Some((src, m)) = self.children.get(&parent).and_then(|cands| {
            cands
                .iter()
                .filter_map(|&b| {
                    let key = self.key_of[b as usize].as_ref()?;
                    let m = key
                        .tokens
                        .iter()
                        .zip(next)
                        .take_while(|(a, b)| a == b)
                        .count();
                    (m > 0).then_some((b, m))
                })
                .max_by_key(|&(_, m)| m)
        }) else {
            return 0;
        };
        // Hold the source so that taking a block for the copy cannot evict it.
        self.acquire(src);
        let copied = match self.take_block() {
            Ok(fresh) => {
                self.storage.copy_block(src as usize, fresh as usize);
                seq.blocks.push(fresh);
                seq.tokens.extend_from_slice(&next[..m]);
                m
            }
            Err(_) => 0,
        };
        self.drop_ref(src);
        copied
    }

    /// Gives `dst` (block-aligned, its tokens the start of `prompt`) a private copy of the block
    /// that `src` has at the same place, when `src`'s computed positions there continue with
    /// the next prompt tokens: how a sequence reuses what another running sequence computed
    /// into a block that is not full (so not cached) yet. Takes at most `BLOCK_TOKENS - 1`
    /// positions and never the last prompt token. Returns the positions added.
    pub fn share_partial(&mut self, src: &SeqKv, dst: &mut SeqKv, prompt: &[u32]) -> usize {
        let pos = dst.len();
        let bi = pos / BLOCK_TOKENS;
        if !pos.is_multiple_of(BLOCK_TOKENS)
            || dst.blocks.len() != bi
            || src.len() <= pos
            || src.blocks.len() <= bi
            || prompt.len() <= pos + 1
            || src.tokens[..pos] != dst.tokens[..]
            || prompt[..pos] != dst.tokens[..]
        {
            return 0;
        }
        let want = (BLOCK_TOKENS - 1).min(prompt.len() - pos - 1);
        let m = src.tokens[pos..]
            .iter()
            .zip(&prompt[pos..pos + want])
            .take_while(|(a, b)| a == b)
            .count();
        if m == 0 {
            return 0;
        }
        let from = src.blocks[bi];
        let Ok(fresh) = self.take_block() else {
            return 0;
        };
        self.storage.copy_block(from as usize, fresh as usize);
        dst.blocks.push(fresh);
        dst.tokens.extend_from_slice(&prompt[pos..pos + m]);
        self.hit_tokens += m as u64;
        self.partial_hit_tokens += m as u64;
        m
    }

    /// Makes room in `seq` for `n` more positions.
    pub fn reserve(&mut self, seq: &mut SeqKv, n: usize) -> Result<()> {
        let need = (seq.len() + n).div_ceil(BLOCK_TOKENS);
        while seq.blocks.len() < need {
            let b = self.take_block()?;
            seq.blocks.push(b);
        }
        Ok(())
    }

    /// Blocks `seq` would need for `n` more positions beyond what it holds.
    pub fn blocks_needed(seq: &SeqKv, n: usize) -> usize {
        (seq.len() + n)
            .div_ceil(BLOCK_TOKENS)
            .saturating_sub(seq.blocks.len())
    }

    /// Records that `tokens` were written at the end of `seq`, registering blocks they fill.
    pub(crate) fn commit(&mut self, seq: &mut SeqKv, tokens: &[u32]) {
        let before = seq.len() / BLOCK_TOKENS;
        seq.tokens.extend_from_slice(tokens);
        let after = seq.len() / BLOCK_TOKENS;
        for bi in before..after {
            let parent = if bi == 0 { 0 } else { seq.chain[bi - 1] };
            let chunk = &seq.tokens[bi * BLOCK_TOKENS..(bi + 1) * BLOCK_TOKENS];
            let mut arr = [0u32; BLOCK_TOKENS];
            arr.copy_from_slice(chunk);
            let key = PrefixKey {
                parent,
                tokens: arr,
            };
            let b = seq.blocks[bi];
            if self.key_of[b as usize].is_none() && !self.map.contains_key(&key) {
                self.map.insert(key.clone(), b);
                self.children.entry(parent).or_default().push(b);
                self.key_of[b as usize] = Some(key);
            }
            seq.chain.push(chain_hash(parent, chunk));
        }
    }

    /// Gives back every block of `seq`; cached ones stay reusable until evicted.
    pub fn release(&mut self, seq: &mut SeqKv) {
        for i in 0..seq.blocks.len() {
            self.drop_ref(seq.blocks[i]);
        }
        seq.blocks.clear();
        seq.tokens.clear();
        seq.chain.clear();
    }

    /// Forgets positions from `len` on. A block that keeps only part of its positions is
    /// unregistered from the prefix cache (it will be written again) and copied first if another
    /// sequence shares it.
    pub fn truncate(&mut self, seq: &mut SeqKv, len: usize) -> Result<()> {
        if len >= seq.len() {
            return Ok(());
        }
        let keep = len.div_ceil(BLOCK_TOKENS);
        let mut tail: Vec<BlockId> = seq.blocks.drain(keep..).collect();
        let mut dropped = SeqKv {
            blocks: std::mem::take(&mut tail),
            ..Default::default()
        };
        self.release(&mut dropped);
        if !len.is_multiple_of(BLOCK_TOKENS) {
            let last = seq.blocks[keep - 1];
            if self.refcount[last as usize] > 1 {
                let fresh = self.take_block()?;
                self.storage.copy_block(last as usize, fresh as usize);
                self.refcount[last as usize] -= 1;
                seq.blocks[keep - 1] = fresh;
            } else {
                self.unregister(last);
            }
        }
        seq.tokens.truncate(len);
        seq.chain.truncate(len / BLOCK_TOKENS);
        Ok(())
    }

    /// Bytes of block storage allocated so far.
    pub fn allocated_bytes(&self) -> usize {
        self.storage.len()
            * Self::block_bytes(self.layers, self.n_kv_heads, self.head_dim, self.kv_type)
    }

    /// Offset of (layer, k-or-v, KV head) inside a block: `BLOCK_TOKENS × head_dim` elements.
    #[inline]
    fn offset(&self, layer: usize, is_v: usize, head: usize) -> usize {
        ((layer * 2 + is_v) * self.n_kv_heads + head) * BLOCK_TOKENS * self.head_dim
    }

    /// Stores the keys and values (`n_kv_heads × head_dim` each) of `seq` at `pos`.
    pub(crate) fn write(&mut self, seq: &SeqKv, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        let b = seq.block_of(pos) as usize;
        let slot = pos % BLOCK_TOKENS;
        let hd = self.head_dim;
        for h in 0..self.n_kv_heads {
            let ko = self.offset(layer, 0, h) + slot * hd;
            let vo = self.offset(layer, 1, h) + slot * hd;
            let (ks, vs) = (&k[h * hd..(h + 1) * hd], &v[h * hd..(h + 1) * hd]);
            match &mut self.storage {
                Storage::F32(st) => {
                    st[b][ko..ko + hd].copy_from_slice(ks);
                    st[b][vo..vo + hd].copy_from_slice(vs);
                }
                Storage::F16(st) => {
                    for (d, &x) in st[b][ko..ko + hd].iter_mut().zip(ks) {
                        *d = half::f16::from_f32(x).to_bits();
                    }
                    for (d, &x) in st[b][vo..vo + hd].iter_mut().zip(vs) {
                        *d = half::f16::from_f32(x).to_bits();
                    }
                }
                Storage::Q8(st, sc) => {
                    let g = hd.div_ceil(Q8_GROUP);
                    let kso = ko / hd * g;
                    let vso = vo / hd * g;
                    quantize_q8(ks, &mut st[b][ko..ko + hd], &mut sc[b][kso..kso + g]);
                    quantize_q8(vs, &mut st[b][vo..vo + hd], &mut sc[b][vso..vso + g]);
                }
            }
        }
    }

    /// Keys and values of KV head `head` in the `bi`-th block of `seq` at `layer`
    /// (`BLOCK_TOKENS × head_dim` each; positions past the sequence's end are unspecified).
    #[inline]
    pub(crate) fn head_rows(
        &self,
        seq: &SeqKv,
        layer: usize,
        bi: usize,
        head: usize,
    ) -> KvRows<'_> {
        let b = seq.blocks[bi] as usize;
        let n = BLOCK_TOKENS * self.head_dim;
        let (ko, vo) = (self.offset(layer, 0, head), self.offset(layer, 1, head));
        match &self.storage {
            Storage::F32(st) => KvRows::F32 {
                k: &st[b][ko..ko + n],
                v: &st[b][vo..vo + n],
            },
            Storage::F16(st) => KvRows::F16 {
                k: &st[b][ko..ko + n],
                v: &st[b][vo..vo + n],
            },
            Storage::Q8(st, sc) => {
                let g = self.row_groups();
                let (kso, vso, ns) = (
                    ko / self.head_dim * g,
                    vo / self.head_dim * g,
                    BLOCK_TOKENS * g,
                );
                KvRows::Q8 {
                    k: &st[b][ko..ko + n],
                    v: &st[b][vo..vo + n],
                    ks: &sc[b][kso..kso + ns],
                    vs: &sc[b][vso..vso + ns],
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(pool: &mut KvPool, seq: &mut SeqKv, tokens: &[u32]) {
        pool.reserve(seq, tokens.len()).unwrap();
        pool.commit(seq, tokens);
    }

    #[test]
    fn block_storage_spans_chunks_and_copies_across_them() {
        let mut st = Blocks::<u16>::new(5, 10);
        st.shift = 1;
        for _ in 0..5 {
            st.push().unwrap();
        }
        assert_eq!((st.len(), st.chunks.len()), (5, 3));
        for b in 0..5 {
            assert!(st[b].iter().all(|&x| x == 0), "fresh blocks are zeroed");
            for (i, x) in st[b].iter_mut().enumerate() {
                *x = (100 * b + i) as u16;
            }
        }
        for b in 0..5 {
            assert_eq!(st[b], [0u16, 1, 2, 3, 4].map(|i| (100 * b) as u16 + i));
        }
        // Across chunks in both directions, and inside one chunk.
        st.copy(0, 3);
        st.copy(4, 1);
        st.copy(3, 2);
        let row = |b: usize| [0u16, 1, 2, 3, 4].map(|i| (100 * b) as u16 + i);
        assert_eq!(st[0], row(0));
        assert_eq!(st[1], row(4));
        assert_eq!(st[2], row(0));
        assert_eq!(st[3], row(0));
        assert_eq!(st[4], row(4));
        // The q8 scale blocks and empty shapes take the same path.
        let mut e = Blocks::<i8>::new(0, 3);
        e.push().unwrap();
        assert!(e[0].is_empty());
    }

    #[test]
    fn prefix_blocks_are_shared_and_evicted_lru() {
        let mut pool = KvPool::new(1, 1, 4, 6, KvType::F16);
        let prompt: Vec<u32> = (0..40).collect();
        let mut a = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut a, &prompt), 0);
        fill(&mut pool, &mut a, &prompt);
        assert_eq!(pool.stats().blocks_in_use, 3);
        // Same prompt again while `a` is alive: the two full blocks are shared.
        let mut b = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut b, &prompt), 32);
        assert_eq!(b.blocks[..2], a.blocks[..2]);
        // A prompt of exactly 32 tokens reuses one block and a copy of 15 positions of the
        // next: the last token must be computed.
        let mut c = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut c, &prompt[..32]), 31);
        assert_ne!(c.blocks[1], a.blocks[1]);
        pool.release(&mut a);
        pool.release(&mut b);
        pool.release(&mut c);
        assert_eq!(pool.stats().blocks_in_use, 0);
        assert_eq!(pool.stats().blocks_cached, 2);
        // A different prefix fills the pool and evicts the cached blocks.
        let other: Vec<u32> = (100..196).collect();
        let mut d = SeqKv::default();
        fill(&mut pool, &mut d, &other);
        let mut e = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut e, &prompt), 0, "evicted");
        assert!(
            pool.reserve(&mut e, 1).is_err(),
            "pool is full while d holds every block"
        );
        pool.release(&mut d);
        assert!(pool.reserve(&mut e, 1).is_ok());
    }

    #[test]
    fn truncate_unregisters_and_copies_shared_partial_blocks() {
        let mut pool = KvPool::new(1, 1, 4, 16, KvType::F16);
        let p: Vec<u32> = (0..40).collect();
        let mut a = SeqKv::default();
        fill(&mut pool, &mut a, &p);
        let mut b = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut b, &p), 32);
        // `a` cuts into its second (shared) block: it must get its own copy.
        pool.truncate(&mut a, 20).unwrap();
        assert_eq!(a.len(), 20);
        assert_ne!(a.blocks[1], b.blocks[1]);
        assert_eq!(a.blocks[0], b.blocks[0]);
        // `b` cuts into its second block, now only its own: it leaves the prefix cache.
        pool.truncate(&mut b, 20).unwrap();
        let mut c = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut c, &p), 16);
    }

    fn head_vals(
        pool: &KvPool,
        seq: &SeqKv,
        layer: usize,
        pos: usize,
        head: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let hd = pool.head_dim;
        let o = (pos % BLOCK_TOKENS) * hd;
        match pool.head_rows(seq, layer, pos / BLOCK_TOKENS, head) {
            KvRows::F32 { k, v } => (k[o..o + hd].to_vec(), v[o..o + hd].to_vec()),
            KvRows::F16 { k, v } => (
                k[o..o + hd]
                    .iter()
                    .map(|&h| half::f16::from_bits(h).to_f32())
                    .collect(),
                v[o..o + hd]
                    .iter()
                    .map(|&h| half::f16::from_bits(h).to_f32())
                    .collect(),
            ),
            KvRows::Q8 { k, v, ks, vs } => {
                let g = hd.div_ceil(Q8_GROUP);
                let so = (pos % BLOCK_TOKENS) * g;
                let deq = |x: &[i8], s: &[u16]| -> Vec<f32> {
                    x[o..o + hd]
                        .iter()
                        .enumerate()
                        .map(|(e, &q)| {
                            q as f32 * half::f16::from_bits(s[so + e / Q8_GROUP]).to_f32()
                        })
                        .collect()
                };
                (deq(k, ks), deq(v, vs))
            }
        }
    }

    #[test]
    fn written_rows_read_back_per_head_in_both_types() {
        for kv_type in [KvType::F16, KvType::F32] {
            let (layers, heads, hd) = (2, 3, 4);
            let mut pool = KvPool::new(layers, heads, hd, 8, kv_type);
            let mut seq = SeqKv::default();
            pool.reserve(&mut seq, 20).unwrap();
            let val = |l: usize, p: usize, i: usize, v: bool| {
                (l * 1000 + p * 10 + i) as f32 * 0.013 + if v { 0.5 } else { 0.0 }
            };
            for l in 0..layers {
                for p in 0..20 {
                    let k: Vec<f32> = (0..heads * hd).map(|i| val(l, p, i, false)).collect();
                    let v: Vec<f32> = (0..heads * hd).map(|i| val(l, p, i, true)).collect();
                    pool.write(&seq, l, p, &k, &v);
                }
            }
            let round = |x: f32| match kv_type {
                KvType::F16 => half::f16::from_f32(x).to_f32(),
                KvType::F32 => x,
                KvType::Q8 => unreachable!("q8 has its own test"),
            };
            for l in 0..layers {
                for p in [0, 15, 16, 19] {
                    for h in 0..heads {
                        let (k, v) = head_vals(&pool, &seq, l, p, h);
                        for d in 0..hd {
                            assert_eq!(k[d], round(val(l, p, h * hd + d, false)));
                            assert_eq!(v[d], round(val(l, p, h * hd + d, true)));
                        }
                    }
                }
            }
            assert_eq!(
                pool.allocated_bytes(),
                2 * KvPool::block_bytes(layers, heads, hd, kv_type)
            );
        }
    }

    #[test]
    fn q8_rows_read_back_within_quantization_error() {
        // Head dims below, at and above one q8 group, and one with a partial last group.
        for hd in [4, 32, 40, 128] {
            let (layers, heads) = (2, 3);
            let mut pool = KvPool::new(layers, heads, hd, 8, KvType::Q8);
            let mut seq = SeqKv::default();
            pool.reserve(&mut seq, 20).unwrap();
            // Per-head magnitudes that differ a lot, so one scale for all would fail.
            let val = |l: usize, p: usize, i: usize, v: bool| {
                let mag = [0.01f32, 1.0, 50.0][i / hd];
                let x = ((l * 7919 + p * 104_729 + i * 31 + v as usize * 17) % 1000) as f32;
                mag * (x / 500.0 - 1.0)
            };
            for l in 0..layers {
                for p in 0..20 {
                    let k: Vec<f32> = (0..heads * hd).map(|i| val(l, p, i, false)).collect();
                    let v: Vec<f32> = (0..heads * hd).map(|i| val(l, p, i, true)).collect();
                    pool.write(&seq, l, p, &k, &v);
                }
            }
            for l in 0..layers {
                for p in 0..20 {
                    for h in 0..heads {
                        let (k, v) = head_vals(&pool, &seq, l, p, h);
                        for (is_v, got) in [(false, &k), (true, &v)] {
                            let want: Vec<f32> =
                                (0..hd).map(|d| val(l, p, h * hd + d, is_v)).collect();
                            for (gi, (wg, gg)) in
                                want.chunks(Q8_GROUP).zip(got.chunks(Q8_GROUP)).enumerate()
                            {
                                let amax = wg.iter().fold(0f32, |m, x| m.max(x.abs()));
                                // Half a step of amax / 127, plus the scale's f16 rounding.
                                let tol = amax / 254.0 * 1.002 + 1e-7;
                                for (a, b) in wg.iter().zip(gg) {
                                    assert!(
                                        (a - b).abs() <= tol,
                                        "hd {hd} l {l} p {p} h {h} v {is_v} group {gi}: {a} vs {b}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
            // 1 byte per value plus 2 per 32-value group (rounded up per row).
            let per_block = layers * 2 * BLOCK_TOKENS * heads * (hd + 2 * hd.div_ceil(32));
            assert_eq!(
                KvPool::block_bytes(layers, heads, hd, KvType::Q8),
                per_block
            );
            assert_eq!(pool.allocated_bytes(), 2 * per_block);
        }
    }

    #[test]
    fn kv_type_names_parse_back() {
        for t in [KvType::F16, KvType::F32, KvType::Q8] {
            assert_eq!(KvType::parse(t.name()), Some(t));
            assert!(KvType::NAMES.contains(t.name()));
        }
        assert_eq!(KvType::parse("Q8"), Some(KvType::Q8));
        assert_eq!(KvType::parse("q4_0"), None);
    }

    #[test]
    fn truncating_a_shared_block_copies_its_contents() {
        let mut pool = KvPool::new(1, 1, 4, 8, KvType::F16);
        let p: Vec<u32> = (0..40).collect();
        let mut a = SeqKv::default();
        pool.reserve(&mut a, 40).unwrap();
        for pos in 0..40 {
            let x = [pos as f32; 4];
            pool.write(&a, 0, pos, &x, &x);
        }
        pool.commit(&mut a, &p);
        let mut b = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut b, &p), 32);
        pool.truncate(&mut a, 20).unwrap();
        assert_ne!(a.blocks[1], b.blocks[1]);
        for pos in 16..20 {
            assert_eq!(head_vals(&pool, &a, 0, pos, 0).0, vec![pos as f32; 4]);
        }
    }

    #[test]
    fn different_histories_do_not_alias() {
        let mut pool = KvPool::new(1, 1, 4, 16, KvType::F16);
        let mut a = SeqKv::default();
        let pa: Vec<u32> = (0..33).collect();
        fill(&mut pool, &mut a, &pa);
        // Same second block tokens after a different first block: must not match.
        let mut pb: Vec<u32> = (1000..1016).collect();
        pb.extend(16..33);
        let mut b = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut b, &pb), 0);
    }

    /// Writes a value unique to (layer, position, element) for `pos` in `range` of `seq`.
    fn write_marks(pool: &mut KvPool, seq: &SeqKv, range: std::ops::Range<usize>, salt: f32) {
        let kv_dim = pool.kv_dim();
        for l in 0..pool.layers {
            for pos in range.clone() {
                let k: Vec<f32> = (0..kv_dim)
                    .map(|e| salt + (l * 10_000 + pos * 10 + e) as f32)
                    .collect();
                let v: Vec<f32> = k.iter().map(|x| -x).collect();
                pool.write(seq, l, pos, &k, &v);
            }
        }
    }

    fn all_rows(pool: &KvPool, seq: &SeqKv, pos: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
        let mut out = Vec::new();
        for l in 0..pool.layers {
            for h in 0..pool.n_kv_heads {
                out.push(head_vals(pool, seq, l, pos, h));
            }
        }
        out
    }

    /// A sequence holding `tokens`, each position marked by `write_marks`.
    fn computed(pool: &mut KvPool, tokens: &[u32], salt: f32) -> SeqKv {
        let mut s = SeqKv::default();
        pool.reserve(&mut s, tokens.len()).unwrap();
        write_marks(pool, &s, 0..tokens.len(), salt);
        pool.commit(&mut s, tokens);
        s
    }

    fn assert_no_leak(pool: &KvPool) {
        assert_eq!(pool.stats().blocks_in_use, 0);
        assert_eq!(pool.available_blocks(), pool.max_blocks());
        assert_eq!(
            pool.free.len() + pool.evictable.len(),
            pool.storage.len(),
            "every allocated block is free or evictable"
        );
        let registered = pool.key_of.iter().filter(|k| k.is_some()).count();
        assert_eq!(pool.map.len(), registered);
        assert_eq!(
            pool.children.values().map(Vec::len).sum::<usize>(),
            registered
        );
    }

    #[test]
    fn a_prefix_ending_mid_block_reuses_a_copy_of_the_cached_block() {
        // Copies of q8 blocks carry their scales: rows compare equal as in f32.
        for kv_type in [KvType::F32, KvType::Q8] {
            let mut pool = KvPool::new(2, 2, 4, 16, kv_type);
            // Conversation A: a 20-token "system prompt" then its own tokens, 40 in all.
            let mut pa: Vec<u32> = (0..20).collect();
            pa.extend(500..520);
            let mut a = computed(&mut pool, &pa, 0.0);
            // Conversation B shares only the 20-token prefix: one full block and 4 positions of
            // A's second block.
            let mut pb: Vec<u32> = (0..20).collect();
            pb.extend(900..915);
            let mut b = SeqKv::default();
            assert_eq!(pool.attach_prefix(&mut b, &pb), 20);
            assert_eq!(pool.stats().prefix_partial_hit_tokens, 4);
            assert_eq!(b.tokens(), &pb[..20]);
            assert_eq!(b.blocks[0], a.blocks[0], "the full block is shared");
            assert_ne!(
                b.blocks[1], a.blocks[1],
                "the partial block is a private copy"
            );
            for pos in 0..20 {
                assert_eq!(all_rows(&pool, &b, pos), all_rows(&pool, &a, pos));
            }
            // B writes its own tokens after the copied positions; A's block is untouched.
            let before: Vec<_> = (16..32).map(|p| all_rows(&pool, &a, p)).collect();
            pool.reserve(&mut b, 15).unwrap();
            write_marks(&mut pool, &b, 20..35, 0.25);
            pool.commit(&mut b, &pb[20..]);
            let after: Vec<_> = (16..32).map(|p| all_rows(&pool, &a, p)).collect();
            assert_eq!(before, after);
            assert_ne!(all_rows(&pool, &b, 20), all_rows(&pool, &a, 20));
            // B's block filled with its own tokens is registered under B's history.
            let mut c = SeqKv::default();
            let mut pc = pb.clone();
            pc.push(7);
            assert_eq!(pool.attach_prefix(&mut c, &pc), 32);
            pool.release(&mut a);
            pool.release(&mut b);
            pool.release(&mut c);
            assert_no_leak(&pool);
        }
    }

    #[test]
    fn a_prompt_ending_on_a_block_boundary_reuses_all_but_its_last_token() {
        let mut pool = KvPool::new(1, 1, 4, 8, KvType::F16);
        let p: Vec<u32> = (0..48).collect();
        let mut a = computed(&mut pool, &p, 0.0);
        // Whole blocks stop one block early (the last token must be computed); the copy takes
        // 15 of the next block's 16 positions.
        let mut b = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut b, &p[..32]), 31);
        assert_ne!(b.blocks[1], a.blocks[1]);
        let mut c = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut c, &p[..2]), 1);
        // Nothing to share: a different first token.
        let mut d = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut d, &[77, 1, 2]), 0);
        for s in [&mut a, &mut b, &mut c, &mut d] {
            pool.release(s);
        }
        assert_no_leak(&pool);
    }

    #[test]
    fn the_copy_never_evicts_its_source_and_eviction_updates_the_index() {
        // Two blocks in all: after A is released both are cached, and B holds the first, so
        // the only block it could take for the copy is the source itself.
        let mut pool = KvPool::new(1, 1, 4, 2, KvType::F16);
        let p: Vec<u32> = (0..32).collect();
        let mut a = computed(&mut pool, &p, 0.0);
        pool.release(&mut a);
        let mut q: Vec<u32> = (0..20).collect();
        q.push(99);
        let mut b = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut b, &q), 16, "no room for a copy");
        pool.release(&mut b);
        assert_no_leak(&pool);
        // Another prompt evicts both cached blocks; the partial index must forget them.
        let other: Vec<u32> = (1000..1032).collect();
        let mut o = computed(&mut pool, &other, 0.0);
        pool.release(&mut o);
        let mut e = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut e, &q), 0);
        pool.release(&mut e);
        assert_no_leak(&pool);
    }

    #[test]
    fn truncation_removes_a_block_from_the_partial_index() {
        let mut pool = KvPool::new(1, 1, 4, 8, KvType::F16);
        let p: Vec<u32> = (0..40).collect();
        let mut a = computed(&mut pool, &p, 0.0);
        pool.truncate(&mut a, 20).unwrap();
        // Block 1 now holds 4 positions that will be overwritten: not a candidate any more.
        let mut q: Vec<u32> = (0..20).collect();
        q.push(99);
        let mut b = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut b, &q), 16);
        pool.release(&mut a);
        pool.release(&mut b);
        assert_no_leak(&pool);
    }

    #[test]
    fn followers_extend_from_the_cache_and_from_a_running_block() {
        // Copies of q8 blocks carry their scales: rows compare equal as in f32.
        for kv_type in [KvType::F32, KvType::Q8] {
            let mut pool = KvPool::new(1, 2, 4, 16, kv_type);
            let mut lead: Vec<u32> = (0..37).collect();
            lead.extend(600..605);
            let mut follow: Vec<u32> = (0..37).collect();
            follow.extend(700..710);
            // The leader has computed 20 positions so far: only its first block is cached.
            let mut a = SeqKv::default();
            pool.reserve(&mut a, 20).unwrap();
            write_marks(&mut pool, &a, 0..20, 0.0);
            pool.commit(&mut a, &lead[..20]);
            let mut f = SeqKv::default();
            assert_eq!(pool.attach_prefix(&mut f, &follow), 16);
            assert_eq!(pool.extend_prefix(&mut f, &follow), 0, "nothing new yet");
            // The leader computes the rest of its prompt: two full blocks and 10 positions.
            pool.reserve(&mut a, 22).unwrap();
            write_marks(&mut pool, &a, 20..42, 0.0);
            pool.commit(&mut a, &lead[20..]);
            // A block reserved but not written is given back to make room for the cached one.
            pool.reserve(&mut f, 1).unwrap();
            assert_eq!(pool.extend_prefix(&mut f, &follow), 16);
            assert_eq!(f.len(), 32);
            // The leader's third block is not full, so not cached: copy it from the leader.
            let hits = pool.stats().prefix_hit_tokens;
            assert_eq!(pool.share_partial(&a, &mut f, &follow), 5);
            assert_eq!(pool.stats().prefix_hit_tokens, hits + 5);
            assert_eq!(f.tokens(), &follow[..37]);
            assert_ne!(f.blocks[2], a.blocks[2]);
            for pos in 0..37 {
                assert_eq!(all_rows(&pool, &f, pos), all_rows(&pool, &a, pos));
            }
            // Not block-aligned any more: neither kind of extension applies.
            assert_eq!(pool.share_partial(&a, &mut f, &follow), 0);
            assert_eq!(pool.extend_prefix(&mut f, &follow), 0);
            // A prompt that leaves the leader's tokens earlier copies fewer positions; one with
            // another history copies nothing.
            let mut follow2 = follow.clone();
            follow2[34] = 1234;
            let mut g = SeqKv::default();
            assert_eq!(pool.attach_prefix(&mut g, &follow2), 32);
            assert_eq!(pool.share_partial(&a, &mut g, &follow2), 2);
            let mut z = SeqKv::default();
            assert_eq!(pool.share_partial(&a, &mut z, &[5, 6, 7]), 0);
            for s in [&mut a, &mut f, &mut g, &mut z] {
                pool.release(s);
            }
            assert_no_leak(&pool);
        }
    }
}
