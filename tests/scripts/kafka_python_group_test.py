"""kafka-python (a pure-Python client) consumer groups against a running
broker at $KEEL_BOOTSTRAP: a KafkaConsumer with a group_id subscribes,
reads everything, commits; committed() returns the offsets (and a commit's
metadata); a new consumer in the group resumes exactly at the commits."""

import os
import sys
import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

BOOTSTRAP = os.environ["KEEL_BOOTSTRAP"]
TOPIC = f"kafka-python-group-{uuid.uuid4().hex[:12]}"
GROUP = f"{TOPIC}-group"
PARTITIONS = 3
PER_PARTITION = 30
TIMEOUT_S = 40


def fail(message):
    print(f"kafka_python_group_test: {message}", file=sys.stderr)
    sys.exit(1)


def produce(start, count):
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5,
                             request_timeout_ms=TIMEOUT_S * 1000)
    futures = [producer.send(TOPIC, value=f"p{p}-{i}".encode(), partition=p)
               for p in range(PARTITIONS) for i in range(start, start + count)]
    producer.flush(timeout=TIMEOUT_S)
    for f in futures:
        f.get(timeout=TIMEOUT_S)
    producer.close(timeout=TIMEOUT_S)


def group_consumer(**extra):
    config = dict(
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
        request_timeout_ms=TIMEOUT_S * 1000,
    )
    config.update(extra)
    consumer = KafkaConsumer(**config)
    consumer.subscribe([TOPIC])
    return consumer


def read(consumer, count, settle_s=0.0):
    """Polls until `count` records came (then `settle_s` more seconds, to
    catch any extra); returns (partition, offset, value) tuples."""
    got = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(got) < count:
        if time.monotonic() > deadline:
            fail(f"read {len(got)} of {count} records; assignment {consumer.assignment()}")
        for records in consumer.poll(timeout_ms=200).values():
            got.extend((r.partition, r.offset, r.value.decode()) for r in records)
    settle_until = time.monotonic() + settle_s
    while time.monotonic() < settle_until:
        for records in consumer.poll(timeout_ms=200).values():
            got.extend((r.partition, r.offset, r.value.decode()) for r in records)
    return got


def main():
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=TIMEOUT_S * 1000)
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])
    admin.close()
    produce(0, PER_PARTITION)
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]

    # One member reads everything and commits.
    consumer = group_consumer()
    got = read(consumer, PARTITIONS * PER_PARTITION)
    want = sorted((p, o, f"p{p}-{o}") for p in range(PARTITIONS) for o in range(PER_PARTITION))
    if sorted(got) != want:
        fail(f"read {len(got)} records, not the {len(want)} produced")
    if consumer.assignment() != set(tps):
        fail(f"the only member's assignment is {consumer.assignment()}")
    consumer.commit()
    for tp in tps:
        if consumer.committed(tp) != PER_PARTITION:
            fail(f"committed({tp}) = {consumer.committed(tp)}, expected {PER_PARTITION}")

    # An explicit commit with metadata moves partition 0 back to 10.
    consumer.commit({tps[0]: OffsetAndMetadata(10, "replay-from-10", -1)})
    consumer.close()
    # committed() answers from a cache for assigned partitions; a consumer
    # with no assignment asks the broker (OffsetFetch).
    outsider = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=GROUP, enable_auto_commit=False,
                             request_timeout_ms=TIMEOUT_S * 1000)
    meta = outsider.committed(tps[0], metadata=True)
    if meta is None or meta.offset != 10 or meta.metadata != "replay-from-10":
        fail(f"OffsetFetch for partition 0 gave {meta}, expected offset 10 with its metadata")
    others = [outsider.committed(tp) for tp in tps[1:]]
    if others != [PER_PARTITION] * (PARTITIONS - 1):
        fail(f"OffsetFetch for partitions 1.. gave {others}")
    outsider.close()

    # A new member resumes at the commits: partition 0 from 10, the others
    # from their ends. auto_offset_reset=latest would hide a lost commit on
    # partition 0 and earliest one on the others, so the check covers both.
    consumer = group_consumer(auto_offset_reset="latest")
    got = read(consumer, PER_PARTITION - 10, settle_s=1.0)
    want = sorted((0, o, f"p0-{o}") for o in range(10, PER_PARTITION))
    if sorted(got) != want:
        fail(f"the new member read {sorted(got)[:5]}... ({len(got)}), expected partition 0 from 10")
    produce(PER_PARTITION, 1)
    got = read(consumer, PARTITIONS, settle_s=0.5)
    want = sorted((p, PER_PARTITION, f"p{p}-{PER_PARTITION}") for p in range(PARTITIONS))
    if sorted(got) != want:
        fail(f"the new member then read {sorted(got)}, expected {want}")
    consumer.commit()
    for tp in tps:
        if consumer.committed(tp) != PER_PARTITION + 1:
            fail(f"committed({tp}) = {consumer.committed(tp)} after the second run")
    consumer.close()
    print("kafka_python_group_test: ok")


if __name__ == "__main__":
    main()
