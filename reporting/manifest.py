"""OUTPUT_DIR/manifest.json: what exactly ran in a folder, so that two runs can be told apart.

It names the code (git commit, and whether tracked files differed from it), Python and the package
versions, the device, the full config, the seed, a fingerprint of every dataset split (image count,
identities, and a SHA-256 of its sorted file list relative to the dataset folder), the wall time of each
stage and the peak memory. A run writes it when it begins its first stage (stage 1, stage 2 or the
evaluation; 'status': 'running'), at the start and end of every stage, and at the end ('finished' or
'failed'). A run that stops before its first stage (a mistake found while setting up, a damaged
resume state) leaves the folder's manifest as it was. A run in a folder that already holds a manifest
keeps the earlier one's summary under 'earlier' (a resumed training, a second test run).

`tools/compare_results.py A B` lists what differs between the manifests of two folders, and
`tools/experiment.py` takes a 'finished' training manifest as the sign that a seed needs no more work.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

import torch

from utils import atomic_io, distributed
from utils.device import describe_device
from utils.vocabulary import MANIFEST_FILE

FORMAT = 'msp-manifest-1'
PACKAGES = ('torch', 'torchvision', 'timm', 'open_clip_torch', 'numpy')
RUNNING, FINISHED, FAILED = 'running', 'finished', 'failed'
# Different in every run even of the same experiment: left out when two manifests are compared.
VOLATILE_KEYS = ('status', 'started', 'ended', 'argv', 'wall_time_s', 'peak_memory_mib', 'earlier',
                 'config.OUTPUT_DIR', 'config.SOLVER.RESUME', 'resumed_from_epoch', 'device.torch_threads')
CODE_ROOT = Path(__file__).resolve().parents[1]


def manifest_path(output_dir: str) -> str:
    return os.path.join(output_dir, MANIFEST_FILE)


def read_manifest(output_dir: str) -> dict | None:
    """The folder's manifest, or None when it has none or it cannot be read as one."""
    try:
        with open(manifest_path(output_dir), encoding='utf-8') as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get('format') == FORMAT else None


def git_state(folder: Path = CODE_ROOT) -> dict | None:
    """{'commit', 'dirty'} of the checkout the code runs from; None outside a git checkout."""
    def git(*args):
        return subprocess.run(['git', '-C', str(folder), *args], capture_output=True, text=True, timeout=30)
    try:
        head = git('rev-parse', 'HEAD')
        if head.returncode != 0:
            return None
        # Untracked files (data, logs) do not count; a changed tracked file does.
        changes = git('status', '--porcelain', '--untracked-files=no')
    except (OSError, subprocess.SubprocessError):
        return None
    return {'commit': head.stdout.strip(), 'dirty': bool(changes.stdout.strip()) if changes.returncode == 0 else None}


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def split_fingerprint(items: list, root: str) -> dict:
    """Image and identity counts and a SHA-256 of the sorted file list (paths relative to `root`)."""
    files = sorted(os.path.relpath(path, root) for path, *_ in items)
    return {'images': len(items), 'identities': len({item[1] for item in items}),
            'files_sha256': hashlib.sha256('\n'.join(files).encode('utf-8')).hexdigest()}


def dataset_fingerprint(name: str, dataset) -> dict:
    return {'name': name, 'root': os.path.abspath(dataset.root),
            'splits': {split: split_fingerprint(getattr(dataset, split), dataset.root)
                       for split in ('train', 'query', 'gallery')}}


