//! Korean personal-data detection, masking and reversible pseudonymization.
