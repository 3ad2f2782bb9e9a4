//! `pkcs11-proxy-server audit verify PATH...`: checks an audit log's chain (`super::log`),
//! across rotated files given oldest first (`PATH.* PATH` in a shell sorts them so). Exit
//! status 0 for an unbroken chain, 1 naming the first line that breaks it (an edited,
//! removed, inserted or reordered line breaks the link to the line after it, or its own).

use std::io::BufRead;
use std::path::Path;
use std::process::ExitCode;

use super::log::{hash, ORIGIN};

/// Checks the chain of `paths` in that order: the number of lines, or where it breaks.
pub fn verify(paths: &[&Path]) -> Result<u64, String> {
    let mut prev: Option<String> = None;
    let mut lines = 0;
    for path in paths {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            let at = format!("{} line {}", path.display(), i + 1);
            let value: serde_json::Value = serde_json::from_slice(&line)
                .map_err(|e| format!("{at}: not a JSON line ({e})"))?;
            let Some(claimed) = value.get("prev").and_then(|p| p.as_str()) else {
                return Err(format!("{at}: no `prev`"));
            };
            match &prev {
                Some(p) if p != claimed => {
                    return Err(format!(
                        "{at}: the chain breaks here: `prev` is not the hash of the line before it (a line was edited, removed, inserted or moved here or just before)"
                    ))
                }
                None if claimed != ORIGIN && value.get("event").and_then(|e| e.as_str()) != Some("rotated") => {
                    return Err(format!(
                        "{at}: the first line does not start a log (its `prev` is not {ORIGIN}): lines were removed before it"
                    ))
                }
                _ => {}
            }
            prev = Some(hash(&line));
            lines += 1;
        }
    }
    Ok(lines)
}

/// The `audit` subcommand: `audit verify PATH...`.
pub fn run(args: &[String]) -> ExitCode {
    let paths: Vec<&Path> = match args {
        [verb, paths @ ..] if verb == "verify" && !paths.is_empty() => {
            paths.iter().map(Path::new).collect()
        }
        _ => {
            eprintln!("usage: pkcs11-proxy-server audit verify PATH... (rotated files first, oldest first)");
            return ExitCode::from(2);
        }
    };
    match verify(&paths) {
        Ok(n) => {
            println!("audit log OK: {n} lines, the chain is unbroken");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("audit log BROKEN: {e}");
            ExitCode::FAILURE
        }
    }
}
