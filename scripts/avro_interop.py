#!/usr/bin/env python3
"""Interop check of streamcast's Avro with Confluent's own Python serde.

Produces events with confluent-kafka's AvroSerializer (registering their
schema in the registry as any Confluent producer does), runs a streamcast
pipeline with decode.format = sink.format = "avro" over them, then reads the
forecasts back with confluent-kafka's AvroDeserializer (writer schema fetched
from the registry by the id in each message). Exits 1 on any mismatch.

Needs the broker and the registry up (scripts/kafka up, scripts/registry up)
and a Python with `confluent-kafka[avro,schemaregistry]` (not in the
project's venv: python3 -m venv /tmp/avro-venv &&
/tmp/avro-venv/bin/pip install "confluent-kafka[avro,schemaregistry]").

  /tmp/avro-venv/bin/python scripts/avro_interop.py [path/to/streamcast]
"""
import os
import subprocess
import sys
import tempfile
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

BROKERS = os.environ.get("STREAMCAST_BROKERS", "127.0.0.1:9092")
REGISTRY = os.environ.get(
    "STREAMCAST_SCHEMA_REGISTRY", "http://127.0.0.1:8081/apis/ccompat/v7"
)
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.environ.get("CARGO_TARGET_DIR", "target"), "debug", "streamcast"
)
EVENT = """{"type":"record","name":"Metric","namespace":"interop","fields":[
  {"name":"key","type":"string"},
  {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
  {"name":"value","type":["null","double"]}]}"""
HOUR = 3_600_000
T0 = 1_704_067_200_000
KEYS, HOURS = ["a", "b", "c"], 10

s = uuid.uuid4().hex[:10]
src, out, dlq = f"interop.in.{s}", f"interop-{s}-out", f"interop.dlq.{s}"
admin = AdminClient({"bootstrap.servers": BROKERS})
for fut in admin.create_topics([NewTopic(t, 1, 1) for t in (src, out, dlq)]).values():
    fut.result(30)
sr = SchemaRegistryClient({"url": REGISTRY})
ser = AvroSerializer(sr, EVENT)
p = Producer({"bootstrap.servers": BROKERS})
for h in range(HOURS):
    for i, k in enumerate(KEYS):
        rec = {"key": k, "ts": T0 + h * HOUR + 1000, "value": float(10 * i + h)}
        p.produce(src, key=k, value=ser(rec, SerializationContext(src, MessageField.VALUE)))
if p.flush(30) != 0:
    sys.exit("events not delivered")

with tempfile.TemporaryDirectory() as d:
    pipe = os.path.join(d, "interop.toml")
    with open(pipe, "w") as f:
        f.write(f"""
name = "interop-{s}"
[source]
topic = "{src}"
group_id = "interop-{s}"
partitions = 1
[decode]
format = "avro"
time_format = "epoch_ms"
[window]
size = "1h"
allowed_lateness = "0s"
idle_partition_timeout = "1s"
[model]
cell = "gru"
hidden = 8
horizon = 2
warmup_windows = 3
[sink]
topic = "{out}"
dead_letter_topic = "{dlq}"
format = "avro"
[registry]
url = "{REGISTRY}"
""")
    rc = subprocess.run([BIN, "run", pipe, "--exit-when-idle", "4s"],
                        stdout=subprocess.DEVNULL).returncode
    if rc != 0:
        sys.exit(f"streamcast exited {rc}")

de = AvroDeserializer(sr)
c = Consumer({"bootstrap.servers": BROKERS, "group.id": f"interop-read-{s}",
              "auto.offset.reset": "earliest"})
c.subscribe([out, dlq])
forecasts, letters, idle = [], [], 0
while idle < 10:
    m = c.poll(1.0)
    if m is None:
        idle += 1
        continue
    if m.error():
        sys.exit(str(m.error()))
    idle = 0
    if m.topic() == dlq:
        letters.append(m.value())
    else:
        forecasts.append(de(m.value(), SerializationContext(out, MessageField.VALUE)))
c.close()
want = {(k, T0 + h * HOUR) for k in KEYS for h in range(1, HOURS)}
got = {(f["key"], f["window_end_ms"]) for f in forecasts}
print(f"forecasts read by Confluent's AvroDeserializer: {len(forecasts)}, "
      f"windows expected {len(want)}, dead letters {len(letters)}")
print("example:", forecasts[0] if forecasts else None)
if got != want or len(forecasts) != len(want) or letters:
    sys.exit(f"MISMATCH: missing {sorted(want - got)[:5]}, extra {sorted(got - want)[:5]}, letters {letters[:2]}")
print("interop ok")
