"""confluent-kafka (librdkafka) against a running broker at $KEEL_BOOTSTRAP:
an idempotent zstd producer with keys and headers, then a consumer that is
assigned the partition and seeks, reading everything back."""

import os
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = os.environ["KEEL_BOOTSTRAP"]
TOPIC = f"confluent-{uuid.uuid4().hex[:12]}"
COUNT = 500
TIMEOUT_S = 30


def fail(message):
    print(f"confluent_kafka_test: {message}", file=sys.stderr)
    sys.exit(1)


def create_topic():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    futures = admin.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)])
    futures[TOPIC].result(timeout=TIMEOUT_S)
    metadata = admin.list_topics(TOPIC, timeout=TIMEOUT_S)
    partitions = metadata.topics[TOPIC].partitions
    if sorted(partitions) != [0, 1]:
        fail(f"topic has partitions {sorted(partitions)}, expected [0, 1]")


def produce():
    producer = Producer({
        "bootstrap.servers": BOOTSTRAP,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "zstd",
        "linger.ms": 20,
    })
    delivered = {}
    errors = []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.value().decode()] = (msg.partition(), msg.offset())

    for i in range(COUNT):
        producer.produce(
            TOPIC,
            key=f"key-{i % 7}",
            value=f"value-{i}",
            partition=i % 2,
            headers=[("seq", str(i).encode()), ("origin", b"confluent"), ("nothing", None)],
            on_delivery=on_delivery,
        )
    # A record with a null key and a null value.
    producer.produce(TOPIC, key=None, value=None, partition=0, on_delivery=lambda err, msg: errors.append(err) if err else None)
    left = producer.flush(TIMEOUT_S)
    if left or errors:
        fail(f"{left} records undelivered, errors: {errors[:5]}")
    if len(delivered) != COUNT:
        fail(f"{len(delivered)} deliveries reported for {COUNT} records")
    return delivered


def consume(delivered):
    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP,
        "group.id": "confluent-test-unused",
        "enable.auto.commit": False,
        "auto.offset.reset": "error",
    })
    # Assign both partitions and seek: partition 0 from the beginning,
    # partition 1 from offset 10.
    consumer.assign([TopicPartition(TOPIC, 0, 0), TopicPartition(TOPIC, 1, 10)])
    expected_p1 = COUNT // 2 - 10
    want = (COUNT // 2 + 1) + expected_p1
    got = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(got) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            fail(f"consumer error: {msg.error()}")
        got.append(msg)
    consumer.close()
    if len(got) != want:
        fail(f"consumed {len(got)} records, expected {want}")

    null_records = [m for m in got if m.value() is None]
    if len(null_records) != 1 or null_records[0].key() is not None:
        fail(f"the null-key null-value record came back as {[(m.key(), m.value()) for m in null_records]}")
    last_offset = {0: -1, 1: 9}
    for m in got:
        if m.offset() != last_offset[m.partition()] + 1:
            fail(f"partition {m.partition()}: offset {m.offset()} after {last_offset[m.partition()]}")
        last_offset[m.partition()] = m.offset()
        if m.value() is None:
            continue
        value = m.value().decode()
        i = int(value.split("-")[1])
        if delivered[value] != (m.partition(), m.offset()):
            fail(f"{value} delivered at {delivered[value]} but consumed at {(m.partition(), m.offset())}")
        if m.key() != f"key-{i % 7}".encode():
            fail(f"{value} has key {m.key()!r}")
        headers = m.headers()
        if headers != [("seq", str(i).encode()), ("origin", b"confluent"), ("nothing", None)]:
            fail(f"{value} has headers {headers!r}")

    # Watermarks through ListOffsets.
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "confluent-test-unused"})
    low, high = consumer.get_watermark_offsets(TopicPartition(TOPIC, 0), timeout=TIMEOUT_S)
    consumer.close()
    if (low, high) != (0, COUNT // 2 + 1):
        fail(f"partition 0 watermarks {(low, high)}")


def main():
    create_topic()
    delivered = produce()
    consume(delivered)
    print("confluent_kafka_test: ok")


if __name__ == "__main__":
    main()
