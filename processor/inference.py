"""Feature extraction and protocol evaluation: one extraction serves every requested mode."""
import json
import os

import numpy as np
import torch

from datasets.make_dataloader import make_ordered_loader
from model.attention_maps import attention_maps
from utils import atomic_io, distributed
from evaluation.breakdown import query_groups
from evaluation.rank import evaluate, evaluate_protocols
from utils.out_of_memory import stop_on_out_of_memory
from utils.progress import progress
from evaluation.rerank import re_ranking
from utils.device import autocast
from utils.vocabulary import ALL_PROTOCOLS, METRIC_KEYS, features_file, results_file
from processor.settings import loader_settings

UNSEEN_CAMERA = -1


@torch.no_grad()
def extract_features(model, loader, device: torch.device, amp_dtype=None, unseen_cameras: bool = False) -> torch.Tensor:
    """Test features of every image of an ordered loader, as float32 on `device`. `unseen_cameras`: the
    images come from cameras the model never trained on (another dataset), so they get camera id -1,
    which the image encoder's SIE table treats as unknown (model/image_encoder.py)."""
    model.eval()
    chunks = []
    with stop_on_out_of_memory('feature extraction', f'lower TEST.IMS_PER_BATCH ({loader.batch_size})'):
        for images, _, camids, viewids, _ in progress(loader, desc='extracting features', leave=False, unit='batch'):
            if unseen_cameras:
                camids = torch.full_like(camids, UNSEEN_CAMERA)
            with autocast(device, amp_dtype):
                feats = model(images.to(device, non_blocking=True), cam_label=camids.to(device),
                              view_label=viewids.to(device))
            chunks.append(feats.float())
        return torch.cat(chunks)


def query_attention(cfg, model, device: torch.device, unseen_cameras: bool = False):
    """For TEST.ATTENTION_MAPS: a function (query columns, query indices) -> [n, H, W] attention maps
    (model/attention_maps.py) of those queries, loaded and labelled as for their features."""
    def maps_of(columns: dict, indices: list) -> np.ndarray:
        items = [(str(columns['paths'][i]), int(columns['pids'][i]), int(columns['camids'][i]),
                  int(columns['views'][i])) for i in indices]
        maps = []
        for images, _, camids, viewids, _ in make_ordered_loader(loader_settings(cfg), items, device):
            if unseen_cameras:
                camids = torch.full_like(camids, UNSEEN_CAMERA)
            maps.append(attention_maps(model, images.to(device), cam_label=camids.to(device),
                                       view_label=viewids.to(device)).cpu())
        return torch.cat(maps).numpy()
    return maps_of


def eval_modes(cfg, dataset) -> list:
    """The protocols TEST.EVAL_MODE asks for: all the dataset declares (ALL) or the one named, which
    must be declared (the error lists the declared ones)."""
    if cfg.TEST.EVAL_MODE == ALL_PROTOCOLS:
        return list(dataset.supported_modes)
    dataset.protocol(cfg.TEST.EVAL_MODE)
    return [cfg.TEST.EVAL_MODE]


def _columns(items: list) -> dict:
    paths, pids, camids, views = zip(*items)
    return dict(paths=np.array(paths), pids=np.array(pids, dtype=np.int64),
                camids=np.array(camids, dtype=np.int64), views=np.array(views, dtype=np.int64))


