"""Convert a re-ID checkpoint between this project's format and the published CLIP-ReID / MSP state dict.

    # a model trained here -> a state dict that CLIP-ReID / MSP code and trackers built on it load
    python tools/convert_published.py --to published --weight logs/demo_mssl_synthetic/ViT-Tiny-16_60.pth --output msp_state.pth

    # a published MSP / CLIP-ReID state dict -> this project's self-describing checkpoint
    python tools/convert_published.py --to project --weight ViT-B-16_60.pth --output converted.pth \
        --config_file configs/person/vit_clipreid.yml MODEL.SIE_CAMERA True MODEL.SIE_COE 0.5 MODEL.SIE_VIEW True MODEL.STRIDE_SIZE '[12, 12]'

The key mapping is model/published_format.py's. 'published' writes a plain state dict
(`torch.save(state_dict)`, as the published code saves: `image_encoder.transformer.resblocks.N.*`,
`cv_embed`, `bottleneck*`, `classifier*`), image side only. 'project' writes
{'model', 'meta'} (model/checkpoint_meta.py); a published file carries no settings, so the config
(--config_file and KEY VALUE overrides) says the architecture, input size, stride and SIE settings.
Both directions rebuild the model and load the weights into it before writing, so a mismatch is one
`error:` line and nothing is written.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.feature_api import build_model, read_checkpoint  # noqa: E402
from model.published_format import to_published  # noqa: E402
from utils import atomic_io  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Convert between this project\'s checkpoints and the published layout')
    parser.add_argument('--to', required=True, choices=('published', 'project'), help='the format to write')
    parser.add_argument('--weight', required=True, help='the checkpoint to convert')
    parser.add_argument('--output', required=True, help='the file to write')
    parser.add_argument('--config_file', default='', help='for files without a model description: its YAML')
    parser.add_argument('opts', nargs=argparse.REMAINDER, help='KEY VALUE overrides for such files')
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv=None) -> str:
    args = parse_args(argv)
    if os.path.abspath(args.output) == os.path.abspath(args.weight):
        raise UserError(f"--output '{args.output}' is the input file; write the conversion elsewhere")
    if os.path.isdir(args.output):
        raise UserError(f"--output '{args.output}' is a folder; name the file to write")
    state, meta = read_checkpoint(args.weight, args.config_file, args.opts)
    model = build_model(meta)
    model.load_image_state_dict(state, for_test=False)  # every tensor must fit before anything is written
    image_state = {key: value.detach().clone() for key, value in model.image_state_dict().items()}
    if args.to == 'published':
        atomic_io.torch_save(to_published(image_state), args.output)
    else:
        atomic_io.torch_save({'model': image_state, 'meta': meta}, args.output)
    print(f"wrote {args.output}: {meta['arch']}, {len(image_state)} tensors, {args.to} format")
    return args.output


if __name__ == '__main__':
    main(sys.argv[1:])
