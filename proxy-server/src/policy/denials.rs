//! The operator's denials for every client: PKCS#11 functions and mechanisms this server
//! refuses to serve (`--deny-function C_InitToken`, `--deny-mechanism 0x1`), whatever the
//! vendor library allows. A denied function answers CKR_FUNCTION_NOT_SUPPORTED, a denied mechanism
//! CKR_MECHANISM_INVALID, each with a log line naming it.

use std::collections::HashSet;

use cryptoki_sys::*;
use protocol::message::Request;

/// What is denied.
#[derive(Debug, Default)]
pub struct Denials {
    functions: HashSet<String>,
    mechanisms: HashSet<u64>,
}

impl Denials {
    /// Builds the policy; names must be PKCS#11 function names (`C_...`), mechanisms numbers
    /// (decimal or 0x hex, as in the vendor's documentation).
    pub fn new(functions: &[String], mechanisms: &[String]) -> Result<Self, String> {
        for f in functions {
            if !f.starts_with("C_")
                || f.len() < 3
                || !f[2..].chars().all(|c| c.is_ascii_alphanumeric())
            {
                return Err(format!(
                    "--deny-function {f}: not a PKCS#11 function name (C_InitToken, C_SetPIN, ...)"
                ));
            }
        }
        let mechanisms = mechanisms
            .iter()
            .map(|m| {
                let parsed = match m.strip_prefix("0x").or_else(|| m.strip_prefix("0X")) {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => m.parse(),
                };
                parsed.map_err(|_| {
                    format!("--deny-mechanism {m}: not a mechanism number (decimal or 0x hex)")
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            functions: functions.iter().cloned().collect(),
            mechanisms,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.functions.is_empty() && self.mechanisms.is_empty()
    }

    /// Whether the policy lets applications call the function `name` (`C_...`).
    pub fn allows(&self, name: &str) -> bool {
        !self.functions.contains(name)
    }

    /// The refusal for `request`, if the policy denies it.
    pub fn check(&self, request: &Request) -> Option<CK_RV> {
        if self.is_empty() {
            return None;
        }
        let name = request.descriptor().name;
        if self.functions.contains(name) {
            tracing::warn!(function = name, "call refused by policy (--deny-function)");
            return Some(CKR_FUNCTION_NOT_SUPPORTED);
        }
        let mech = request.mechanism()?.given()?.ty;
        if self.mechanisms.contains(&mech) {
            tracing::warn!(
                function = name,
                mechanism = format!("{mech:#x}"),
                "call refused by policy (--deny-mechanism)"
            );
            return Some(CKR_MECHANISM_INVALID);
        }
        None
    }
}
