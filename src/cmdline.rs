//! The kernel command line (`/proc/cmdline`), split by the kernel's own rules and read the
//! way NixOS stage 1 (`stage-1-init.sh`) reads it.
//!
//! Splitting follows `next_arg()` in the kernel (`kernel/params.c`): whitespace separates
//! words, double quotes group, a quote opening a word or a value and a quote closing the word
//! are removed, so `param="a b"` gives the word `param=a b`. A lone `--` ends the kernel's
//! parameters; the words after it are the init's arguments (up to a second `--`, where the
//! kernel stops handing arguments to init).
//!
//! Parsing never fails: unknown parameters are ignored and malformed values are collected in
//! [`Cmdline::problems`] so the init can log them and boot on.

use log::LevelFilter;

/// Longer command lines are truncated (the kernel's own limit is far smaller; this only bounds
/// the memory a corrupt `/proc/cmdline` can make the init use).
pub const MAX_CMDLINE_BYTES: usize = 64 * 1024;

/// At most this many problems are kept; the rest are counted in a final entry.
pub const MAX_PROBLEMS: usize = 32;

/// The kernel's `isspace()` on ASCII (the kernel also counts Latin-1 0xA0, which cannot be
/// split out of a UTF-8 string).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// One word as the kernel sees it: the parameter and, if it had an `=`, its value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Arg<'a> {
    param: &'a str,
    value: Option<&'a str>,
}

impl Arg<'_> {
    fn word(&self) -> String {
        match self.value {
            Some(v) => format!("{}={}", self.param, v),
            None => self.param.to_string(),
        }
    }

    fn is_dashes(&self) -> bool {
        self.value.is_none() && self.param == "--"
    }
}

/// The kernel's `next_arg()`: `s` starts at a non-space; returns the argument and the rest
/// with leading spaces skipped. All the bytes looked at are ASCII, so every slice is on a
/// character boundary.
fn next_arg(s: &str) -> (Arg<'_>, &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut in_quote = false;
    let mut quoted = false;
    if bytes.first() == Some(&b'"') {
        start = 1;
        in_quote = true;
        quoted = true;
    }
    let mut equals = None;
    let mut i = start;
    while i < bytes.len() {
        let b = bytes[i];
        if is_space(b) && !in_quote {
            break;
        }
        // As in the kernel, an `=` as the very first byte does not start a value.
        if equals.is_none() && b == b'=' && i > start {
            equals = Some(i);
        }
        if b == b'"' {
            in_quote = !in_quote;
        }
        i += 1;
    }
    let end = i;
    // A closing quote at the end of the word is dropped when the word or its value opened
    // with one.
    let ends_with_quote = end > start && bytes[end - 1] == b'"';
    let arg = match equals {
        None => {
            let stop = if quoted && ends_with_quote {
                end - 1
            } else {
                end
            };
            Arg {
                param: &s[start..stop],
                value: None,
            }
        }
        Some(eq) => {
            let mut vstart = eq + 1;
            let mut vend = end;
            if bytes.get(vstart) == Some(&b'"') {
                vstart += 1;
                if ends_with_quote {
                    vend = end - 1;
                }
            }
            if quoted && ends_with_quote {
                vend = end - 1;
            }
            // `a="` : the value's opening quote is also the word's last byte.
            let vend = vend.max(vstart.min(end));
            let vstart = vstart.min(vend);
            Arg {
                param: &s[start..eq],
                value: Some(&s[vstart..vend]),
            }
        }
    };
    let rest = &s[end..];
    (
        arg,
        rest.trim_start_matches(|c: char| c.is_ascii() && is_space(c as u8)),
    )
}

fn args(text: &str) -> Vec<Arg<'_>> {
    let mut out = Vec::new();
    let mut rest = text.trim_start_matches(|c: char| c.is_ascii() && is_space(c as u8));
    while !rest.is_empty() {
        let (arg, next) = next_arg(rest);
        out.push(arg);
        rest = next;
    }
    out
}

