//! Patterns of the policy's token labels and object names: `*` stands for any run of
//! characters (none included), everything else for itself (no other wildcard: `?`, `[` are
//! characters of labels).

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &[u8], text: &[u8]) -> bool {
    // Greedy with backtracking to the last `*`: linear in practice, no recursion.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_match_any_run_and_nothing_else_is_special() {
        for (p, t) in [
            ("org1", "org1"),
            ("org1-*", "org1-peer0"),
            ("*", ""),
            ("*peer*", "org2-peer1-key"),
            ("a*b*c", "aXXbYYc"),
            ("ab?", "ab?"),
        ] {
            assert!(matches(p.as_bytes(), t.as_bytes()), "{p} {t}");
        }
        for (p, t) in [
            ("org1", "org10"),
            ("org1-*", "org2-peer0"),
            ("a*b", "ac"),
            ("ab?", "abc"),
        ] {
            assert!(!matches(p.as_bytes(), t.as_bytes()), "{p} {t}");
        }
    }
}
