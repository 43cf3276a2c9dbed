"""Build open_clip CLIP models (OpenAI ViT and ResNet layouts) from local checkpoints or open_clip's cache."""
import logging
import os
import socket
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Optional
from urllib.parse import urlparse

import open_clip
import torch

from model.published_format import RESNET_FAMILY, VIT_FAMILY
from utils.errors import UserError

logger = logging.getLogger(__name__)

TINY_NAME = 'ViT-Tiny-16'
TINY_RESNET_NAME = 'RN-Tiny'
TINY_NAMES = (TINY_NAME, TINY_RESNET_NAME)
_CONFIG_DIR = Path(__file__).resolve().parent / 'model_configs'
for _tiny in TINY_NAMES:
    open_clip.add_model_config(_CONFIG_DIR / f'{_tiny}.json')

# Keys OpenAI's TorchScript archives carry besides the weights.
_OPENAI_EXTRA_KEYS = ('input_resolution', 'context_length', 'vocab_size')
_HF_WEIGHT_FILES = ('open_clip_model.safetensors', 'open_clip_pytorch_model.bin')


def supported_models() -> list:
    """CLIP models this project can build: OpenAI's ViTs and ResNets known to open_clip, plus the tiny
    test archs."""
    names = [n for n in open_clip.list_pretrained_models_by_tag('openai') if n.startswith(('ViT-', 'RN'))]
    return names + list(TINY_NAMES)


def _check_name(name: str) -> dict:
    supported = supported_models()
    if name not in supported:
        raise UserError(f"MODEL.NAME '{name}' is not a supported CLIP model; valid: {', '.join(supported)}")
    return open_clip.get_model_config(name)


def image_tower_family(name: str) -> Optional[str]:
    """'ModifiedResNet' or 'VisionTransformer' for a known MODEL.NAME (None for an unknown one)."""
    cfg = open_clip.get_model_config(name) if name in supported_models() else None
    if cfg is None:
        return None
    return RESNET_FAMILY if isinstance(cfg['vision_cfg']['layers'], (list, tuple)) else VIT_FAMILY


def _arch_of_config(cfg: dict) -> Dict[str, object]:
    vision, text = cfg['vision_cfg'], cfg['text_cfg']
    layers = vision['layers']
    return {
        'vision_width': vision['width'],
        'vision_layers': list(layers) if isinstance(layers, (list, tuple)) else layers,
        'patch_size': vision.get('patch_size'),
        'image_size': vision['image_size'],
        'text_width': text['width'],
        'text_layers': text['layers'],
        'embed_dim': cfg['embed_dim'],
    }


def _distinct(sd: Dict[str, torch.Tensor], prefix: str, part: int) -> int:
    return len({k.split('.')[part] for k in sd if k.startswith(prefix)})


def _arch_of_openai_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, object]:
    if 'visual.proj' in sd:  # a ViT
        patch = sd['visual.conv1.weight'].shape[-1]
        grid = round((sd['visual.positional_embedding'].shape[0] - 1) ** 0.5)
        vision = {'vision_width': sd['visual.conv1.weight'].shape[0],
                  'vision_layers': _distinct(sd, 'visual.transformer.resblocks.', 3),
                  'patch_size': patch, 'image_size': patch * grid}
    else:  # a ModifiedResNet: stage widths from its first block, an attention pool on a 1/32 map
        grid = round((sd['visual.attnpool.positional_embedding'].shape[0] - 1) ** 0.5)
        vision = {'vision_width': sd['visual.layer1.0.conv1.weight'].shape[0],
                  'vision_layers': [_distinct(sd, f'visual.layer{stage}.', 2) for stage in (1, 2, 3, 4)],
                  'patch_size': None, 'image_size': 32 * grid}
    return {
        **vision,
        'text_width': sd['ln_final.weight'].shape[0],
        'text_layers': _distinct(sd, 'transformer.resblocks.', 2),
        'embed_dim': sd['text_projection'].shape[1],
    }


def _describe_arch(arch: Dict[str, int]) -> str:
    patch = f", patch {arch['patch_size']}" if arch['patch_size'] else ''
    detail = (f"vision: width {arch['vision_width']}, layers {arch['vision_layers']}{patch}, "
              f"image {arch['image_size']}; text: width {arch['text_width']}, layers {arch['text_layers']}; "
              f"embed_dim {arch['embed_dim']}")
    for name in supported_models():
        if not name.endswith('-quickgelu') and _arch_of_config(open_clip.get_model_config(name)) == arch:
            return f'{name} ({detail})'
    return f'non-standard ({detail})'


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith('/constants.pkl') for n in archive.namelist())


def _read_checkpoint(path: str, config_key: str) -> Dict[str, torch.Tensor]:
    """State dict of an OpenAI TorchScript archive or of a (possibly wrapped) plain state dict."""
    try:
        if _is_torchscript_archive(path):
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', FutureWarning)  # torch.jit.load is deprecated, still OpenAI's format
                sd = torch.jit.load(path, map_location='cpu').state_dict()
        else:
            sd = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:
        raise UserError(f"{config_key} '{path}' is neither an OpenAI TorchScript archive nor a state dict "
                        f"readable with torch.load(weights_only=True): {str(err).splitlines()[0]}") from None
    if isinstance(sd, dict) and isinstance(sd.get('state_dict'), dict):
        sd = sd['state_dict']
    if not isinstance(sd, dict):
        raise UserError(f"{config_key} '{path}' does not hold a state dict")
    sd = {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in sd.items()}
    for key in _OPENAI_EXTRA_KEYS:
        sd.pop(key, None)
    return sd


