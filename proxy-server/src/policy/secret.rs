//! Client secrets of PIN custody (OPERATIONS.md, "PIN custody"): what a node presents as its
//! PIN when the proxy keeps the partition's, stored in the policy as a slow hash,
//! PBKDF2-HMAC-SHA256 (RFC 8018) with a random salt:
//! `pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX`. `pkcs11-proxy-server policy hash-secret`
//! makes one from a secret read on standard input.

use std::num::NonZeroU32;

use ring::pbkdf2;
use ring::rand::{SecureRandom, SystemRandom};

/// Iterations of a new hash: about 50 ms of one core here, per login (a login is rare; a
/// guess at the secret costs as much).
pub const ITERATIONS: u32 = 100_000;

const ALGORITHM: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

/// A stored secret, checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Hashed {
    /// Parses `pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX`.
    pub fn parse(stored: &str) -> Result<Self, String> {
        let bad = || {
            "client_secret: expected pbkdf2-sha256$ITERATIONS$SALT_HEX$HASH_HEX (made by `pkcs11-proxy-server policy hash-secret`)".to_string()
        };
        let parts: Vec<&str> = stored.split('$').collect();
        let ["pbkdf2-sha256", iterations, salt, hash] = parts.as_slice() else {
            return Err(bad());
        };
        let iterations: NonZeroU32 = iterations.parse().map_err(|_| bad())?;
        let (salt, hash) = (unhex(salt).ok_or_else(bad)?, unhex(hash).ok_or_else(bad)?);
        if salt.len() < 16 || hash.len() != 32 {
            return Err("client_secret: the salt needs 16 bytes at least, the hash 32".into());
        }
        Ok(Self {
            iterations,
            salt,
            hash,
        })
    }

    /// Whether `secret` is the one hashed (in constant time).
    pub fn verify(&self, secret: &[u8]) -> bool {
        pbkdf2::verify(ALGORITHM, self.iterations, &self.salt, secret, &self.hash).is_ok()
    }
}

/// A new stored form of `secret`.
pub fn hash(secret: &[u8]) -> Result<String, String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| "no randomness for a salt".to_string())?;
    let mut out = [0u8; 32];
    let iterations = NonZeroU32::new(ITERATIONS).expect("not zero");
    pbkdf2::derive(ALGORITHM, iterations, &salt, secret, &mut out);
    Ok(format!(
        "pbkdf2-sha256${ITERATIONS}${}${}",
        hex(&salt),
        hex(&out)
    ))
}

/// `pkcs11-proxy-server policy hash-secret`: reads a secret on standard input (its first
/// line) and prints the `client_secret` to put in the policy.
pub fn run(args: &[String]) -> std::process::ExitCode {
    if args != ["hash-secret"] {
        eprintln!("usage: pkcs11-proxy-server policy hash-secret < SECRET");
        return std::process::ExitCode::from(2);
    }
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() {
        eprintln!("cannot read the secret on standard input");
        return std::process::ExitCode::FAILURE;
    }
    let secret = line.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        eprintln!("an empty secret: refused");
        return std::process::ExitCode::FAILURE;
    }
    match hash(secret.as_bytes()) {
        Ok(h) => {
            println!("{h}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hashed_secret_verifies_itself_only_and_bad_forms_are_named() {
        let stored = hash(b"peer0 client secret").unwrap();
        let h = Hashed::parse(&stored).unwrap();
        assert!(h.verify(b"peer0 client secret"));
        assert!(!h.verify(b"peer0 client secreT"));
        assert!(!h.verify(b""));
        // Two hashes of one secret differ (their salts).
        assert_ne!(stored, hash(b"peer0 client secret").unwrap());
        for bad in [
            "",
            "plain",
            "pbkdf2-sha1$1000$00$00",
            "pbkdf2-sha256$0$00112233445566778899aabbccddeeff$00",
            "pbkdf2-sha256$1000$0011$00",
            "pbkdf2-sha256$1000$zz112233445566778899aabbccddeeff$00",
        ] {
            assert!(Hashed::parse(bad).is_err(), "{bad}");
        }
    }
}
