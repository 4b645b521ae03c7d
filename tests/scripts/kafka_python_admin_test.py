"""kafka-python's KafkaAdminClient against a running broker at
$KEEL_BOOTSTRAP: DescribeLogDirs (the topic's partitions with their sizes),
AlterPartitionReassignments and ListPartitionReassignments,
CreatePartitions, DeleteRecords, DescribeConfigs (sources and the ordered
synonym list) and IncrementalAlterConfigs on a topic, on broker 1 and on the
cluster-default broker resource "". Every broker-level change is undone
before the script exits.

Neither client names the cluster-default broker resource (kafka-python wants
an integer broker id, confluent-kafka refuses an empty name), so those
requests are built with kafka-python's own request builders and sent on its
connection, as `kafka-configs.sh --entity-default` would send them."""

import os
import sys
import uuid

import kafka.errors as Errors
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import AlterConfigOp, ConfigResource

BOOTSTRAP = os.environ["KEEL_BOOTSTRAP"]
TOPIC = f"kafka-python-admin-{uuid.uuid4().hex[:12]}"
TIMEOUT_S = 30
PER_PARTITION = 10
DEFAULT_RETENTION_MS = "604800000"

admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, request_timeout_ms=TIMEOUT_S * 1000)
producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", request_timeout_ms=TIMEOUT_S * 1000)


def fail(message):
    print(f"kafka_python_admin_test: {message}", file=sys.stderr)
    sys.exit(1)


def produce(partition, count, tag, producer=producer):
    futures = [producer.send(TOPIC, key=f"k{i}".encode(), value=f"{tag}-{i}".encode() * 10,
                             partition=partition) for i in range(count)]
    producer.flush(timeout=TIMEOUT_S)
    return [f.get(timeout=TIMEOUT_S).offset for f in futures]


def log_dir_sizes(topics=None):
    """{partition: size} of TOPIC from DescribeLogDirs, and the log dir entry."""
    brokers = admin.describe_log_dirs(topics)
    if [b["broker"] for b in brokers] != [1]:
        fail(f"describe_log_dirs answered for brokers {[b['broker'] for b in brokers]}, expected [1]")
    dirs = brokers[0]["log_dirs"]
    if len(dirs) != 1 or dirs[0]["error_code"] != 0:
        fail(f"describe_log_dirs gave log dirs {dirs}, expected one without error")
    mine = [t for t in dirs[0]["topics"] if t["name"] == TOPIC]
    if len(mine) != 1:
        fail(f"describe_log_dirs lists {TOPIC} {len(mine)} times")
    return {p["partition_index"]: p["partition_size"] for p in mine[0]["partitions"]}, dirs[0]


def check_log_dirs():
    for partition in (0, 1):
        offsets = produce(partition, PER_PARTITION, f"p{partition}")
        if offsets != list(range(PER_PARTITION)):
            fail(f"partition {partition} delivery offsets {offsets}")
    sizes, log_dir = log_dir_sizes([TOPIC])
    if sorted(sizes) != [0, 1] or min(sizes.values()) <= 0:
        fail(f"describe_log_dirs sizes {sizes}, expected partitions 0 and 1 with bytes")
    if not os.path.isabs(log_dir["log_dir"]):
        fail(f"log dir {log_dir['log_dir']!r} is not an absolute path")
    total, usable = log_dir.get("total_bytes", -1), log_dir.get("usable_bytes", -1)
    if not 0 < usable <= total:
        fail(f"log dir total_bytes {total} usable_bytes {usable}")
    # The same partitions through a query for every topic.
    everything, _ = log_dir_sizes(None)
    if sorted(everything) != [0, 1]:
        fail(f"describe_log_dirs for all topics lists {TOPIC} partitions {sorted(everything)}")
    # More records, larger partition; the other partition keeps its size.
    produce(0, PER_PARTITION, "more")
    after, _ = log_dir_sizes({TOPIC: [0, 1]})
    if after[0] <= sizes[0] or after[1] != sizes[1]:
        fail(f"after 10 more records in partition 0, sizes went from {sizes} to {after}")
    only0, _ = log_dir_sizes({TOPIC: [0]})
    if list(only0) != [0]:
        fail(f"describe_log_dirs for partition 0 only listed {sorted(only0)}")


def partition_ids():
    topics = admin.describe_topics([TOPIC])
    return sorted(p["partition_index"] for p in topics[0]["partitions"])