def evaluate_model(cfg, model, dataset, device: torch.device, logger, amp_dtype=None,
                   unseen_cameras: bool = False) -> dict:
    """Extract the union of every mode's query and gallery images once; rank and score each mode with
    the removal rule its dataset declares (`unseen_cameras`: see extract_features).

    Returns {mode: {'metrics': dict, 'query': columns, 'gallery': columns, 'qf', 'gf', 'per_query_ap',
    'first_hit_rank', 'valid_query_index'}} (+ 'distmat' with TEST.RE_RANKING and TEST.VISUALIZE, for the
    ranked lists; + 'breakdown' with TEST.BREAKDOWN: see `breakdowns`).
    Distributed: each rank extracts its block of the images; rank 0 gathers, ranks and reports, and the
    other ranks get {mode: {'metrics': dict}} (rank 0's metrics).
    """
    modes = eval_modes(cfg, dataset)
    splits = {mode: dataset.eval_split(mode) for mode in modes}
    index_of = {}
    for query, gallery in splits.values():
        for item in (*query, *gallery):
            index_of.setdefault(item[0], (len(index_of), item))
    items = [item for _, item in index_of.values()]  # dicts keep insertion order = index order
    feats = extract_features(model, make_ordered_loader(loader_settings(cfg), distributed.local_shard(items), device), device,
                             amp_dtype, unseen_cameras)
    feats = distributed.gather_shards(feats, len(items))
    if not distributed.is_main():
        return distributed.broadcast_object(None)

    def rows_of(split_items):
        return torch.tensor([index_of[path][0] for path, *_ in split_items], device=feats.device)

    metrics_of = {}
    if cfg.TEST.RE_RANKING:
        # k-reciprocal neighbours depend on every query present, so each mode is re-ranked alone.
        distmats = {}
        for mode, (query, gallery) in splits.items():
            qf, gf = feats[rows_of(query)], feats[rows_of(gallery)]
            norm = (lambda x: torch.nn.functional.normalize(x, dim=1)) if cfg.TEST.FEAT_NORM else (lambda x: x)
            distmats[mode] = re_ranking(norm(qf), norm(gf), k1=cfg.TEST.RE_RANKING_K1, k2=cfg.TEST.RE_RANKING_K2,
                                        lambda_value=cfg.TEST.RE_RANKING_LAMBDA)
            q, g = _columns(query), _columns(gallery)
            metrics_of[mode] = evaluate(qf, gf, q['pids'], g['pids'], q['camids'], g['camids'], q['views'],
                                        g['views'], mode, feat_norm=cfg.TEST.FEAT_NORM, device=feats.device,
                                        distmat=distmats[mode], return_per_query=True,
                                        removal=dataset.removal_rule(mode), breakdown=cfg.TEST.BREAKDOWN)
    else:
        # Modes that share a gallery are ranked together: distances computed once (MSSL: all three).
        by_gallery = {}
        for mode, (query, gallery) in splits.items():
            by_gallery.setdefault(tuple(path for path, *_ in gallery), []).append(mode)
        for modes_here in by_gallery.values():
            gallery = splits[modes_here[0]][1]
            union = list({item[0]: item for mode in modes_here for item in splits[mode][0]}.values())
            position = {item[0]: row for row, item in enumerate(union)}
            protocols = [(mode, np.array([position[path] for path, *_ in splits[mode][0]]),
                          dataset.removal_rule(mode)) for mode in modes_here]
            q, g = _columns(union), _columns(gallery)
            metrics_of.update(evaluate_protocols(
                feats[rows_of(union)], feats[rows_of(gallery)], q['pids'], g['pids'], q['camids'], g['camids'],
                q['views'], g['views'], protocols, feat_norm=cfg.TEST.FEAT_NORM, device=feats.device,
                return_per_query=True, breakdown=cfg.TEST.BREAKDOWN))

    outcome = {}
    for mode, (query, gallery) in splits.items():
        metrics = metrics_of[mode]
        logger.info(format_metrics(metrics))
        outcome[mode] = dict(metrics=metrics, query=_columns(query), gallery=_columns(gallery),
                             qf=feats[rows_of(query)], gf=feats[rows_of(gallery)], removal=dataset.removal_rule(mode),
                             per_query_ap=metrics.pop('per_query_ap'), first_hit_rank=metrics.pop('first_hit_rank'),
                             valid_query_index=metrics.pop('valid_query_index'))
        if cfg.TEST.BREAKDOWN:
            outcome[mode]['breakdown'] = breakdowns(dataset, outcome[mode], metrics.pop('breakdown'))
        if cfg.TEST.RE_RANKING and cfg.TEST.VISUALIZE:
            outcome[mode]['distmat'] = distmats[mode]
    distributed.broadcast_object({mode: {'metrics': result['metrics']} for mode, result in outcome.items()})
    return outcome


