"""The fast paths give the results of the plain ones: torch.compile of the model (SOLVER.COMPILE),
bf16 autocast on CPU (SOLVER.AMP 'bf16'), and the benchmarks' reference attention paths against the
fused one they are compared with."""
import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from config import load_config
from datasets import init_dataset
from datasets.make_dataloader import make_train_loader
from model import make_model
from model.blocks import self_attention
from model.clip_loader import build_clip
from model.make_model_clipreid import ReIDModel
from processor.stage2 import train_stage2
from tests.helpers import tiny_opts
from utils.device import autocast, autocast_dtype
from processor.settings import loader_settings, model_settings

ROOT = Path(__file__).resolve().parents[1]


def _bench_common():
    spec = importlib.util.spec_from_file_location('bench_common', ROOT / 'benchmarks' / 'bench_common.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('is_causal', [False, True])
@pytest.mark.parametrize('reference', ['module', 'explicit'])
def test_benchmark_reference_attention_equals_the_fused_path(reference, is_causal):
    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    x = torch.randn(3, 7, 32)
    fused = self_attention(attn, x, is_causal=is_causal)
    plain = _bench_common().ATTENTION[reference](attn, x, is_causal=is_causal)
    torch.testing.assert_close(plain, fused, rtol=1e-5, atol=1e-6)
    if is_causal:  # the causal mask really applies: the first token only sees itself
        only_first = self_attention(attn, x[:, :1])
        torch.testing.assert_close(plain[:, :1], only_first, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_model_gives_the_eager_outputs_and_gradients():
    torch.manual_seed(0)
    model = ReIDModel(build_clip('ViT-Tiny-16'), num_classes=5, camera_num=3, view_num=2, image_size=(32, 16),
                      stride=(12, 12), sie_camera=True, sie_view=True).train()
    images = torch.randn(4, 3, 32, 16)
    cams, views = torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 1, 0])

    def run(forward):
        model.zero_grad(set_to_none=True)
        out = forward(images, cam_label=cams, view_label=views)
        loss = sum(score.square().sum() for score in out['cls_scores']) + sum(f.sum() for f in out['feats'])
        loss.backward()
        return out['feats'][1].detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    eager_feat, eager_grads = run(model)
    # fullgraph: the model traces without a graph break; AOTAutograd also traces the backward.
    compiled_feat, compiled_grads = run(torch.compile(model, backend='aot_eager', fullgraph=True))
    torch.testing.assert_close(compiled_feat, eager_feat, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, eager in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], eager, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
def test_solver_compile_compiles_the_stage2_model(tiny_mssl, tmp_path, monkeypatch):
    cfg = load_config('', tiny_opts(tiny_mssl, str(tmp_path), 'SOLVER.COMPILE', 'True',
                                    'SOLVER.STAGE2.MAX_EPOCHS', '1', 'SOLVER.STAGE2.EVAL_PERIOD', '1'))
    dataset = init_dataset('mssl', tiny_mssl)
    torch.manual_seed(0)
    model = make_model(model_settings(cfg), dataset.num_train_pids, dataset.num_train_cams, dataset.num_train_views)
    compiled = []
    real_compile = torch.compile

    def spy(module, **kwargs):  # the default backend would take a while to compile on a CPU test machine
        compiled.append(module)
        return real_compile(module, backend='eager')

    monkeypatch.setattr(torch, 'compile', spy)
    device = torch.device('cpu')
    text = {view: torch.randn(dataset.num_train_pids, model.image_encoder.embed_dim) for view in ('ground', 'sky')}
    outcome = train_stage2(cfg, model, text, make_train_loader(loader_settings(cfg), dataset.train, device),
                           dataset.num_train_pids, device, logging.getLogger('test'))
    assert compiled == [model]
    assert torch.isfinite(torch.tensor(outcome['history'][0]['loss']))
    assert load_config().SOLVER.COMPILE is False


def test_cpu_mixed_precision_only_on_explicit_bf16():
    cpu = torch.device('cpu')
    assert autocast_dtype('bf16', cpu) is torch.bfloat16
    for amp in ('auto', 'fp16', 'off'):
        assert autocast_dtype(amp, cpu) is None, amp


def test_auto_precision_on_cuda_counts_only_native_bf16_of_the_configured_gpu(monkeypatch):
    """A V100 / T4 emulates bf16 (torch's default check says yes) at a fraction of fp16's speed: 'auto'
    must pick fp16 there, asking the configured GPU, not the current one."""
    asked = []

    class RecordingDevice:  # stands in for torch.cuda.device: records which GPU the check runs on
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            asked.append(self.device)

        def __exit__(self, *exc):
            return False

    def volta_bf16(including_emulation=True):  # what torch says on a V100
        return including_emulation

    monkeypatch.setattr(torch.cuda, 'device', RecordingDevice)
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', volta_bf16)
    second_gpu = torch.device('cuda', 1)
    assert autocast_dtype('auto', second_gpu) is torch.float16
    assert asked == [second_gpu]
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', lambda including_emulation=True: True)  # an A100
    assert autocast_dtype('auto', second_gpu) is torch.bfloat16


def test_cpu_bf16_features_stay_close_to_fp32():
    torch.manual_seed(0)
    model = ReIDModel(build_clip('ViT-Tiny-16'), num_classes=5, image_size=(32, 16), stride=(12, 12)).eval()
    images = torch.randn(4, 3, 32, 16)
    with torch.no_grad():
        full = model(images)
        with autocast(torch.device('cpu'), torch.bfloat16):
            mixed = model(images)
    assert mixed.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: a few 1e-3 per operation, 2e-2 of the largest value at most here
    assert float((mixed.float() - full).abs().max()) < 2e-2 * float(full.abs().max())
