//! `cargo xtask setup|demo|test|bench|fuzz`: the project's commands, runnable on a fresh
//! machine (set-up is part of each command and idempotent).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup   install the Debian packages and fetch the kernels (idempotent)
  demo    build everything and boot a demo netboot image in QEMU, with its timings
  test    every test: rustfmt, clippy, unit, integration, QEMU boots; ends with `N passed, N failed`
  bench   benchmarks against the shell stage 1; writes target/bench/report.{json,md} and timeline.svg
  fuzz [RUNS] [TARGET...]  runs the fuzz targets (fuzz/run.sh; 10 million executions each by default)
  scenarios [NAME...]  only the QEMU scenarios";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let ws = workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("setup") => netboot_qemu::setup(&ws),
        Some("demo") => netboot_qemu::setup(&ws).and_then(|()| netboot_qemu::demo(&ws)),
        Some("test") => return test(&ws),
        Some("bench") => netboot_qemu::setup(&ws).and_then(|()| netboot_qemu::bench::run(&ws)),
        Some("fuzz") => run(Command::new(ws.join("fuzz/run.sh"))
            .args(&args[1..])
            .current_dir(ws.join("fuzz"))),
        Some("scenarios") => scenarios_only(&ws, &args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn scenarios_only(ws: &Path, names: &[String]) -> Result<()> {
    netboot_qemu::setup(ws)?;
    netboot_qemu::build_static(ws)?;
    let results = netboot_qemu::run_scenarios(ws, names)?;
    let failed = results.iter().filter(|r| !r.passed()).count();
    println!("{} passed, {} failed", results.len() - failed, failed);
    if failed > 0 {
        bail!("{failed} scenarios failed");
    }
    Ok(())
}

/// Counts of one group of tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    passed: usize,
    failed: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
    fn one(ok: bool) -> Tally {
        Tally {
            passed: usize::from(ok),
            failed: usize::from(!ok),
        }
    }
}

/// Sums the `test result: ok. 12 passed; 0 failed; ...` lines of `cargo test` output.
fn tally_cargo_test(output: &str) -> Tally {
    let mut tally = Tally::default();
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let count = |w: &str| words.iter().position(|x| *x == w);
            if let Some(i) = count("passed") {
                tally.passed += words.get(i - 1).and_then(|n| n.parse().ok()).unwrap_or(0);
            }
            if let Some(i) = count("failed") {
                if i > 0 {
                    tally.failed += words.get(i - 1).and_then(|n| n.parse().ok()).unwrap_or(0);
                }
            }
        }
    }
    tally
}

/// Runs a command, echoing its output, and returns (success, stdout+stderr).
fn run_capture(command: &mut Command) -> (bool, String) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, format!("could not start {command:?}: {e}")),
    };
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                eprintln!("{line}");
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });
    let mut text = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            println!("{line}");
            text.push_str(&line);
            text.push('\n');
        }
    }
    text.push_str(&err_thread.join().unwrap_or_default());
    let ok = child.wait().map(|s| s.success()).unwrap_or(false);
    (ok, text)
}

fn test(ws: &Path) -> ExitCode {
    let mut total = Tally::default();
    let mut failures: Vec<String> = Vec::new();
    let mut note = |name: &str, tally: Tally, failures: &mut Vec<String>| {
        if tally.failed > 0 {
            failures.push(name.to_string());
        }
        total.add(tally);
    };

    println!("== setup");
    if let Err(e) = netboot_qemu::setup(ws) {
        eprintln!("xtask: setup failed: {e:#}");
        note("setup", Tally::one(false), &mut failures);
    }

    println!("== rustfmt");
    let (ok, _) = run_capture(
        Command::new("cargo")
            .args(["fmt", "--all", "--check"])
            .current_dir(ws),
    );
    note("rustfmt", Tally::one(ok), &mut failures);

    println!("== clippy");
    let (ok, _) = run_capture(
        Command::new("cargo")
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(ws),
    );
    note("clippy", Tally::one(ok), &mut failures);

    println!("== static binaries");
    let built = netboot_qemu::build_static(ws);
    if let Err(e) = &built {
        eprintln!("xtask: building the static binaries failed: {e:#}");
    }
    note("static build", Tally::one(built.is_ok()), &mut failures);

    println!("== unit and integration tests");
    let (ok, output) = run_capture(
        Command::new("cargo")
            .args(["test", "--workspace", "--no-fail-fast"])
            .current_dir(ws),
    );
    let mut tally = tally_cargo_test(&output);
    if !ok && tally.failed == 0 {
        // A test binary that did not build or crashed reports no result line.
        tally.failed += 1;
    }
    note("cargo test", tally, &mut failures);

    println!("== QEMU scenarios");
    match netboot_qemu::run_scenarios(ws, &[]) {
        Ok(results) => {
            for r in results {
                note(
                    &format!("qemu scenario {}", r.name),
                    Tally::one(r.passed()),
                    &mut failures,
                );
            }
        }
        Err(e) => {
            eprintln!("xtask: the QEMU scenarios could not run: {e:#}");
            note("qemu scenarios", Tally::one(false), &mut failures);
        }
    }

    if !failures.is_empty() {
        println!("failed: {}", failures.join(", "));
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_cargo_test_result_lines() {
        let output = "running 3 tests\n\
            test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            test result: FAILED. 5 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out\n\
            test foo ... ok\n";
        assert_eq!(
            tally_cargo_test(output),
            Tally {
                passed: 8,
                failed: 2
            }
        );
        assert_eq!(tally_cargo_test("nothing"), Tally::default());
    }
}
