#!/usr/bin/env bash
# Runs one fuzz target (fuzz/src/lib.rs lists them) for SECONDS, starting from its
# committed corpus and regression inputs, then minimizes the committed corpus with what
# the run found. A crash stops the run; its input is in fuzz/targets/artifacts/TARGET/.
#
# Usage: nice -n 10 scripts/fuzz.sh TARGET [SECONDS]     (default 600)
#        scripts/fuzz.sh TARGET 0 cmin                    (only minimize the corpus)
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Builds without a
# sanitizer (safe Rust: libFuzzer's coverage and crash detection are what matter) and
# with debug assertions, so integer overflows are crashes too.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${1:?usage: scripts/fuzz.sh TARGET [SECONDS]}
SECONDS_TO_RUN=${2:-600}
FUZZ_DIR=fuzz/targets
CORPUS=fuzz/corpus/$TARGET
REGRESSIONS=fuzz/regressions/$TARGET
FLAGS=(--fuzz-dir "$FUZZ_DIR" --sanitizer none --debug-assertions)

# The same dependency versions as the workspace: the fuzz project's own lock file is this
# one, extended with libFuzzer.
cp Cargo.lock "$FUZZ_DIR/Cargo.lock"
mkdir -p "$CORPUS" "$REGRESSIONS"

if [ "${3:-}" != cmin ]; then
  # New inputs go to the first directory (the committed corpus); the regressions are
  # read only. A hang of 10 s is a finding, as is using more than 2 GiB.
  cargo +nightly fuzz run "${FLAGS[@]}" "$TARGET" "$CORPUS" "$REGRESSIONS" -- \
    -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
fi
# Keep the fewest inputs that reach every edge the corpus reaches (hit counts aside).
cargo +nightly fuzz cmin "${FLAGS[@]}" "$TARGET" "$CORPUS" -- -use_counters=0
echo "corpus of $TARGET: $(find "$CORPUS" -type f | wc -l) files, $(du -sh "$CORPUS" | cut -f1)"
