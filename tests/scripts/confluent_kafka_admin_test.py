"""confluent-kafka (librdkafka) AdminClient against a running broker at
$KEEL_BOOTSTRAP: CreatePartitions (grow, refused shrink), DeleteRecords (log
start offset, refused offset beyond the high watermark),
ElectLeaders (preferred and unclean), IncrementalAlterConfigs on a topic (SET, APPEND, SUBTRACT, DELETE, refusals)
and on broker 1 (static configs refused, a dynamic log.retention.ms reaching
topics without an override), checked through DescribeConfigs values, sources
and synonym names, and the legacy AlterConfigs replacing a topic's whole
override set. Every broker-level change is undone before the script exits.
The cluster-default broker resource "" is covered by kafka_python_admin_test.py:
confluent-kafka's ConfigResource refuses an empty name."""

import os
import sys
import time
import uuid
import warnings

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

BOOTSTRAP = os.environ["KEEL_BOOTSTRAP"]
TOPIC = f"confluent-admin-{uuid.uuid4().hex[:12]}"
PER_PARTITION = 10
TIMEOUT_S = 30
BROKER_ID = "1"
DEFAULT_RETENTION_MS = "604800000"
# What a broker resource answers when it refuses a change (a static config,
# a bad value): INVALID_REQUEST, as Apache Kafka (KAFKA-13609 keeps that code
# for compatibility).
BROKER_REFUSAL = KafkaError.INVALID_REQUEST

admin = AdminClient({"bootstrap.servers": BOOTSTRAP})


def fail(message):
    print(f"confluent_kafka_admin_test: {message}", file=sys.stderr)
    sys.exit(1)


def error_of(future):
    """The KafkaError a failed admin future carries, or fail() if it succeeded."""
    try:
        result = future.result(timeout=TIMEOUT_S)
    except KafkaException as e:
        return e.args[0]
    fail(f"expected an error, the call succeeded with {result!r}")


def expect_error(future, code, what, message_part=None):
    err = error_of(future)
    if err.code() != code:
        fail(f"{what}: error {err.name()} ({err.str()}), expected {KafkaError(code).name()}")
    if message_part is not None and message_part not in err.str():
        fail(f"{what}: error message {err.str()!r} does not mention {message_part!r}")


def produce(records):
    """records: [(partition, key, value)]; returns the offsets in order."""
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "linger.ms": 5})
    offsets = [None] * len(records)
    errors = []

    def report(i):
        def on_delivery(err, msg):
            if err is not None:
                errors.append(err)
            else:
                offsets[i] = (msg.partition(), msg.offset())
        return on_delivery

    for i, (partition, key, value) in enumerate(records):
        producer.produce(TOPIC, key=key, value=value, partition=partition, on_delivery=report(i))
    left = producer.flush(TIMEOUT_S)
    if left or errors:
        fail(f"{left} records undelivered, errors: {errors[:5]}")
    return offsets


def consume_from_beginning(partition, want):
    """The first `want` records of a partition, read from OFFSET_BEGINNING."""
    consumer = Consumer({
        "bootstrap.servers": BOOTSTRAP,
        "group.id": "confluent-admin-test-unused",
        "enable.auto.commit": False,
    })
    consumer.assign([TopicPartition(TOPIC, partition, OFFSET_BEGINNING)])
    got = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(got) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            fail(f"consumer error on partition {partition}: {msg.error()}")
        got.append((msg.offset(), msg.key(), msg.value()))
    consumer.close()
    if len(got) != want:
        fail(f"partition {partition}: consumed {len(got)} records, expected {want}")
    return got


def watermarks(partition):
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "confluent-admin-test-unused"})
    marks = consumer.get_watermark_offsets(TopicPartition(TOPIC, partition), timeout=TIMEOUT_S)
    consumer.close()
    return marks


def partition_count():
    return len(admin.list_topics(TOPIC, timeout=TIMEOUT_S).topics[TOPIC].partitions)


def create_topic():
    futures = admin.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)])
    futures[TOPIC].result(timeout=TIMEOUT_S)
    if partition_count() != 2:
        fail(f"new topic has {partition_count()} partitions, expected 2")
    offsets = produce([(p, f"k{i}".encode(), f"p{p}-v{i}".encode())
                       for p in (0, 1) for i in range(PER_PARTITION)])
    expected = [(p, i) for p in (0, 1) for i in range(PER_PARTITION)]
    if offsets != expected:
        fail(f"delivery offsets {offsets}, expected {expected}")


