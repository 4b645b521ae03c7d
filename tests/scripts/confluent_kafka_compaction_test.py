"""Log compaction seen through confluent-kafka (librdkafka) against a running
broker at $KEEL_BOOTSTRAP: a compacted topic with small segments takes many
updates per key and some tombstones, then filler records with unique keys
close the segments holding them. The log cleaner must leave, for a consumer
reading from the beginning, exactly the latest value of every key at the
offset it was produced at, no trace of deleted keys once delete.retention.ms
has passed, and every filler record. A record without a key is refused with
INVALID_RECORD, and DeleteRecords with POLICY_VIOLATION.

run_all.sh starts the broker with log.cleaner.backoff.ms=100 so the cleaner
looks for work often; with Kafka's default of 15 s this still passes, only
more slowly."""

import os
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic, ResourceType

BOOTSTRAP = os.environ["KEEL_BOOTSTRAP"]
TOPIC = f"confluent-compact-{uuid.uuid4().hex[:12]}"
TIMEOUT_S = 30
COMPACTION_TIMEOUT_S = 45
KEYS = [f"key-{i}" for i in range(10)]
ROUNDS = 25
DELETED = {"key-8", "key-9"}
REVIVED = "key-7"  # deleted, then written again
PAD = "x" * 60

# Batches must stay below segment.bytes (4096), or the broker refuses them
# with RECORD_LIST_TOO_LARGE, as Kafka does.
producer = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "linger.ms": 2, "batch.size": 2048})


def fail(message):
    print(f"confluent_kafka_compaction_test: {message}", file=sys.stderr)
    sys.exit(1)


def create_topic():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    configs = {
        "cleanup.policy": "compact",
        "segment.bytes": "4096",
        "min.cleanable.dirty.ratio": "0.01",
        "delete.retention.ms": "100",
        "min.compaction.lag.ms": "0",
    }
    topic = NewTopic(TOPIC, num_partitions=1, replication_factor=1, config=configs)
    admin.create_topics([topic])[TOPIC].result(timeout=TIMEOUT_S)
    resource = ConfigResource(ResourceType.TOPIC, TOPIC)
    described = admin.describe_configs([resource])[resource].result(timeout=TIMEOUT_S)
    for name, value in configs.items():
        entry = described[name]
        if entry.value != value or entry.source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value:
            fail(f"topic config {name} = {entry.value!r} from {ConfigSource(entry.source).name}, "
                 f"expected {value!r} from DYNAMIC_TOPIC_CONFIG")


def produce(records):
    """records: [(key, value)] in order; returns their offsets."""
    offsets = [None] * len(records)
    errors = []

    def report(i):
        def on_delivery(err, msg):
            if err is not None:
                errors.append(err)
            else:
                offsets[i] = msg.offset()
        return on_delivery

    for i, (key, value) in enumerate(records):
        producer.produce(TOPIC, key=key.encode(), value=None if value is None else value.encode(),
                         partition=0, on_delivery=report(i))
    left = producer.flush(TIMEOUT_S)
    if left or errors:
        fail(f"{left} records undelivered, errors: {errors[:5]}")
    return offsets


filler_count = 0


def produce_filler(count):
    """Records with keys never used again, so compaction keeps them all; they
    roll segments so that everything before them becomes cleanable."""
    global filler_count
    records = [(f"filler-{filler_count + i}", f"filler-value-{filler_count + i}-{PAD}") for i in range(count)]
    filler_count += count
    return dict(zip((k for k, _ in records), zip(produce(records), (v for _, v in records))))


def read_all():
    """Every record from the beginning to the end of the partition:
    {key: [(offset, value)]} and the high watermark."""
    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP,
        "group.id": "confluent-compaction-test-unused",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
    })
    low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=TIMEOUT_S)
    consumer.assign([TopicPartition(TOPIC, 0, OFFSET_BEGINNING)])
    seen = {}
    last = -1
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                if msg.offset() >= high:
                    break
                continue
            fail(f"consumer error: {msg.error()}")
        if msg.offset() <= last:
            fail(f"offset {msg.offset()} came after {last}")
        last = msg.offset()
        value = None if msg.value() is None else msg.value().decode()
        seen.setdefault(msg.key().decode(), []).append((msg.offset(), value))
    else:
        fail(f"reading up to the high watermark {high} timed out at offset {last}")
    consumer.close()
    return seen, low, high


def check_keyless_refused():
    errors = []
    producer.produce(TOPIC, value=b"no key", partition=0,
                     on_delivery=lambda err, msg: errors.append(err))
    producer.flush(TIMEOUT_S)
    if len(errors) != 1 or errors[0] is None:
        fail(f"a record without a key was accepted by a compacted topic: {errors}")
    if errors[0].code() != KafkaError.INVALID_RECORD:
        fail(f"a record without a key failed with {errors[0].name()}, expected INVALID_RECORD")