def peak_memory_mib(device: torch.device) -> dict:
    """High-water marks: this process's resident memory, and on CUDA the allocated and reserved GPU
    memory. Data-loader workers are not counted: a forked child's high-water mark includes the pages it
    shares with this process, so it would say nothing of its own."""
    peak = {'process_rss': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # Linux: KiB
    if device.type == 'cuda':
        peak['cuda_allocated'] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
        peak['cuda_reserved'] = round(torch.cuda.max_memory_reserved(device) / 2 ** 20, 1)
    return peak


def _now() -> str:
    return time.strftime('%Y-%m-%dT%H:%M:%S%z')


def _earlier_summary(manifest: dict) -> dict:
    return {key: manifest.get(key) for key in ('run', 'status', 'started', 'ended', 'git', 'seed',
                                               'resumed_from_epoch', 'wall_time_s')}


class RunManifest:
    """The manifest of one run: `stage(name)` times a stage, `finish(status)` closes it. Only the main
    process writes; on the others every method does nothing. Nothing is written before the first stage."""

    def __init__(self, output_dir: str, config: dict, seed: int, deterministic: bool, kind: str,
                 device: torch.device, datasets: dict, argv: list, started: float):
        """`config`: the run's whole config as plain dicts and lists (recorded as it is); `seed` and
        `deterministic`: SOLVER.SEED and SOLVER.DETERMINISTIC; `kind`: 'train' or 'test'; `datasets`:
        {role: (DATASETS name, dataset)}, e.g. {'train': ('mssl', dataset)}; `started`: time.monotonic()
        when the run began (the time until now is its set-up)."""
        self.output_dir = output_dir
        self.device = device
        self.active = distributed.is_main()
        self.written = False
        self._start = started
        if not self.active:
            return
        earlier = read_manifest(self.output_dir)
        self.record = {
            'format': FORMAT, 'run': kind, 'argv': list(argv), 'status': RUNNING, 'started': _now(), 'ended': None,
            'git': git_state(), 'python': platform.python_version(), 'packages': package_versions(),
            'device': {**describe_device(device), 'processes': distributed.world_size()},
            'seed': seed, 'deterministic': deterministic, 'config': config,
            'datasets': {role: dataset_fingerprint(name, dataset) for role, (name, dataset) in datasets.items()},
            'resumed_from_epoch': None,
            'wall_time_s': {'setup': round(time.monotonic() - started, 2)}, 'peak_memory_mib': {},
            'earlier': ([*earlier.get('earlier', []), _earlier_summary(earlier)] if earlier else []),
        }

    def write(self) -> None:
        if not self.active:
            return
        self.record['wall_time_s']['total'] = round(time.monotonic() - self._start, 2)
        self.record['peak_memory_mib'] = peak_memory_mib(self.device)
        atomic_io.write_text(manifest_path(self.output_dir), json.dumps(self.record, indent=1) + '\n')
        self.written = True

    def note(self, **fields) -> None:
        if self.active:
            self.record.update(fields)

    @contextlib.contextmanager
    def stage(self, name: str):
        """Add the wall time of the block to the stage `name` (stages may repeat: their times add up)."""
        start = time.monotonic()
        self.write()
        try:
            yield
        finally:
            if self.active:
                times = self.record['wall_time_s']
                times[name] = round(times.get(name, 0.0) + time.monotonic() - start, 2)
                self.write()

    def finish(self, status: str) -> None:
        if not self.active or not self.written or self.record['status'] != RUNNING:
            return
        self.record.update(status=status, ended=_now())
        self.write()


def flatten(node, prefix: str = '') -> dict:
    """{'a.b.c': leaf} of nested dicts (a CfgNode too); lists are leaves, tuples become lists (as in JSON
    and YAML, so that a config compares equal to its saved copy)."""
    if not isinstance(node, dict):
        return {prefix: list(node) if isinstance(node, tuple) else node}
    flat = {}
    for key, value in node.items():
        flat.update(flatten(value, f'{prefix}.{key}' if prefix else str(key)))
    return flat


def manifest_differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """(key, value in a, value in b) for every key whose value differs, except the VOLATILE_KEYS."""
    def kept(key):
        return not any(key == v or key.startswith(v + '.') for v in VOLATILE_KEYS)
    flat_a, flat_b = flatten(a), flatten(b)
    keys = [k for k in flat_a if kept(k)] + [k for k in flat_b if k not in flat_a and kept(k)]
    missing = '(absent)'
    return [(key, flat_a.get(key, missing), flat_b.get(key, missing)) for key in keys
            if flat_a.get(key, missing) != flat_b.get(key, missing)]