def check_create_partitions():
    futures = admin.create_partitions([NewPartitions(TOPIC, 4)])
    futures[TOPIC].result(timeout=TIMEOUT_S)
    deadline = time.monotonic() + TIMEOUT_S
    while partition_count() != 4:
        if time.monotonic() > deadline:
            fail(f"after growing to 4 the topic has {partition_count()} partitions")
        time.sleep(0.2)
    # The new partitions take writes and serve them back.
    offsets = produce([(3, b"new", b"in-partition-3"), (2, b"new", b"in-partition-2")])
    if offsets != [(3, 0), (2, 0)]:
        fail(f"records in the new partitions landed at {offsets}")
    got = consume_from_beginning(3, 1)
    if got != [(0, b"new", b"in-partition-3")]:
        fail(f"new partition 3 gave back {got}")
    if watermarks(3) != (0, 1):
        fail(f"new partition 3 watermarks {watermarks(3)}, expected (0, 1)")

    # Shrinking, or asking for the count it already has, is refused.
    expect_error(admin.create_partitions([NewPartitions(TOPIC, 2)])[TOPIC],
                 KafkaError.INVALID_PARTITIONS, "shrinking 4 -> 2")
    expect_error(admin.create_partitions([NewPartitions(TOPIC, 4)])[TOPIC],
                 KafkaError.INVALID_PARTITIONS, "growing 4 -> 4")
    # validate_only changes nothing.
    admin.create_partitions([NewPartitions(TOPIC, 6)], validate_only=True)[TOPIC].result(timeout=TIMEOUT_S)
    if partition_count() != 4:
        fail(f"validate_only create_partitions changed the count to {partition_count()}")


def check_delete_records():
    tp = TopicPartition(TOPIC, 0, 4)
    deleted = admin.delete_records([tp])
    result = list(deleted.values())[0].result(timeout=TIMEOUT_S)
    if result.low_watermark != 4:
        fail(f"delete_records before 4 reported low watermark {result.low_watermark}")
    if watermarks(0) != (4, PER_PARTITION):
        fail(f"partition 0 watermarks after delete_records {watermarks(0)}, expected (4, {PER_PARTITION})")
    got = consume_from_beginning(0, PER_PARTITION - 4)
    expected = [(i, f"k{i}".encode(), f"p0-v{i}".encode()) for i in range(4, PER_PARTITION)]
    if got != expected:
        fail(f"reading partition 0 from the beginning after delete_records gave {got}")

    # Moving the start backwards is a no-op that keeps the low watermark.
    result = list(admin.delete_records([TopicPartition(TOPIC, 0, 2)]).values())[0].result(timeout=TIMEOUT_S)
    if result.low_watermark != 4:
        fail(f"delete_records before 2 (below the start 4) reported low watermark {result.low_watermark}")

    # Beyond the high watermark: OFFSET_OUT_OF_RANGE, nothing moves.
    expect_error(list(admin.delete_records([TopicPartition(TOPIC, 0, PER_PARTITION + 1)]).values())[0],
                 KafkaError.OFFSET_OUT_OF_RANGE, "delete_records beyond the high watermark")
    if watermarks(0) != (4, PER_PARTITION):
        fail(f"a refused delete_records moved partition 0 to {watermarks(0)}")

    # OFFSET_END (-1): everything up to the high watermark.
    result = list(admin.delete_records([TopicPartition(TOPIC, 1, OFFSET_END)]).values())[0].result(timeout=TIMEOUT_S)
    if result.low_watermark != PER_PARTITION:
        fail(f"delete_records to OFFSET_END reported low watermark {result.low_watermark}")
    if watermarks(1) != (PER_PARTITION, PER_PARTITION):
        fail(f"partition 1 watermarks after deleting everything {watermarks(1)}")


def describe(restype, name, keys=None):
    resource = ConfigResource(restype, name)
    entries = admin.describe_configs([resource])[resource].result(timeout=TIMEOUT_S)
    if keys is not None:
        entries = {k: v for k, v in entries.items() if k in keys}
    return entries


