"""Several processes, one model: torch.distributed as torchrun sets it up.

Under `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT in the environment, WORLD_SIZE > 1)
`setup` joins the process group: NCCL with one GPU per process (cuda:LOCAL_RANK) when the device is
CUDA, gloo on the CPU. Otherwise every helper here is a no-op for a single process, so the training
and test code calls them unconditionally.

Sharding is by contiguous blocks in rank order (`local_shard`), so `gather_shards` restores the
original order. Rank 0 is the main process: it alone logs, writes files and ranks the evaluation.

Debugging aid: with MSP_CHECK_REPLICAS=1 in the environment, `check_replicas` compares a hash of the
given tensors on every rank and raises `ReplicaMismatch` on all ranks when they differ.
"""
import atexit
import hashlib
import logging
import os
import random
from typing import Iterable, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from utils.errors import UserError

CHECK_REPLICAS_ENV = 'MSP_CHECK_REPLICAS'
_TORCHRUN_ENV = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


class ReplicaMismatch(RuntimeError):
    """The ranks' copies of the model (or of a tensor that must be shared) are not identical."""


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in _TORCHRUN_ENV) and int(os.environ['WORLD_SIZE']) > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ['WORLD_SIZE']) if launched_by_torchrun() else 1


def rank() -> int:
    # Read from the environment before setup, so the output folder and logger are decided early.
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ['RANK']) if launched_by_torchrun() else 0


def is_main() -> bool:
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (if launched by it); returns the device this process uses."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    local_rank = int(os.environ['LOCAL_RANK'])
    if device.type == 'cuda':
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise UserError(f"torchrun started process LOCAL_RANK {local_rank} but this machine has only {count} "
                            f"CUDA device(s): use --nproc_per_node {count} or fewer")
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group('nccl', device_id=device)
    else:
        dist.init_process_group('gloo')
    atexit.register(cleanup)
    return device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def describe() -> str:
    if not is_distributed():
        return 'single process'
    return f'{world_size()} processes ({dist.get_backend()}), this is rank {rank()}'


def quiet_unless_main(logger: logging.Logger) -> logging.Logger:
    """Ranks other than 0 only report warnings and errors (their file handler is never created)."""
    if not is_main():
        logger.setLevel(logging.WARNING)
    return logger


def _comm_device() -> torch.device:
    if dist.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s (picklable) object on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def mean_across_ranks(*values: float) -> Tuple[float, ...]:
    """The mean over ranks of each value (a NaN or inf on any rank reaches every rank)."""
    if not is_distributed():
        return tuple(float(v) for v in values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return tuple((tensor / world_size()).tolist())


def require_divisible(value: int, what: str) -> None:
    """A per-batch quantity that is split across the processes must divide evenly."""
    if value % world_size() != 0:
        raise UserError(f"{what} = {value} must be divisible by the number of processes ({world_size()})")


def seed_per_rank(seed: int) -> None:
    """Give each rank its own augmentation randomness (the model was built from the shared seed)."""
    if is_distributed():
        offset = seed + 1_000_003 * rank()
        random.seed(offset)
        np.random.seed(offset % 2 ** 32)
        torch.manual_seed(offset)


def shard_bounds(total: int, of_rank: int = None) -> Tuple[int, int]:
    """[start, stop) of a rank's contiguous block of `total` items (block sizes differ by at most 1)."""
    r = rank() if of_rank is None else of_rank
    w = world_size()
    return total * r // w, total * (r + 1) // w


def local_shard(items: Sequence) -> Sequence:
    """This rank's contiguous block of `items` (a list or tensor). A rank whose block is empty gets the
    last item as filler, so it can still run the model; `gather_shards` drops it."""
    if not is_distributed():
        return items
    start, stop = shard_bounds(len(items))
    return items[start:stop] if stop > start else items[len(items) - 1:]


def gather_shards(local: torch.Tensor, total: int, keep_grad: bool = False) -> torch.Tensor:
    """Every rank's rows of `local_shard` of `total` items, concatenated in rank order, on every rank.

    keep_grad: this rank's rows stay attached to its autograd graph (the other ranks' rows are
    constants), so a loss computed identically on every rank gives each rank the gradient of its own
    rows; summing parameter gradients over ranks (`all_reduce_grads`) then gives the full gradient.
    """
    if not is_distributed():
        return local
    sizes = [stop - start for start, stop in (shard_bounds(total, r) for r in range(world_size()))]
    own = local[:sizes[rank()]]
    padded = local.new_zeros((max(max(sizes), 1), *local.shape[1:]))
    padded[:own.shape[0]] = own.detach()
    received = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(received, padded)
    parts = [block[:size] for block, size in zip(received, sizes)]
    if keep_grad:
        parts[rank()] = own
    return torch.cat(parts)


def all_reduce_grads(params: Iterable[nn.Parameter]) -> None:
    """Sum each trainable parameter's gradient over the ranks (a missing gradient counts as zero)."""
    if not is_distributed():
        return
    for param in params:
        if not param.requires_grad:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to call for training steps: DistributedDataParallel around `model` when distributed.

    Gradients are averaged over ranks; BatchNorm stays plain (per-rank batch statistics, as in
    CLIP-ReID) and DDP copies rank 0's running statistics to every rank at each forward.
    Frozen parameters (text tower, prompts in stage 2) are ignored by DDP.
    """
    if not is_distributed():
        return model
    if device.type == 'cuda':
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return nn.parallel.DistributedDataParallel(model)


def sync_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, e.g. before evaluating or saving."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
    check_replicas(module.state_dict().values(), 'the buffer sync')


def _digest(tensors: Iterable[torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for tensor in tensors:
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        sha.update(str(flat.dtype).encode())
        sha.update(flat.view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def check_replicas(tensors: Iterable[torch.Tensor], where: str) -> None:
    """With MSP_CHECK_REPLICAS=1: raise ReplicaMismatch on every rank unless all ranks hold bitwise
    identical `tensors`; rank 0 prints one line per passed check."""
    if not is_distributed() or os.environ.get(CHECK_REPLICAS_ENV) != '1':
        return
    digests = [None] * world_size()
    dist.all_gather_object(digests, _digest(tensors))
    if len(set(digests)) > 1:
        differing = [r for r, digest in enumerate(digests) if digest != digests[0]]
        raise ReplicaMismatch(f"ranks {differing} hold different weights from rank 0 after {where}")
    if is_main():
        print(f"replica check passed: {where}", flush=True)
