"""Safe checkpoint loading: torch.load(weights_only=True) on the CPU, with one clear line for a missing,
damaged or pickled file. The training state built on it (resume.pth, pruning) is processor/resume.py's."""
import glob
import os
import pickle
import re
import zipfile

import torch

from utils.errors import UserError

def load_weights_only(path: str, what: str):
    """torch.load(path, weights_only=True) on the CPU; every failure is one UserError.

    `what` names the file in messages, e.g. "TEST.WEIGHT 'x.pth'".
    """
    if not os.path.isfile(path):
        raise UserError(f"{what} does not exist")
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r'GLOBAL (\S+)', text)
        if 'Weights only load failed' not in text or not (found or zipfile.is_zipfile(path)):
            # Garbage bytes also fail as "weights only": they are damage, not pickled objects.
            raise DamagedFile(f"{what} is truncated or not a PyTorch checkpoint (unreadable bytes)") from None
        needs = f" (it needs the Python object {found.group(1)})" if found else ''
        raise UserError(f"{what} was refused: it holds pickled Python objects{needs}, and only tensors and "
                        f"plain containers are loaded (torch.load weights_only=True); load it once where you "
                        f"trust it and re-save its tensors as a plain state dict") from None
    except Exception as err:  # truncated, empty, or not a torch file at all
        raise DamagedFile(f"{what} is truncated or not a PyTorch checkpoint ({first_line(err)})") from None


class DamagedFile(UserError):
    """A file that cannot be read as a PyTorch checkpoint at all (cut off, empty, garbage)."""


def other_checkpoints(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    others = sorted((p for p in glob.glob(os.path.join(glob.escape(folder), '*.pth'))
                     if os.path.abspath(p) != os.path.abspath(path)), key=os.path.getmtime, reverse=True)
    return f" (that folder also has {', '.join(os.path.basename(p) for p in others[:3])})" if others else ''


def load_checkpoint_file(path: str, what: str):
    """load_weights_only for a file the user picked: a damaged one also says what to do about it."""
    try:
        return load_weights_only(path, what)
    except DamagedFile as err:
        raise DamagedFile(f"{err}; it may have been cut off by a full disk or an interrupted copy: copy it "
                          f"again, or pass another checkpoint{other_checkpoints(path)}") from None


def first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
