#!/usr/bin/env python3
"""The peer to beat for `benches/model_step.rs`: plain PyTorch stepping an
LSTM cell over many keys per tick, states kept in one tensor per kind
(`[layers=1, slots, hidden]`, as streamcast's `StateStore`) with a gather and
a scatter by slot index around each step, exactly like streamcast's
gather -> step -> scatter.

    . scripts/env
    $STREAMCAST_VENV/bin/python scripts/bench_pytorch_step.py

Rows (same table shape as `cargo bench --bench model_step`):
- `torch LSTMCell(1,H)`: the reference peer, `nn.LSTMCell(1, H)`.
- `torch LSTMCell(4,H)`: input 4 features, as streamcast's bench network.
- `torch LSTMCell(4,H)+head`: plus a `Linear(H, 6)` head (the
  like-for-like row until 2026-11-28; it lacks the input skip).
- `torch LSTMCell(4,H)+head+skip`: plus the linear skip from the inputs,
  `Linear(4, 6, bias=False)`, added to the head's output: what streamcast's
  `Network::step` computes (`y = head(h') + W x`), the like-for-like row.

`--rows` picks the rows (comma-separated: `1`, `4`, `4+head`,
`4+head+skip`; default all).

Each row: `--reps` repetitions (after one warm-up repetition), each timing
enough ticks to last ~0.3 s; the median per-tick time is reported as
key-steps/s = keys / tick time (printed in millions), with the best tick time
beside it and the median CPU time of the thread per tick (`time.thread_time()`;
at 1 thread the step runs on it, and CPU time is less disturbed than wall time
by other processes on a shared box). `torch.set_num_threads(2)`, then again at 1 thread (`--threads`),
`torch.no_grad()`.
"""

import argparse
import statistics
import time

import torch
from torch import nn


def bench(keys: int, hidden: int, n_in: int, head: bool, skip: bool, reps: int, target_s: float,
          device: str = "cpu"):
    torch.manual_seed(0)
    dev = torch.device(device)
    cell = nn.LSTMCell(n_in, hidden).to(dev)
    lin = nn.Linear(hidden, 6).to(dev) if head else None
    lin_skip = nn.Linear(n_in, 6, bias=False).to(dev) if skip else None
    h_all = torch.zeros(1, keys, hidden, device=dev)
    c_all = torch.zeros(1, keys, hidden, device=dev)
    slots = torch.arange(keys, dtype=torch.int64, device=dev)
    x = torch.randn(keys, n_in, device=dev)
    # CUDA launches are asynchronous: wait for the kernels before reading a clock.
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def tick():
        h = h_all.index_select(1, slots)[0]
        c = c_all.index_select(1, slots)[0]
        h2, c2 = cell(x, (h, c))
        if lin is not None:
            y = lin(h2)
            if lin_skip is not None:
                y = y + lin_skip(x)
            del y
        h_all.index_copy_(1, slots, h2.unsqueeze(0))
        c_all.index_copy_(1, slots, c2.unsqueeze(0))

    # Warm-up and calibration: how many ticks make ~target_s.
    t0 = time.perf_counter()
    tick()
    sync()
    one = max(time.perf_counter() - t0, 1e-6)
    ticks = max(2, int(target_s / one))
    for _ in range(min(ticks, 5)):
        tick()
    per_tick = []
    cpu = []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(ticks):
            tick()
        sync()
        per_tick.append((time.perf_counter() - t0) / ticks)
        cpu.append((time.thread_time() - c0) / ticks)
    med = statistics.median(per_tick)
    return keys / med, med * 1e3, min(per_tick) * 1e3, statistics.median(cpu) * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", default="10000,100000,1000000")
    ap.add_argument("--hidden", default="32,64")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--target-s", type=float, default=0.3)
    ap.add_argument("--threads", default="2,1", help="one table per intra-op thread count")
    ap.add_argument("--rows", default="1,4,4+head,4+head+skip", help="which peers (see the docstring)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (scripts/bench_gpu)")
    args = ap.parse_args()
    keys = [int(k) for k in args.keys.split(",")]
    hiddens = [int(h) for h in args.hidden.split(",")]
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        print(f"\n# torch {torch.__version__}, threads {torch.get_num_threads()}, median of {args.reps} reps, "
              f"loadavg {' '.join(open('/proc/loadavg').read().split()[:3])}\n")
        print(f"| {'what':<29} | {'hidden':>6} | {'keys':>9} | {'M key-steps/s':>13} | {'ms/tick':>9} | {'best ms':>9} | {'CPU ms':>10} |")
        print(f"|{'-' * 31}|{'-' * 7}:|{'-' * 10}:|{'-' * 14}:|{'-' * 10}:|{'-' * 10}:|{'-' * 11}:|")
        with torch.no_grad():
            rows = {"1": (1, False, False), "4": (4, False, False), "4+head": (4, True, False),
                    "4+head+skip": (4, True, True)}
            for row in args.rows.split(","):
                n_in, head, skip = rows[row.strip()]
                name = f"torch LSTMCell({n_in},H)" + ("+head" if head else "") + ("+skip" if skip else "")
                for hidden in hiddens:
                    for k in keys:
                        rate, ms, best, cpu = bench(k, hidden, n_in, head, skip, args.reps, args.target_s,
                                                       args.device)
                        print(f"| {name:<29} | {hidden:>6} | {k:>9} | {rate / 1e6:>13.3f} | {ms:>9.3f} | {best:>9.3f} | "
                              f"{cpu:>10.3f} |", flush=True)


if __name__ == "__main__":
    main()
