//! Hashing, HMAC and secrets: SHA-256 from `sha2`, HMAC-SHA-256 per RFC 2104, randomness from
//! the operating system.

use sha2::{Digest, Sha256};

use crate::{Result, StoreError};

/// The `prev_hash` of the first record of a chain that was never pruned.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// HMAC-SHA-256 of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Equality that takes the same time wherever the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `n` random bytes from the operating system.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).map_err(|e| StoreError::Key(format!("no system randomness: {e}")))?;
    Ok(v)
}

/// The key that signs prune anchors: `MIDEUM_AUDIT_KEY` (the key text itself, at least 16
/// bytes) or `MIDEUM_AUDIT_KEY_FILE` (a file holding it). `None` when neither is set.
pub fn audit_key_from_env() -> Result<Option<Vec<u8>>> {
    if let Ok(k) = std::env::var("MIDEUM_AUDIT_KEY") {
        return check_key(k.trim().as_bytes().to_vec(), "MIDEUM_AUDIT_KEY").map(Some);
    }
    if let Ok(path) = std::env::var("MIDEUM_AUDIT_KEY_FILE") {
        let bytes = std::fs::read(&path).map_err(|e| {
            StoreError::Key(format!("cannot read MIDEUM_AUDIT_KEY_FILE `{path}`: {e}"))
        })?;
        let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
        return check_key(trimmed, "MIDEUM_AUDIT_KEY_FILE").map(Some);
    }
    Ok(None)
}

fn check_key(k: Vec<u8>, from: &str) -> Result<Vec<u8>> {
    if k.len() < 16 {
        return Err(StoreError::Key(format!(
            "{from} must hold at least 16 bytes of key material, found {}",
            k.len()
        )));
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
