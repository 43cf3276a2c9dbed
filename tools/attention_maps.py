"""Where a trained re-ID model looks: attention rollout (ViT) or Grad-CAM (CNN image encoders) for images.

    python tools/attention_maps.py --weight logs/demo_mssl_synthetic/ViT-Tiny-16_60.pth \\
        --images data/mssl_synthetic/query --output logs/attention

Writes, per image, <name>_attention.png (the image, enlarged, with its map overlaid) and attention_maps.png
(every image above its overlay). --images takes image files and folders (their images). Side information
of an SIE model is given as to the feature extractor (model/feature_api.py): camera and view labels from
the file names of a known dataset naming (--labels auto, the default), from a CSV (columns image, camera,
view), or none (--labels none); unknown labels follow --side-info. The maps: model/attention_maps.py.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from model.attention_maps import attention_maps, method_for  # noqa: E402
from model.feature_api import FeatureExtractor, as_pil, load_reid_model  # noqa: E402
from processor.run import prepare_output_dir  # noqa: E402
from processor.search import add_label_arguments, image_labels, list_images, read_label_csv  # noqa: E402
from reporting.attention import write_grid, write_overlay  # noqa: E402
from utils.errors import UserError, exit_on_user_error  # noqa: E402
from utils.vocabulary import ATTENTION_GRID, ATTENTION_SUFFIX  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Draw where a re-ID model looks in images')
    parser.add_argument('--weight', required=True, help='re-ID checkpoint (MODEL.NAME_<epoch>.pth or resume.pth)')
    parser.add_argument('--images', required=True, nargs='+', help='image files and/or folders of images')
    parser.add_argument('--output', required=True, help='folder for the pictures')
    add_label_arguments(parser)
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:1'")
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--config_file', default='',
                        help='only for checkpoints without a model description: the YAML it was trained with')
    parser.add_argument('opts', nargs=argparse.REMAINDER, help='KEY VALUE overrides for such checkpoints')
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def output_names(paths: list[str]) -> list[str]:
    """<name>_attention.png per image; a name met again gets _2, _3, ... (images from several folders)."""
    seen, names = {}, []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}{'' if seen[stem] == 1 else f'_{seen[stem]}'}{ATTENTION_SUFFIX}")
    return names


@exit_on_user_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    paths = [image for given in args.images for image in list_images(given, '--images')]
    table = read_label_csv(args.labels) if args.labels not in ('auto', 'none') else None
    model = load_reid_model(args.weight, device=args.device, config_file=args.config_file, opts=args.opts)
    labels = image_labels(args.labels, paths, model.reid_meta, table)
    images = [as_pil(path) for path in paths]  # every image is read before anything is written
    extractor = FeatureExtractor(model, side_info=args.side_info)
    side = extractor.side_inputs(len(images), labels.cameras, labels.views)
    device = extractor.device
    maps = []
    for start in range(0, len(images), args.batch_size):
        batch = torch.stack([extractor.transform(image) for image in images[start:start + args.batch_size]])
        inputs = {key: value[start:start + len(batch)].to(device) for key, value in side.items()}
        maps.append(attention_maps(model, batch.to(device), **inputs).cpu())
    maps = torch.cat(maps).numpy()

    prepare_output_dir(args.output)
    written = []
    for image, heat, name in zip(images, maps, output_names(paths)):
        written.append(os.path.join(args.output, name))
        write_overlay(image, heat, written[-1])
    method = method_for(model)
    title = f"{method} of {model.reid_meta['arch']} ({os.path.basename(args.weight)}); labels from {labels.source}"
    written.append(os.path.join(args.output, ATTENTION_GRID))
    write_grid(images, list(maps), [os.path.basename(path) for path in paths], title, written[-1])
    print(f"{method} for {len(images)} images: {len(images)} x <name>{ATTENTION_SUFFIX} and {written[-1]}")
    return {'written': written, 'method': method, 'maps': maps}


if __name__ == '__main__':
    main(sys.argv[1:])
