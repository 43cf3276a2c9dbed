"""The resumable training state and the checkpoint folder's policy (built on utils/checkpoint.py's safe loading).

A stage-2 run writes to OUTPUT_DIR:
- `{MODEL.NAME}_{epoch}.pth`, the re-ID weights ({'model', 'epoch', 'config', 'meta'}), every
  SOLVER.STAGE2.CHECKPOINT_PERIOD epochs and after the last; SOLVER.KEEP_CHECKPOINTS N > 0 keeps the
  newest N of them.
- `resume.pth` (RESUME_NAME), rewritten at the end of every epoch, after that epoch's checkpoint and
  evaluation: the image weights, optimizer, LR scheduler, AMP scaler, the finished epoch, the RNG state
  of every process, the stage-1 text features the run trains against (and the cache they came from),
  the per-epoch history and the last weights checkpoint. The state it replaces is kept as
  `resume.prev.pth`, the fallback a damaged resume.pth points to.
Both also hold 'meta', the model description of model/checkpoint_meta.py (architecture, sizes, counts,
SIE, preprocessing, camera and view names), so that model/feature_api.py rebuilds the model from the file alone.
SOLVER.RESUME 'auto' (or a path to a resume.pth) continues with the next epoch. An epoch interrupted
part-way is trained again from its start: the sampler and the data-loader workers are seeded from
SOLVER.SEED and the epoch, and the main process's RNG state is restored, so the weights come out the
same as without the interruption.

Every write goes through utils.atomic_io (temporary file, fsync, rename): a crash during a save leaves
the previous file intact. Every read uses torch.load(weights_only=True).
"""
import glob
import os
import random
import re
import shutil
import zipfile

import numpy as np
import torch
from yacs.config import CfgNode

from reporting.manifest import flatten
from utils import atomic_io, distributed
from utils.checkpoint import DamagedFile, first_line, load_weights_only, other_checkpoints
from utils.errors import UserError
from utils.vocabulary import PREVIOUS_RESUME_FILE, RESUME_FILE, STAGE1_CACHE

RESUME_NAME = RESUME_FILE
RESUME_FORMAT = 'msp-resume-1'
_RESUME_KEYS = ('model', 'optimizer', 'scheduler', 'scaler', 'epoch', 'rng')
# Changing these between the interrupted run and its resumption would silently train another model.
_FIXED_ON_RESUME = ('MODEL.NAME', 'SOLVER.STAGE2.OPTIMIZER_NAME', 'DATASETS.NAMES')


# ---------------------------------------------------------------------------------------------
# RNG state, stored as tensors and plain Python values so that weights_only can load it.
# ---------------------------------------------------------------------------------------------

def capture_rng(device: torch.device) -> dict:
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        'torch': torch.get_rng_state(),
        'numpy': {'kind': str(np_kind), 'keys': torch.from_numpy(np_keys.astype(np.int64)), 'pos': int(np_pos),
                  'has_gauss': int(np_has_gauss), 'cached_gaussian': float(np_gauss)},
        'python': {'version': int(py_version), 'state': [int(v) for v in py_state], 'gauss': py_gauss},
    }
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state['torch'])
    saved = state['numpy']
    np.random.set_state((saved['kind'], saved['keys'].numpy().astype(np.uint32), saved['pos'],
                         saved['has_gauss'], saved['cached_gaussian']))
    saved = state['python']
    random.setstate((saved['version'], tuple(saved['state']), saved['gauss']))
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def _all_ranks(obj) -> list:
    if not distributed.is_distributed():
        return [obj]
    gathered = [None] * distributed.world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator a training DataLoader draws its worker seeds from in `epoch` (per process)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + distributed.rank()) * 10_007 + epoch)


# ---------------------------------------------------------------------------------------------
# Resume state
# ---------------------------------------------------------------------------------------------

def resume_path(output_dir: str) -> str:
    return os.path.join(output_dir, RESUME_NAME)


def remove_stale_temp_files(output_dir: str, model_name: str) -> list:
    """Temporary files a killed save left next to the checkpoints (the checkpoints themselves are intact)."""
    patterns = [f'.{RESUME_NAME}.*.tmp', f'.{PREVIOUS_RESUME_FILE}.*.tmp', f'.{glob.escape(model_name)}_*.pth.*.tmp',
                f'.{STAGE1_CACHE}.*.tmp']
    removed = []
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(output_dir), pattern)):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    return removed


