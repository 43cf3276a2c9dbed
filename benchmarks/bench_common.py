"""Shared pieces of the benchmarks/bench_*.py scripts: machine description, reference attention
implementations to compare the fused path against, timing, table printing and JSON output."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import model.blocks as blocks  # noqa: E402
from utils.device import cpu_model  # noqa: E402,F401  (the benchmarks name the CPU with it)


def cpu_flags() -> set:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('flags'):
                return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info(device: torch.device) -> dict:
    flags = cpu_flags()
    info = {'cpu': cpu_model(), 'cpu_count': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
            'cpu_bf16': sorted(f for f in flags if f in ('avx512_bf16', 'amx_bf16', 'amx_tile')),
            'device': str(device), 'torch': torch.__version__, 'python': platform.python_version(),
            'platform': platform.platform(), 'load_average': os.getloadavg()}
    if device.type == 'cuda':
        info['gpu'] = torch.cuda.get_device_name(device)
    return info


def describe_machine(info: dict) -> str:
    where = info.get('gpu') or f"{info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch threads)"
    return (f"{where}; torch {info['torch']}; load average {info['load_average'][0]:.2f} at start")


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def max_rss_mib() -> float:
    """High-water mark of this process's resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- reference attention paths, swapped in for model.blocks.self_attention -------------------------

def _causal_mask(length: int, device, dtype) -> torch.Tensor:
    return torch.full((length, length), float('-inf'), device=device, dtype=dtype).triu_(1)


def module_attention(attn: nn.MultiheadAttention, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    """What the published CLIP-ReID code runs: the nn.MultiheadAttention module (need_weights=False),
    with an explicit additive causal mask on the text side."""
    mask = _causal_mask(x.shape[1], x.device, x.dtype) if is_causal else None
    if attn.batch_first:
        return attn(x, x, x, need_weights=False, attn_mask=mask)[0]
    xt = x.transpose(0, 1)
    return attn(xt, xt, xt, need_weights=False, attn_mask=mask)[0].transpose(0, 1)


def explicit_attention(attn: nn.MultiheadAttention, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    """Plain softmax(Q K^T / sqrt(d)) V with the [B, heads, L, L] score matrix materialised."""
    batch, length, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)
    scores = (q * (width // heads) ** -0.5) @ k.transpose(-2, -1)
    if is_causal:
        scores = scores + _causal_mask(length, x.device, scores.dtype)
    out = scores.softmax(dim=-1) @ v
    return attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))


ATTENTION = {'sdpa': blocks.self_attention, 'module': module_attention, 'explicit': explicit_attention}


@contextlib.contextmanager
def attention_path(name: str) -> Iterator[None]:
    """Run every CLIP block of this process with attention implementation `name` (see ATTENTION)."""
    fused = blocks.self_attention
    blocks.self_attention = ATTENTION[name]
    try:
        yield
    finally:
        blocks.self_attention = fused


# --- timing and output ----------------------------------------------------------------------------

def best_time(fn: Callable[[], object], repeat: int, device: torch.device) -> tuple[float, object, float]:
    """(fastest of `repeat` runs in seconds, the last result, CPU share): the share is process CPU time over
    wall time x torch threads; below 1 means other processes took CPU time while it ran."""
    best, result, wall, cpu_start = float('inf'), None, 0.0, time.process_time()
    for _ in range(repeat):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        elapsed = time.perf_counter() - start
        best, wall = min(best, elapsed), wall + elapsed
    return best, result, (time.process_time() - cpu_start) / (wall * torch.get_num_threads())


def alternate_steps(steps: dict[str, Callable[[], object]], rounds: int,
                    device: torch.device) -> tuple[dict[str, list], dict[str, list]]:
    """Run each named step once per round, alternating, the order reversed every other round, so that
    every step sees the same machine load; returns each step's wall seconds and this process's CPU
    seconds per round (CPU time is what other processes on a busy machine disturb least)."""
    walls = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for round_ in range(rounds):
        for name in (list(steps) if round_ % 2 == 0 else list(steps)[::-1]):
            sync(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            steps[name]()
            sync(device)
            walls[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - cpu_start)
    return walls, cpu


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec); a missing value prints as '-'."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([('-' if row.get(key) is None else format(row[key], spec)) for key, _, spec in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        print('  '.join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
        if n == 0:
            print('  '.join('-' * w for w in widths))


def write_report(path: str, report: dict) -> None:
    Path(path).write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {path}")


def run_worker(script: str, spec: dict, timeout: float) -> dict:
    """Run `script --worker JSON` in a fresh process (own memory high-water mark, own compile caches)
    and return the JSON object it prints on its last line."""
    done = subprocess.run([sys.executable, script, '--worker', json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        tail = '\n'.join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"worker {spec} failed (exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])
