#!/usr/bin/env bash
# Two configurations of one `act bench` workload, measured as interleaved
# pairs (A B A B …) in one run, so both see the same machine; prints each
# run and the median of each side and of the B/A ratio.
# Usage: bench/pairs.sh PAIRS WORKLOAD FIELD 'A: env and args' 'B: env and args'
#   FIELD is the row field compared: events_per_s or p99_ms.
# Examples (BENCH.md):
#   metrics and spans on vs off:
#     bench/pairs.sh 5 drain events_per_s \
#       'ACT_LOG=warn --store sqlite:///tmp/bench/o.db' \
#       'ACT_LOG=info,act=debug --store sqlite:///tmp/bench/o.db --observe'
#   TLS on vs off:
#     bench/pairs.sh 5 drain events_per_s \
#       "--store postgres://postgres@127.0.0.1:5432/test?schema=act_tls&sslmode=disable" \
#       "--store postgres://postgres@127.0.0.1:5432/test?schema=act_tls&sslmode=require"
# Needs python3 and the release binary (ACT=path to use another).
set -euo pipefail
act=${ACT:-$(dirname "$0")/../target/release/act}
pairs=$1; workload=$2; field=$3; a=$4; b=$5
out=$(mktemp)
run() { # side, "ENV=… args…"
  local side=$1; shift
  local envs=() args=()
  for w in $1; do
    if [[ $w == *=* && $w != --* && ${#args[@]} -eq 0 ]]; then envs+=("$w"); else args+=("$w"); fi
  done
  env "${envs[@]}" "$act" bench --workload "$workload" --json "${args[@]}" 2>/dev/null \
    | python3 -c "
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    if r.get('workload') == '$workload' or r.get('workload', '').startswith('$workload'):
        print('$side', r['$field'])
        break
" | tee -a "$out"
}
for _ in $(seq 1 "$pairs"); do
  run A "$a"
  run B "$b"
done
python3 - "$out" <<'PY'
import statistics, sys
a, b = [], []
for line in open(sys.argv[1]):
    side, v = line.split()
    (a if side == "A" else b).append(float(v))
ratios = [y / x for x, y in zip(a, b) if x]
print(f"A median {statistics.median(a):.1f}  B median {statistics.median(b):.1f}  "
      f"B/A median of pairs {statistics.median(ratios):.3f}  (pairs: {len(ratios)})")
PY
rm -f "$out"
