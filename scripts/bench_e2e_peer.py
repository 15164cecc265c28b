#!/usr/bin/env python3
"""The Python peer of streamcast's end-to-end benchmark: the same job written
the way a user would write it without streamcast, in plain Python with
confluent-kafka and PyTorch, so both can be timed side by side on the same
topic and broker.

What it does, in one process and one thread of our own (librdkafka runs its
own threads underneath):

1. Consumes `--topic` from the beginning with a fresh consumer group
   (`auto.offset.reset=earliest`), in batches of up to 10,000 messages
   (`Consumer.consume`). Every message is one JSON event, e.g.
   `{"key":"cpu-0001","ts":"2026-11-20T10:05:00Z","value":42.5}`, decoded
   with `json.loads` and `datetime.fromisoformat` per event: that per-event
   Python cost is the point of the comparison.
2. Windows every key in event time: tumbling windows of `--window` seconds
   aligned to the Unix epoch, a running sum and count per value field
   (`--fields`) per open window, kept in dicts.
3. Tracks a watermark and closes a window once the watermark reaches its
   end (`end <= watermark`; no allowed lateness): the closed window's value
   is the mean of each field. Events for a window that has already closed
   are late and dropped (counted). See "Watermark" below.
4. Steps every window closed in one poll with one batched PyTorch call: an
   `nn.LSTMCell(n_fields, --hidden)` plus an `nn.Linear(--hidden, --horizon)`
   head, per-key `h`/`c` state in preallocated tensors indexed by a
   key -> slot dict (capacity doubles as keys arrive): gather the closing
   keys' slots, step, scatter back. Inputs are scaled per key and field with
   an online (Welford) mean/std first, as streamcast does, and the head's
   output is unscaled with the first field's mean/std into the forecast.
   The network is randomly initialised (seeded): this measures throughput,
   not accuracy.
5. Publishes one JSON forecast per closed window to `--out-topic`
   (Kafka key = entity key), shaped like streamcast's:
   `{"key":..,"window_end":"..","window_end_ms":..,"step_ms":..,
   "forecast":[..],"model_version":"python-peer","source":"model"}`,
   with a Producer (`linger.ms=5`, `acks=all`) and counts delivery acks in
   the delivery callback; `flush()` at the end.
6. Stops once every assigned partition has reached its end
   (`enable.partition.eof`) and nothing has arrived for `--idle-exit`
   seconds, then prints ONE JSON line of results to stdout and a short
   human line to stderr.

Watermark. `--watermark min` (the default) is the usual stream-processor
rule and the one streamcast uses: each partition tracks its largest event
time and the watermark is the minimum of those over the assigned partitions
that still have messages to read; a partition that has reached its end does
not hold it back, and once every partition is at its end it is the maximum
over all of them. A partition that has sent nothing yet holds the
watermark. `--watermark max` is the naive rule, the largest event time seen
over all partitions: on a topic with several partitions read from a backlog,
librdkafka hands out a megabyte or so of one partition before the next, so
one partition runs ahead in event time and the others' events turn late and
are dropped (the `late_events` figure shows how many). The watermark only
moves between polls, and never goes back.

What it does not do (streamcast does): no filling of empty windows, no key
eviction or TTL, no dead letters for bad or late events (they are counted
and dropped), no offset bookkeeping tying commits to forecast acks
(auto-commit is left at its default and the group is throwaway), no
training, no restarts. Windows still open at the end stay open: as in a
stream processor, a key's last window is not owed until the watermark
passes it.

Results (the stdout JSON line):
- `events`: messages consumed (the throughput figure's count); of them
  `late_events` and `bad_events` (undecodable) were dropped.
- `windows_closed`, `forecasts_acked` (delivery reports without error).
- `seconds`: wall time from the first consumed message to the last forecast
  ack (to the last message if there were no forecasts); `events_per_s` =
  events / seconds.
- `cpu_s`: the whole process's user+sys CPU (librdkafka's threads included,
  and Python start-up and the torch import too); `cpu_s_startup` is the part
  spent before the first message, so `cpu_s - cpu_s_startup` is the run.
- `peak_rss_mb`: the process's peak resident set (`ru_maxrss`).
- `latency_p50_ms`, `latency_p99_ms`: per closed window, from the wall time
  it was closed in this process (the sweep after the poll in which the
  watermark reached its end) to its forecast's delivery ack. The ack is
  seen when the producer's callbacks are served (`producer.poll`, after
  every consumer poll), so it includes up to one poll's processing time, as
  it would for any single-threaded consumer loop like this one.

Run (broker from `scripts/kafka up`; the venv needs `confluent-kafka`):

    . scripts/env
    $STREAMCAST_VENV/bin/pip install confluent-kafka
    $STREAMCAST_VENV/bin/python scripts/bench_e2e_peer.py \\
        --topic events --out-topic forecasts --window 3600

`torch.set_num_threads(1)`: on a busy 2-core box a second intra-op thread
only contends with librdkafka's threads and the broker (measured slower in
`scripts/bench_pytorch_step.py`); the batched step is small anyway.
"""

