#!/usr/bin/env python3
"""The PyTorch peer of `cargo bench --bench train_throughput` (b): the same
network, batch and training step in plain PyTorch.

    . scripts/env
    $STREAMCAST_VENV/bin/python scripts/bench_pytorch_train.py

Model: nn.GRU(32, 64, 1 layer, batch_first) + Linear(64, 24) head +
Linear(32, 24, bias=False) skip from the inputs (zero-initialised), as
streamcast's `Network` (input 32 = 1 scaled value + missing flag + 6
covariates + 24 lags; horizon 24). Adam lr 3e-3, masked MSE, batch 128,
context 96, TBPTT in chunks of 48 steps (state detached between chunks,
each chunk's loss backpropagated on its own, normalised by its terms),
clip_grad_norm_(1.0), torch.set_num_threads(2). `--device cuda` trains on
the GPU (data in host memory, each batch moved, as streamcast does).

As in streamcast, each batch gathers its rows from flat `[rows, 32]` /
`[rows, 24]` tensors (128 x 640 rows, like the Rust bench's 128 keys x 640
windows) with one index_select, and the first 24 steps of a sample are
burn-in (out of the loss). The data are random (speed does not depend on
them). Each run trains `--batches` batches (default 40, as the Rust bench)
from a fresh model; one warm-up run, then `--reps` runs, median.
"""

import argparse
import statistics
import time

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, horizon: int):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, horizon)
        self.skip = nn.Linear(n_in, horizon, bias=False)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x, h):
        out, hn = self.gru(x, h)
        return self.head(out) + self.skip(x), hn


def run(args, inputs, targets, ends_all, seed: int) -> float:
    torch.manual_seed(seed)
    dev = torch.device(args.device)
    net = Net(args.n_in, args.hidden, args.horizon).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(seed)
    L, B = args.context, args.batch
    steps = torch.arange(L) - (L - 1)
    warm = (torch.arange(L) >= args.burn_in).unsqueeze(0).to(dev)
    perm = ends_all[torch.randperm(len(ends_all), generator=gen)]
    t0 = time.perf_counter()
    for b in range(args.batches):
        ends = perm[b * B:(b + 1) * B]
        idx = (ends.unsqueeze(1) + steps.unsqueeze(0)).reshape(-1)
        # As streamcast: the data stay in host memory, each batch moves.
        x = inputs.index_select(0, idx).view(B, L, -1).to(dev)
        y = targets.index_select(0, idx).view(B, L, -1).to(dev)
        mask = warm.expand(B, L).float().unsqueeze(2)
        opt.zero_grad()
        h = torch.zeros(1, B, args.hidden, device=dev)
        total = 0.0
        for c0 in range(0, L, args.tbptt):
            n = min(args.tbptt, L - c0)
            h = h.detach()
            pred, h = net(x[:, c0:c0 + n], h)
            m = mask[:, c0:c0 + n]
            s = (((pred - y[:, c0:c0 + n]) ** 2) * m).sum()
            cnt = float(m.sum().item()) * args.horizon
            if cnt > 0:
                (s / max(cnt, 1.0)).backward()
            total += float(s.detach().item())
        torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--context", type=int, default=96)
    ap.add_argument("--tbptt", type=int, default=48)
    ap.add_argument("--burn-in", type=int, default=24)
    ap.add_argument("--n-in", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--horizon", type=int, default=24)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keys", type=int, default=128)
    ap.add_argument("--windows", type=int, default=640)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the Rust bench: TRAIN_BENCH_DEVICE)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = args.keys * args.windows
    inputs = torch.randn(rows, args.n_in)
    targets = torch.randn(rows, args.horizon)
    # Sample ends with a full context inside their key, as the Rust bench's.
    ends_all = torch.tensor([k * args.windows + e for k in range(args.keys)
                             for e in range(args.context - 1, args.windows)], dtype=torch.int64)
    samples = args.batches * args.batch
    print(f"\n# torch {torch.__version__}, threads {torch.get_num_threads()}, interop {torch.get_num_interop_threads()}, "
          f"loadavg {' '.join(open('/proc/loadavg').read().split()[:3])}\n")
    run(args, inputs, targets, ends_all, 7)  # warm-up
    secs = [run(args, inputs, targets, ends_all, 7) for _ in range(args.reps)]
    med = statistics.median(secs)
    print(f"| {'what':<40} | {'batches':>8} | {'median s':>9} | {'samples/s':>12} | {'best':>9} |")
    print(f"|{'-' * 42}|{'-' * 9}:|{'-' * 10}:|{'-' * 13}:|{'-' * 10}:|")
    print(f"| {'torch nn.GRU + heads, TBPTT 48, Adam':<40} | {args.batches:>8} | {med:>9.2f} | "
          f"{samples / med:>12.0f} | {samples / min(secs):>9.0f} |")
    print(f"\n(median of {args.reps} runs after one warm-up; loadavg at end "
          f"{' '.join(open('/proc/loadavg').read().split()[:3])})")


if __name__ == "__main__":
    main()
