#!/usr/bin/env bash
# kcat against a running broker at $KEEL_BOOTSTRAP: metadata listing, keyed
# and headered produce, compressed produce, and a consume round trip.
set -euo pipefail

b=${KEEL_BOOTSTRAP:?set KEEL_BOOTSTRAP to the broker address}
topic="kcat-$$-$RANDOM"
fail() {
    echo "kcat_test: $*" >&2
    exit 1
}

# -L: the single broker (node 1) at the address we dialled.
listing=$(kcat -b "$b" -L -m 10)
grep -q "1 brokers:" <<<"$listing" || fail "kcat -L shows no single broker: $listing"
grep -q "broker 1 at $b" <<<"$listing" || fail "kcat -L does not show broker 1 at $b: $listing"

# -P with keys: the topic is auto-created by the producer's Metadata request.
printf 'order-1:created\norder-2:paid\norder-1:shipped\n' |
    kcat -b "$b" -P -t "$topic" -p 0 -K : -m 10
# One record with headers, and one compressed batch.
printf 'with-headers\n' | kcat -b "$b" -P -t "$topic" -p 0 -k hdr -H trace=abc -H empty= -m 10
printf 'z1\nz2\nz3\n' | kcat -b "$b" -P -t "$topic" -p 0 -k zz -z snappy -m 10

# -L for the topic: one partition led by broker 1.
topic_listing=$(kcat -b "$b" -L -t "$topic" -m 10)
grep -q "topic \"$topic\" with 1 partitions" <<<"$topic_listing" ||
    fail "kcat -L -t does not show the topic: $topic_listing"
grep -q "partition 0, leader 1" <<<"$topic_listing" || fail "partition 0 has no leader 1: $topic_listing"

# -C -e: everything back, in order, with offsets, keys and headers.
got=$(kcat -b "$b" -C -t "$topic" -p 0 -o beginning -e -m 10 -f '%o|%k|%s|%h\n')
expected='0|order-1|created|
1|order-2|paid|
2|order-1|shipped|
3|hdr|with-headers|trace=abc,empty=
4|zz|z1|
5|zz|z2|
6|zz|z3|'
if [[ "$got" != "$expected" ]]; then
    fail "consumed records differ.
expected:
$expected
got:
$got"
fi

# -o with an offset and -c: a seek into the middle.
got=$(kcat -b "$b" -C -t "$topic" -p 0 -o 2 -c 2 -e -m 10 -f '%o:%s\n')
[[ "$got" == $'2:shipped\n3:with-headers' ]] || fail "consume from offset 2 gave: $got"

# -Q: offset lookup by timestamp (0 means "the first record").
got=$(kcat -b "$b" -Q -t "$topic:0:0" -m 10)
grep -q "offset 0" <<<"$got" || fail "kcat -Q for timestamp 0 gave: $got"

echo "kcat_test: ok"
