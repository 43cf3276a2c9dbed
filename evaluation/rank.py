"""Re-ID evaluation (CMC, mAP, mINP) for the sky-ground modes S2G, G2S and DDC.

The metrics depend only on where each query's positives land in its ranked, filtered gallery.
Instead of sorting every gallery row, the rank of each positive is found by counting the kept
gallery items that are closer to the query than it (one `searchsorted` of the row into the few
sorted positive distances, then a histogram). Ranks are those of a stable sort by distance with
ties broken by gallery index: rows where some kept item ties exactly with a positive are
re-ranked with a real stable sort.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import UserError
from utils.vocabulary import (MSSL_QUERY_VIEW, MSSL_REMOVAL, REMOVAL_RULES, REMOVE_NOTHING,
                              SAME_CAMERA)

MODES = tuple(MSSL_REMOVAL)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UserError(f"unknown evaluation mode {mode!r} (expected one of {', '.join(MODES)})")


def _removal_rule(mode: str, removal: str | None) -> str:
    """The removal rule to apply: `removal` when given, else the MSSL protocol `mode`'s."""
    if removal is None:
        _check_mode(mode)
        return MSSL_REMOVAL[mode]
    if removal not in REMOVAL_RULES:
        raise UserError(f"unknown removal rule {removal!r} (expected one of {', '.join(REMOVAL_RULES)})")
    return removal


