#!/usr/bin/env bash
# Runs every fuzz target (or those named) for FUZZ_RUNS inputs each, one after the other,
# at the lowest priority and in one process, so a shared machine stays usable; then
# minimises each corpus (cargo fuzz cmin). A summary line per target goes to
# fuzz/results.tsv (target, runs, seconds, exec/s, coverage, features, corpus, crashed).
#
# stable Rust builds the instrumented targets with RUSTC_BOOTSTRAP=1 (cargo fuzz uses
# -Z flags); no sanitizer (the shop forbids unsafe code; libFuzzer still catches every
# panic, overflow and assertion), debug assertions on.
set -euo pipefail
cd "$(dirname "$0")"

FUZZ_RUNS="${FUZZ_RUNS:-10000000}"
export RUSTC_BOOTSTRAP=1
FLAGS=(-O -a -s none)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
CARGO_BUILD_JOBS=1 nice -n 19 cargo fuzz build "${FLAGS[@]}"

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

[ -f results.tsv ] || printf 'target\truns\tseconds\texec_per_s\tcov\tft\tcorpus\tcrashed\n' >results.tsv
failed=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="logs/$target.log"
    mkdir -p logs
    start=$SECONDS
    status=0
    nice -n 19 cargo fuzz run "${FLAGS[@]}" "$target" "corpus/$target" "seeds/$target" -- \
        -runs="$FUZZ_RUNS" -dict=json.dict -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="artifacts/$target/" >"$log" 2>&1 || status=$?
    seconds=$((SECONDS - start))
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
    runs=$(grep -oP 'stat::number_of_executed_units: +\K[0-9]+' "$log" || echo 0)
    eps=$(grep -oP 'exec/s: \K[0-9]+' <<<"$done_line" || grep -oP 'stat::average_exec_per_sec: +\K[0-9]+' "$log" || echo 0)
    cov=$(grep -oP 'cov: \K[0-9]+' <<<"$done_line" || echo -)
    ft=$(grep -oP 'ft: \K[0-9]+' <<<"$done_line" || echo -)
    crashed=no
    if [ "$status" -ne 0 ]; then crashed=yes; failed+=("$target"); fi
    nice -n 19 cargo fuzz cmin "${FLAGS[@]}" "$target" "corpus/$target" >>"$log" 2>&1 || true
    corpus=$(find "corpus/$target" -type f | wc -l)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$runs" "$seconds" "$eps" "$cov" "$ft" "$corpus" "$crashed" | tee -a results.tsv
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in ${failed[*]}; the inputs are under fuzz/artifacts/ (logs in fuzz/logs/)" >&2
    exit 1
fi
