"""Rank a gallery folder for each query image with a trained re-ID checkpoint.

    python search_clipreid.py --weight logs/demo_mssl_synthetic/ViT-Tiny-16_60.pth \
        --query my_query_folder_or_image.jpg --gallery my_gallery_folder --output search_out

Writes to --output: search_results.csv (query, rank, gallery, distance [, persons, match]),
search_results.json (the same per query, with the settings), search_features.npz (L2-normalised
features, paths, camera and view ids; -1 = unknown) and search_ranked.png (the ranked lists).
Camera/view labels (for a model trained with SIE) and person ids come from the file names when a
known dataset naming fits (--labels auto), from a CSV (--labels file.csv: columns image, camera, view,
person), or not at all (--labels none); unknown labels follow --side-info (model/feature_api.py).
"""
import argparse
import os
import sys
import time

import torch

from model.feature_api import PRECISIONS, FeatureExtractor, load_reid_model
from processor.search import add_label_arguments, image_labels, list_images, read_label_csv, top_k, write_outputs
from processor.run import prepare_output_dir
from utils.errors import UserError, exit_on_user_error
from utils.logger import setup_logger
from utils.vocabulary import SEARCH_CSV, SEARCH_FEATURES, SEARCH_JSON, SEARCH_PICTURE

OUTPUT_NAMES = {'csv': SEARCH_CSV, 'json': SEARCH_JSON, 'npz': SEARCH_FEATURES, 'picture': SEARCH_PICTURE}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Search a gallery folder for the persons of query images')
    parser.add_argument('--weight', required=True, help='re-ID checkpoint (MODEL.NAME_<epoch>.pth or resume.pth)')
    parser.add_argument('--query', required=True, help='a query image, or a folder of them')
    parser.add_argument('--gallery', required=True, help='a folder of gallery images (any file names)')
    parser.add_argument('--output', required=True, help='folder for the results')
    parser.add_argument('--topk', type=int, default=10, help='gallery images listed per query (default 10)')
    add_label_arguments(parser)
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:1'")
    parser.add_argument('--precision', default='fp32', choices=list(PRECISIONS))
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=2, help='image-decoding processes (0: in this one)')
    parser.add_argument('--chunk-size', type=int, default=4096,
                        help='queries and gallery images ranked per block (memory ~ chunk x chunk)')
    parser.add_argument('--picture-queries', type=int, default=8,
                        help='queries drawn in search_ranked.png (0: no picture)')
    parser.add_argument('--config_file', default='',
                        help='only for checkpoints without a model description: the YAML it was trained with')
    parser.add_argument('opts', nargs=argparse.REMAINDER, help='KEY VALUE overrides for such checkpoints')
    return parser.parse_args(argv)


def _check_numbers(args) -> None:
    for name in ('topk', 'batch_size', 'chunk_size'):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ('workers', 'picture_queries'):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")


@exit_on_user_error
def main(argv=None) -> dict:
    args = parse_args(argv)
    _check_numbers(args)
    query = list_images(args.query, '--query')
    gallery = list_images(args.gallery, '--gallery')
    table = read_label_csv(args.labels) if args.labels not in ('auto', 'none') else None
    prepare_output_dir(args.output)
    logger = setup_logger('msp.search', args.output, 'search_log.txt')
    model = load_reid_model(args.weight, device=args.device, config_file=args.config_file, opts=args.opts)
    meta = model.reid_meta
    logger.info(f"model: {meta['arch']} from {args.weight} ({meta['feature_dim']}-d features, trained on "
                f"'{meta.get('dataset')}'); device {next(model.parameters()).device}, {args.precision}")
    q_labels, g_labels = (image_labels(args.labels, paths, meta, table) for paths in (query, gallery))
    for name, labels in (('query', q_labels), ('gallery', g_labels)):
        logger.info(f"{name}: {len(labels.views)} images; labels from {labels.source}")
        for note in labels.notes:
            logger.info(note)
    extractor = FeatureExtractor(model, batch_size=args.batch_size, precision=args.precision,
                                 side_info=args.side_info, num_workers=min(args.workers, os.cpu_count() or 1),
                                 show_progress=True)
    start = time.monotonic()
    qf = extractor(query, cameras=q_labels.cameras, views=q_labels.views)
    gf = extractor(gallery, cameras=g_labels.cameras, views=g_labels.views)
    extraction_s = time.monotonic() - start
    start = time.monotonic()
    with torch.no_grad():
        dist, index = top_k(qf, gf, args.topk, args.chunk_size, device=extractor.device)  # the model's device
    ranking_s = time.monotonic() - start
    info = {'weight': args.weight, 'query': args.query, 'gallery': args.gallery, 'topk': int(index.shape[1]),
            'distance': 'squared Euclidean distance of L2-normalised features (2 - 2 cosine)',
            'labels': {'query': q_labels.source, 'gallery': g_labels.source}, 'side_info': args.side_info,
            'num_query': len(query), 'num_gallery': len(gallery)}
    written = write_outputs(args.output, OUTPUT_NAMES, query, gallery, q_labels, g_labels, qf, gf, dist, index,
                            info, args.picture_queries, meta.get('dataset', ''))
    logger.info(f"features of {len(query) + len(gallery)} images in {extraction_s:.1f} s, ranking in "
                f"{ranking_s:.2f} s")
    for path in written:
        logger.info(f"wrote {path}")
    return {'written': written, 'extraction_s': extraction_s, 'ranking_s': ranking_s}


if __name__ == '__main__':
    main(sys.argv[1:])