def check_create_partitions():
    response = admin.create_partitions({TOPIC: 3})
    if [r.error_code for r in response.results] != [0]:
        fail(f"create_partitions to 3 answered {response}")
    if partition_ids() != [0, 1, 2]:
        fail(f"after growing to 3 the topic has partitions {partition_ids()}")
    # A new producer, whose first metadata has the new partition.
    fresh = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", request_timeout_ms=TIMEOUT_S * 1000)
    offsets = produce(2, 3, "p2", producer=fresh)
    fresh.close(timeout=TIMEOUT_S)
    if offsets != [0, 1, 2]:
        fail(f"the new partition 2 took records at offsets {offsets}, expected 0..2")
    try:
        admin.create_partitions({TOPIC: 1})
    except Errors.InvalidPartitionsError:
        pass
    else:
        fail("shrinking to 1 partition was accepted")
    response = admin.create_partitions({TOPIC: 2}, raise_errors=False)
    codes = [r.error_code for r in response.results]
    if codes != [Errors.InvalidPartitionsError.errno]:
        fail(f"shrinking to 2 answered error codes {codes}, expected INVALID_PARTITIONS")
    if partition_ids() != [0, 1, 2]:
        fail(f"after refused shrinks the topic has partitions {partition_ids()}")


def check_delete_records():
    tp = TopicPartition(TOPIC, 1)
    result = admin.delete_records({tp: 6})
    if result[tp]["low_watermark"] != 6 or result[tp]["error_code"] != 0:
        fail(f"delete_records before 6 answered {result}")
    try:
        admin.delete_records({tp: PER_PARTITION + 5})
    except Errors.OffsetOutOfRangeError:
        pass
    else:
        fail("delete_records beyond the high watermark was accepted")
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=TIMEOUT_S * 1000)
    consumer.assign([tp])
    begin = consumer.beginning_offsets([tp])[tp]
    end = consumer.end_offsets([tp])[tp]
    if (begin, end) != (6, PER_PARTITION):
        fail(f"partition 1 offsets after delete_records {(begin, end)}, expected (6, {PER_PARTITION})")
    consumer.seek_to_beginning(tp)
    batch = consumer.poll(timeout_ms=TIMEOUT_S * 1000, max_records=1)
    records = batch.get(tp, [])
    consumer.close()
    if not records or records[0].offset != 6 or records[0].value != b"p1-6" * 10:
        fail(f"reading partition 1 from the beginning started with {records[:1]}")


def topic_config(name, include_synonyms=True):
    configs = admin.describe_configs([ConfigResource("TOPIC", TOPIC, [name])],
                                     include_synonyms=include_synonyms, config_filter="all")
    return configs["topic"][TOPIC][name]


def expect(config, value, source, synonyms, what):
    got_synonyms = [(s["name"], s["value"], s["source"]) for s in config.get("synonyms", [])]
    if (config["value"], config["config_source"], got_synonyms) != (value, source, synonyms):
        fail(f"{what}: {(config['value'], config['config_source'], got_synonyms)}, "
             f"expected {(value, source, synonyms)}")


def check_describe_configs():
    # Only the override shows under the default "modified" filter.
    modified = admin.describe_configs([ConfigResource("TOPIC", TOPIC)])["topic"][TOPIC]
    if {k: (v["value"], v["config_source"]) for k, v in modified.items()} != \
            {"retention.ms": ("86400000", "DYNAMIC_TOPIC_CONFIG")}:
        fail(f"modified topic configs {modified}")
    expect(topic_config("retention.ms"), "86400000", "DYNAMIC_TOPIC_CONFIG",
           [("retention.ms", "86400000", "DYNAMIC_TOPIC_CONFIG"),
            ("log.retention.ms", DEFAULT_RETENTION_MS, "DEFAULT_CONFIG")],
           "retention.ms of the topic created with it")
    everything = admin.describe_configs([ConfigResource("TOPIC", TOPIC)], config_filter="all")["topic"][TOPIC]
    for name, value in (("cleanup.policy", "delete"), ("segment.bytes", "1073741824"),
                        ("min.cleanable.dirty.ratio", "0.5"), ("delete.retention.ms", "86400000")):
        if (everything.get(name) or {}).get("value") != value:
            fail(f"topic default {name} is {everything.get(name)}, expected {value}")
    broker = admin.describe_configs([ConfigResource("BROKER", "1", ["log.dirs", "log.retention.ms"])],
                                    include_synonyms=True, config_filter="all")["broker"]["1"]
    log_dirs = broker["log.dirs"]
    if not log_dirs["read_only"] or log_dirs["config_source"] != "STATIC_BROKER_CONFIG" \
            or not os.path.isabs(log_dirs["value"]):
        fail(f"broker 1 log.dirs described as {log_dirs}")
    if sorted(broker) != ["log.dirs", "log.retention.ms"]:
        fail(f"describing two broker configs by name gave {sorted(broker)}")
    expect(broker["log.retention.ms"], DEFAULT_RETENTION_MS, "DEFAULT_CONFIG",
           [("log.retention.ms", DEFAULT_RETENTION_MS, "DEFAULT_CONFIG")], "broker 1 log.retention.ms")


