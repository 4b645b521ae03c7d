#!/usr/bin/env bash
# Runs every script test in this directory against one broker it starts
# itself. Builds nothing: the broker binary comes from $KEEL_BIN (default
# target/debug/keel, relative to the repository root).
#
# Each test gets the broker's address in $KEEL_BOOTSTRAP and must exit 0 on
# success. The last line printed is "N passed, M failed"; the exit status is
# non-zero if anything failed, including the broker dying along the way.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
keel_bin=${KEEL_BIN:-target/debug/keel}
case "$keel_bin" in
    /*) ;;
    *) [[ -x "$keel_bin" ]] || keel_bin="$root/$keel_bin" ;;
esac
if [[ ! -x "$keel_bin" ]]; then
    echo "run_all.sh: no keel binary at $keel_bin (build it, or set KEEL_BIN)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
test_timeout_s=${KEEL_SCRIPT_TEST_TIMEOUT_S:-120}

work=$(mktemp -d -t keel-scripts.XXXXXX)
broker_pid=
cleanup() {
    if [[ -n "$broker_pid" ]] && kill -0 "$broker_pid" 2>/dev/null; then
        kill -TERM "$broker_pid" 2>/dev/null
        for _ in $(seq 1 100); do
            kill -0 "$broker_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$broker_pid" 2>/dev/null
        wait "$broker_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$keel_bin" server \
    --override "log.dirs=$work/data" \
    --override "listeners=PLAINTEXT://127.0.0.1:0" \
    --override "group.initial.rebalance.delay.ms=0" \
    --override "log.cleaner.backoff.ms=100" \
    >"$work/stdout" 2>"$work/broker.log" &
broker_pid=$!

bootstrap=
for _ in $(seq 1 300); do
    bootstrap=$(sed -n 's/^keel listening on \(.*\)$/\1/p' "$work/stdout" | head -n 1)
    [[ -n "$bootstrap" ]] && break
    if ! kill -0 "$broker_pid" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
if [[ -z "$bootstrap" ]]; then
    echo "run_all.sh: the broker did not start; its log:" >&2
    tail -n 40 "$work/broker.log" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
export KEEL_BOOTSTRAP=$bootstrap
export KEEL_BIN="$(cd "$(dirname "$keel_bin")" && pwd)/$(basename "$keel_bin")"
echo "broker $keel_bin listening on $bootstrap (data in $work/data)"

passed=0
failed=0
for test in "$here"/kcat_test.sh "$here"/confluent_kafka_test.py "$here"/kafka_python_test.py \
    "$here"/kcat_group_test.sh "$here"/confluent_kafka_group_test.py \
    "$here"/kafka_python_group_test.py "$here"/aiokafka_group_test.py \
    "$here"/confluent_kafka_admin_test.py "$here"/kafka_python_admin_test.py \
    "$here"/confluent_kafka_compaction_test.py "$here"/confluent_kafka_txn_test.py; do
    name=$(basename "$test")
    case "$test" in
        *.py) runner=(python3 "$test") ;;
        *) runner=(bash "$test") ;;
    esac
    started=$(date +%s)
    if timeout "$test_timeout_s" "${runner[@]}" >"$work/$name.out" 2>&1; then
        passed=$((passed + 1))
        echo "PASS $name ($(( $(date +%s) - started )) s)"
    else
        status=$?
        failed=$((failed + 1))
        echo "FAIL $name (exit $status after $(( $(date +%s) - started )) s); its output:"
        sed 's/^/    /' "$work/$name.out"
        echo "    --- broker log (last 20 lines) ---"
        tail -n 20 "$work/broker.log" | sed 's/^/    /'
    fi
done

if ! kill -0 "$broker_pid" 2>/dev/null; then
    failed=$((failed + 1))
    echo "FAIL the broker died during the script tests; its log:"
    tail -n 40 "$work/broker.log" | sed 's/^/    /'
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
