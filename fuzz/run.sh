#!/usr/bin/env bash
# Fuzzes every parser of netboot-init with cargo-fuzz (libFuzzer).
#
#   fuzz/run.sh [RUNS] [TARGET...]
#
# RUNS defaults to 10000000 executions per target; without TARGETs every target in
# fuzz/Cargo.toml runs, one after the other. Prints the executions and time per target and
# exits non-zero if a target fails to build or finds a panic, a hang or a memory blow-up
# (the input is kept in fuzz/artifacts/TARGET/). Seeds come from fuzz/seeds/TARGET/ (real
# files: a netboot command line, the example config, depmod output of Debian kernels, a
# `nix-store --dump-db`, mksquashfs superblocks, ...), dictionaries from fuzz/dicts/TARGET.dict.
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 lets it take the unstable flags cargo-fuzz
# passes. cargo-fuzz is installed with `cargo install` when missing. Environment:
#   FUZZ_SANITIZER  address|none (default none: the code is safe Rust, so the findings are
#                   panics, overflows (debug assertions are on), hangs and memory blow-ups;
#                   `none` runs several times faster)
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (default 10)
#   FUZZ_RSS_MB     memory limit (default 2048)
#   FUZZ_DEBUG_ASSERTIONS  1|0 (default 1: overflow checks and debug_assert! on)
#   FUZZ_MAX_LEN    longest input libFuzzer generates (default: libFuzzer's, 4096 bytes)
#   CARGO_BUILD_JOBS  build parallelism, as for cargo
set -euo pipefail

runs=${1:-10000000}
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --version 0.13.2
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

sanitizer=${FUZZ_SANITIZER:-none}
build_flags=(--sanitizer "$sanitizer")
# cargo-fuzz turns debug assertions off only for an explicit --release.
if [ "${FUZZ_DEBUG_ASSERTIONS:-1}" = 1 ]; then
    build_flags+=(--debug-assertions)
else
    build_flags+=(--release)
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
bindir="${CARGO_TARGET_DIR:-$here/target}/$triple/release"
mkdir -p logs

# Build everything first, so every target runs against the same code.
summary=()
failed=0
runnable=()
for t in "${targets[@]}"; do
    if cargo fuzz build "${build_flags[@]}" "$t" >"logs/$t.build.log" 2>&1; then
        runnable+=("$t")
    else
        failed=1
        summary+=("$t: FAILED to build, see fuzz/logs/$t.build.log")
        tail -n5 "logs/$t.build.log" >&2
    fi
done

extra=()
[ -n "${FUZZ_MAX_LEN:-}" ] && extra+=(-max_len="$FUZZ_MAX_LEN")
for t in "${runnable[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    dict=()
    [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
    log="logs/$t.log"
    echo "== $t: $runs executions" >&2
    set +e
    "$bindir/$t" -artifact_prefix="artifacts/$t/" -runs="$runs" -timeout="${FUZZ_TIMEOUT:-10}" \
        -rss_limit_mb="${FUZZ_RSS_MB:-2048}" -print_final_stats=1 "${extra[@]}" "${dict[@]}" "${dirs[@]}" \
        >"$log" 2>&1
    status=$?
    set -e
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n1 || true)
    execs=$(sed -nE 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1/p' <<<"$done_line")
    secs=$(sed -nE 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\2/p' <<<"$done_line")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n1 | cut -d' ' -f2 || true)
    corpus=$(find "corpus/$t" -type f | wc -l)
    if [ "$status" -eq 0 ] && [ -n "$execs" ]; then
        line="$t: ok, ${execs} executions in ${secs} s, coverage ${cov:-?} edges, corpus ${corpus}"
    else
        failed=1
        line="$t: FAILED (exit $status), see fuzz/$log and fuzz/artifacts/$t/"
        grep -E 'panicked at|SUMMARY|ERROR: libFuzzer|Test unit written' "$log" | head -n5 >&2 || true
    fi
    echo "$line"
    summary+=("$line")
done

echo
echo "fuzz summary ($runs executions per target, sanitizer $sanitizer, debug assertions ${FUZZ_DEBUG_ASSERTIONS:-1}):"
printf '  %s\n' "${summary[@]}"
exit "$failed"