def _to_numpy_1d(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def mode_query_mask(mode: str, q_views) -> np.ndarray:
    """Boolean mask of the queries that take part in `mode` (S2G: sky, G2S: ground, DDC: all)."""
    _check_mode(mode)
    views = _to_numpy_1d(q_views, 'q_views')
    if mode == 'DDC':
        return np.ones(len(views), dtype=bool)
    return views == MSSL_QUERY_VIEW[mode]


def _labels(values, name: str, length: int, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values.detach().to(device=device, dtype=torch.int64)
    else:
        tensor = torch.as_tensor(np.asarray(values, dtype=np.int64), device=device)
    if tensor.ndim != 1 or tensor.numel() != length:
        raise ValueError(f"{name} must be 1-D of length {length}, got shape {tuple(tensor.shape)}")
    return tensor


def _float_matrix(values, name: str, device: torch.device | None) -> torch.Tensor:
    tensor = torch.as_tensor(values).detach()
    if device is not None:
        tensor = tensor.to(device)
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(tensor.shape)}")
    if tensor.dtype != torch.float64:
        tensor = tensor.float()
    return tensor


def _check_finite(row_values: torch.Tensor, name: str) -> None:
    """row_values: a per-row reduction (norm, sum) that is non-finite if any entry of the row is."""
    if not bool(torch.isfinite(row_values).all()):
        raise UserError(f"{name} contains NaN or Inf values (diverged model or corrupt features?)")


def _resolve_device(device, *candidates) -> torch.device:
    if device is not None:
        return torch.device(device)
    for candidate in candidates:
        if isinstance(candidate, torch.Tensor):
            return candidate.device
    return torch.device('cpu')


class _GalleryGroups:
    """Gallery indices grouped by identity, so a query's same-pid items can be gathered directly."""

    def __init__(self, g_pids: torch.Tensor):
        self.order = torch.argsort(g_pids, stable=True)
        self.pids, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = torch.cumsum(self.counts, 0) - self.counts

    def candidates(self, q_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded [B, M] gallery indices with the query's pid, and their validity mask."""
        device = q_pids.device
        if self.pids.numel() == 0:
            empty = torch.zeros(len(q_pids), 0, dtype=torch.int64, device=device)
            return empty, empty.bool()
        group = torch.searchsorted(self.pids, q_pids).clamp_(max=self.pids.numel() - 1)
        count = torch.where(self.pids[group] == q_pids, self.counts[group], 0)
        width = int(count.max())
        slot = torch.arange(width, device=device)
        valid = slot.unsqueeze(0) < count.unsqueeze(1)
        flat = torch.where(valid, self.starts[group].unsqueeze(1) + slot, 0)
        return self.order[flat], valid


def _ranks_by_counting(dist: torch.Tensor, cand_idx: torch.Tensor, cand_dist: torch.Tensor,
                       junk: torch.Tensor, pos_dist: torch.Tensor, pos_idx: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank (0-based, among kept items) of each sorted positive, and rows left to a real sort.

    pos_dist: [B, P] kept-positive distances t_k ascending, padded with +inf; pos_idx: their
    gallery indices. rank_k = #{kept g: d_g < t_k} + #{kept g: d_g == t_k, g < p_k}. Rows where
    two positives tie with each other are flagged instead (the thresholds below need distinct t_k).
    """
    batch, width = pos_dist.shape
    real = torch.isfinite(pos_dist)
    # Thresholds s_2k = the float just below t_k, s_2k+1 = t_k (padding: +inf, +inf).
    below = torch.where(real, torch.nextafter(pos_dist, torch.zeros_like(pos_dist) - float('inf')),
                        float('inf'))
    thresholds = torch.stack((below, pos_dist), dim=2).reshape(batch, 2 * width)
    # bucket[g] = #{m: s_m < d_g}: even 2k when t_(k-1) < d_g < t_k, odd 2k+1 when d_g == t_k.
    bucket = torch.searchsorted(thresholds, dist, out_int32=True)
    num_bins = 2 * width + 1
    offset = (torch.arange(batch, device=dist.device, dtype=torch.int32) * num_bins).unsqueeze(1)
    bucket += offset
    hist = torch.bincount(bucket.view(-1), minlength=batch * num_bins)
    at_most = torch.cumsum(hist.view(batch, num_bins), dim=1)[:, :-1]  # #{g: bucket[g] <= m}
    less, less_equal = at_most[:, 0::2], at_most[:, 1::2]

    junk_d = torch.where(junk, cand_dist, float('inf')).unsqueeze(2)
    less = less - (junk_d < pos_dist.unsqueeze(1)).sum(1)
    less_equal = less_equal - (junk_d <= pos_dist.unsqueeze(1)).sum(1)

    positive_tie = ((pos_dist[:, 1:] == pos_dist[:, :-1]) & real[:, 1:]).any(1)
    other_tie = ((less_equal - less > 1) & real).any(1) & ~positive_tie
    if bool(other_tie.any()):
        rows = other_tie.nonzero().squeeze(1)
        row_bucket = (bucket[rows] - offset[rows]).long()
        slot = torch.div(row_bucket, 2, rounding_mode='floor').clamp_(max=width - 1)
        gallery_index = torch.arange(dist.shape[1], device=dist.device)
        tied_before = (row_bucket % 2 == 1) & (gallery_index < pos_idx[rows].gather(1, slot))
        ties = torch.zeros(len(rows), width, dtype=torch.int64, device=dist.device)
        ties.scatter_add_(1, slot, tied_before.long())
        junk_before = (junk_d[rows] == pos_dist[rows].unsqueeze(1)) \
            & (cand_idx[rows].unsqueeze(2) < pos_idx[rows].unsqueeze(1))
        less[rows] += ties - junk_before.sum(1)
    return less, positive_tie


def _ranks_by_sorting(dist: torch.Tensor, junk_idx: torch.Tensor, junk: torch.Tensor,
                      pos_idx: torch.Tensor, pos_valid: torch.Tensor) -> torch.Tensor:
    """Exact ranks (0-based, among kept items, ascending) of the positives via a stable sort."""
    batch, num_gallery = dist.shape
    order = torch.sort(dist, dim=1, stable=True).indices
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(num_gallery, device=dist.device).expand(batch, -1))
    junk_count = torch.zeros(dist.shape, dtype=torch.int64, device=dist.device)
    junk_count.scatter_add_(1, junk_idx, junk.to(torch.int64))
    kept_before = torch.cumsum((junk_count == 0).gather(1, order).to(torch.int64), dim=1) - 1
    ranks = kept_before.gather(1, position.gather(1, pos_idx))
    ranks = torch.where(pos_valid, ranks, torch.iinfo(torch.int64).max)
    return torch.sort(ranks, dim=1).values


def query_distances(q_chunk: torch.Tensor, q_sq: torch.Tensor, gallery: torch.Tensor,
                     g_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances |q|^2 + |g|^2 - 2 q.g for a chunk of queries."""
    return (q_sq.unsqueeze(1) + g_sq.unsqueeze(0)).addmm_(q_chunk, gallery.T, beta=1, alpha=-2)


def evaluate(qf, gf, q_pids, g_pids, q_camids, g_camids, q_views, g_views, mode: str,
             max_rank: int = 50, chunk_size: int = 1024, device=None, feat_norm: bool = True,
             distmat=None, return_per_query: bool = False, removal: str | None = None) -> dict:
    """CMC / mAP / mINP of protocol `mode` for queries that are already the protocol's subset.

    `removal` (utils/vocabulary.py) says which gallery items are removed for a query:
    'same_view' (the query's pid in its view), 'same_camera' (its pid in its camera) or 'none'.
    Left at None, `mode` must be an MSSL protocol and its rule applies: S2G and G2S 'same_view',
    DDC 'same_camera'. Queries left without a positive are not counted. Work is done in torch on
    `device` (default: the features' device), `chunk_size` queries at a time; peak memory is
    about 3 * chunk_size * num_gallery * 4 bytes on top of the features. `distmat` ([Nq, Ng],
    e.g. from re-ranking) replaces the feature distances when given (qf/gf are then ignored).
    With `return_per_query`, the result also holds 'per_query_ap' (float64, one per counted query)
    and 'valid_query_index' (int64, the index of each counted query among the given ones).
    """
    removal = _removal_rule(mode, removal)
    for name, value in (('max_rank', max_rank), ('chunk_size', chunk_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    max_rank, chunk_size = int(max_rank), int(chunk_size)
    device = _resolve_device(device, distmat, qf, gf)

    num_query, num_gallery = len(q_pids), len(g_pids)
    q_pid = _labels(q_pids, 'q_pids', num_query, device)
    g_pid = _labels(g_pids, 'g_pids', num_gallery, device)
    if removal == SAME_CAMERA:
        q_attr = _labels(q_camids, 'q_camids', num_query, device)
        g_attr = _labels(g_camids, 'g_camids', num_gallery, device)
    elif removal == REMOVE_NOTHING:  # no gallery item shares this attribute with a query
        q_attr = torch.zeros(num_query, dtype=torch.int64, device=device)
        g_attr = torch.ones(num_gallery, dtype=torch.int64, device=device)
    else:
        q_attr = _labels(q_views, 'q_views', num_query, device)
        g_attr = _labels(g_views, 'g_views', num_gallery, device)

    if distmat is not None:
        distmat = _float_matrix(distmat, 'distmat', None)  # stays put; chunks move to `device`
        if tuple(distmat.shape) != (num_query, num_gallery):
            raise ValueError(f"distmat must have shape ({num_query}, {num_gallery}), "
                             f"got {tuple(distmat.shape)}")
        _check_finite(distmat.sum(1), 'distmat')
    else:
        query, gallery = _float_matrix(qf, 'qf', device), _float_matrix(gf, 'gf', device)
        if query.shape[0] != num_query or gallery.shape[0] != num_gallery:
            raise ValueError("features and labels disagree in length: "
                             f"qf {tuple(query.shape)} for {num_query} queries, "
                             f"gf {tuple(gallery.shape)} for {num_gallery} gallery items")
        if query.shape[1] != gallery.shape[1]:
            raise ValueError("qf and gf differ in dimension: "
                             f"{query.shape[1]} vs {gallery.shape[1]}")
        if query.dtype != gallery.dtype:
            query, gallery = query.double(), gallery.double()
        q_sq, g_sq = (query * query).sum(1), (gallery * gallery).sum(1)
        _check_finite(q_sq, 'qf')
        _check_finite(g_sq, 'gf')
        if feat_norm:
            query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
            q_sq, g_sq = (query * query).sum(1), (gallery * gallery).sum(1)

    groups = _GalleryGroups(g_pid)
    hist_len = max(max_rank, 10)
    first_hit_hist = torch.zeros(hist_len + 1, dtype=torch.int64, device=device)
    ap_sum = inp_sum = 0.0
    num_valid = 0
    per_query_ap, valid_index = [], []
    for start in range(0, num_query, chunk_size):
        stop = min(start + chunk_size, num_query)
        if distmat is None:
            dist = query_distances(query[start:stop], q_sq[start:stop], gallery, g_sq)
        else:
            dist = distmat[start:stop].to(device)

        cand_idx, cand_valid = groups.candidates(q_pid[start:stop])
        cand_dist = dist.gather(1, cand_idx)
        junk = cand_valid & (g_attr[cand_idx] == q_attr[start:stop].unsqueeze(1))
        positive = cand_valid & ~junk
        num_pos = positive.sum(1)
        width = int(num_pos.max()) if num_pos.numel() else 0
        if width == 0:
            continue
        pos_dist, pos_slot = torch.sort(torch.where(positive, cand_dist, float('inf')), dim=1)
        pos_dist, pos_slot = pos_dist[:, :width].contiguous(), pos_slot[:, :width]
        pos_idx = cand_idx.gather(1, pos_slot)

        ranks, needs_sort = _ranks_by_counting(dist, cand_idx, cand_dist, junk, pos_dist, pos_idx)
        if bool(needs_sort.any()):
            rows = needs_sort.nonzero().squeeze(1)
            ranks[rows] = _ranks_by_sorting(dist[rows], cand_idx[rows], junk[rows], pos_idx[rows],
                                            positive[rows].gather(1, pos_slot[rows]))

        valid = num_pos > 0
        ranks, count = ranks[valid].double(), num_pos[valid]
        slot = torch.arange(1, width + 1, device=device, dtype=torch.float64)
        is_pos = slot.unsqueeze(0) <= count.unsqueeze(1)
        ap = torch.where(is_pos, slot / (ranks + 1), 0.0).sum(1) / count
        last = ranks.gather(1, (count - 1).unsqueeze(1)).squeeze(1)
        inp = count / (last + 1)
        first = ranks[:, 0].clamp(max=hist_len).long()
        first_hit_hist += torch.bincount(first, minlength=hist_len + 1)
        ap_sum += float(ap.sum())
        inp_sum += float(inp.sum())
        num_valid += int(valid.sum())
        if return_per_query:
            per_query_ap.append(ap.cpu().numpy())
            valid_index.append(valid.nonzero().squeeze(1).cpu().numpy() + start)

    if num_valid == 0:
        raise UserError(f"no query of mode {mode} has a positive in the gallery")
    hits = torch.cumsum(first_hit_hist[:hist_len], 0).cpu().numpy().astype(np.float64) / num_valid
    result = {
        'mode': mode,
        'mAP': ap_sum / num_valid,
        'mINP': inp_sum / num_valid,
        'cmc': hits[:max_rank].copy(),
        'rank1': float(hits[0]),
        'rank5': float(hits[4]),
        'rank10': float(hits[9]),
        'num_query': num_query,
        'num_valid_query': num_valid,
        'num_gallery': num_gallery,
    }
    if return_per_query:
        result['per_query_ap'] = np.concatenate(per_query_ap).astype(np.float64)
        result['valid_query_index'] = np.concatenate(valid_index).astype(np.int64)
    return result