import argparse
import json
import math
import resource
import sys
import time
import uuid
import warnings
from datetime import datetime, timezone

# The venv's torch has no NumPy beside it; nothing here needs NumPy, so its
# import-time warning is noise.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

BATCH = 10_000  # messages per Consumer.consume call
CONSUME_TIMEOUT_S = 0.1
MODEL_VERSION = "python-peer"
SCALED_CLAMP = 10.0  # scaled inputs are clamped to this many std (as streamcast)
NO_TS = -(2**63)  # "no event time yet"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--topic", required=True, help="input topic (JSON events)")
    ap.add_argument("--out-topic", required=True, help="forecast topic (created if missing)")
    ap.add_argument("--window", type=float, default=3600, help="tumbling window, seconds (default 3600)")
    ap.add_argument("--hidden", type=int, default=32, help="LSTM hidden size (default 32)")
    ap.add_argument("--horizon", type=int, default=6, help="forecast steps (default 6)")
    ap.add_argument("--fields", default="value", help="comma-separated value fields (default value)")
    ap.add_argument(
        "--idle-exit", type=float, default=5.0,
        help="stop once every partition is at its end and nothing arrived for this long (s, default 5)",
    )
    ap.add_argument("--group", default=None, help="consumer group (default: a fresh random one)")
    ap.add_argument(
        "--watermark", choices=("min", "max"), default="min",
        help="min: per-partition, like streamcast (default); max: largest event time over all partitions",
    )
    ap.add_argument(
        "--fetch-queue-backoff-ms", type=int, default=None,
        help="librdkafka fetch.queue.backoff.ms (default: librdkafka's own, 1000)",
    )
    args = ap.parse_args(argv)
    args.fields = [f.strip() for f in args.fields.split(",") if f.strip()]
    if not args.fields:
        ap.error("--fields names no field")
    if args.window <= 0:
        ap.error("--window must be positive")
    return args


def ensure_topic(brokers, topic, like_topic):
    """Creates `topic` (with as many partitions as `like_topic`) if missing:
    the project's broker has auto-creation off."""
    admin = AdminClient({"bootstrap.servers": brokers})
    md = admin.list_topics(timeout=10)
    if topic in md.topics:
        return
    src = md.topics.get(like_topic)
    parts = len(src.partitions) if src is not None and src.partitions else 1
    fut = admin.create_topics([NewTopic(topic, num_partitions=parts, replication_factor=1)])[topic]
    try:
        fut.result(timeout=30)
    except KafkaException as e:
        if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