/// Cuts `text` to [`MAX_CMDLINE_BYTES`] on a character boundary.
fn truncate(text: &str) -> (&str, bool) {
    if text.len() <= MAX_CMDLINE_BYTES {
        return (text, false);
    }
    let mut cut = MAX_CMDLINE_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    (&text[..cut], true)
}

/// Splits a command line into words by the kernel's rules. Quotes are removed where the
/// kernel removes them; `--` is returned as a word of its own. Text beyond
/// [`MAX_CMDLINE_BYTES`] is ignored.
pub fn split(text: &str) -> Vec<String> {
    args(truncate(text).0).iter().map(Arg::word).collect()
}

/// Quotes one word so that [`split`] gives it back: words with whitespace (or empty ones) are
/// wrapped in double quotes. The kernel has no escape for a double quote, so a word
/// containing one is returned as is and may not survive a round trip.
pub fn quote(word: &str) -> String {
    if word.is_empty() || word.bytes().any(is_space) {
        format!("\"{word}\"")
    } else {
        word.to_string()
    }
}

/// What the init takes from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `init=`: the stage-2 init, overriding the config. When repeated the last one wins, as
    /// in the kernel and in NixOS stage 1.
    pub init: Option<String>,
    /// `boot.shell_on_fail`: offer the emergency shell on failure (only if the config allows).
    pub shell_on_fail: bool,
    /// `boot.panic_on_fail` or `stage1panic=1`: panic the kernel on failure.
    pub panic_on_fail: bool,
    /// `boot.debug1` (or `debug1`): stop before doing anything, as if stage 1 had failed.
    pub debug1: bool,
    /// `boot.debug1devices`: stop after loading the kernel modules.
    pub debug1devices: bool,
    /// `boot.debug1mounts`: stop after mounting the file systems.
    pub debug1mounts: bool,
    /// `boot.trace` (or `debugtrace`, `boot.debugtrace`): log every step.
    pub trace: bool,
    /// `netboot.loglevel=error|warn|info|debug|trace|off`.
    pub log_level: Option<LevelFilter>,
    /// `module.param=value` as `("module", "param=value")`, module names with `-` turned into
    /// `_`, in command-line order. A value with whitespace is quoted again for the kernel.
    pub module_params: Vec<(String, String)>,
    /// `netboot.modules=sequential`: load kernel modules one at a time (a benchmark
    /// baseline); `netboot.modules=parallel` is the default.
    pub modules_sequential: bool,
    /// The words after `--`, for the stage-2 init.
    pub init_args: Vec<String>,
    /// Malformed values, e.g. `boot.panic_on_fail=maybe: expected no value, 0 or 1`.
    pub problems: Vec<String>,
}

/// Namespaces that are never module names: NixOS stage 1's, this init's, and kmod's own
/// (`modprobe.blacklist=`).
const NOT_MODULES: &[&str] = &["boot", "netboot", "modprobe"];

impl Cmdline {
    /// Reads a command line; never fails (see [`Cmdline::problems`]).
    pub fn parse(text: &str) -> Cmdline {
        let mut c = Cmdline::default();
        let (text, truncated) = truncate(text);
        if truncated {
            c.problem(format!(
                "command line longer than {MAX_CMDLINE_BYTES} bytes: the rest is ignored"
            ));
        }
        let all = args(text);
        let mut it = all.iter();
        for arg in it.by_ref() {
            if arg.is_dashes() {
                break;
            }
            c.kernel_param(arg);
        }
        c.init_args = it.take_while(|a| !a.is_dashes()).map(Arg::word).collect();
        c
    }

    /// NixOS stage 1 lets any of the debug1 stops open a shell, as `boot.shell_on_fail` does.
    pub fn wants_shell(&self) -> bool {
        self.shell_on_fail || self.debug1 || self.debug1devices || self.debug1mounts
    }

    fn problem(&mut self, p: String) {
        match self.problems.len() {
            n if n < MAX_PROBLEMS => self.problems.push(p),
            n if n == MAX_PROBLEMS => self.problems.push("further problems not shown".into()),
            _ => {}
        }
    }

