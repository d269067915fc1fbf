"""Python peer of `examples/bench_encoder.rs`: segment_anything's vit_b image encoder forward.

Usage: bench_encoder.py {fp32,bf16-autocast} THREADS SIZE WARMUP REPEATS
Prints one JSON line: {"impl": "segment_anything", "mode", "times_s", "peak_rss_mib"}.
"""

import json
import resource
import sys
import time

import torch


def main():
    mode, threads, size, warmup, repeats = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(threads)
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    encoder = sam_model_registry["vit_b"]().image_encoder.eval()
    x = torch.randn(1, 3, size, size)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16-autocast"):
        for i in range(warmup + repeats):
            t = time.perf_counter()
            y = encoder(x)
            dt = time.perf_counter() - t
            if i >= warmup:
                times.append(dt)
    assert y.shape == (1, 256, size // 16, size // 16)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "segment_anything", "mode": mode, "times_s": times, "peak_rss_mib": peak}))


if __name__ == "__main__":
    main()