def start_or_resume(cfg, logger, text_views=()):
    """The resume state SOLVER.RESUME asks for, or None to start afresh ('' or 'auto' with nothing saved).

    `text_views`: the stage-1 text views this run trains against; the state must hold their features.
    """
    if distributed.is_main():
        for path in remove_stale_temp_files(cfg.OUTPUT_DIR, cfg.MODEL.NAME):
            logger.info(f"removed {path}, left by a save that was interrupted")
    request = cfg.SOLVER.RESUME
    own = resume_path(cfg.OUTPUT_DIR)
    if not request:
        if os.path.isfile(own):
            logger.info(f"{own} holds an earlier run's resume state; starting afresh and overwriting it "
                        f"(SOLVER.RESUME auto would continue that run)")
        return None
    if request == 'auto':
        if not os.path.isfile(own):
            logger.info(f"SOLVER.RESUME auto: no {RESUME_NAME} in {cfg.OUTPUT_DIR}; starting afresh")
            return None
        path, what = own, f"SOLVER.RESUME auto: '{own}'"
    else:
        path, what = request, f"SOLVER.RESUME '{request}'"
    try:
        state = load_weights_only(path, what)
    except DamagedFile as err:
        raise DamagedFile(f"{err}; it is left as it is. {_earlier_state(path)}") from None
    if not isinstance(state, dict) or state.get('format') != RESUME_FORMAT or any(k not in state for k in _RESUME_KEYS):
        if isinstance(state, dict) and 'model' in state:
            raise UserError(f"{what} holds re-ID weights only, not a resume state (no optimizer, scheduler or RNG "
                            f"state); resume from the {RESUME_NAME} in that run's OUTPUT_DIR")
        raise UserError(f"{what} is not a resume state written by train_clipreid.py")
    _check_config(cfg, state, what, logger)
    missing = [view for view in text_views if view not in state.get('text_features', {})]
    if missing:
        raise UserError(f"{what} holds no stage-1 text features of the view(s) {', '.join(missing)} that "
                        f"MODEL.I2T_TEXT_VIEWS / MODEL.I2T_LOSS_WEIGHTS now use; resume with the terms it was "
                        f"trained with")
    state['path'] = path
    logger.info(f"resuming from {path}: epoch {state['epoch']} of stage 2 is finished")
    return state


def previous_resume_path(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), PREVIOUS_RESUME_FILE)


def _earlier_state(damaged: str) -> str:
    """Which earlier state beside a damaged resume state could be used, and the key that uses it."""
    previous = previous_resume_path(damaged)
    if os.path.abspath(previous) != os.path.abspath(damaged) and os.path.isfile(previous):
        try:
            state = load_weights_only(previous, previous)
            epoch = state['epoch'] if isinstance(state, dict) and state.get('format') == RESUME_FORMAT else None
        except UserError:
            epoch = None
        if epoch is not None:
            return (f"The resume state before it, '{previous}', is intact and holds the state after epoch {epoch}: "
                    f"pass SOLVER.RESUME {previous} to continue from there (the damaged file is replaced after "
                    f"the next epoch), or SOLVER.RESUME '' to start afresh")
    return (f"No intact earlier resume state ({PREVIOUS_RESUME_FILE}) is beside it: copy it again, or pass "
            f"SOLVER.RESUME '' to start afresh{other_checkpoints(damaged)}")


def _check_config(cfg, state: dict, what: str, logger) -> None:
    try:
        saved = flatten(CfgNode.load_cfg(state.get('config', '')))
    except Exception:
        return
    now = flatten(cfg)
    for key in _FIXED_ON_RESUME:
        if key in saved and saved[key] != now.get(key):
            raise UserError(f"{what} was trained with {key} {saved[key]!r}, this run has {now.get(key)!r}; "
                            f"pass {key} {saved[key]} to resume it")
    ignored = ('SOLVER.RESUME', 'OUTPUT_DIR', 'TEST.WEIGHT')
    changed = [f"{key} {saved[key]!r} -> {now[key]!r}" for key in now
               if key in saved and saved[key] != now[key] and key not in ignored]
    if changed:
        logger.info('resuming with changed settings (the optimizer and LR schedule continue as saved): '
                    + '; '.join(changed))