def check_delete_records_refused():
    """Kafka refuses DeleteRecords on a topic whose cleanup.policy lacks
    delete, with POLICY_VIOLATION."""
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    future = list(admin.delete_records([TopicPartition(TOPIC, 0, 1)]).values())[0]
    try:
        result = future.result(timeout=TIMEOUT_S)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.POLICY_VIOLATION:
            fail(f"delete_records on a compacted topic failed with {e.args[0]}, expected POLICY_VIOLATION")
    else:
        fail(f"delete_records on a compact-only topic was accepted: low watermark {result.low_watermark}")


def main():
    create_topic()
    check_keyless_refused()

    # Many updates per key, interleaved, then tombstones, then a revival.
    updates = [(key, f"{key}-round-{r}-{PAD}") for r in range(ROUNDS) for key in KEYS]
    offsets = produce(updates)
    latest = {}
    for (key, value), offset in zip(updates, offsets):
        latest[key] = (offset, value)
    tombstones = [(key, None) for key in sorted(DELETED | {REVIVED})]
    tombstone_offsets = produce(tombstones)
    revival = [(REVIVED, f"{REVIVED}-revived")]
    revival_offsets = produce(revival)
    latest[REVIVED] = (revival_offsets[0], revival[0][1])
    for key in DELETED:
        del latest[key]
    fillers = produce_filler(100)
    # The refused keyless record took no offset: everything is contiguous.
    all_offsets = offsets + tombstone_offsets + revival_offsets + sorted(o for o, _ in fillers.values())
    total_before = len(all_offsets)
    if all_offsets != list(range(total_before)):
        fail(f"delivery offsets are not 0..{total_before - 1}: {all_offsets[:5]}...{all_offsets[-5:]}")

    deadline = time.monotonic() + COMPACTION_TIMEOUT_S
    problems = ["not checked yet"]
    started = time.monotonic()
    while time.monotonic() < deadline:
        seen, low, high = read_all()
        problems = []
        if low != 0:
            problems.append(f"log start offset moved to {low}")
        for key, (offset, value) in latest.items():
            if seen.get(key) != [(offset, value)]:
                problems.append(f"{key}: {seen.get(key, [])[:3]}... ({len(seen.get(key, []))} records), "
                                f"expected only {(offset, value[:24])}")
        for key in DELETED:
            if key in seen:
                problems.append(f"deleted {key} still has {seen[key][-2:]}")
        for key, (offset, value) in fillers.items():
            if seen.get(key) != [(offset, value)]:
                problems.append(f"filler {key} came back as {seen.get(key)}, expected [{offset}]")
        unexpected = set(seen) - set(latest) - set(DELETED) - set(fillers)
        if unexpected:
            problems.append(f"unexpected keys {sorted(unexpected)[:5]}")
        if not problems:
            break
        # More filler keeps the log dirty, so the cleaner comes back for the
        # tombstones once delete.retention.ms has passed.
        fillers.update(produce_filler(30))
        time.sleep(0.5)
    if problems:
        fail(f"after {COMPACTION_TIMEOUT_S} s the log is not compacted: {problems[:5]}")
    elapsed = time.monotonic() - started
    remaining = sum(len(v) for v in seen.values())
    if remaining >= high:
        fail(f"{remaining} records remain of the {high} produced: nothing was removed")

    check_delete_records_refused()

    # The active segment is never cleaned: two updates of one key written
    # as one batch (a batch never spans segments) and nothing after them
    # both stay, however many times the cleaner looks meanwhile.
    batching = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "linger.ms": 200,
                         "batch.size": 2048})
    delivered = []
    for value in (b"active-1", b"active-2"):
        batching.produce(TOPIC, key=b"active-key", value=value, partition=0,
                         on_delivery=lambda err, msg: delivered.append(err or msg.offset()))
    batching.flush(TIMEOUT_S)
    if delivered != [high, high + 1]:
        fail(f"the records written after cleaning were delivered as {delivered}, "
             f"expected offsets {[high, high + 1]}")
    time.sleep(2)
    seen, _, _ = read_all()
    if seen.get("active-key") != [(high, "active-1"), (high + 1, "active-2")]:
        fail(f"the active segment's two records of one key came back as {seen.get('active-key')}")
    print(f"confluent_kafka_compaction_test: ok ({high} records, {remaining} left after "
          f"{elapsed:.1f} s)")


if __name__ == "__main__":
    main()
