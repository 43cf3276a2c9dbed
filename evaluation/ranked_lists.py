"""The ranked gallery of chosen queries, ranked exactly as the evaluator ranks (for ranked-list pictures
and searches): the easy and hardest queries of a protocol, and each one's top-k after the removal rule."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.rank import query_distances
from utils.vocabulary import REMOVE_NOTHING, SAME_CAMERA


# ---------------------------------------------------------------------------------------------
@dataclass
class RankedQuery:
    query: int            # index among the mode's queries
    tag: str              # 'easy' or 'hard'
    ap: float
    gallery: np.ndarray   # top-k gallery indices, best first, removal rule applied
    match: np.ndarray     # bool per gallery entry: same identity as the query
    dist: np.ndarray


def select_queries(per_query_ap, valid_query_index, count: int) -> list[tuple[int, str, float]]:
    """(query index, 'easy' | 'hard', AP): the count // 3 highest-AP queries, then the lowest-AP
    ones, hardest first (ties: lower query index first)."""
    ap = np.asarray(per_query_ap, dtype=np.float64)
    index = np.asarray(valid_query_index, dtype=np.int64)
    count = min(int(count), len(ap))
    num_easy = count // 3
    easy = list(np.argsort(-ap, kind='stable')[:num_easy])
    taken = set(easy)
    hard = [i for i in np.argsort(ap, kind='stable') if i not in taken][:count - num_easy]
    return ([(int(index[i]), 'easy', float(ap[i])) for i in easy]
            + [(int(index[i]), 'hard', float(ap[i])) for i in hard])


def removal_mask(removal: str, query_index, query: dict, gallery: dict) -> np.ndarray:
    """[n, Ng] True where a gallery item is removed for a query by the removal rule (utils/vocabulary.py),
    as the evaluator removes it."""
    query_index = np.asarray(query_index, dtype=np.int64)
    if removal == REMOVE_NOTHING:
        return np.zeros((len(query_index), len(gallery['pids'])), dtype=bool)
    attribute = 'camids' if removal == SAME_CAMERA else 'views'
    same_pid = gallery['pids'][None, :] == query['pids'][query_index][:, None]
    same_attr = gallery[attribute][None, :] == query[attribute][query_index][:, None]
    return same_pid & same_attr


def rank_queries(removal: str, picks: list[tuple[int, str, float]], query: dict, gallery: dict, qf=None,
                 gf=None, distmat=None, topk: int = 10, feat_norm: bool = True) -> list[RankedQuery]:
    """Top-k of each picked query, ranked as the evaluator ranks: ascending squared Euclidean
    distance (on L2-normalised features when feat_norm; or the rows of `distmat`), ties by
    gallery index, after the removal rule."""
    if not picks:
        return []
    index = np.array([p[0] for p in picks], dtype=np.int64)
    if distmat is not None:
        dist = torch.as_tensor(distmat)[torch.as_tensor(index)].cpu()
        dist = dist if dist.dtype == torch.float64 else dist.float()  # the evaluator's precision
    else:
        qf, gf = torch.as_tensor(qf).float(), torch.as_tensor(gf).float()
        chosen = qf[torch.as_tensor(index, device=qf.device)]
        if feat_norm:
            chosen, gf = F.normalize(chosen, dim=1), F.normalize(gf, dim=1)
        dist = query_distances(chosen, (chosen * chosen).sum(1), gf, (gf * gf).sum(1)).cpu()
    removed = torch.from_numpy(removal_mask(removal, index, query, gallery))
    dist = dist.masked_fill(removed, float('inf'))
    order = torch.sort(dist, dim=1, stable=True).indices.numpy()
    kept = (~removed).sum(1).numpy()
    ranked = []
    for row, (q_index, tag, ap) in enumerate(picks):
        top = order[row, :min(topk, int(kept[row]))]
        ranked.append(RankedQuery(query=q_index, tag=tag, ap=ap, gallery=top,
                                  match=gallery['pids'][top] == query['pids'][q_index],
                                  dist=dist[row, top].numpy()))
    return ranked
