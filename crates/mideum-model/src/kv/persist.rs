//! Saving cached prefix blocks to a file and restoring them into a pool, so that a restarted
//! server does not compute the same long prompt prefix (Mi:dm's default system prompt) again.
//!
//! The file holds a header that names the model (a fingerprint of its weights and shape) and
//! the pool's geometry, then each block's tokens and stored keys and values exactly as the pool
//! holds them (f32, f16 or q8_0 with its scales, little-endian), then an FNV-1a checksum of
//! everything before it. A file from another model, another KV element type or a damaged or
//! truncated file is refused with an error and changes nothing in the pool. Files are written
//! to a temporary name and renamed, so a crash never leaves half a file under the real name.

use super::{chain_hash, BlockId, KvPool, KvType, PrefixKey, Storage, BLOCK_TOKENS};
use crate::error::{ModelError, Result};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 8] = b"MIDEUMKV";
const VERSION: u32 = 1;

/// FNV-1a, 64 bits, fed incrementally.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
}

/// A fingerprint of `bytes` (FNV-1a), for naming a model in a saved file.
pub fn fingerprint(parts: &[&[u8]]) -> u64 {
    let mut h = Fnv::new();
    for p in parts {
        h.feed(&(p.len() as u64).to_le_bytes());
        h.feed(p);
    }
    h.0
}

fn kv_code(t: KvType) -> u32 {
    match t {
        KvType::F32 => 0,
        KvType::F16 => 1,
        KvType::Q8 => 2,
    }
}

fn bad(path: &Path, msg: impl Into<String>) -> ModelError {
    ModelError::format(path, msg)
}

fn io(path: &Path, error: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A writer that checksums what passes through.
struct Summed<W: Write> {
    w: W,
    sum: Fnv,
}

impl<W: Write> Summed<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sum.feed(bytes);
        self.w.write_all(bytes)
    }
}

/// A reader that checksums what passes through.
struct Checked<R: Read> {
    r: R,
    sum: Fnv,
}

