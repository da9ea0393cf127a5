#!/usr/bin/env bash
# Soak: FRAMES frames (default 10000) through `causeseg run` with every file
# sink on (--save with labels, mask and overlay PNGs for every frame, --stats
# JSONL), at --size 224x224 with the k-means model, looping over the bundled
# sample images. Every 500 frames it records the process's RSS (VmRSS), open
# file descriptors (/proc/PID/fd) and threads (/proc/PID/status), then prints
# the table and the RSS growth after warm-up (the first sample, at 500
# frames). Not part of tests/run.sh: it takes a while.
#
#   tests/soak.sh [FRAMES] [CAUSESEG_BINARY]
#
# CAUSESEG_BINARY defaults to target/release/causeseg, else target/debug/causeseg
# (build one first: cargo build --release). Saved PNGs are deleted as the run
# goes (the process never sees it) so that disk use stays small; the stats
# file and the table are kept in $SOAK_DIR (default: a temporary directory).
# Exits 1 when RSS grew by 5 % or more after warm-up, when the last three
# fd counts all exceed the warm-up count (a leak; a file being written at a
# sample shows once), or when the thread count changed after warm-up.
set -euo pipefail
cd "$(dirname "$0")/.."

frames=${1:-10000}
binary=${2:-}
if [ -z "$binary" ]; then
  binary=target/release/causeseg
  [ -x "$binary" ] || binary=target/debug/causeseg
fi
[ -x "$binary" ] || { echo "soak.sh: no causeseg binary (cargo build --release)" >&2; exit 1; }
every=500
dir=${SOAK_DIR:-$(mktemp -d)}
mkdir -p "$dir/out"
stats=$dir/stats.jsonl
table=$dir/soak.tsv
: >"$stats"

echo "soak.sh: $frames frames with $binary; files in $dir" >&2
RUST_LOG=warn "$binary" run --source examples/images --loop --max-frames "$frames" \
  --model models/camvid-kmeans --size 224x224 \
  --save "$dir/out" --visualize labels,mask,overlay --stats "$stats" --log-every 60 \
  >"$dir/summary.txt" 2>"$dir/stderr.txt" &
pid=$!
start=$(date +%s.%N)

printf 'frames\tseconds\trss_kib\tfds\tthreads\n' >"$table"
next=$every
while kill -0 "$pid" 2>/dev/null; do
  done_frames=$(wc -l <"$stats")
  if ((done_frames >= next)); then
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    fds=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l)
    [ -n "$rss" ] || break
    now=$(date +%s.%N)
    printf '%d\t%.0f\t%d\t%d\t%d\n' "$done_frames" "$(echo "$now - $start" | bc)" "$rss" "$fds" "$threads" >>"$table"
    next=$((next + every))
    # Keep the disk small: drop saved frames (never the temporary files
    # being written, which start with a dot).
    find "$dir/out" -maxdepth 1 -name '[0-9]*.png' -delete
  fi
  sleep 0.2
done
status=0
wait "$pid" || status=$?
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
cat "$dir/summary.txt"
if ((status != 0)); then
  echo "soak.sh: causeseg exited $status:" >&2
  tail -n 5 "$dir/stderr.txt" >&2
  exit 1
fi

echo
column -t "$table"
# A leaked descriptor stays open; a PNG being written when a sample is taken
# shows up in that sample only. So fds fail the soak when the last three
# samples all exceed the warm-up count; threads must not change at all.
awk -v elapsed="$elapsed" 'NR == 2 {rss0 = $3; fd0 = $4; th0 = $5; fdmin = $4; fdmax = $4}
  NR > 2 {if ($3 > rssmax) rssmax = $3; if ($4 < fdmin) fdmin = $4; if ($4 > fdmax) fdmax = $4; if ($5 != th0) thchange = 1
    last3 = last2; last2 = last1; last1 = $4}
  END {
    if (NR < 5) { print "soak.sh: fewer than four samples"; exit 1 }
    growth = (rssmax - rss0) / rss0 * 100
    recent = last1; if (last2 < recent) recent = last2; if (last3 < recent) recent = last3
    fdleak = recent > fd0
    printf "\n%d frames in %.0f s (%.1f fps); RSS after warm-up (%d frames) %.1f MiB, highest later %.1f MiB: %+.2f %%\n", $1, elapsed, $1 / elapsed, 500, rss0 / 1024, rssmax / 1024, growth
    printf "fds %d after warm-up, %d-%d over the run, %d at the end: %s; threads %s\n", fd0, fdmin, fdmax, last1, fdleak ? "GROWN" : "no leak", thchange ? "CHANGED" : "flat (" th0 ")"
    exit (growth >= 5 || fdleak || thchange) ? 1 : 0
  }' "$table"
