"""Export a trained re-ID checkpoint's test-time image model to ONNX (dynamic batch axis).

    python tools/export_onnx.py --weight logs/demo_mssl_synthetic/ViT-Tiny-16_60.pth --output reid.onnx

The graph takes `images` [N, 3, H, W] RGB at the checkpoint's input size (resize outside the graph) and
returns `features` [N, D] float32, L2-normalised unless --raw-features.
--input says what `images` holds:
- 'normalized' (default): float, already normalised with the checkpoint's pixel mean and std;
- 'float01': float in 0-1, normalised inside the graph;
- 'uint8': 0-255 bytes, scaled and normalised inside the graph.
Side information (SIE models): --side inputs adds int64 graph inputs `camera` and/or `view` [N];
--side baked fixes them (--camera, --view; an unknown one follows --side-info 'mean' / 'omit', as in
model/feature_api.py). --fp16 stores the weights and computes in float16 (float16 inputs unless uint8).
The export is checked with ONNX Runtime against PyTorch on random inputs unless --no-check.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from model.feature_api import FeatureExtractor, load_reid_model  # noqa: E402
from utils import atomic_io  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402

INPUT_KINDS = ('normalized', 'float01', 'uint8')
SIDE_MODES = ('inputs', 'baked')


class ExportedReID(nn.Module):
    """The trainer's ReIDModel with the optional in-graph input scaling, normalisation and side information."""

    def __init__(self, model: nn.Module, input_kind: str, side_mode: str, baked_side: dict,
                 normalize_output: bool, dtype: torch.dtype):
        super().__init__()
        meta = model.reid_meta
        self.model, self.input_kind, self.side_mode = model, input_kind, side_mode
        self.normalize_output, self.dtype = normalize_output, dtype
        self.register_buffer('mean', torch.tensor(meta['pixel_mean'], dtype=dtype).view(1, 3, 1, 1))
        self.register_buffer('std', torch.tensor(meta['pixel_std'], dtype=dtype).view(1, 3, 1, 1))
        self.side_names = [name for name, used in (('camera', meta['sie_camera']), ('view', meta['sie_view'])) if used]
        self.baked = {key: value for key, value in baked_side.items()}
        for key, value in self.baked.items():
            self.register_buffer(f'baked_{key}', value)

    def forward(self, images: torch.Tensor, camera: torch.Tensor | None = None,
                view: torch.Tensor | None = None) -> torch.Tensor:
        x = images.to(self.dtype)
        if self.input_kind == 'uint8':
            x = x / 255.0
        if self.input_kind != 'normalized':
            x = (x - self.mean) / self.std
        side = {}
        if self.side_mode == 'inputs':
            side = {'cam_label': camera, 'view_label': view}
        else:
            batch = x.shape[0]
            for key in self.baked:
                value = getattr(self, f'baked_{key}')
                side[key] = value.expand(batch, *value.shape[1:])
        feats = self.model(x, **side).float()
        return F.normalize(feats, dim=1) if self.normalize_output else feats


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a re-ID checkpoint to ONNX')
    parser.add_argument('--weight', required=True, help='re-ID checkpoint (MODEL.NAME_<epoch>.pth or resume.pth)')
    parser.add_argument('--output', required=True, help='the .onnx file to write')
    parser.add_argument('--input', default='normalized', choices=INPUT_KINDS, help='what the images input holds')
    parser.add_argument('--side', default='baked', choices=SIDE_MODES,
                        help="SIE labels as graph inputs, or baked into the graph (default)")
    parser.add_argument('--camera', default=None, help="baked camera (id or name like c05)")
    parser.add_argument('--view', default=None, help="baked view (id, 'sky' or 'ground')")
    parser.add_argument('--side-info', default='mean', choices=('mean', 'omit'),
                        help='what an unknown baked label does (default mean)')
    parser.add_argument('--fp16', action='store_true', help='float16 weights and computation')
    parser.add_argument('--raw-features', action='store_true', help='do not L2-normalise the output')
    parser.add_argument('--opset', type=int, default=18)
    parser.add_argument('--no-check', action='store_true', help='skip the ONNX Runtime comparison')
    parser.add_argument('--config_file', default='', help='only for checkpoints without a model description')
    parser.add_argument('opts', nargs=argparse.REMAINDER, help='KEY VALUE overrides for such checkpoints')
    return parser.parse_args(argv)


def _label(value):
    return int(value) if value is not None and value.lstrip('-').isdigit() else value


