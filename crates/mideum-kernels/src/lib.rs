//! The numeric hot path of Mideum: dot products over f32/bf16/f16 weights with runtime CPU
//! dispatch (each SIMD path has a scalar twin it is tested against), matrix products over
//! row-major weights, RMSNorm, RoPE, softmax and SwiGLU.
//!
//! This crate knows nothing about models, files or HTTP. Weights arrive as plain slices
//! (`WeightView`), usually straight out of a memory map.

pub mod attn;
pub mod dot;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod par;
pub mod qdot;
pub mod quant;

pub use dot::{bf16_to_f32, f16_to_f32, DotKernel};

/// Whether the AVX2 + FMA paths of the element-wise kernels (activation quantization, SwiGLU)
/// run: detected once; `MIDEUM_KERNEL=scalar` forces their scalar references.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        std::env::var("MIDEUM_KERNEL").map_or(true, |v| v != "scalar")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
    })
}
pub use matmul::{matmul, matmul_multi, matmul_multi_rmsnorm, WeightView};
pub use ops::RopeLayout;
pub use par::ThreadPool;
pub use qdot::QKernel;
pub use quant::{ActKind, ActQ8, QuantType};