def check_topic_alter_configs():
    result = admin.alter_configs([ConfigResource("TOPIC", TOPIC, {
        "segment.ms": "3600000",
        "cleanup.policy": (AlterConfigOp.APPEND, "compact"),
    })], incremental=True)
    if result != {"topic": {TOPIC: "OK"}}:
        fail(f"incremental alter_configs answered {result}")
    modified = admin.describe_configs([ConfigResource("TOPIC", TOPIC)])["topic"][TOPIC]
    got = {k: v["value"] for k, v in modified.items()}
    if got != {"retention.ms": "86400000", "segment.ms": "3600000", "cleanup.policy": "delete,compact"}:
        fail(f"after SET segment.ms and APPEND cleanup.policy the overrides are {got}")
    result = admin.alter_configs([ConfigResource("TOPIC", TOPIC, {"segment.ms": "-3"})], incremental=True)
    if "InvalidConfigurationError" not in result["topic"][TOPIC]:
        fail(f"SET segment.ms=-3 answered {result}")
    result = admin.alter_configs([ConfigResource("TOPIC", TOPIC, {"no.such.config": "1"})],
                                 incremental=True, raise_on_unknown=False)
    if "InvalidConfigurationError" not in result["topic"][TOPIC]:
        fail(f"SET of an unknown config answered {result}")
    # An empty dict (not None, which this kafka-python cannot handle) resets all.
    result = admin.reset_configs([ConfigResource("TOPIC", TOPIC, {})])
    if result != {"topic": {TOPIC: "OK"}}:
        fail(f"reset_configs answered {result}")
    modified = admin.describe_configs([ConfigResource("TOPIC", TOPIC)])["topic"][TOPIC]
    if modified:
        fail(f"after reset_configs the topic still has overrides {sorted(modified)}")


def send_raw(request):
    async def send():
        return await admin._manager.send(request)
    return admin._manager.run(send)


def alter_default_broker(configs):
    """IncrementalAlterConfigs on the cluster-default broker resource ""."""
    request = KafkaAdminClient._alter_configs_request([ConfigResource("BROKER", "", configs)],
                                                      incremental=True)
    return KafkaAdminClient._alter_configs_process_responses(send_raw(request).responses)["broker"][""]


def describe_default_broker():
    request = KafkaAdminClient._describe_configs_request([ConfigResource("BROKER", "")],
                                                         include_synonyms=True)
    response = send_raw(request)
    return KafkaAdminClient._describe_configs_process_responses([response], "all")["broker"][""]


def alter_broker_1(configs, raise_on_unknown=True):
    return admin.alter_configs([ConfigResource("BROKER", "1", configs)], incremental=True,
                               raise_on_unknown=raise_on_unknown)["broker"]["1"]