def alter(restype, name, ops):
    """ops: [(config name, AlterConfigOpType, value)]; returns the future."""
    resource = ConfigResource(restype, name, incremental_configs=[
        ConfigEntry(config, value, incremental_operation=op) for config, op, value in ops
    ])
    return admin.incremental_alter_configs([resource])[resource]


def expect_config(entries, name, value, source, what, synonyms=None):
    entry = entries.get(name)
    if entry is None:
        fail(f"{what}: {name} missing from describe_configs ({sorted(entries)[:10]}...)")
    if entry.value != value or entry.source != source.value:
        fail(f"{what}: {name} = {entry.value!r} from {ConfigSource(entry.source).name}, "
             f"expected {value!r} from {source.name}")
    if synonyms is not None:
        # confluent-kafka keys synonyms by name, so synonyms sharing a name
        # (log.retention.ms per broker, default and static) collapse into one:
        # only the names can be checked here (kafka_python_admin_test.py checks
        # the full ordered list).
        got = sorted(entry.synonyms)
        if got != sorted(synonyms):
            fail(f"{what}: {name} synonyms {got}, expected {sorted(synonyms)}")


def check_topic_configs():
    T = ResourceType.TOPIC
    entries = describe(T, TOPIC)
    expect_config(entries, "retention.ms", DEFAULT_RETENTION_MS, ConfigSource.DEFAULT_CONFIG,
                  "a new topic")
    expect_config(entries, "cleanup.policy", "delete", ConfigSource.DEFAULT_CONFIG, "a new topic")

    # SET two configs in one request.
    alter(T, TOPIC, [("retention.ms", AlterConfigOpType.SET, "3600000"),
                     ("max.message.bytes", AlterConfigOpType.SET, "500000")]).result(timeout=TIMEOUT_S)
    entries = describe(T, TOPIC)
    expect_config(entries, "retention.ms", "3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG, "after SET",
                  synonyms=["retention.ms", "log.retention.ms"])
    expect_config(entries, "max.message.bytes", "500000", ConfigSource.DYNAMIC_TOPIC_CONFIG, "after SET")

    # APPEND to the list config cleanup.policy starts from its default.
    alter(T, TOPIC, [("cleanup.policy", AlterConfigOpType.APPEND, "compact")]).result(timeout=TIMEOUT_S)
    entries = describe(T, TOPIC)
    expect_config(entries, "cleanup.policy", "delete,compact", ConfigSource.DYNAMIC_TOPIC_CONFIG,
                  "after APPEND compact")
    # Appending a value already there changes nothing.
    alter(T, TOPIC, [("cleanup.policy", AlterConfigOpType.APPEND, "compact")]).result(timeout=TIMEOUT_S)
    expect_config(describe(T, TOPIC), "cleanup.policy", "delete,compact",
                  ConfigSource.DYNAMIC_TOPIC_CONFIG, "after a second APPEND compact")
    alter(T, TOPIC, [("cleanup.policy", AlterConfigOpType.SUBTRACT, "delete")]).result(timeout=TIMEOUT_S)
    entries = describe(T, TOPIC)
    expect_config(entries, "cleanup.policy", "compact", ConfigSource.DYNAMIC_TOPIC_CONFIG,
                  "after SUBTRACT delete")
    # The other overrides are untouched by incremental changes.
    expect_config(entries, "retention.ms", "3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG,
                  "after APPEND/SUBTRACT on cleanup.policy")

    # Refusals, each with its error code; none of them changes anything.
    expect_error(alter(T, TOPIC, [("no.such.config", AlterConfigOpType.SET, "1")]),
                 KafkaError.INVALID_CONFIG, "SET of an unknown topic config")
    expect_error(alter(T, TOPIC, [("retention.ms", AlterConfigOpType.SET, "soon")]),
                 KafkaError.INVALID_CONFIG, "SET retention.ms=soon")
    expect_error(alter(T, TOPIC, [("cleanup.policy", AlterConfigOpType.SET, "shred")]),
                 KafkaError.INVALID_CONFIG, "SET cleanup.policy=shred")
    expect_error(alter(T, TOPIC, [("retention.ms", AlterConfigOpType.APPEND, "5")]),
                 KafkaError.INVALID_CONFIG, "APPEND to the non-list retention.ms")
    # One bad op refuses the whole resource: the good SET beside it is not applied.
    expect_error(alter(T, TOPIC, [("retention.ms", AlterConfigOpType.SET, "7200000"),
                                  ("segment.bytes", AlterConfigOpType.SET, "-5")]),
                 KafkaError.INVALID_CONFIG, "SET with one invalid value among two")
    missing = f"{TOPIC}-missing"
    expect_error(alter(T, missing, [("retention.ms", AlterConfigOpType.SET, "1000")]),
                 KafkaError.UNKNOWN_TOPIC_OR_PART, "altering a topic that does not exist")
    entries = describe(T, TOPIC)
    expect_config(entries, "retention.ms", "3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG,
                  "after the refused changes")
    expect_config(entries, "cleanup.policy", "compact", ConfigSource.DYNAMIC_TOPIC_CONFIG,
                  "after the refused changes")
    expect_config(entries, "segment.bytes", "1073741824", ConfigSource.DEFAULT_CONFIG,
                  "after the refused changes")

    # validate_only checks without applying.
    resource = ConfigResource(T, TOPIC, incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    admin.incremental_alter_configs([resource], validate_only=True)[resource].result(timeout=TIMEOUT_S)
    expect_config(describe(T, TOPIC), "retention.ms", "3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG,
                  "after a validate_only SET")

    # DELETE goes back to the default.
    alter(T, TOPIC, [("retention.ms", AlterConfigOpType.DELETE, None),
                     ("cleanup.policy", AlterConfigOpType.DELETE, None)]).result(timeout=TIMEOUT_S)
    entries = describe(T, TOPIC)
    expect_config(entries, "retention.ms", DEFAULT_RETENTION_MS, ConfigSource.DEFAULT_CONFIG,
                  "after DELETE", synonyms=["log.retention.ms"])
    expect_config(entries, "cleanup.policy", "delete", ConfigSource.DEFAULT_CONFIG, "after DELETE")
    expect_config(entries, "max.message.bytes", "500000", ConfigSource.DYNAMIC_TOPIC_CONFIG,
                  "after DELETE of other configs")

    # The legacy AlterConfigs replaces the whole override set.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        resource = ConfigResource(T, TOPIC, set_config={"segment.ms": "3600000"})
        admin.alter_configs([resource])[resource].result(timeout=TIMEOUT_S)
    entries = describe(T, TOPIC)
    expect_config(entries, "segment.ms", "3600000", ConfigSource.DYNAMIC_TOPIC_CONFIG,
                  "after legacy alter_configs")
    expect_config(entries, "max.message.bytes", "1048588", ConfigSource.DEFAULT_CONFIG,
                  "after legacy alter_configs without it")
    modified = sorted(k for k, v in entries.items() if v.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    if modified != ["segment.ms"]:
        fail(f"after legacy alter_configs the topic overrides are {modified}, expected ['segment.ms']")


def check_broker_configs():
    B = ResourceType.BROKER
    T = ResourceType.TOPIC
    # A static broker config cannot change at run time: log.dirs is
    # read-only in Kafka too. Keel also holds listeners static (Kafka can
    # change listeners per broker at run time).
    for name, value in (("log.dirs", "/tmp/elsewhere"), ("listeners", "PLAINTEXT://127.0.0.1:1")):
        expect_error(alter(B, BROKER_ID, [(name, AlterConfigOpType.SET, value)]),
                     BROKER_REFUSAL, f"SET of the static {name} on broker 1",
                     f"Cannot update these configs dynamically: Set({name})")
    expect_error(alter(B, BROKER_ID, [("log.retention.ms", AlterConfigOpType.SET, "often")]),
                 BROKER_REFUSAL, "SET log.retention.ms=often on broker 1")
    entries = describe(B, BROKER_ID)
    for name in ("log.dirs", "listeners"):
        entry = entries.get(name)
        if entry is None or entry.source != ConfigSource.STATIC_BROKER_CONFIG.value \
                or not entry.is_read_only:
            fail(f"broker 1 describes {name} as {entry!r}, expected a read-only static config")
    if not entries["log.dirs"].value or entries["log.dirs"].value.startswith("/tmp/elsewhere"):
        fail(f"broker 1 log.dirs is {entries['log.dirs'].value!r}")
    expect_config(entries, "log.retention.ms", DEFAULT_RETENTION_MS, ConfigSource.DEFAULT_CONFIG,
                  "broker 1 before any dynamic change")

    try:
        alter(B, BROKER_ID, [("log.retention.ms", AlterConfigOpType.SET, "7200000")]).result(timeout=TIMEOUT_S)
        expect_config(describe(B, BROKER_ID), "log.retention.ms", "7200000",
                      ConfigSource.DYNAMIC_BROKER_CONFIG, "broker 1 after SET log.retention.ms")
        expect_config(describe(T, TOPIC), "retention.ms", "7200000", ConfigSource.DYNAMIC_BROKER_CONFIG,
                      "a topic without override after broker 1 SET log.retention.ms",
                      synonyms=["log.retention.ms"])
        # A topic override still wins over the broker's value.
        alter(T, TOPIC, [("retention.ms", AlterConfigOpType.SET, "1800000")]).result(timeout=TIMEOUT_S)
        expect_config(describe(T, TOPIC), "retention.ms", "1800000", ConfigSource.DYNAMIC_TOPIC_CONFIG,
                      "a topic override under a dynamic broker config",
                      synonyms=["retention.ms", "log.retention.ms"])
        alter(T, TOPIC, [("retention.ms", AlterConfigOpType.DELETE, None)]).result(timeout=TIMEOUT_S)
        expect_config(describe(T, TOPIC), "retention.ms", "7200000", ConfigSource.DYNAMIC_BROKER_CONFIG,
                      "a topic after DELETE of its override under a dynamic broker config")
        # The broker value reaches topics created after it, too.
        later = f"{TOPIC}-later"
        admin.create_topics([NewTopic(later, num_partitions=1, replication_factor=1)])[later].result(
            timeout=TIMEOUT_S)
        expect_config(describe(T, later), "retention.ms", "7200000", ConfigSource.DYNAMIC_BROKER_CONFIG,
                      "a topic created after broker 1 SET log.retention.ms")
        admin.delete_topics([later])[later].result(timeout=TIMEOUT_S)

        alter(B, BROKER_ID, [("log.retention.ms", AlterConfigOpType.DELETE, None)]).result(timeout=TIMEOUT_S)
        expect_config(describe(B, BROKER_ID), "log.retention.ms", DEFAULT_RETENTION_MS,
                      ConfigSource.DEFAULT_CONFIG, "broker 1 after DELETE log.retention.ms")
    finally:
        # Whatever happened above, leave no broker-level override behind.
        # (The cluster-default resource "" cannot be named through
        # confluent-kafka's ConfigResource; kafka_python_admin_test.py
        # covers it.)
        try:
            alter(B, BROKER_ID, [("log.retention.ms", AlterConfigOpType.DELETE, None)]).result(timeout=TIMEOUT_S)
        except KafkaException as e:
            print(f"confluent_kafka_admin_test: restoring broker 1: {e}", file=sys.stderr)

    expect_config(describe(T, TOPIC), "retention.ms", DEFAULT_RETENTION_MS, ConfigSource.DEFAULT_CONFIG,
                  "a topic after broker 1's log.retention.ms is deleted")


def check_elect_leaders():
    """ElectLeaders through librdkafka: on one broker every partition is
    already led by its preferred replica, and an unclean election is not
    needed where a leader exists; an unknown partition is named as such."""
    from confluent_kafka import ElectionType

    for election in (ElectionType.PREFERRED, ElectionType.UNCLEAN):
        wanted = [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 99)]
        results = admin.elect_leaders(election, wanted).result(timeout=TIMEOUT_S)
        got = {tp.partition: (err.code() if err else None) for tp, err in results.items()}
        want = {0: KafkaError.ELECTION_NOT_NEEDED, 99: KafkaError.UNKNOWN_TOPIC_OR_PART}
        if got != want:
            fail(f"ElectLeaders {election}: {got}, wanted {want}")


def main():
    create_topic()
    check_elect_leaders()
    check_create_partitions()
    check_delete_records()
    check_topic_configs()
    check_broker_configs()
    print("confluent_kafka_admin_test: ok")


if __name__ == "__main__":
    main()
