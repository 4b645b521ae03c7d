"""confluent-kafka (librdkafka) transactions against a running broker at
$KEEL_BOOTSTRAP: committed and aborted transactions over two partitions, a
read_committed consumer that sees only the committed ones and a
read_uncommitted one that sees both, then one consume-transform-produce pass
whose input offsets are committed in the output's transaction."""

import os
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = os.environ["KEEL_BOOTSTRAP"]
SUFFIX = uuid.uuid4().hex[:12]
TOPIC = f"txn-{SUFFIX}"
OUTPUT = f"txn-out-{SUFFIX}"
GROUP = f"txn-group-{SUFFIX}"
TIMEOUT_S = 30


def fail(message):
    print(f"confluent_kafka_txn_test: {message}", file=sys.stderr)
    sys.exit(1)


def create_topics():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=2, replication_factor=1) for t in (TOPIC, OUTPUT)]
    )
    for f in futures.values():
        f.result(timeout=TIMEOUT_S)


def transactional_producer(transactional_id):
    producer = Producer({
        "bootstrap.servers": BOOTSTRAP,
        "transactional.id": transactional_id,
        "linger.ms": 5,
    })
    producer.init_transactions(TIMEOUT_S)
    return producer


def read(topic, isolation, expected, group=None):
    config = {
        "bootstrap.servers": BOOTSTRAP,
        "group.id": group or f"reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": isolation,
    }
    consumer = Consumer(config)
    consumer.assign([TopicPartition(topic, p, 0) for p in (0, 1)])
    values = []
    deadline = time.time() + TIMEOUT_S
    settle = None
    while time.time() < deadline:
        if len(values) >= expected and settle is None:
            settle = time.time() + 1.0
        if settle is not None and time.time() >= settle:
            break
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            fail(f"consuming {topic} ({isolation}): {msg.error()}")
        values.append(msg.value().decode())
    consumer.close()
    return values


def committed_and_aborted():
    producer = transactional_producer(f"script-{SUFFIX}")
    committed, aborted = set(), set()
    for round_ in range(6):
        producer.begin_transaction()
        commit = round_ % 2 == 0
        for i in range(30):
            value = f"{'c' if commit else 'a'}-{round_}-{i}"
            producer.produce(TOPIC, value=value.encode(), partition=i % 2)
            (committed if commit else aborted).add(value)
        if commit:
            producer.commit_transaction(TIMEOUT_S)
        else:
            # Written first: abort_transaction drops what is unsent, and the
            # aborted records must be in the log to be filtered.
            producer.flush(TIMEOUT_S)
            producer.abort_transaction(TIMEOUT_S)

    seen = read(TOPIC, "read_committed", len(committed))
    if len(seen) != len(committed) or set(seen) != committed:
        leaked = sorted(set(seen) & aborted)[:5]
        fail(f"read_committed saw {len(seen)} records, expected {len(committed)}; aborted seen: {leaked}")
    seen = read(TOPIC, "read_uncommitted", len(committed) + len(aborted))
    if set(seen) != committed | aborted:
        fail(f"read_uncommitted saw {len(seen)} records, expected {len(committed) + len(aborted)}")
    return committed


def transform_once(inputs):
    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP,
        "group.id": GROUP,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    consumer.subscribe([TOPIC])
    producer = transactional_producer(f"transform-{SUFFIX}")
    producer.begin_transaction()
    got = []
    deadline = time.time() + TIMEOUT_S
    while len(got) < len(inputs) and time.time() < deadline:
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            fail(f"transform consume: {msg.error()}")
        got.append(msg.value().decode())
        producer.produce(OUTPUT, value=msg.value().decode().upper().encode(), partition=msg.partition())
    if len(got) != len(inputs):
        fail(f"transform read {len(got)} of {len(inputs)} inputs")
    positions = consumer.position(consumer.assignment())
    producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), TIMEOUT_S)
    producer.commit_transaction(TIMEOUT_S)

    committed = consumer.committed(consumer.assignment(), TIMEOUT_S)
    for tp, pos in zip(sorted(committed, key=lambda t: t.partition), sorted(positions, key=lambda t: t.partition)):
        if tp.offset != pos.offset:
            fail(f"group offset of partition {tp.partition} is {tp.offset}, expected {pos.offset}")
    consumer.close()

    outputs = read(OUTPUT, "read_committed", len(inputs))
    if sorted(outputs) != sorted(v.upper() for v in inputs):
        fail(f"transform wrote {len(outputs)} outputs for {len(inputs)} inputs")


def main():
    create_topics()
    try:
        committed = committed_and_aborted()
        transform_once(committed)
    except KafkaException as e:
        fail(f"kafka error: {e}")
    print("confluent_kafka_txn_test: ok")


if __name__ == "__main__":
    main()