def check_broker_configs():
    # kafka-python would refuse this read-only config itself: skip its check
    # so that the broker answers, with INVALID_REQUEST as Apache Kafka does.
    result = alter_broker_1({"log.dirs": "/tmp/elsewhere"}, raise_on_unknown=False)
    if "InvalidRequestError" not in result or \
            "Cannot update these configs dynamically: Set(log.dirs)" not in result:
        fail(f"SET of the static log.dirs on broker 1 answered {result!r}")
    if describe_default_broker():
        fail(f"the default broker resource has configs before the test set any: {describe_default_broker()}")
    result = alter_default_broker({"listeners": "PLAINTEXT://127.0.0.1:1"})
    if "InvalidRequestError" not in result:
        fail(f"SET of the static listeners on the default broker resource answered {result!r}")
    try:
        if alter_default_broker({"log.retention.ms": "5400000"}) != "OK":
            fail("SET log.retention.ms on the default broker resource failed")
        default = describe_default_broker()
        if {k: (v["value"], v["config_source"]) for k, v in default.items()} != \
                {"log.retention.ms": ("5400000", "DYNAMIC_DEFAULT_BROKER_CONFIG")}:
            fail(f"the default broker resource describes as {default}")
        expect(topic_config("retention.ms"), "5400000", "DYNAMIC_DEFAULT_BROKER_CONFIG",
               [("log.retention.ms", "5400000", "DYNAMIC_DEFAULT_BROKER_CONFIG"),
                ("log.retention.ms", DEFAULT_RETENTION_MS, "DEFAULT_CONFIG")],
               "retention.ms under a default broker log.retention.ms")

        if alter_broker_1({"log.retention.ms": "7200000"}) != "OK":
            fail("SET log.retention.ms on broker 1 failed")
        expect(topic_config("retention.ms"), "7200000", "DYNAMIC_BROKER_CONFIG",
               [("log.retention.ms", "7200000", "DYNAMIC_BROKER_CONFIG"),
                ("log.retention.ms", "5400000", "DYNAMIC_DEFAULT_BROKER_CONFIG"),
                ("log.retention.ms", DEFAULT_RETENTION_MS, "DEFAULT_CONFIG")],
               "retention.ms under broker 1 and default log.retention.ms")
        broker = admin.describe_configs([ConfigResource("BROKER", "1", ["log.retention.ms"])],
                                        include_synonyms=True, config_filter="all")["broker"]["1"]
        expect(broker["log.retention.ms"], "7200000", "DYNAMIC_BROKER_CONFIG",
               [("log.retention.ms", "7200000", "DYNAMIC_BROKER_CONFIG"),
                ("log.retention.ms", "5400000", "DYNAMIC_DEFAULT_BROKER_CONFIG"),
                ("log.retention.ms", DEFAULT_RETENTION_MS, "DEFAULT_CONFIG")],
               "broker 1 log.retention.ms under both")

        if alter_default_broker({"log.retention.ms": (AlterConfigOp.DELETE, None)}) != "OK":
            fail("DELETE log.retention.ms on the default broker resource failed")
        expect(topic_config("retention.ms"), "7200000", "DYNAMIC_BROKER_CONFIG",
               [("log.retention.ms", "7200000", "DYNAMIC_BROKER_CONFIG"),
                ("log.retention.ms", DEFAULT_RETENTION_MS, "DEFAULT_CONFIG")],
               "retention.ms after the default is deleted")
        result = admin.reset_configs([ConfigResource("BROKER", "1", ["log.retention.ms"])])
        if result != {"broker": {"1": "OK"}}:
            fail(f"reset_configs of broker 1 log.retention.ms answered {result}")
    finally:
        alter_default_broker({"log.retention.ms": (AlterConfigOp.DELETE, None)})
        alter_broker_1({"log.retention.ms": (AlterConfigOp.DELETE, None)})
    expect(topic_config("retention.ms"), DEFAULT_RETENTION_MS, "DEFAULT_CONFIG",
           [("log.retention.ms", DEFAULT_RETENTION_MS, "DEFAULT_CONFIG")],
           "retention.ms after every broker-level value is deleted")
    if describe_default_broker():
        fail(f"the default broker resource kept {describe_default_broker()}")


def check_reassignments():
    """AlterPartitionReassignments and ListPartitionReassignments through
    kafka-python: on one broker a partition can only be "moved" onto the
    broker it is on (accepted, nothing moves), a move to a broker that does
    not exist is refused, and cancelling answers that nothing is moving."""
    tp = TopicPartition(TOPIC, 0)
    answers = admin.alter_partition_reassignments({tp: [1]})
    if answers.get(tp) is not None:
        fail(f"reassigning {tp} onto its own broker: {answers}")
    answers = admin.alter_partition_reassignments({tp: [1, 99]})
    if answers.get(tp) is not Errors.InvalidReplicationAssignmentError:
        fail(f"reassigning {tp} to an unknown broker: {answers}")
    answers = admin.alter_partition_reassignments({tp: None})
    if answers.get(tp) is not Errors.NoReassignmentInProgressError:
        fail(f"cancelling with nothing moving: {answers}")
    ongoing = admin.list_partition_reassignments()
    if ongoing:
        fail(f"ListPartitionReassignments with nothing moving: {ongoing}")


def main():
    admin.create_topics({TOPIC: {"num_partitions": 2, "replication_factor": 1,
                                 "configs": {"retention.ms": "86400000"}}}, wait_for_metadata=True)
    check_log_dirs()
    check_create_partitions()
    check_delete_records()
    check_describe_configs()
    check_topic_alter_configs()
    check_broker_configs()
    check_reassignments()
    producer.close(timeout=TIMEOUT_S)
    admin.close()
    print("kafka_python_admin_test: ok")


if __name__ == "__main__":
    main()
