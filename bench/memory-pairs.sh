#!/usr/bin/env bash
# Every memory-store workload, two binaries in turn, ROUNDS rounds: the
# before/after comparison of BENCH.md ("Memory store, third round").
# Usage: bench/memory-pairs.sh BEFORE_BIN AFTER_BIN [ROUNDS] > out.txt
# Each output line: "before|after ROUND {json row}".
set -euo pipefail
before=$1 after=$2 rounds=${3:-3}
for r in $(seq 1 "$rounds"); do
  for side in before after; do
    bin=$before; [ "$side" = after ] && bin=$after
    "$bin" bench --store memory: --workload commit --scale 10 --json 2>/dev/null | sed "s/^/$side $r /"
    "$bin" bench --store memory: --workload drain --workload demo --workload latency \
      --workload scale --workload fanout --workload backlog --json 2>/dev/null | sed "s/^/$side $r /"
  done
done
