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
pub use matmul::{matmul, matmul_multi, matmul_multi_rmsnorm, WeightView};
pub use ops::RopeLayout;
pub use par::ThreadPool;
pub use qdot::QKernel;
pub use quant::{ActKind, ActQ8, QuantType};
