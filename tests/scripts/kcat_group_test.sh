#!/usr/bin/env bash
# kcat's balanced consumer (-G) against a running broker at $KEEL_BOOTSTRAP:
# a group reads everything produced before it joined and exits at the end
# (-e); its offsets, committed on close, make a second run of the same
# group read nothing old, and a third run read exactly what came since.
# The 3-partition topic is created with the keel CLI ($KEEL_BIN, default
# target/debug/keel).
set -euo pipefail

b=${KEEL_BOOTSTRAP:?set KEEL_BOOTSTRAP to the broker address}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
keel=${KEEL_BIN:-$root/target/debug/keel}
case "$keel" in
    /*) ;;
    *) [[ -x "$keel" ]] || keel="$root/$keel" ;;
esac
topic="kcat-group-$$-$RANDOM"
group="$topic-group"
fail() {
    echo "kcat_group_test: $*" >&2
    exit 1
}

"$keel" topic create "$topic" --partitions 3 --bootstrap-server "$b" >/dev/null ||
    fail "keel topic create failed"

# Ten records into each partition.
for p in 0 1 2; do
    for i in $(seq 0 9); do echo "p$p-r$i"; done |
        kcat -b "$b" -P -t "$topic" -p "$p" -m 10
done

# The group's consumer: partition:offset:value lines, sorted. -e exits once
# every assigned partition is at its end; the timeout stops a hung join.
group_read() {
    timeout 60 kcat -b "$b" -G "$group" -e -m 10 \
        -X auto.offset.reset=earliest \
        -X session.timeout.ms=6000 \
        -X heartbeat.interval.ms=500 \
        -f '%p:%o:%s\n' "$topic" | sort -t: -k1,1n -k2,2n ||
        fail "kcat -G failed or timed out (group $group)"
}

expected=$(for p in 0 1 2; do for i in $(seq 0 9); do echo "$p:$i:p$p-r$i"; done; done)
got=$(group_read)
[[ "$got" == "$expected" ]] || fail "first run of the group read:
$got
expected:
$expected"

# Offsets were committed when that consumer closed: nothing is read again.
got=$(group_read)
[[ -z "$got" ]] || fail "second run of the group re-read records:
$got"

# Two more records per partition: a third run reads exactly those.
for p in 0 1 2; do
    printf 'p%s-new0\np%s-new1\n' "$p" "$p" | kcat -b "$b" -P -t "$topic" -p "$p" -m 10
done
expected=$(for p in 0 1 2; do echo "$p:10:p$p-new0"; echo "$p:11:p$p-new1"; done)
got=$(group_read)
[[ "$got" == "$expected" ]] || fail "third run of the group read:
$got
expected:
$expected"

# A different group starts from the beginning on its own offsets.
group="$topic-other"
got=$(group_read | wc -l)
[[ "$got" -eq 36 ]] || fail "a second group read $got records, expected 36"

echo "kcat_group_test: ok"
