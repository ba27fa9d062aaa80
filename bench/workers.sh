#!/usr/bin/env bash
# The bank demo delivered by N separate `act worker` processes: appends the
# workload with `act demo --no-settle`, starts N workers, waits until every
# queue that is not blocked has caught up, stops the workers (SIGTERM) and
# prints reactions/s from their own counters. A fresh namespace per run.
# Usage: bench/workers.sh STORE_URL_PREFIX N [EVENTS]
#   bench/workers.sh 'postgres://postgres@127.0.0.1:5432/test?schema=act_workers' 2 20000
# (the schema, prefix or file name gets a suffix per run, removed at the
# end for PostgreSQL). Needs python3 and the release binary.
set -euo pipefail
act=${ACT:-$(dirname "$0")/../target/release/act}
base=$1; n=$2; events=${3:-20000}
store="${base}${n}w$RANDOM"
# DEMO_ARGS: more `act demo` options, e.g. "--fail-share 0 --poison 0" to
# leave out the simulated failures (their retry backoff dominates otherwise).
# shellcheck disable=SC2086
"$act" --store "$store" demo --no-settle --events "$events" ${DEMO_ARGS:-} --json >/dev/null
logs=$(mktemp -d)
start=$(date +%s.%N)
pids=()
for i in $(seq 1 "$n"); do
  "$act" --store "$store" worker --json >"$logs/w$i" 2>/dev/null &
  pids+=($!)
done
# Caught up: every non-blocked queue has lag 0 and correlation has caught up.
while :; do
  if "$act" --store "$store" status --json | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
totals = rows[-1]["totals"]; queues = rows[:-1]
sys.exit(0 if totals["correlated"] and queues and all(q["lag"] == 0 or q["blocked"] for q in queues) else 1)'; then
    break
  fi
  sleep 0.05
done
end=$(date +%s.%N)
kill -TERM "${pids[@]}"; wait "${pids[@]}" || true
python3 - "$logs" "$n" "$start" "$end" "$events" <<'PY'
import json, os, sys
logs, n, start, end, events = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
reactions = 0
for f in os.listdir(logs):
    for line in open(os.path.join(logs, f)):
        row = json.loads(line)
        if row.get("event") == "stopped":
            reactions += row["stats"]["reactions"]
secs = end - start
print(json.dumps({"workload": "demo-workers", "workers": n, "events": events, "reactions": reactions,
                  "seconds": round(secs, 3), "reactions_per_s": round(reactions / secs)}))
PY
rm -rf "$logs"
case $store in
  postgres*) PGOPTIONS='-c client_min_messages=warning' psql "${store%%\?*}" -qc "DROP SCHEMA IF EXISTS ${store##*schema=} CASCADE" ;;
esac
