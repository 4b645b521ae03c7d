"""kafka-python (a pure-Python client) against a running broker at
$KEEL_BOOTSTRAP: a gzip producer with keys and headers, then a consumer
assigned to the partition that seeks and reads everything back."""

import os
import sys
import uuid

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

BOOTSTRAP = os.environ["KEEL_BOOTSTRAP"]
TOPIC = f"kafka-python-{uuid.uuid4().hex[:12]}"
COUNT = 300
TIMEOUT_S = 30


def fail(message):
    print(f"kafka_python_test: {message}", file=sys.stderr)
    sys.exit(1)


def produce():
    producer = KafkaProducer(
        bootstrap_servers=BOOTSTRAP,
        compression_type="gzip",
        acks="all",
        linger_ms=20,
        request_timeout_ms=TIMEOUT_S * 1000,
    )
    futures = []
    for i in range(COUNT):
        futures.append(producer.send(
            TOPIC,
            key=f"key-{i % 5}".encode(),
            value=f"value-{i}".encode(),
            headers=[("seq", str(i).encode()), ("origin", b"kafka-python")],
            partition=0,
        ))
    futures.append(producer.send(TOPIC, key=b"tombstone", value=None, partition=0))
    producer.flush(timeout=TIMEOUT_S)
    offsets = [f.get(timeout=TIMEOUT_S).offset for f in futures]
    producer.close(timeout=TIMEOUT_S)
    if offsets != list(range(COUNT + 1)):
        fail(f"delivery offsets are not 0..{COUNT}: {offsets[:10]}...")


def consume():
    consumer = KafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=TIMEOUT_S * 1000,
    )
    tp = TopicPartition(TOPIC, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = []
    for msg in consumer:
        got.append(msg)
        if len(got) == COUNT + 1:
            break
    if len(got) != COUNT + 1:
        fail(f"consumed {len(got)} records, expected {COUNT + 1}")
    for i, msg in enumerate(got[:COUNT]):
        if msg.offset != i or msg.key != f"key-{i % 5}".encode() or msg.value != f"value-{i}".encode():
            fail(f"record {i} came back as offset {msg.offset} key {msg.key!r} value {msg.value!r}")
        if list(msg.headers) != [("seq", str(i).encode()), ("origin", b"kafka-python")]:
            fail(f"record {i} has headers {msg.headers!r}")
    last = got[COUNT]
    if last.key != b"tombstone" or last.value is not None:
        fail(f"the tombstone came back as key {last.key!r} value {last.value!r}")

    # Seek into the middle, then ListOffsets for the end.
    consumer.seek(tp, 100)
    batch = consumer.poll(timeout_ms=TIMEOUT_S * 1000, max_records=1)
    records = batch.get(tp, [])
    if not records or records[0].offset != 100 or records[0].value != b"value-100":
        fail(f"seek to 100 gave {records[:1]}")
    end = consumer.end_offsets([tp])[tp]
    begin = consumer.beginning_offsets([tp])[tp]
    consumer.close()
    if (begin, end) != (0, COUNT + 1):
        fail(f"beginning/end offsets {(begin, end)}")


def main():
    produce()
    consume()
    print("kafka_python_test: ok")


if __name__ == "__main__":
    main()
