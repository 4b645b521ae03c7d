"""aiokafka (asyncio, pure Python) consumer groups against a running broker
at $KEEL_BOOTSTRAP: two AIOKafkaConsumers in one group split the
partitions and read everything, commit, and committed() shows it; after
they stop, a new member of the group reads only what came since."""

import asyncio
import os
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

BOOTSTRAP = os.environ["KEEL_BOOTSTRAP"]
TOPIC = f"aiokafka-group-{uuid.uuid4().hex[:12]}"
GROUP = f"{TOPIC}-group"
PARTITIONS = 4
PER_PARTITION = 25
TIMEOUT_S = 40


def fail(message):
    print(f"aiokafka_group_test: {message}", file=sys.stderr)
    sys.exit(1)


async def produce(start, count):
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5)
    await producer.start()
    try:
        deliveries = [await producer.send(TOPIC, value=f"p{p}-{i}".encode(), partition=p)
                      for p in range(PARTITIONS) for i in range(start, start + count)]
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


async def member():
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=500,
    )
    await consumer.start()
    return consumer


async def read_all(consumers, want_count, settle_s=0.0):
    """Reads from all consumers until `want_count` records came in total;
    returns per consumer its (partition, offset, value) tuples."""
    got = [[] for _ in consumers]
    deadline = time.monotonic() + TIMEOUT_S

    async def drain(i, c, timeout_ms):
        batches = await c.getmany(timeout_ms=timeout_ms)
        for records in batches.values():
            got[i].extend((r.partition, r.offset, r.value.decode()) for r in records)

    while sum(map(len, got)) < want_count:
        if time.monotonic() > deadline:
            fail(f"read {sum(map(len, got))} of {want_count} records; "
                 f"assignments {[sorted(tp.partition for tp in c.assignment()) for c in consumers]}")
        await asyncio.gather(*(drain(i, c, 200) for i, c in enumerate(consumers)))
    settle_until = time.monotonic() + settle_s
    while time.monotonic() < settle_until:
        await asyncio.gather(*(drain(i, c, 200) for i, c in enumerate(consumers)))
    return got


async def wait_split(consumers):
    """Until the consumers own disjoint equal shares of all partitions."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        sets = [{tp.partition for tp in c.assignment()} for c in consumers]
        union = set().union(*sets)
        if (all(len(s) == PARTITIONS // len(consumers) for s in sets)
                and sum(map(len, sets)) == len(union) == PARTITIONS):
            return sets
        if time.monotonic() > deadline:
            fail(f"the members never split the partitions evenly: {sets}")
        # aiokafka joins in the background; getmany keeps the loop moving.
        await asyncio.gather(*(c.getmany(timeout_ms=100) for c in consumers))


async def main():
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])
    finally:
        await admin.close()
    tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]

    # Two members split the partitions, then read what is produced.
    consumers = [await member(), await member()]
    sets = await wait_split(consumers)
    await produce(0, PER_PARTITION)
    got = await read_all(consumers, PARTITIONS * PER_PARTITION, settle_s=0.5)
    for s, records in zip(sets, got):
        want = sorted((p, o, f"p{p}-{o}") for p in s for o in range(PER_PARTITION))
        if sorted(records) != want:
            fail(f"the member owning {sorted(s)} read {len(records)} records, not its {len(want)}")

    # Each commits what it read; committed() agrees.
    for c in consumers:
        await c.commit()
    for c in consumers:
        for tp in c.assignment():
            if await c.committed(tp) != PER_PARTITION:
                fail(f"committed({tp}) = {await c.committed(tp)}, expected {PER_PARTITION}")
    # An explicit commit with metadata for one partition, back to 20.
    owner = next(c for c in consumers if tps[0] in c.assignment())
    await owner.commit({tps[0]: (20, "from-20")})
    if await owner.committed(tps[0]) != 20:
        fail(f"after an explicit commit, committed(partition 0) = {await owner.committed(tps[0])}")
    for c in consumers:
        await c.stop()

    # A new member resumes at the commits: partition 0 from 20, the rest
    # only with what is produced now.
    consumer = await member()
    await wait_split([consumer])
    await produce(PER_PARTITION, 2)
    got = (await read_all([consumer], 5 + 2 * PARTITIONS, settle_s=1.0))[0]
    want = sorted([(0, o, f"p0-{o}") for o in range(20, PER_PARTITION + 2)]
                  + [(p, o, f"p{p}-{o}") for p in range(1, PARTITIONS)
                     for o in range(PER_PARTITION, PER_PARTITION + 2)])
    if sorted(got) != want:
        fail(f"the new member read {sorted(got)}, expected {want}")
    await consumer.commit()
    for tp in tps:
        if await consumer.committed(tp) != PER_PARTITION + 2:
            fail(f"committed({tp}) = {await consumer.committed(tp)} after the second run")
    await consumer.stop()
    print("aiokafka_group_test: ok")


if __name__ == "__main__":
    asyncio.run(main())
