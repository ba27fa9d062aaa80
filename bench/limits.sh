#!/usr/bin/env bash
# The backends' own limits on this machine, for BENCH.md: pgbench with a
# one-row INSERT script at 1 and 8 clients, and redis-benchmark for the
# commands act-redis uses. Needs the servers of the test setup (PostgreSQL on
# 127.0.0.1:5432 user postgres database test; Redis on 127.0.0.1:6379).
# Usage: bench/limits.sh [SECONDS]   (default 10 s per pgbench run)
set -euo pipefail
export PGOPTIONS='-c client_min_messages=warning'
secs=${1:-10}
pg=(-h 127.0.0.1 -p 5432 -U postgres)
script=$(mktemp --suffix=.sql)
trap 'rm -f "$script"; psql "${pg[@]}" -d test -qc "DROP TABLE IF EXISTS act_bench_limit" >/dev/null' EXIT
echo "INSERT INTO act_bench_limit (v) VALUES (repeat('x', 100));" >"$script"
psql "${pg[@]}" -d test -qc "DROP TABLE IF EXISTS act_bench_limit; CREATE TABLE act_bench_limit (id bigserial PRIMARY KEY, v text NOT NULL)"
echo "# $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(psql "${pg[@]}" -d test -Atc 'SHOW server_version') PostgreSQL; $(redis-server --version | cut -d' ' -f3)"
for c in 1 8; do
  tps=$(pgbench "${pg[@]}" -n -f "$script" -c "$c" -j "$c" -T "$secs" test 2>/dev/null |
    awk -F'= ' '/^tps/ {split($2, a, " "); print a[1]}')
  echo "pgbench one-row INSERT, $c client(s): $tps tx/s"
done
rb() { redis-benchmark -h 127.0.0.1 -p 6379 -q "$@" | tr '\r' '\n' | grep 'requests per second' | sed 's/^ *//'; }
echo "redis-benchmark, 1 client:"; rb -n 100000 -c 1 -t set,incr
echo "redis-benchmark, 8 clients:"; rb -n 200000 -c 8 -t set,incr
echo "redis-benchmark EVAL of a two-key script (INCR + SET), 1 and 8 clients:"
for c in 1 8; do
  rb -n 100000 -c "$c" eval "redis.call('INCR', KEYS[1]); return redis.call('SET', KEYS[2], ARGV[1])" 2 act_bench:n act_bench:k v |
    sed "s/^eval.* v:/EVAL ($c):/"
done
# redis-benchmark -t set,incr writes key:__rand_int__ and counter:__rand_int__.
redis-cli -h 127.0.0.1 -p 6379 del act_bench:n act_bench:k key:__rand_int__ counter:__rand_int__ >/dev/null