class Forecaster:
    """Per-key LSTM state in slot-indexed tensors and one batched step."""

    def __init__(self, n_fields, hidden, horizon):
        torch.manual_seed(0)
        self.cell = torch.nn.LSTMCell(n_fields, hidden)
        self.head = torch.nn.Linear(hidden, horizon)
        self.n_fields, self.hidden = n_fields, hidden
        self.slot_of = {}  # key -> slot
        self.cap = 0
        self._grow(1024)

    def _grow(self, cap):
        def grown(t, width, dtype):
            new = torch.zeros(cap, width, dtype=dtype)
            if t is not None:
                new[: t.shape[0]] = t
            return new

        old = self.cap > 0
        self.h = grown(self.h if old else None, self.hidden, torch.float32)
        self.c = grown(self.c if old else None, self.hidden, torch.float32)
        # Welford accumulators per key and field, in float64 like streamcast.
        self.n = grown(self.n if old else None, self.n_fields, torch.float64)
        self.mean = grown(self.mean if old else None, self.n_fields, torch.float64)
        self.m2 = grown(self.m2 if old else None, self.n_fields, torch.float64)
        self.cap = cap

    def slots(self, keys):
        slot_of = self.slot_of
        out = []
        for k in keys:
            s = slot_of.get(k)
            if s is None:
                s = slot_of[k] = len(slot_of)
            out.append(s)
        if len(slot_of) > self.cap:
            cap = self.cap
            while cap < len(slot_of):
                cap *= 2
            self._grow(cap)
        return out

    @torch.no_grad()
    def step(self, keys, values):
        """One step for distinct `keys` with window means `values`
        (list of per-field lists, NaN = no value). Returns the forecasts as
        a list of lists (`horizon` values each)."""
        idx = torch.tensor(self.slots(keys), dtype=torch.int64)
        x = torch.tensor(values, dtype=torch.float64)
        # Online per-key scaling (Welford), missing values not counted.
        present = (~x.isnan()).to(torch.float64)
        x = x.nan_to_num(0.0)
        n = self.n.index_select(0, idx) + present
        mean0 = self.mean.index_select(0, idx)
        delta = (x - mean0) * present
        mean = mean0 + delta / n.clamp_min(1.0)
        m2 = self.m2.index_select(0, idx) + delta * (x - mean) * present
        self.n.index_copy_(0, idx, n)
        self.mean.index_copy_(0, idx, mean)
        self.m2.index_copy_(0, idx, m2)
        # Floor the std relative to the level so a flat start does not turn
        # the first change into an enormous input (as streamcast).
        scale = (m2 / n.clamp_min(1.0)).sqrt().maximum(mean.abs() * 1e-3 + 1e-6)
        scaled = ((x - mean) / scale).clamp(-SCALED_CLAMP, SCALED_CLAMP) * present
        # Gather, step, scatter.
        h, c = self.cell(scaled.to(torch.float32), (self.h.index_select(0, idx), self.c.index_select(0, idx)))
        self.h.index_copy_(0, idx, h)
        self.c.index_copy_(0, idx, c)
        y = self.head(h).to(torch.float64) * scale[:, :1] + mean[:, :1]
        return y.tolist()


_RFC3339_CACHE = {}


def rfc3339(ms):
    """`2026-11-20T10:00:00Z` (milliseconds only when not whole seconds).
    Window ends repeat for every key, so they are cached."""
    _cache = _RFC3339_CACHE
    s = _cache.get(ms)
    if s is None:
        sec, frac = divmod(ms, 1000)
        s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        s += f".{frac:03d}Z" if frac else "Z"
        _cache[ms] = s
    return s


def percentile(sorted_xs, q):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_xs:
        return None
    i = max(0, math.ceil(q / 100.0 * len(sorted_xs)) - 1)
    return sorted_xs[i]