impl<R: Read> Checked<R> {
    fn take(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.r.read_exact(buf)?;
        self.sum.feed(buf);
        Ok(())
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.take(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

impl KvPool {
    /// The header fields after the magic: version, model, geometry.
    fn header(&self, model_id: u64) -> [u64; 7] {
        [
            VERSION as u64,
            model_id,
            self.layers as u64,
            self.n_kv_heads as u64,
            self.head_dim as u64,
            kv_code(self.kv_type) as u64,
            BLOCK_TOKENS as u64,
        ]
    }

    /// The blocks registered along `tokens` from its start (whole blocks only), with their
    /// tokens.
    fn cached_chain(&self, tokens: &[u32]) -> Vec<(BlockId, [u32; BLOCK_TOKENS])> {
        let mut parent = 0;
        let mut out = Vec::new();
        for chunk in tokens.chunks_exact(BLOCK_TOKENS) {
            let mut arr = [0u32; BLOCK_TOKENS];
            arr.copy_from_slice(chunk);
            let key = PrefixKey {
                parent,
                tokens: arr,
            };
            let Some(&b) = self.map.get(&key) else { break };
            out.push((b, arr));
            parent = chain_hash(parent, chunk);
        }
        out
    }

    /// Positions at the start of `tokens` held by cached whole blocks.
    pub fn cached_prefix_len(&self, tokens: &[u32]) -> usize {
        self.cached_chain(tokens).len() * BLOCK_TOKENS
    }

    /// Writes the cached whole blocks along the start of `tokens` to `path` for
    /// [`KvPool::load_prefix`], naming the model by `model_id`. Returns the positions written
    /// (0 writes a file with no blocks).
    pub fn save_prefix(&self, tokens: &[u32], model_id: u64, path: &Path) -> Result<usize> {
        let chain = self.cached_chain(tokens);
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let mut w = Summed {
            w: BufWriter::new(file),
            sum: Fnv::new(),
        };
        let mut write = || -> std::io::Result<()> {
            w.put(MAGIC)?;
            for x in self.header(model_id) {
                w.put(&x.to_le_bytes())?;
            }
            w.put(&(chain.len() as u64).to_le_bytes())?;
            let mut buf = Vec::new();
            for &(b, toks) in &chain {
                for t in toks {
                    w.put(&t.to_le_bytes())?;
                }
                buf.clear();
                let b = b as usize;
                match &self.storage {
                    Storage::F32(st) => st[b].iter().for_each(|x| buf.extend(x.to_le_bytes())),
                    Storage::F16(st) => st[b].iter().for_each(|x| buf.extend(x.to_le_bytes())),
                    Storage::Q8(st, sc) => {
                        st[b].iter().for_each(|x| buf.extend(x.to_le_bytes()));
                        sc[b].iter().for_each(|x| buf.extend(x.to_le_bytes()));
                    }
                }
                w.put(&buf)?;
            }
            let sum = w.sum.0;
            w.w.write_all(&sum.to_le_bytes())?;
            w.w.flush()?;
            w.w.get_ref().sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp, e));
        }
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
        Ok(chain.len() * BLOCK_TOKENS)
    }

    /// Restores blocks written by [`KvPool::save_prefix`] into the prefix cache (cached and
    /// unreferenced, evictable like any other). Blocks already cached are kept as they are;
    /// when the pool runs out of blocks the rest of the file is skipped. Returns the positions
    /// restored. A file for another model or geometry, or a damaged one, is an error and
    /// leaves the pool unchanged.
    pub fn load_prefix(&mut self, path: &Path, model_id: u64) -> Result<usize> {
        let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
        let len = file.metadata().map_err(|e| io(path, e))?.len();
        let mut r = Checked {
            r: BufReader::new(file),
            sum: Fnv::new(),
        };
        let short = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                bad(path, "the prefix cache file is truncated")
            } else {
                io(path, e)
            }
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic).map_err(short)?;
        if &magic != MAGIC {
            return Err(bad(path, "not a mideum prefix cache file"));
        }
        let want = self.header(model_id);
        let names = [
            "format version",
            "model",
            "layers",
            "KV heads",
            "head size",
            "KV element type",
            "block size",
        ];
        for (x, name) in want.iter().zip(names) {
            let got = r.u64().map_err(short)?;
            if got != *x {
                return Err(bad(
                    path,
                    format!("the prefix cache was saved with another {name} (file: {got}, this server: {x})"),
                ));
            }
        }
        let n = r.u64().map_err(short)?;
        let (elems, scales) = (self.block_elems(), self.block_scales());
        let data_bytes = match self.kv_type {
            KvType::F32 => elems * 4,
            KvType::F16 => elems * 2,
            KvType::Q8 => elems + scales * 2,
        };
        let block_bytes = (BLOCK_TOKENS * 4 + data_bytes) as u64;
        // magic + header + count, the blocks, the checksum.
        let expect = 8 + 8 * (want.len() as u64 + 1) + n.saturating_mul(block_bytes) + 8;
        if len != expect {
            return Err(bad(
                path,
                format!("the prefix cache file has {len} bytes where {n} blocks take {expect}"),
            ));
        }
        let mut taken: Vec<(BlockId, PrefixKey)> = Vec::new();
        let mut buf = vec![0u8; data_bytes];
        let mut parent = 0u64;
        let mut result = Ok(());
        for _ in 0..n {
            let mut toks = [0u32; BLOCK_TOKENS];
            for t in toks.iter_mut() {
                match r.u32() {
                    Ok(v) => *t = v,
                    Err(e) => {
                        result = Err(short(e));
                        break;
                    }
                }
            }
            if result.is_ok() {
                result = r.take(&mut buf).map_err(short);
            }
            if result.is_err() {
                break;
            }
            let key = PrefixKey {
                parent,
                tokens: toks,
            };
            parent = chain_hash(parent, &toks);
            if self.map.contains_key(&key) || taken.iter().any(|(_, k)| *k == key) {
                continue;
            }
            // Out of blocks: the rest cannot be restored (still read for the checksum).
            let Ok(b) = self.take_block() else { continue };
            self.fill_block(b as usize, &buf);
            taken.push((b, key));
        }
        if result.is_ok() {
            let sum = r.sum.0;
            let mut tail = [0u8; 8];
            result = r.r.read_exact(&mut tail).map_err(short);
            if result.is_ok() && u64::from_le_bytes(tail) != sum {
                result = Err(bad(
                    path,
                    "the prefix cache file is damaged (checksum mismatch)",
                ));
            }
        }
        if let Err(e) = result {
            for (b, _) in taken {
                self.drop_ref(b);
            }
            return Err(e);
        }
        let restored = taken.len() * BLOCK_TOKENS;
        for (b, key) in taken {
            self.children.entry(key.parent).or_default().push(b);
            self.map.insert(key.clone(), b);
            self.key_of[b as usize] = Some(key);
            self.drop_ref(b);
        }
        Ok(restored)
    }

    /// Overwrites block `b` with the stored bytes of one block (as `save_prefix` writes them).
    fn fill_block(&mut self, b: usize, bytes: &[u8]) {
        match &mut self.storage {
            Storage::F32(st) => {
                for (x, c) in st[b].iter_mut().zip(bytes.chunks_exact(4)) {
                    *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            Storage::F16(st) => {
                for (x, c) in st[b].iter_mut().zip(bytes.chunks_exact(2)) {
                    *x = u16::from_le_bytes([c[0], c[1]]);
                }
            }
            Storage::Q8(st, sc) => {
                let n = st[b].len();
                for (x, &c) in st[b].iter_mut().zip(&bytes[..n]) {
                    *x = c as i8;
                }
                for (x, c) in sc[b].iter_mut().zip(bytes[n..].chunks_exact(2)) {
                    *x = u16::from_le_bytes([c[0], c[1]]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::SeqKv;
    use mideum_kernels::attn::KvRows;

    const LAYERS: usize = 2;
    const HEADS: usize = 2;
    const HD: usize = 40;

    /// A pool holding `tokens` in one sequence, with distinct keys and values at every
    /// position; the sequence is released, so its full blocks stay cached only.
    fn filled(kv: KvType, tokens: &[u32]) -> KvPool {
        let mut pool = KvPool::new(LAYERS, HEADS, HD, 16, kv);
        let mut seq = SeqKv::default();
        pool.reserve(&mut seq, tokens.len()).unwrap();
        for pos in 0..tokens.len() {
            for layer in 0..LAYERS {
                let x = |o: usize| -> Vec<f32> {
                    (0..HEADS * HD)
                        .map(|i| ((pos * 131 + layer * 17 + i * 7 + o) % 101) as f32 / 50.0 - 1.0)
                        .collect()
                };
                pool.write(&seq, layer, pos, &x(0), &x(3));
            }
        }
        pool.commit(&mut seq, tokens);
        pool.release(&mut seq);
        pool
    }

    /// Every stored element of the first `n` blocks along `tokens`, as f32 bits.
    fn contents(pool: &mut KvPool, tokens: &[u32], n: usize) -> Vec<u32> {
        let mut seq = SeqKv::default();
        assert_eq!(pool.attach_prefix(&mut seq, tokens), n * BLOCK_TOKENS);
        let mut out = Vec::new();
        for bi in 0..n {
            for layer in 0..LAYERS {
                for h in 0..HEADS {
                    match pool.head_rows(&seq, layer, bi, h) {
                        KvRows::F32 { k, v } => out.extend(k.iter().chain(v).map(|x| x.to_bits())),
                        KvRows::F16 { k, v } => out.extend(k.iter().chain(v).map(|&x| x as u32)),
                        KvRows::Q8 { k, v, ks, vs } => {
                            out.extend(k.iter().chain(v).map(|&x| x as u8 as u32));
                            out.extend(ks.iter().chain(vs).map(|&x| x as u32));
                        }
                    }
                }
            }
        }
        pool.release(&mut seq);
        out
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("mideum-kvfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// `blocks` whole blocks of tokens written by an f16 pool to file `name` for model `id`.
    fn saved(blocks: u32, name: &str, id: u64) -> (Vec<u32>, std::path::PathBuf) {
        let tokens: Vec<u32> = (0..blocks * BLOCK_TOKENS as u32).collect();
        let path = tmp(name);
        filled(KvType::F16, &tokens)
            .save_prefix(&tokens, id, &path)
            .unwrap();
        (tokens, path)
    }

    #[test]
    fn saved_blocks_restore_bit_for_bit_and_serve_as_prefix() {
        let tokens: Vec<u32> = (0..3 * BLOCK_TOKENS as u32 + 5)
            .map(|t| t * 3 + 1)
            .collect();
        for kv in [KvType::F32, KvType::F16, KvType::Q8] {
            let mut a = filled(kv, &tokens);
            let path = tmp(&format!("roundtrip-{}.kv", kv.name()));
            assert_eq!(a.save_prefix(&tokens, 42, &path).unwrap(), 3 * BLOCK_TOKENS);
            let mut b = KvPool::new(LAYERS, HEADS, HD, 16, kv);
            assert_eq!(b.load_prefix(&path, 42).unwrap(), 3 * BLOCK_TOKENS);
            assert_eq!(b.cached_prefix_len(&tokens), 3 * BLOCK_TOKENS);
            assert_eq!(b.stats().blocks_cached, 3);
            assert_eq!(b.stats().blocks_in_use, 0);
            assert_eq!(
                contents(&mut a, &tokens, 3),
                contents(&mut b, &tokens, 3),
                "{kv:?}"
            );
            // Loading again changes nothing: the blocks are already cached.
            assert_eq!(b.load_prefix(&path, 42).unwrap(), 0);
            assert_eq!(b.stats().blocks_cached, 3);
            // Another prompt sharing only the first block reuses only that one.
            let mut other = tokens.clone();
            other[BLOCK_TOKENS + 2] += 1;
            assert_eq!(b.cached_prefix_len(&other), BLOCK_TOKENS);
        }
    }

    #[test]
    fn foreign_or_damaged_files_are_refused_and_change_nothing() {
        let (tokens, path) = saved(2, "good.kv", 7);
        let good = std::fs::read(&path).unwrap();
        let fresh = || KvPool::new(LAYERS, HEADS, HD, 16, KvType::F16);
        let refused = |p: &std::path::Path, id: u64, pool: &mut KvPool| -> String {
            let err = pool.load_prefix(p, id).unwrap_err().to_string();
            assert_eq!(pool.cached_prefix_len(&tokens), 0);
            assert_eq!(pool.available_blocks(), 16, "blocks given back");
            err
        };
        assert!(refused(&path, 8, &mut fresh()).contains("another model"));
        let mut q8 = KvPool::new(LAYERS, HEADS, HD, 16, KvType::Q8);
        assert!(refused(&path, 7, &mut q8).contains("KV element type"));
        let mut other_shape = KvPool::new(LAYERS + 1, HEADS, HD, 16, KvType::F16);
        assert!(refused(&path, 7, &mut other_shape).contains("layers"));

        let bad = tmp("bad.kv");
        std::fs::write(&bad, &good[..good.len() - 9]).unwrap();
        assert!(refused(&bad, 7, &mut fresh()).contains("bytes"));
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        std::fs::write(&bad, &flipped).unwrap();
        assert!(refused(&bad, 7, &mut fresh()).contains("checksum"));
        std::fs::write(&bad, b"{\"not\": \"a cache\"}").unwrap();
        assert!(refused(&bad, 7, &mut fresh()).contains("not a mideum prefix cache"));
        std::fs::write(&bad, b"MIDE").unwrap();
        assert!(refused(&bad, 7, &mut fresh()).contains("truncated"));
        let missing = tmp("missing.kv");
        assert!(refused(&missing, 7, &mut fresh()).contains("cannot read"));
    }

    #[test]
    fn a_full_pool_restores_what_fits() {
        let (tokens, path) = saved(4, "fits.kv", 1);
        let mut small = KvPool::new(LAYERS, HEADS, HD, 2, KvType::F16);
        let mut hold = SeqKv::default();
        small.reserve(&mut hold, 1).unwrap();
        assert_eq!(small.load_prefix(&path, 1).unwrap(), BLOCK_TOKENS);
        assert_eq!(small.cached_prefix_len(&tokens), BLOCK_TOKENS);
    }
}
