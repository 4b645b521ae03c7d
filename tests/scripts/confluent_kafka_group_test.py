"""confluent-kafka (librdkafka) consumer groups against a running broker at
$KEEL_BOOTSTRAP: two members of a group split four partitions two each,
read everything and commit; the admin API lists and describes the group;
after both close, two new members of the same group resume at the
committed offsets and read only what was produced since."""

import os
import sys
import time
import uuid

from confluent_kafka import (ConsumerGroupState, ConsumerGroupType, Consumer, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = os.environ["KEEL_BOOTSTRAP"]
TOPIC = f"confluent-group-{uuid.uuid4().hex[:12]}"
GROUP = f"{TOPIC}-group"
PARTITIONS = 4
PER_PARTITION = 50
TIMEOUT_S = 40


def fail(message):
    print(f"confluent_kafka_group_test: {message}", file=sys.stderr)
    sys.exit(1)


def create_topic():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    futures = admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])
    futures[TOPIC].result(timeout=TIMEOUT_S)


def produce(start, count):
    """`count` records into every partition, values p<partition>-<i> for
    i from `start`."""
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    errors = []
    for p in range(PARTITIONS):
        for i in range(start, start + count):
            producer.produce(TOPIC, value=f"p{p}-{i}", partition=p,
                             on_delivery=lambda err, msg: errors.append(err) if err else None)
    left = producer.flush(TIMEOUT_S)
    if left or errors:
        fail(f"{left} records undelivered, errors: {errors[:5]}")


class Member:
    def __init__(self, name):
        self.name = name
        self.assigned = set()
        self.read = []  # (partition, offset, value)
        self.consumer = Consumer({
            "bootstrap.servers": BOOTSTRAP,
            "group.id": GROUP,
            "client.id": name,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        })
        self.consumer.subscribe([TOPIC], on_assign=self.on_assign, on_revoke=self.on_revoke)

    def on_assign(self, consumer, partitions):
        self.assigned = {tp.partition for tp in partitions}

    def on_revoke(self, consumer, partitions):
        self.assigned = set()

    def poll(self):
        msg = self.consumer.poll(0.1)
        if msg is None:
            return
        if msg.error():
            fail(f"{self.name}: consumer error {msg.error()}")
        self.read.append((msg.partition(), msg.offset(), msg.value().decode()))


def poll_until(members, what, condition):
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            state = "; ".join(f"{m.name} owns {sorted(m.assigned)}, read {len(m.read)}" for m in members)
            fail(f"timed out waiting until {what} ({state})")
        for m in members:
            m.poll()


def split_evenly(members):
    sets = [m.assigned for m in members]
    union = set().union(*sets)
    return (all(len(s) == PARTITIONS // len(members) for s in sets)
            and sum(len(s) for s in sets) == len(union) == PARTITIONS)


def distinct_reads(members):
    return {(p, o): v for m in members for (p, o, v) in m.read}


def listed_groups(admin, **filters):
    listed = admin.list_consumer_groups(request_timeout=20, **filters).result(timeout=TIMEOUT_S)
    if listed.errors:
        fail(f"list_consumer_groups({filters}) errors: {listed.errors}")
    return {g.group_id: g for g in listed.valid}


def check_group_admin(members):
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    listed = listed_groups(admin)
    if GROUP not in listed:
        fail(f"list_consumer_groups does not show {GROUP}: {sorted(listed)}")
    if listed[GROUP].state != ConsumerGroupState.STABLE or listed[GROUP].is_simple_consumer_group:
        fail(f"list_consumer_groups shows {GROUP} as {listed[GROUP].state}, simple={listed[GROUP].is_simple_consumer_group}")
    # ListGroups' state filter (v4) and type filter (v5).
    if GROUP not in listed_groups(admin, states={ConsumerGroupState.STABLE}):
        fail("a Stable group is missing when listing Stable groups")
    if GROUP in listed_groups(admin, states={ConsumerGroupState.EMPTY}):
        fail("a Stable group is listed among Empty groups")
    if GROUP not in listed_groups(admin, types={ConsumerGroupType.CLASSIC}):
        fail("a classic group is missing when listing classic groups")
    if GROUP in listed_groups(admin, types={ConsumerGroupType.CONSUMER}):
        fail("a classic group is listed among consumer-protocol groups")
    described = admin.describe_consumer_groups([GROUP], request_timeout=20)[GROUP].result(timeout=TIMEOUT_S)
    if described.state.name != "STABLE":
        fail(f"describe_consumer_groups state {described.state}")
    by_client = {m.client_id: {tp.partition for tp in m.assignment.topic_partitions} for m in described.members}
    want = {m.name: m.assigned for m in members}
    if by_client != want:
        fail(f"describe_consumer_groups members {by_client}, the members themselves say {want}")


def committed(consumer):
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=TIMEOUT_S)}


def check_reads(members, want):
    """Every wanted record read exactly once, by the member owning its
    partition."""
    reads = distinct_reads(members)
    if reads != want:
        extra = sorted(k for k in reads if k not in want)
        missing = sorted(k for k in want if k not in reads)
        fail(f"the group read {len(reads)} distinct records; unexpected {extra[:10]}, missing {missing[:10]}")
    for m in members:
        strays = [(p, o) for (p, o, _) in m.read if p not in m.assigned]
        if strays:
            fail(f"{m.name} owns {sorted(m.assigned)} but read {strays[:10]}")
    if sum(len(m.read) for m in members) != len(want):
        fail("some records were read twice")


def main():
    create_topic()

    # Two members split the partitions, then read everything produced.
    members = [Member("member-a"), Member("member-b")]
    poll_until(members, "the two members own two partitions each", lambda: split_evenly(members))
    produce(0, PER_PARTITION)
    total = PARTITIONS * PER_PARTITION
    poll_until(members, f"the group read all {total} records", lambda: len(distinct_reads(members)) >= total)
    check_reads(members, {(p, o): f"p{p}-{o}" for p in range(PARTITIONS) for o in range(PER_PARTITION)})
    check_group_admin(members)

    # Each commits what it read (the offsets poll stored) and checks it.
    for m in members:
        m.consumer.commit(asynchronous=False)
    for m in members:
        got = committed(m.consumer)
        if got != {p: PER_PARTITION for p in range(PARTITIONS)}:
            fail(f"committed offsets seen by {m.name}: {got}")
        m.consumer.close()

    # Restart: new members of the same group resume at the commits, so with
    # auto.offset.reset=earliest they would re-read everything if those
    # were lost; they read only the records produced since.
    members = [Member("member-c"), Member("member-d")]
    poll_until(members, "the new members own two partitions each", lambda: split_evenly(members))
    produce(PER_PARTITION, 10)
    poll_until(members, "the new members read the 40 new records",
               lambda: len(distinct_reads(members)) >= PARTITIONS * 10)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        for m in members:
            m.poll()
    check_reads(members, {(p, o): f"p{p}-{o}" for p in range(PARTITIONS)
                          for o in range(PER_PARTITION, PER_PARTITION + 10)})
    for m in members:
        m.consumer.commit(asynchronous=False)
        m.consumer.close()
    print("confluent_kafka_group_test: ok")


if __name__ == "__main__":
    try:
        main()
    except KafkaException as e:
        fail(f"KafkaException: {e}")
