"""Python peer of `examples/bench_optim.rs`: torch.optim.AdamW(fused=True).step() and
torch.nn.utils.clip_grad_norm_(foreach=True) over segment_anything's vit_b parameters.

Usage: bench_optim.py THREADS WARMUP REPEATS
Prints one JSON line: {"impl", "tensors", "params", "step_s", "clip_s", "peak_rss_mib"}.
"""

import json
import resource
import sys
import time

import torch
from segment_anything import sam_model_registry


def timed(warmup, repeats, f):
    times = []
    for i in range(warmup + repeats):
        t = time.perf_counter()
        f()
        dt = time.perf_counter() - t
        if i >= warmup:
            times.append(dt)
    return times


def main():
    threads, warmup, repeats = map(int, sys.argv[1:4])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    params = [p for _, p in sorted(sam.named_parameters())]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01, fused=True)
    step_s = timed(warmup, repeats, opt.step)
    # The Rust side returns the norm as a number: read it here too.
    clip_s = timed(warmup, repeats,
                   lambda: float(torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "impl": "torch AdamW(fused=True)", "tensors": len(params),
        "params": sum(p.numel() for p in params), "step_s": step_s, "clip_s": clip_s,
        "peak_rss_mib": peak,
    }))


if __name__ == "__main__":
    main()