def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    fields = args.fields
    n_fields = len(fields)
    window_ms = int(round(args.window * 1000))
    group = args.group or f"bench-e2e-peer-{uuid.uuid4().hex[:12]}"

    ensure_topic(args.brokers, args.out_topic, args.topic)
    model = Forecaster(n_fields, args.hidden, args.horizon)

    consumer_conf = {
        "bootstrap.servers": args.brokers,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
    }
    if args.fetch_queue_backoff_ms is not None:
        consumer_conf["fetch.queue.backoff.ms"] = args.fetch_queue_backoff_ms
    consumer = Consumer(consumer_conf)
    producer = Producer({"bootstrap.servers": args.brokers, "linger.ms": 5, "acks": "all"})

    # Partition bookkeeping for the watermark and the exit test.
    assigned = set()  # partition numbers
    at_eof = set()  # assigned partitions read to their end
    part_max = {}  # partition -> largest event time (ms)

    def on_assign(_c, parts):
        assigned.update(p.partition for p in parts)

    def on_revoke(_c, parts):
        for p in parts:
            assigned.discard(p.partition)
            at_eof.discard(p.partition)

    consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke)

    # Open windows, bucketed by window end: end_ms -> {key: [sum_0.., count_0..]}.
    # All keys share the epoch-aligned grid, so a watermark move only has to
    # look at the few distinct ends, never at every key.
    open_by_end = {}
    watermark = NO_TS

    stats = {"events": 0, "late": 0, "bad": 0, "closed": 0, "acked": 0, "errors": 0}
    latencies_ms = []
    t_first_msg = t_last_msg = t_last_ack = None
    cpu_at_first_msg = None

    def delivery_callback(closed_at):
        def cb(err, _msg):
            nonlocal t_last_ack
            now = time.perf_counter()
            if err is not None:
                stats["errors"] += 1
                return
            stats["acked"] += 1
            t_last_ack = now
            latencies_ms.append((now - closed_at) * 1e3)

        return cb

    def produce(key, value, cb):
        while True:
            try:
                producer.produce(args.out_topic, key=key, value=value, on_delivery=cb)
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room.
                producer.poll(0.05)

    def compute_watermark():
        if not part_max:
            return NO_TS
        if args.watermark == "max":
            return max(part_max.values())
        behind = [p for p in assigned if p not in at_eof]
        if not behind:
            return max(part_max.values())
        if any(p not in part_max for p in behind):
            return NO_TS  # a partition that has sent nothing holds it
        return min(part_max[p] for p in behind)

    def close_due():
        """Closes every window with end <= watermark, steps the model and
        publishes the forecasts."""
        due = sorted(e for e in open_by_end if e <= watermark)
        if not due:
            return
        closed_at = time.perf_counter()
        # A key can close several windows in one poll (a backlog with few
        # keys); its steps must run in order, so such windows go to later
        # "rounds". Usually there is one round: one batched call per poll.
        rounds = []
        seen = {}
        for end in due:
            for key, acc in open_by_end.pop(end).items():
                r = seen.get(key, 0)
                seen[key] = r + 1
                if r == len(rounds):
                    rounds.append(([], [], []))
                keys, ends, values = rounds[r]
                keys.append(key)
                ends.append(end)
                values.append([acc[i] / acc[n_fields + i] if acc[n_fields + i] else math.nan for i in range(n_fields)])
        cb = delivery_callback(closed_at)
        for keys, ends, values in rounds:
            forecasts = model.step(keys, values)
            stats["closed"] += len(keys)
            for key, end, fc in zip(keys, ends, forecasts):
                payload = json.dumps(
                    {
                        "key": key,
                        "window_end": rfc3339(end),
                        "window_end_ms": end,
                        "step_ms": window_ms,
                        "forecast": fc,
                        "model_version": MODEL_VERSION,
                        "source": "model",
                    },
                    separators=(",", ":"),
                )
                produce(key, payload, cb)
        producer.poll(0)

    loads = json.loads
    fromiso = datetime.fromisoformat
    utc = timezone.utc
    floor = math.floor
    n_partitions = 0
    last_activity = time.perf_counter()
    try:
        while True:
            msgs = consumer.consume(num_messages=BATCH, timeout=CONSUME_TIMEOUT_S)
            now = time.perf_counter()
            got = late = bad = 0
            # Cache of the last bucket: consecutive events mostly share a window.
            last_end = bucket = last_p = None
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_eof.add(msg.partition())
                        last_p = None
                        continue
                    raise KafkaException(err)
                got += 1
                p = msg.partition()
                if p != last_p:
                    # A partition with a new message is not at its end any more.
                    at_eof.discard(p)
                    last_p = p
                try:
                    ev = loads(msg.value())
                    dt = fromiso(ev["ts"])
                    if dt.tzinfo is None:
                        dt = dt.replace(tzinfo=utc)
                    ts = floor(dt.timestamp() * 1000.0)
                    key = ev["key"] if "key" in ev else msg.key().decode()
                    vals = [ev.get(f) for f in fields]
                    for v in vals:
                        if v is not None and not isinstance(v, (int, float)):
                            raise TypeError(f"field value {v!r} is not a number")
                except (ValueError, TypeError, KeyError, AttributeError):
                    bad += 1
                    continue
                if ts > part_max.get(p, NO_TS):
                    part_max[p] = ts
                end = (ts // window_ms + 1) * window_ms
                if end <= watermark:
                    late += 1
                    continue
                if end != last_end:
                    bucket = open_by_end.get(end)
                    if bucket is None:
                        bucket = open_by_end[end] = {}
                    last_end = end
                acc = bucket.get(key)
                if acc is None:
                    acc = bucket[key] = [0.0] * (2 * n_fields)
                for i, v in enumerate(vals):
                    if v is not None:
                        acc[i] += v
                        acc[n_fields + i] += 1
            stats["events"] += got
            stats["late"] += late
            stats["bad"] += bad
            if got:
                if t_first_msg is None:
                    t_first_msg = now
                    cpu_at_first_msg = cpu_seconds()
                t_last_msg = last_activity = time.perf_counter()
            wm = compute_watermark()
            if wm > watermark:
                watermark = wm
                close_due()
            producer.poll(0)
            if (
                assigned
                and assigned <= at_eof
                and time.perf_counter() - last_activity >= args.idle_exit
            ):
                break
        n_partitions = len(assigned)  # before close() revokes them
        remaining = producer.flush(60)
        if remaining:
            print(f"bench_e2e_peer: {remaining} forecasts still undelivered after 60 s", file=sys.stderr)
    finally:
        consumer.close()

    end_t = t_last_ack if t_last_ack is not None else t_last_msg
    seconds = (end_t - t_first_msg) if t_first_msg is not None and end_t is not None else 0.0
    lat = sorted(latencies_ms)
    cpu = cpu_seconds()
    result = {
        "events": stats["events"],
        "windows_closed": stats["closed"],
        "forecasts_acked": stats["acked"],
        "seconds": round(seconds, 3),
        "events_per_s": round(stats["events"] / seconds, 1) if seconds > 0 else None,
        "cpu_s": round(cpu, 3),
        "cpu_s_startup": round(cpu_at_first_msg, 3) if cpu_at_first_msg is not None else round(cpu, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "latency_p50_ms": round(percentile(lat, 50), 2) if lat else None,
        "latency_p99_ms": round(percentile(lat, 99), 2) if lat else None,
        "late_events": stats["late"],
        "bad_events": stats["bad"],
        "delivery_errors": stats["errors"],
        "keys": len(model.slot_of),
        "windows_open_at_exit": sum(len(b) for b in open_by_end.values()),
        "partitions": n_partitions,
        "watermark": args.watermark,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    print(
        f"bench_e2e_peer: {result['events']} events in {result['seconds']} s "
        f"({result['events_per_s']} events/s), {result['windows_closed']} windows, "
        f"{result['forecasts_acked']} acked, latency p50 {result['latency_p50_ms']} ms "
        f"p99 {result['latency_p99_ms']} ms, cpu {result['cpu_s']} s, "
        f"rss {result['peak_rss_mb']} MB, late {result['late_events']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