def _load_openai_checkpoint(name: str, path: str, config_key: str = 'MODEL.PRETRAIN_PATH') -> torch.nn.Module:
    if not os.path.isfile(path):
        raise UserError(f"{config_key} '{path}' does not exist")
    sd = _read_checkpoint(path, config_key)
    vit = ('visual.conv1.weight', 'visual.positional_embedding', 'visual.proj')
    resnet = ('visual.layer1.0.conv1.weight', 'visual.attnpool.positional_embedding')
    required = (vit if 'visual.proj' in sd or 'visual.attnpool.positional_embedding' not in sd else resnet) + (
        'ln_final.weight', 'text_projection')
    missing = [k for k in required if k not in sd]
    if missing:
        raise UserError(f"{config_key} '{path}' is not an OpenAI CLIP checkpoint (no key '{missing[0]}')")
    found = _arch_of_openai_state_dict(sd)
    if found != _arch_of_config(open_clip.get_model_config(name)):
        raise UserError(f"{config_key} '{path}' holds a {_describe_arch(found)} checkpoint, "
                        f"but MODEL.NAME is '{name}'")
    # OpenAI's key names are open_clip's for its CLIP class, and the architecture was checked above: build
    # MODEL.NAME's architecture in fp32 and copy the weights in (fp16 tensors are cast on copy).
    model = build_clip(name)
    try:
        model.load_state_dict(sd)
    except RuntimeError as err:
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"{config_key} '{path}' does not fit MODEL.NAME '{name}': {first_line}") from None
    return model.eval()


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns on the root logger that the model is random; here that is what was asked for."""

    def filter(self, record: logging.LogRecord) -> bool:
        return 'initialized randomly' not in record.getMessage()


def build_clip(name: str) -> torch.nn.Module:
    """Randomly initialised CLIP of architecture `name` (seed torch beforehand), fp32."""
    _check_name(name)
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)
    try:
        return open_clip.create_model(name, pretrained=None, force_quick_gelu=True).float()
    finally:
        logging.getLogger().removeFilter(quiet)


def _env_flag(var: str) -> bool:
    return os.environ.get(var, '').strip().upper() in ('1', 'ON', 'YES', 'TRUE')


def hf_cache_dir() -> str:
    """huggingface_hub's cache folder, resolved from the environment at call time."""
    for var in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE'):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    hf_home = os.environ.get('HF_HOME') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'huggingface')
    return os.path.join(os.path.expanduser(hf_home), 'hub')


def _openai_url_cache_file(tag_cfg: dict) -> str:
    # Where open_clip's URL download (the OpenAI TorchScript archive) lands by default.
    return os.path.join(os.path.expanduser('~/.cache/clip'), os.path.basename(tag_cfg.get('url', '')))


def _cached_hf_file(tag_cfg: dict, cache_dir: str) -> Optional[str]:
    from huggingface_hub import try_to_load_from_cache

    repo = tag_cfg.get('hf_hub', '').rstrip('/')
    if not repo:
        return None
    for filename in _HF_WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Quick probe so an offline machine fails in seconds instead of huggingface_hub's long retries."""
    if _env_flag('HF_HUB_OFFLINE'):
        return False
    if any(os.environ.get(v) for v in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy')):
        return True  # a direct probe says nothing about the proxy; let the download decide
    host = urlparse(os.environ.get('HF_ENDPOINT', 'https://huggingface.co')).hostname or 'huggingface.co'
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def _load_openai_tag(name: str) -> torch.nn.Module:
    tag_cfg = open_clip.get_pretrained_cfg(name, 'openai')
    cache_dir = hf_cache_dir()
    url_file = _openai_url_cache_file(tag_cfg)
    hf_file = _cached_hf_file(tag_cfg, cache_dir)
    if hf_file:
        logger.info("loading CLIP '%s' weights from open_clip's cache: %s", name, hf_file)
        return open_clip.create_model(name, pretrained=hf_file, force_quick_gelu=True).float()
    if os.path.isfile(url_file):
        logger.info("loading CLIP '%s' weights from %s", name, url_file)
        return _load_openai_checkpoint(name, url_file, config_key='cached OpenAI archive')
    looked = f"{cache_dir} (repo {tag_cfg.get('hf_hub', '').rstrip('/')}) and {url_file}"
    hint = f"download {name}.pt from OpenAI and pass MODEL.PRETRAIN_PATH /path/to/{name}.pt"
    if not _hub_reachable():
        raise UserError(f"no weights for MODEL.NAME '{name}': MODEL.PRETRAIN_PATH is empty, open_clip's cache has "
                        f"no 'openai' weights (looked in {looked}) and the Hugging Face hub is unreachable; {hint}")
    try:
        return open_clip.create_model(name, pretrained='openai', force_quick_gelu=True,
                                      cache_dir=cache_dir).float()
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"no weights for MODEL.NAME '{name}': MODEL.PRETRAIN_PATH is empty, open_clip's cache has "
                        f"no 'openai' weights (looked in {looked}) and downloading them failed ({reason}); "
                        f"{hint}") from None


def load_clip(name: str, pretrain_path: str = '', device='cpu') -> torch.nn.Module:
    """open_clip CLIP `name` with OpenAI weights (from `pretrain_path` or open_clip's cache), fp32, eval.

    The tiny test archs are randomly initialised unless `pretrain_path` is given.
    """
    _check_name(name)
    if pretrain_path:
        model = _load_openai_checkpoint(name, pretrain_path)
    elif name in TINY_NAMES:
        model = build_clip(name)
    else:
        model = _load_openai_tag(name)
    return model.to(device).eval()
