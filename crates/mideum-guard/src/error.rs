//! Typed errors of the guard library.

use thiserror::Error;

/// Everything that can go wrong when using the guard library.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GuardError {
    /// The built-in Aho-Corasick context dictionaries could not be compiled.
    #[error("could not build the context-word automaton: {0}")]
    Automaton(String),
    /// An entity handed to an operator does not fit the text (out of range,
    /// not on a UTF-8 boundary, unsorted or overlapping).
    #[error("entity span {start}..{end} does not fit the text or overlaps another entity")]
    InvalidSpan {
        /// Byte start of the offending entity.
        start: usize,
        /// Byte end of the offending entity.
        end: usize,
    },
    /// A hashing key must not be empty: an empty key makes pseudonyms guessable.
    #[error("the HMAC key must not be empty")]
    EmptyKey,
}
