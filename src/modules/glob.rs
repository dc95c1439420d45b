//! fnmatch(3)-style matching (flags 0) for `modules.alias` patterns: `*`, `?`, `[...]`
//! (ranges, `!`/`^` negation, `]` first is literal) and `\` escapes. `*` also matches `/`,
//! as in kmod, which calls `fnmatch(pattern, alias, 0)`.

/// Whether `pattern` uses any glob syntax (plain aliases can be looked up exactly).
pub fn is_glob(pattern: &str) -> bool {
    pattern
        .bytes()
        .any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
}

/// Matches `text` against `pattern`. Linear backtracking on the last `*` only, so the time is
/// O(len(pattern) * len(text)) at worst, whatever the input.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    // Where to resume after the most recent `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match class(p, pi, t[ti]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                // An unterminated `[` is an ordinary character, as in fnmatch.
                None => (t[ti] == b'[').then_some(pi + 1),
            },
            Some(b'\\') if pi + 1 < p.len() => (p[pi + 1] == t[ti]).then_some(pi + 2),
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match step {
            Some(next) => {
                pi = next;
                ti += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    pi = sp;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// Evaluates the bracket expression starting at `p[start] == b'['` against `c`.
/// Returns (matched, index after `]`), or None when the bracket is not closed.
fn class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let (lo, after_lo) = if lo == b'\\' {
            (*p.get(i + 1)?, i + 2)
        } else {
            (lo, i + 1)
        };
        // A range `a-z`, unless the `-` is last before `]`.
        if p.get(after_lo) == Some(&b'-') && p.get(after_lo + 1).is_some_and(|&h| h != b']') {
            let (hi, after_hi) = if p[after_lo + 1] == b'\\' {
                (*p.get(after_lo + 2)?, after_lo + 3)
            } else {
                (p[after_lo + 1], after_lo + 2)
            };
            if lo <= c && c <= hi {
                matched = true;
            }
            i = after_hi;
        } else {
            if lo == c {
                matched = true;
            }
            i = after_lo;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, &str, bool)] = &[
            ("fs-squashfs", "fs-squashfs", true),
            ("fs-squashfs", "fs-squashfsx", false),
            ("fs-squashfs", "fs-squash", false),
            ("", "", true),
            ("", "a", false),
            ("*", "", true),
            ("*", "anything/with/slashes", true),
            ("a*", "a", true),
            ("a*b", "axxxb", true),
            ("a*b", "axxxbc", false),
            ("a*b*c", "abbbcbc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[abc]", "b", true),
            ("[abc]", "d", false),
            ("[!abc]", "d", true),
            ("[^abc]", "a", false),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[]]", "]", true),
            ("[]a]", "a", true),
            ("[a-]", "-", true),
            ("[", "[", true),
            ("[ab", "[ab", true),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("[\\]]", "]", true),
            (
                "pci:v00008086d00001234sv*sd*bc*sc*i*",
                "pci:v00008086d00001234sv00001AF4sd00001100bc01sc06i00",
                true,
            ),
            (
                "pci:v00008086d*sv*sd*bc02sc00i*",
                "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00",
                true,
            ),
            (
                "pci:v00008086d*sv*sd*bc02sc00i*",
                "pci:v00001AF4d000010D3sv00008086sd0000A01Fbc02sc00i00",
                false,
            ),
            (
                "usb:v*p*d*dc*dsc*dp*ic03isc*ip*in*",
                "usb:v046Dp_C52Bd1211dc00dsc00dp00ic03isc01ip02in00",
                true,
            ),
            ("acpi*:PNP0C0A:*", "acpi:PNP0C0A:", true),
            ("dmi*:svnLENOVO:*", "dmi:bvnX:svnLENOVO:pn20", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(matches(pattern, text), *want, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn many_stars_are_not_exponential() {
        let pattern = "*a".repeat(50) + "b";
        let text = "a".repeat(5000);
        assert!(!matches(&pattern, &text));
    }

    #[test]
    fn is_glob_table() {
        assert!(!is_glob("fs-squashfs"));
        assert!(is_glob("pci:v*"));
        assert!(is_glob("x?"));
        assert!(is_glob("[ab]"));
    }
}