def breakdowns(dataset, result: dict, pairs: dict) -> dict:
    """The evaluator's camera and view pair tables, and for a dataset whose file names give the hour of
    capture (MSSL) the queries grouped by it: {'cameras', 'views'[, 'hours']}."""
    tables = dict(pairs)
    if dataset.capture_hour is not None:
        hours = [dataset.capture_hour(path) for path in result['query']['paths']]
        tables['hours'] = query_groups(hours, result['per_query_ap'], result['first_hit_rank'],
                                       result['valid_query_index'])
    return tables


def format_metrics(metrics: dict) -> str:
    return (f"{metrics['mode']}: mAP {metrics['mAP']:.1%}  Rank-1 {metrics['rank1']:.1%}  "
            f"Rank-5 {metrics['rank5']:.1%}  Rank-10 {metrics['rank10']:.1%}  mINP {metrics['mINP']:.1%}  "
            f"({metrics['num_valid_query']}/{metrics['num_query']} queries, {metrics['num_gallery']} gallery)")


def summarize_protocols(outcome: dict, summaries: dict) -> dict:
    """{summary name: its metrics} for each of the dataset's summaries whose member protocols were all
    evaluated: every metric and the CMC averaged over the members, `std` the sample standard deviation
    (n - 1; None with one member) of each metric, and the counts (the members', when they agree)."""
    summarized = {}
    for name, members in summaries.items():
        if not all(member in outcome for member in members):
            continue
        runs = [outcome[member]['metrics'] for member in members]
        summary = {'mode': name, 'members': list(members), 'std': {}}
        for key in METRIC_KEYS:
            values = np.array([run[key] for run in runs], dtype=np.float64)
            summary[key] = float(values.mean())
            summary['std'][key] = float(values.std(ddof=1)) if len(values) > 1 else None
        for key in ('num_query', 'num_valid_query', 'num_gallery'):
            values = [run[key] for run in runs]
            summary[key] = values[0] if len(set(values)) == 1 else float(np.mean(values))
        ranks = min(len(run['cmc']) for run in runs)
        summary['cmc'] = np.mean([np.asarray(run['cmc'], dtype=np.float64)[:ranks] for run in runs], axis=0)
        summarized[name] = summary
    return summarized


def format_summary(summary: dict) -> str:
    def shown(key):
        std = summary['std'][key]
        return f"{summary[key]:.1%}" + (f" ± {std:.1%}" if std is not None else '')
    return (f"{summary['mode']} (mean ± std over {len(summary['members'])}): mAP {shown('mAP')}  "
            f"Rank-1 {shown('rank1')}  Rank-5 {shown('rank5')}  Rank-10 {shown('rank10')}  mINP {shown('mINP')}")


def results_record(metrics: dict) -> dict:
    keys = ('mode', 'mAP', 'rank1', 'rank5', 'rank10', 'mINP', 'num_query', 'num_valid_query', 'num_gallery')
    record = {key: metrics[key] for key in keys}
    record['cmc'] = [float(x) for x in metrics['cmc']]
    return record


def write_results(output_dir: str, outcome: dict, save_features: bool, summaries: dict | None = None) -> list:
    """results_<MODE>.json for each mode and each summary (summarize_protocols: its mean metrics, plus
    `std` and `members`), and features_<MODE>.npz (plain arrays) when asked (rank 0 only)."""
    written = []
    if not distributed.is_main():
        return written
    for name, summary in (summaries or {}).items():
        path = os.path.join(output_dir, results_file(name))
        record = {**results_record(summary), 'std': summary['std'], 'members': summary['members']}
        atomic_io.write_text(path, json.dumps(record, indent=1, default=float))
        written.append(path)
    for mode, result in outcome.items():
        path = os.path.join(output_dir, results_file(mode))
        atomic_io.write_text(path, json.dumps(results_record(result['metrics']), indent=1, default=float))
        written.append(path)
        if save_features:
            q, g = result['query'], result['gallery']
            path = os.path.join(output_dir, features_file(mode))
            atomic_io.savez(path, qf=result['qf'].cpu().numpy(), gf=result['gf'].cpu().numpy(),
                            q_pids=q['pids'], g_pids=g['pids'], q_camids=q['camids'], g_camids=g['camids'],
                            q_views=q['views'], g_views=g['views'],
                            q_paths=q['paths'].astype(str), g_paths=g['paths'].astype(str))
            written.append(path)
    return written