    fn kernel_param(&mut self, arg: &Arg<'_>) {
        let flag: Option<fn(&mut Cmdline) -> &mut bool> = match arg.param {
            "boot.shell_on_fail" => Some(|c| &mut c.shell_on_fail),
            "boot.panic_on_fail" | "stage1panic" => Some(|c| &mut c.panic_on_fail),
            "boot.debug1" | "debug1" => Some(|c| &mut c.debug1),
            "boot.debug1devices" => Some(|c| &mut c.debug1devices),
            "boot.debug1mounts" => Some(|c| &mut c.debug1mounts),
            "boot.trace" | "boot.debugtrace" | "debugtrace" => Some(|c| &mut c.trace),
            _ => None,
        };
        if let Some(field) = flag {
            // NixOS matches `stage1panic=1` only; the bare word would be a mistake.
            let value = match (arg.param, arg.value) {
                ("stage1panic", None) => Err("expected =1 or =0"),
                (_, None | Some("1")) => Ok(true),
                (_, Some("0")) => Ok(false),
                ("stage1panic", Some(_)) => Err("expected =1 or =0"),
                (_, Some(_)) => Err("expected no value, 0 or 1"),
            };
            match value {
                Ok(v) => *field(self) = v,
                Err(why) => self.problem(format!("{}: {why}", shown(arg))),
            }
            return;
        }
        match arg.param {
            "init" => match arg.value {
                Some(v) if v.contains('\0') => {
                    self.problem(format!("{}: contains a NUL byte", shown(arg)))
                }
                Some(v) if v.starts_with('/') => self.init = Some(v.into()),
                Some("") | None => self.problem(format!("{}: expected a path", shown(arg))),
                Some(_) => self.problem(format!("{}: expected an absolute path", shown(arg))),
            },
            "netboot.loglevel" => match arg.value.map(parse_level) {
                Some(Some(level)) => self.log_level = Some(level),
                _ => self.problem(format!(
                    "{}: expected error, warn, info, debug, trace or off",
                    shown(arg)
                )),
            },
            "netboot.modules" => match arg.value {
                Some("sequential") => self.modules_sequential = true,
                Some("parallel") => self.modules_sequential = false,
                _ => self.problem(format!("{}: expected sequential or parallel", shown(arg))),
            },
            _ => self.module_param(arg),
        }
    }