def save_resume_state(cfg, model, optimizer, scheduler, scaler, epoch: int, text_features: dict,
                      history: list, last_checkpoint, device: torch.device, meta: dict | None = None) -> str:
    """Write OUTPUT_DIR/resume.pth atomically (rank 0; every rank must call it: RNG states are gathered).
    `meta`: the model description (model/checkpoint_meta.py), stored as it is."""
    rng = _all_ranks(capture_rng(device))
    path = resume_path(cfg.OUTPUT_DIR)
    if distributed.is_main():
        _keep_previous(path)
        atomic_io.torch_save({
            'format': RESUME_FORMAT, 'stage': 2, 'epoch': epoch,
            'model': model.image_state_dict(), 'optimizer': optimizer.state_dict(),
            'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'rng': rng,
            'text_features': {view: feats.detach().cpu() for view, feats in text_features.items()},
            'stage1_cache': os.path.join(os.path.abspath(cfg.OUTPUT_DIR), 'stage1_text_features.pt'),
            'history': [_plain_record(record) for record in history],
            'last_checkpoint': last_checkpoint, 'config': cfg.dump(), 'meta': meta,
        }, path)
    return path


def _keep_previous(path: str) -> None:
    """Keep the resume state about to be replaced as resume.prev.pth: the fallback when a copy or a
    full disk later damages resume.pth. A file that is not a complete archive (torch.save writes zip
    archives) is not kept, so a damaged resume.pth never replaces an intact earlier state."""
    if not zipfile.is_zipfile(path):
        return
    previous = previous_resume_path(path)
    link = os.path.join(os.path.dirname(previous), f'.{PREVIOUS_RESUME_FILE}.{os.getpid()}.tmp')
    try:
        if os.path.lexists(link):
            os.remove(link)
        try:
            os.link(path, link)  # a second name for the same bytes: no copy, and resume.pth never goes missing
        except OSError:  # a file system without hard links
            shutil.copyfile(path, link)
        os.replace(link, previous)
    except OSError as err:
        raise UserError(f"cannot keep the previous resume state as '{previous}': {err.strerror or err}") from None


def _plain_record(record: dict) -> dict:
    # Evaluation results hold numpy arrays, which weights_only refuses; the scalars are enough.
    return {key: value for key, value in record.items()
            if isinstance(value, (int, float, str, bool)) or value is None}


def restore_training_state(state: dict, model, optimizer, scheduler, scaler, device: torch.device, logger):
    """Load a resume state into the run's objects; returns (first epoch to train, history, last checkpoint)."""
    what = f"SOLVER.RESUME '{state['path']}'"
    model.load_image_state_dict(state['model'], for_test=False)
    try:
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
    except (ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"{what}: its optimizer state does not fit this model ({first_line(err)})") from None
    if scaler.is_enabled() and state['scaler']:
        scaler.load_state_dict(state['scaler'])
    elif scaler.is_enabled() != bool(state['scaler']):
        logger.info('the AMP gradient scaler starts afresh (SOLVER.AMP or the device changed since the save)')
    rng = state['rng']
    if len(rng) == distributed.world_size():
        restore_rng(rng[distributed.rank()], device)
    else:
        logger.info(f"the resume state holds the RNG state of {len(rng)} process(es), this run has "
                    f"{distributed.world_size()}: the random streams start afresh from SOLVER.SEED")
    return state['epoch'] + 1, list(state.get('history', [])), state.get('last_checkpoint')


# ---------------------------------------------------------------------------------------------
# Pruning of the weights checkpoints
# ---------------------------------------------------------------------------------------------

def weight_checkpoints(output_dir: str, model_name: str) -> dict:
    """{epoch: path} of the `{model_name}_{epoch}.pth` files in output_dir."""
    pattern = re.compile(re.escape(model_name) + r'_(\d+)\.pth')
    found = {}
    for name in os.listdir(output_dir):
        match = pattern.fullmatch(name)
        if match:
            found[int(match.group(1))] = os.path.join(output_dir, name)
    return found


def prune_checkpoints(output_dir: str, model_name: str, keep: int, newest_epoch: int) -> list:
    """Delete all but the `keep` newest weights checkpoints up to `newest_epoch` (keep 0: delete none).

    Checkpoints of later epochs (an earlier, longer run in the same folder) are left alone.
    """
    if keep < 1:
        return []
    epochs = sorted(e for e in weight_checkpoints(output_dir, model_name) if e <= newest_epoch)
    doomed = [os.path.join(output_dir, f'{model_name}_{e}.pth') for e in epochs[:-keep]]
    for path in doomed:
        os.remove(path)
    return doomed
