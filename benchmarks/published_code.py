"""Import one module of the published code (a checkout of sysuchx/SkyGroundReID or Syliz517/CLIP-ReID)
into this process, so a benchmark can time the published function itself on the same inputs.

The published code's packages have the same names as this project's (`config`, `utils`, `model`, ...),
so its module is loaded from its file under a private name, with the modules it imports given for the
duration of the import only (`provide`), and this project's modules restored afterwards; or, for code
with relative imports (CLIP-ReID's model package), its packages are imported inside
`published_packages(repo)`.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import types
from pathlib import Path

from yacs.config import CfgNode

CLIPREID_REPO_HELP = ('a checkout of CLIP-ReID (github.com/Syliz517/CLIP-ReID); without it its model code is '
                      'not timed')
PUBLISHED_REPO_HELP = ('a checkout of the published MSP code (github.com/sysuchx/SkyGroundReID); '
                       'without it the published code is not timed')


class PublishedCodeMissing(Exception):
    """The checkout is not there or lacks the file; the benchmark says so and goes on without it."""


def load_published_module(repo: str | Path, relative_path: str, provide: dict | None = None) -> types.ModuleType:
    path = Path(repo) / relative_path
    if not path.is_file():
        raise PublishedCodeMissing(f'{path} does not exist')
    provide = provide or {}
    saved = {name: sys.modules.get(name) for name in provide}
    sys.modules.update(provide)
    try:
        spec = importlib.util.spec_from_file_location(f'published_{path.stem}', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


# Top-level packages of CLIP-ReID / MSP whose names this project also uses.
_SHARED_PACKAGES = ('config', 'datasets', 'loss', 'model', 'processor', 'solver', 'utils')


@contextlib.contextmanager
def published_packages(repo: str | Path):
    """Import a checkout's own packages (`import model.make_model_clipreid` inside the block gives the
    checkout's, with its relative imports); this project's modules are back afterwards. Modules
    imported inside stay usable through the references taken there."""
    repo = Path(repo).resolve()
    if not repo.is_dir():
        raise PublishedCodeMissing(f'{repo} is not a folder')

    def shared(name: str) -> bool:
        return name.split('.')[0] in _SHARED_PACKAGES

    def holds_shared_package(entry: str) -> bool:  # CLIP-ReID's model/ has no __init__.py: ours would win
        return any((Path(entry or '.').resolve() / package / '__init__.py').is_file() for package in _SHARED_PACKAGES)

    saved = {name: module for name, module in sys.modules.items() if shared(name)}
    saved_path = list(sys.path)
    for name in saved:
        del sys.modules[name]
    sys.path[:] = [str(repo)] + [entry for entry in saved_path if not holds_shared_package(entry)]
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name in [name for name in sys.modules if shared(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def keep_cuda_calls_on_cpu() -> None:
    """The published code moves its model and tensors with `.to("cuda")` and the tensor method `cuda` (at
    build time, and CLIP-ReID's loss every step); without a GPU those calls leave them where they are, for
    the rest of the calling process (a benchmark's worker)."""
    import torch

    module_to = torch.nn.Module.to

    def module_to_unless_cuda(self, *args, **kwargs):
        if args and str(args[0]).startswith('cuda'):
            return self
        return module_to(self, *args, **kwargs)

    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.to = module_to_unless_cuda


class PublishedEvaluator:
    """The published MSP test path after feature extraction (`utils/metrics.py`): L2 normalisation,
    `euclidean_distance`, `eval_func` with `cfg.TEST.EVAL_MODE` set to the mode. `eval_func` prints a
    line per query; that output goes to a buffer that is dropped. Returns its mAP, CMC and the distance
    matrix it ranked (so a comparison can rank the very same distances)."""

    def __init__(self, repo: str | Path):
        cfg = CfgNode({'TEST': CfgNode({'EVAL_MODE': 'DDC'})})
        config = types.ModuleType('config')
        config.cfg = cfg
        utils = types.ModuleType('utils')
        utils.__path__ = []  # a package, so that `utils.reranking` resolves to the stand-in below
        reranking = types.ModuleType('utils.reranking')
        reranking.re_ranking = None  # not used without re-ranking
        self.cfg = cfg
        self.metrics = load_published_module(repo, 'utils/metrics.py', {
            'config': config, 'utils': utils, 'utils.reranking': reranking})

    def __call__(self, qf, gf, q_pids, g_pids, q_camids, g_camids, mode: str) -> dict:
        import torch

        self.cfg.TEST.EVAL_MODE = mode
        qf, gf = torch.nn.functional.normalize(qf, dim=1, p=2), torch.nn.functional.normalize(gf, dim=1, p=2)
        with contextlib.redirect_stdout(io.StringIO()), _quiet_deprecations():
            distmat = self.metrics.euclidean_distance(qf, gf)
            cmc, mean_ap = self.metrics.eval_func(distmat, q_pids, g_pids, q_camids, g_camids)
        return {'mAP': float(mean_ap), 'cmc': cmc, 'distmat': distmat}


@contextlib.contextmanager
def _quiet_deprecations():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # the published addmm_(beta, alpha, ...) call form
        yield
