#!/usr/bin/env python3
"""Peer of the data-parallel LM benchmark (benches/scale_out.sh): the LM of `lm_torch.py` (the
ELA LM of `ela train --link residual --lobe off --experts 0`, imported from there, not copied)
trained with PyTorch DistributedDataParallel over NCCL, one process per GPU, started by torchrun:

    torchrun --standalone --nproc-per-node N benches/peers/lm_ddp_torch.py \\
        [--dim 512 --layers 8 --heads 8 --ffn 2048 --seq 2048 --batch-per-gpu 8 --steps 12] \\
        [--precision f32|bf16]

Like ours: the global batch is batch-per-gpu x world size, each rank trains on its own rows of
it; DDP averages gradients in 25 MiB buckets (`--bucket-mb`) overlapped with the backward pass;
AdamW (beta 0.9/0.95, eps 1e-8, weight decay 0.1), clipping at 1.0, TF32 off; `bf16` is autocast
(f32 master weights and optimizer, bf16 products), the peer of `ela train --precision bf16`.
Rank 0 prints tokens/s of the whole job (global tokens per step / time per step) over the steps
after the warm-up (device-synchronized wall time; every rank synchronizes, then a barrier), the
per-GPU rate, the last loss averaged over ranks and rank 0's peak memory.
"""
import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lm_torch import Lm  # noqa: E402  (the same model as the single-GPU peer)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batch-per-gpu", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    args = ap.parse_args()

    # torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT.
    local_rank = int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    torch.manual_seed(0)  # the same initialisation on every rank (DDP also broadcasts rank 0's)
    model = Lm(args.dim, args.layers, args.heads, args.ffn).cuda()
    ddp = DDP(model, device_ids=[local_rank], bucket_cap_mb=args.bucket_mb)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    params = sum(p.numel() for p in model.parameters())

    # The global batches, identical on every rank; rank r trains on rows [r*b, (r+1)*b).
    b = args.batch_per_gpu
    gen = torch.Generator(device="cuda").manual_seed(0)
    data = torch.randint(0, 256, (args.warmup + args.steps, b * world, args.seq + 1), device="cuda", generator=gen)
    autocast = args.precision == "bf16"

    def step(i):
        rows = data[i, rank * b:(rank + 1) * b]
        ids, tgt = rows[:, :-1], rows[:, 1:]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = ddp(ids)
        loss = F.cross_entropy(logits.float().reshape(-1, 256), tgt.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.detach()

    torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup):
        step(i)
    torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step(args.warmup + i)
    torch.cuda.synchronize()
    dist.barrier()
    dt = time.perf_counter() - t0
    dist.all_reduce(loss, op=dist.ReduceOp.AVG)
    if rank == 0:
        tok = args.steps * b * world * args.seq
        print(f"pytorch DDP {args.precision} world {world}: {args.steps} steps of {b * world}x{args.seq} tokens "
              f"in {dt:.2f} s: {tok / dt:.0f} tokens/s ({tok / dt / world:.0f} per GPU, "
              f"{1e3 * dt / args.steps:.0f} ms/step), last loss {loss.item():.3f}, rank 0 peak memory "
              f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB; {params} parameters; "
              f"{torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
