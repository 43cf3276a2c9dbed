"""Device and precision choice: from the config, else what is available."""
import contextlib
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError

# cuBLAS's deterministic workspace setting (one of the two that the CUDA documentation names).
CUBLAS_DETERMINISTIC_WORKSPACE = ':4096:8'


def resolve_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise UserError(f"MODEL.DEVICE = '{name}' but CUDA is not available here (use 'auto' or 'cpu')")
    if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"MODEL.DEVICE = '{name}' but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for SOLVER.AMP on this device; None = full precision.

    On CPU only an explicit 'bf16' applies: it is fast where the CPU has bf16 matrix instructions
    (AVX512-BF16, AMX; 1.8x a ViT-B-16 training step in docs/BENCHMARKS.md) and slow elsewhere.
    """
    if amp == 'off':
        return None
    if device.type == 'cpu':
        return torch.bfloat16 if amp == 'bf16' else None
    if device.type != 'cuda':
        return None
    if amp == 'auto':
        return torch.bfloat16 if native_bf16(device) else torch.float16
    return {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]


def native_bf16(device: torch.device) -> bool:
    """Whether the configured CUDA device computes bf16 in hardware (Ampere and later). torch's default
    also counts bf16 emulated on older GPUs (V100, T4), where it is far slower than fp16, and asks the
    current device rather than this one."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def grad_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The gradient scaler of a training stage: active under fp16, whose small range underflows small
    gradients; it skips a step whose gradients are not finite and lowers its scale. A pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """SOLVER.DETERMINISTIC: PyTorch's deterministic algorithms only, cuDNN without autotuning and with
    deterministic kernels, and a deterministic cuBLAS workspace (read when cuBLAS starts, so this runs
    before any CUDA work). Off restores PyTorch's defaults."""
    if enabled:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False


@contextlib.contextmanager
def deterministic_operations_only():
    """An operation without a deterministic implementation (in deterministic mode) stops the run with
    one line naming it, instead of a traceback."""
    try:
        yield
    except RuntimeError as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else ''
        if 'does not have a deterministic implementation' not in message:
            raise
        raise UserError(f"SOLVER.DETERMINISTIC True: {message.split(', but you set')[0]}; run with "
                        f"SOLVER.DETERMINISTIC False on this device") from None


def cpu_model() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def describe_device(device: torch.device) -> dict:
    """{'type', 'name', 'count'}: the GPU's name and how many there are, or the CPU's model and cores."""
    if device.type == 'cuda':
        return {'type': 'cuda', 'name': torch.cuda.get_device_name(device), 'count': torch.cuda.device_count()}
    return {'type': device.type, 'name': cpu_model(), 'count': os.cpu_count(),
            'torch_threads': torch.get_num_threads()}
