//! Korean personal-data detection, masking and reversible pseudonymization.
//!
//! A pure library (no async, no I/O) used by the Mideum gateway before a
//! prompt is logged, cached or sent to an outside provider:
//!
//! * [`Analyzer`] finds Korean identifiers (주민등록번호, 외국인등록번호,
//!   여권, 운전면허, 사업자/법인등록번호, phone, card, account, e-mail, IP,
//!   vehicle plate, address, names in context) in one linear pass.
//! * [`redact`], [`mask`] and [`Hasher`] replace them irreversibly.
//! * [`Vault`] replaces them with placeholders and puts the originals back,
//!   also across streamed chunks ([`StreamRestorer`]) and inside JSON.

mod address;
mod analyzer;
mod ascii;
mod context;
mod digits;
mod error;
mod hangul;
mod hmac;
mod normalize;
mod ops;
mod person;
mod types;
mod validate;
mod vault;

pub use analyzer::{Analyzer, DEFAULT_MIN_SCORE};
pub use error::GuardError;
pub use hmac::hmac_sha256;
pub use ops::{mask, mask_value, redact, Hasher};
pub use types::{Entity, EntityType};
pub use vault::{RestoreMode, StreamRestorer, Vault};