    fn module_param(&mut self, arg: &Arg<'_>) {
        // kmod's rule: `module.param[=value]`, the dot before any `=`.
        let Some((module, param)) = arg.param.split_once('.') else {
            return;
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !valid(module) || NOT_MODULES.contains(&module) || param.is_empty() {
            return;
        }
        if param.bytes().any(|b| is_space(b) || b == b'"') {
            return;
        }
        let module = module.replace('-', "_");
        let setting = match arg.value {
            None => param.to_string(),
            Some(v) if v.bytes().any(is_space) => format!("{param}=\"{v}\""),
            Some(v) => format!("{param}={v}"),
        };
        self.module_params.push((module, setting));
    }
}

/// Problems quote the word, cut to [`MAX_SHOWN_BYTES`] so a huge word cannot make a huge log.
const MAX_SHOWN_BYTES: usize = 128;

fn shown(arg: &Arg<'_>) -> String {
    let mut word = arg.word();
    if word.len() > MAX_SHOWN_BYTES {
        let mut cut = MAX_SHOWN_BYTES;
        while !word.is_char_boundary(cut) {
            cut -= 1;
        }
        word.truncate(cut);
        word.push_str("...");
    }
    word
}

fn parse_level(s: &str) -> Option<LevelFilter> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_table() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   \t\n ", &[]),
            ("a b  c", &["a", "b", "c"]),
            ("  lead trail  ", &["lead", "trail"]),
            ("a\tb\nc\rd", &["a", "b", "c", "d"]),
            // Quotes group and are removed.
            (r#"param="a b" x"#, &["param=a b", "x"]),
            (r#""a b" c"#, &["a b", "c"]),
            (r#""k=v w""#, &["k=v w"]),
            (r#""""#, &[""]),
            (r#"a="" b"#, &["a=", "b"]),
            // An unterminated quote runs to the end of the line.
            (r#"a="b c"#, &["a=b c"]),
            (r#"a=""#, &["a="]),
            (r#"""#, &[""]),
            // Quotes inside a word group but stay, as in the kernel.
            (r#"a"b c"d e"#, &[r#"a"b c"d"#, "e"]),
            (r#"a=b"c d" e"#, &[r#"a=b"c d""#, "e"]),
            // Only the first `=` separates.
            ("init=/a=b", &["init=/a=b"]),
            ("=x", &["=x"]),
            ("-- a b", &["--", "a", "b"]),
            (r#"x -- "a b" -- c"#, &["x", "--", "a b", "--", "c"]),
            ("ünï=cödé x", &["ünï=cödé", "x"]),
        ];
        for (input, want) in cases {
            assert_eq!(split(input), *want, "split({input:?})");
        }
    }

    fn parsed(s: &str) -> Cmdline {
        Cmdline::parse(s)
    }

    #[test]
    fn nixos_parameters() {
        let c = parsed(
            "console=ttyS0 init=/nix/store/abc-system/init boot.shell_on_fail boot.panic_on_fail \
             boot.debug1 boot.debug1devices boot.debug1mounts boot.trace netboot.loglevel=debug",
        );
        assert_eq!(
            c,
            Cmdline {
                init: Some("/nix/store/abc-system/init".into()),
                shell_on_fail: true,
                panic_on_fail: true,
                debug1: true,
                debug1devices: true,
                debug1mounts: true,
                trace: true,
                log_level: Some(LevelFilter::Debug),
                ..Cmdline::default()
            }
        );
        assert_eq!(parsed("quiet loglevel=4"), Cmdline::default());
    }

    #[test]
    fn flag_table() {
        // (input, panic_on_fail, trace, debug1, problems)
        let cases: &[(&str, bool, bool, bool, &[&str])] = &[
            ("stage1panic=1", true, false, false, &[]),
            ("stage1panic=0", false, false, false, &[]),
            (
                "stage1panic",
                false,
                false,
                false,
                &["stage1panic: expected =1 or =0"],
            ),
            (
                "stage1panic=yes",
                false,
                false,
                false,
                &["stage1panic=yes: expected =1 or =0"],
            ),
            ("boot.panic_on_fail=1", true, false, false, &[]),
            (
                "boot.panic_on_fail=maybe",
                false,
                false,
                false,
                &["boot.panic_on_fail=maybe: expected no value, 0 or 1"],
            ),
            // Repeated flags: the last one wins.
            (
                "boot.panic_on_fail boot.panic_on_fail=0",
                false,
                false,
                false,
                &[],
            ),
            (
                "boot.panic_on_fail=0 stage1panic=1",
                true,
                false,
                false,
                &[],
            ),
            ("debugtrace", false, true, false, &[]),
            ("boot.debugtrace", false, true, false, &[]),
            (
                "boot.trace=",
                false,
                false,
                false,
                &["boot.trace=: expected no value, 0 or 1"],
            ),
            ("debug1", false, false, true, &[]),
            // Flags after `--` belong to init.
            ("-- boot.panic_on_fail", false, false, false, &[]),
            // Prefixes and case variants are other parameters.
            (
                "boot.panic_on_failure BOOT.TRACE boot.debug",
                false,
                false,
                false,
                &[],
            ),
        ];
        for (input, panic, trace, debug1, problems) in cases {
            let c = parsed(input);
            assert_eq!(
                (c.panic_on_fail, c.trace, c.debug1, c.problems.as_slice()),
                (
                    *panic,
                    *trace,
                    *debug1,
                    &problems.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]
                ),
                "{input:?}"
            );
        }
    }

    #[test]
    fn init_table() {
        // (input, init, problems)
        let cases: &[(&str, Option<&str>, &[&str])] = &[
            ("init=/sbin/init", Some("/sbin/init"), &[]),
            // Repeated: the last valid one wins.
            ("init=/a init=/b", Some("/b"), &[]),
            ("init=/a init=", Some("/a"), &["init=: expected a path"]),
            ("init", None, &["init: expected a path"]),
            (
                "init=sbin/init",
                None,
                &["init=sbin/init: expected an absolute path"],
            ),
            (r#"init="/my dir/init""#, Some("/my dir/init"), &[]),
            ("init=/x=y/init", Some("/x=y/init"), &[]),
            ("init=/a\0b", None, &["init=/a\0b: contains a NUL byte"]),
            // After `--` it is an argument for init, not a parameter.
            ("init=/a -- init=/b", Some("/a"), &[]),
        ];
        for (input, init, problems) in cases {
            let c = parsed(input);
            assert_eq!(c.init.as_deref(), *init, "{input:?}");
            assert_eq!(c.problems, *problems, "{input:?}");
        }
    }

    #[test]
    fn init_args_table() {
        let cases: &[(&str, &[&str])] = &[
            ("a b", &[]),
            ("a --", &[]),
            ("a -- x y", &["x", "y"]),
            (r#"a -- "x y" z="1 2""#, &["x y", "z=1 2"]),
            // The kernel stops handing words to init at a second `--`.
            ("a -- x -- y", &["x"]),
            // `--=` and `"--"`: the first is a parameter with a value, the second is `--`.
            ("--= x", &[]),
            (r#""--" x"#, &["x"]),
            ("-- --", &[]),
        ];
        for (input, want) in cases {
            assert_eq!(parsed(input).init_args, *want, "{input:?}");
        }
    }

    #[test]
    fn log_level_table() {
        let cases: &[(&str, Option<LevelFilter>, usize)] = &[
            ("netboot.loglevel=error", Some(LevelFilter::Error), 0),
            ("netboot.loglevel=WARN", Some(LevelFilter::Warn), 0),
            ("netboot.loglevel=info", Some(LevelFilter::Info), 0),
            ("netboot.loglevel=trace", Some(LevelFilter::Trace), 0),
            ("netboot.loglevel=off", Some(LevelFilter::Off), 0),
            (
                "netboot.loglevel=debug netboot.loglevel=info",
                Some(LevelFilter::Info),
                0,
            ),
            ("netboot.loglevel=loud", None, 1),
            ("netboot.loglevel", None, 1),
            (
                "netboot.loglevel=info netboot.loglevel=7",
                Some(LevelFilter::Info),
                1,
            ),
        ];
        for (input, want, problems) in cases {
            let c = parsed(input);
            assert_eq!(
                (c.log_level, c.problems.len()),
                (*want, *problems),
                "{input:?}"
            );
        }
        assert_eq!(
            parsed("netboot.loglevel=loud").problems,
            ["netboot.loglevel=loud: expected error, warn, info, debug, trace or off"]
        );
    }

    #[test]
    fn module_params_table() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("squashfs.foo=bar", &[("squashfs", "foo=bar")]),
            (
                "snd-hda-intel.model=auto",
                &[("snd_hda_intel", "model=auto")],
            ),
            (
                "loop.max_loop=8 loop.max_part=2",
                &[("loop", "max_loop=8"), ("loop", "max_part=2")],
            ),
            ("usbcore.nousb", &[("usbcore", "nousb")]),
            ("mod.p=a.b", &[("mod", "p=a.b")]),
            (r#"mod.p="a b""#, &[("mod", "p=\"a b\"")]),
            ("mod.p=", &[("mod", "p=")]),
            // Not module parameters.
            ("boot.foo=1 netboot.x=y modprobe.blacklist=floppy", &[]),
            ("p=a.b .p=1 mod.=1 a/b.c=1", &[]),
            ("-- mod.p=1", &[]),
        ];
        for (input, want) in cases {
            let got = parsed(input).module_params;
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(m, p)| (m.to_string(), p.to_string()))
                .collect();
            assert_eq!(got, want, "{input:?}");
        }
    }

    #[test]
    fn wants_shell() {
        assert!(!parsed("").wants_shell());
        for p in [
            "boot.shell_on_fail",
            "boot.debug1",
            "boot.debug1devices",
            "boot.debug1mounts",
        ] {
            assert!(parsed(p).wants_shell(), "{p}");
        }
    }

    #[test]
    fn limits() {
        let long = format!("init=/a {}init=/b", "x ".repeat(MAX_CMDLINE_BYTES));
        let c = parsed(&long);
        assert_eq!(c.init.as_deref(), Some("/a"));
        assert_eq!(
            c.problems,
            [format!(
                "command line longer than {MAX_CMDLINE_BYTES} bytes: the rest is ignored"
            )]
        );
        assert!(split(&long).len() <= MAX_CMDLINE_BYTES / 2 + 1);
        // Truncation lands on a character boundary.
        let wide = "é".repeat(MAX_CMDLINE_BYTES);
        assert!(split(&wide)[0].len() <= MAX_CMDLINE_BYTES);

        let huge = format!("init={}", "x".repeat(1000));
        assert_eq!(
            parsed(&huge).problems,
            [format!(
                "init={}...: expected an absolute path",
                "x".repeat(123)
            )]
        );

        let many = "boot.trace=x ".repeat(100);
        let c = parsed(&many);
        assert_eq!(c.problems.len(), MAX_PROBLEMS + 1);
        assert_eq!(
            c.problems.last().map(String::as_str),
            Some("further problems not shown")
        );
    }

    #[test]
    fn quote_round_trip() {
        let words = ["a", "k=v w", "", "x\ty", "--x", "=a b"];
        let line: Vec<String> = words.iter().map(|w| quote(w)).collect();
        assert_eq!(split(&line.join(" ")), words);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Words the kernel can carry: anything but a double quote.
    fn word() -> impl Strategy<Value = String> {
        "[^\"]{0,12}"
    }

    proptest! {
        #[test]
        fn never_panics(text in any::<String>()) {
            let words = split(&text);
            let c = Cmdline::parse(&text);
            prop_assert!(words.len() <= text.len());
            prop_assert!(c.problems.len() <= MAX_PROBLEMS + 1);
        }

        #[test]
        fn never_panics_on_cmdline_like_text(text in "[ a=\"\\-.b_\t]{0,64}") {
            let c = Cmdline::parse(&text);
            // Whatever the quotes do, no word is longer than the line.
            for w in split(&text) {
                prop_assert!(w.len() <= text.len());
            }
            prop_assert!(c.init_args.len() <= text.len());
        }

        #[test]
        fn quoting_round_trips(words in prop::collection::vec(word(), 0..8)) {
            let line: Vec<String> = words.iter().map(|w| quote(w)).collect();
            prop_assert_eq!(split(&line.join(" ")), words);
        }

        #[test]
        fn words_after_dashes_go_to_init(
            params in prop::collection::vec("[a-z.=_0-9]{1,10}", 0..6),
            args in prop::collection::vec(word().prop_filter("not --", |w| w != "--"), 0..6),
        ) {
            let params: Vec<String> = params.into_iter().filter(|p| p != "--").collect();
            let quoted: Vec<String> = args.iter().map(|w| quote(w)).collect();
            let line = format!("{} -- {}", params.join(" "), quoted.join(" "));
            prop_assert_eq!(Cmdline::parse(&line).init_args, args);
        }

        #[test]
        fn last_init_wins(paths in prop::collection::vec("/[^\"\\s\0]{0,12}", 1..5)) {
            let line: Vec<String> = paths.iter().map(|p| format!("init={p}")).collect();
            let c = Cmdline::parse(&line.join(" "));
            prop_assert_eq!(c.init.as_ref(), paths.last());
        }

        #[test]
        fn module_params_keep_their_values(
            module in "[a-z][a-z0-9_-]{0,8}",
            param in "[a-z_]{1,8}",
            value in "[^\"\\s]{0,8}",
        ) {
            prop_assume!(!NOT_MODULES.contains(&module.as_str()));
            let c = Cmdline::parse(&format!("{module}.{param}={value}"));
            prop_assert_eq!(c.module_params, vec![(module.replace('-', "_"), format!("{param}={value}"))]);
        }
    }
}