def baked_side_inputs(model, camera, view, side_info: str) -> dict:
    extractor = FeatureExtractor(model, side_info=side_info)
    side = extractor.side_inputs(1, cameras=[_label(camera)], views=[_label(view)])
    return {key: value for key, value in side.items() if value is not None}


def build_exported(model, args) -> ExportedReID:
    dtype = torch.float16 if args.fp16 else torch.float32
    meta = model.reid_meta
    uses_side = meta['sie_camera'] or meta['sie_view']
    if args.side == 'inputs' and (args.camera is not None or args.view is not None):
        raise UserError('--camera / --view bake labels into the graph: use them with --side baked')
    baked = baked_side_inputs(model, args.camera, args.view, args.side_info) if uses_side and args.side == 'baked' else {}
    side_mode = args.side if uses_side else 'baked'
    if args.fp16:
        model = model.half()
        baked = {k: (v.half() if v.is_floating_point() else v) for k, v in baked.items()}
    return ExportedReID(model, args.input, side_mode, baked, not args.raw_features, dtype).eval()


def example_inputs(exported: ExportedReID, batch: int, generator: torch.Generator) -> dict:
    height, width = exported.model.reid_meta['image_size']
    if exported.input_kind == 'uint8':
        images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=generator)
    elif exported.input_kind == 'float01':
        images = torch.rand(batch, 3, height, width, generator=generator).to(exported.dtype)
    else:
        images = torch.randn(batch, 3, height, width, generator=generator).to(exported.dtype)
    inputs = {'images': images}
    if exported.side_mode == 'inputs':
        meta = exported.model.reid_meta
        counts = {'camera': meta['camera_num'], 'view': meta['view_num']}
        inputs.update({name: torch.randint(0, counts[name], (batch,), generator=generator)
                       for name in exported.side_names})
    return inputs


def input_names(exported: ExportedReID) -> list:
    return ['images'] + (exported.side_names if exported.side_mode == 'inputs' else [])


def to_onnx_bytes(exported: ExportedReID, opset: int) -> bytes:
    """The serialized ONNX model with a dynamic batch axis (torch.export-based exporter, onnxscript)."""
    inputs = example_inputs(exported, 2, torch.Generator().manual_seed(0))
    batch = torch.export.Dim('batch', min=1)
    with torch.no_grad():
        program = torch.onnx.export(exported, (), kwargs=inputs, input_names=list(inputs),
                                    output_names=['features'], dynamic_shapes={name: {0: batch} for name in inputs},
                                    opset_version=opset, dynamo=True, verbose=False)
    return program.model_proto.SerializeToString()


def compare_with_onnxruntime(exported: ExportedReID, onnx_bytes: bytes, batch: int = 3) -> float:
    """Largest |ORT - PyTorch| / max |PyTorch| over the features of random inputs of another batch size."""
    import onnxruntime as ort
    session = ort.InferenceSession(onnx_bytes, providers=['CPUExecutionProvider'])
    inputs = example_inputs(exported, batch, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = exported(**inputs).float().numpy()
    got = session.run(['features'], {name: tensor.numpy() for name, tensor in inputs.items()})[0]
    return float(np.abs(got.astype(np.float32) - expected).max() / max(np.abs(expected).max(), 1e-12))


@exit_on_user_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise UserError(f"--output '{args.output}': the folder '{folder}' does not exist")
    if os.path.isdir(args.output):
        raise UserError(f"--output '{args.output}' is a folder; name the .onnx file to write")
    if not os.access(folder, os.W_OK):
        raise UserError(f"--output '{args.output}': the folder '{folder}' is not writable")
    model = load_reid_model(args.weight, device='cpu', config_file=args.config_file, opts=args.opts)
    exported = build_exported(model, args)
    onnx_bytes = to_onnx_bytes(exported, args.opset)
    error = None if args.no_check else compare_with_onnxruntime(exported, onnx_bytes)
    atomic_io.write_bytes(args.output, onnx_bytes)
    meta = model.reid_meta
    print(f"wrote {args.output}: images [N, 3, {meta['image_size'][0]}, {meta['image_size'][1]}] ({args.input}"
          f"{', float16' if args.fp16 else ''}){''.join(f', {n} [N] int64' for n in input_names(exported)[1:])} "
          f"-> features [N, {meta['feature_dim']}]" + ('' if error is None else
                                                      f"; ONNX Runtime vs PyTorch: max relative difference {error:.2e}"))
    return {'output': args.output, 'relative_error': error, 'input_names': input_names(exported)}


if __name__ == '__main__':
    main(sys.argv[1:])
