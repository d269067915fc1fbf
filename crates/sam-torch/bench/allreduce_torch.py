"""Python peer of examples/allreduce_bench.rs: the same all-reduce with torch.distributed (Gloo).

RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29601 python allreduce_torch.py [numel] [iters]
Rank 0 prints: torch numel=.. bytes=.. median_s=.. algbw_gbs=.. busbw_gbs=..
"""
import datetime
import sys
import time

import torch
import torch.distributed as dist


def main() -> None:
    numel = int(sys.argv[1]) if len(sys.argv) > 1 else 90_000_000
    iters = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.ones(numel, dtype=torch.float32)
    dist.all_reduce(t)  # warm-up
    times = []
    for _ in range(iters):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(t)
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    nbytes = numel * 4.0
    if rank == 0:
        print(
            f"torch numel={numel} bytes={nbytes:.0f} iters={iters} median_s={median:.4f} "
            f"algbw_gbs={nbytes / median / 1e9:.3f} "
            f"busbw_gbs={nbytes * 2 * (world - 1) / world / median / 1e9:.3f}"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
