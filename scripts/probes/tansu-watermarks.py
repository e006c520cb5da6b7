#!/usr/bin/env python3
"""Does the broker report a partition's end (high watermark) one record short?

Creates fresh 3-partition topics, eight at a time, produces two records to each with
librdkafka's own producer (confluent-kafka), then compares the high watermarks with the
records a consumer can read. On Tansu 0.6 some topics report one record fewer than are
readable (docs/kafka.md, Tansu); a Kafka broker reports none.

    python3 -m venv /var/tmp/pyk && /var/tmp/pyk/bin/pip install confluent-kafka
    /var/tmp/pyk/bin/python scripts/probes/tansu-watermarks.py [BROKER] [ROUNDS]
"""
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BROKER = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
admin = AdminClient({"bootstrap.servers": BROKER})
lock = threading.Lock()
totals = {"topics": 0, "short": 0}


def one():
    topic = f"probe-{uuid.uuid4().hex[:10]}"
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": BROKER, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    for payload in (b"a", b"b"):
        producer.produce(topic, payload)
    producer.flush(10)
    consumer = Consumer({"bootstrap.servers": BROKER, "group.id": f"probe-{topic}"})
    marks = 0
    for partition in range(3):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
        marks += high - low
    consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
    readable, deadline = 0, time.time() + 4
    while time.time() < deadline and readable < 2:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            readable += 1
    consumer.close()
    with lock:
        totals["topics"] += 1
        if marks < readable:
            totals["short"] += 1
            print(f"{topic}: watermarks say {marks}, {readable} readable", flush=True)


for _ in range(ROUNDS):
    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
print(f"{totals['short']} of {totals['topics']} topics report fewer records than are readable")
