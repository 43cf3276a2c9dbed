"""Re-ID evaluation (CMC, mAP, mINP) for the sky-ground modes S2G, G2S and DDC.

The metrics depend only on where each query's positives land in its ranked, filtered gallery.
Instead of sorting every gallery row, the position of each of the query's same-pid gallery items
(its candidates) is found by counting the gallery items closer to the query than it: one
`searchsorted` of the row into the few sorted candidate distances, then a histogram. Positions
are those of a stable sort by distance with ties broken by gallery index; rows where a
non-candidate ties exactly with a candidate get a real stable sort. A positive's rank among the
kept items is then its position minus the removed (junk) candidates before it, so the expensive
part does not depend on the removal rule, and `evaluate_protocols` shares it (and the distances)
between protocols that rank the same query against the same gallery.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.breakdown import PAIRINGS, PairTable
from utils.errors import UserError
from utils.vocabulary import (MSSL_QUERY_VIEW, MSSL_REMOVAL, REMOVAL_RULES, SAME_CAMERA,
                              SAME_VIEW)

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


def _candidate_positions(dist: torch.Tensor, cand_dist: torch.Tensor, cand_idx: torch.Tensor,
                         cand_valid: torch.Tensor, groups: _GalleryGroupsByLabel | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Position of each same-pid candidate in its row's stable ascending order, found by counting.

    cand_dist / cand_idx / cand_valid: [B, M] candidates in stable (distance, gallery index) order,
    padding last (+inf). position_k = #{g: d_g < c_k} + #{g: d_g == c_k, g < idx_k}. The second
    term is known from the candidates alone unless some non-candidate item ties exactly with a
    candidate: then the row's items equal to each candidate are counted, or, where candidates
    also tie with each other, the row is flagged for a real sort. Independent of the removal rule, so
    one call serves every protocol that ranks this query.

    With `groups` (for the breakdowns), the same histogram is kept per gallery group, which also gives
    [B, M, G]: how many items of each group precede each candidate. Rows flagged for a real sort get
    theirs from `_positions_by_sorting`.
    """
    batch, width = cand_dist.shape
    device = dist.device
    inf = torch.full_like(cand_dist, float('inf'))
    previous = torch.cat((torch.full_like(cand_dist[:, :1], -float('inf')), cand_dist[:, :-1]), 1)
    # below_k: the float just under c_k, raised to c_(k-1) when two candidates tie, so that the
    # interleaved thresholds (below_0, c_0, below_1, c_1, ...) stay sorted.
    below = torch.where(cand_valid, torch.maximum(torch.nextafter(cand_dist, -inf), previous), inf)
    equal = torch.where(cand_valid, cand_dist, inf)
    thresholds = torch.stack((below, equal), dim=2).reshape(batch, 2 * width)
    # bucket[g] = #{m: s_m < d_g}; then at_most[m] = #{g: d_g <= s_m}.
    bucket = torch.searchsorted(thresholds, dist, out_int32=True)
    num_bins = 2 * width + 1
    offset = (torch.arange(batch, device=device, dtype=torch.int32) * num_bins).unsqueeze(1)
    bucket += offset
    block = batch * num_bins
    if groups is None:
        hist = torch.bincount(bucket.view(-1), minlength=block)
        at_most = torch.cumsum(hist.view(batch, num_bins), dim=1)[:, :-1]
    else:  # one histogram per gallery group: one more in-place add, keys (group, row, bin)
        bucket += groups.of_gallery * block
        hist = torch.bincount(bucket.view(-1), minlength=block * groups.count)
        at_most_by_group = torch.cumsum(hist.view(groups.count, batch, num_bins), dim=2)[:, :, :-1]  # [G, B, 2M]
        at_most = at_most_by_group.sum(0)
    slot = torch.arange(width, device=device)
    starts_group = torch.ones_like(cand_valid)
    starts_group[:, 1:] = cand_dist[:, 1:] != cand_dist[:, :-1]
    first = torch.cummax(torch.where(starts_group, slot, 0), dim=1).values  # first of its tie group
    less = at_most[:, 0::2].gather(1, first)  # #{g: d_g < c_k}
    less_equal = at_most[:, 1::2]             # #{g: d_g <= c_k}
    tied_candidates = ((cand_dist.unsqueeze(2) == cand_dist.unsqueeze(1))
                       & cand_valid.unsqueeze(1)).sum(2)
    positions = less + (slot - first)
    by_group = None
    if groups is not None:
        less_by_group = at_most_by_group[:, :, 0::2].gather(2, first.expand(groups.count, -1, -1)).permute(1, 2, 0)
        first_of = first.unsqueeze(2).expand(-1, -1, groups.count)
        in_group = groups.one_hot(cand_idx, cand_valid)
        before = torch.cumsum(in_group, 1) - in_group  # candidates of each group in earlier slots
        by_group = less_by_group + before - before.gather(1, first_of)
    other_tie = ((less_equal - less > tied_candidates) & cand_valid).any(1)
    candidate_tie = ((tied_candidates > 1) & cand_valid).any(1)
    scan = other_tie & ~candidate_tie
    if bool(scan.any()):
        # Only lone candidates tie here, and an item equal to c_k lands in bucket 2k + 1: count
        # those with a smaller gallery index than the candidate's. About 1 row in 25 at MSSL
        # scale in float32, too many to sort each.
        rows = scan.nonzero().squeeze(1)
        row_bucket = bucket[rows] % block - offset[rows]
        equal_to = torch.div(row_bucket, 2, rounding_mode='floor').clamp_(max=width - 1).long()
        gallery_index = torch.arange(dist.shape[1], device=device)
        tied_before = ((row_bucket % 2 == 1) & (gallery_index < cand_idx[rows].gather(1, equal_to))).long()
        ties = torch.zeros(len(rows), width, dtype=torch.int64, device=device)
        positions[rows] += ties.scatter_add_(1, equal_to, tied_before)
        if groups is not None:
            ties = torch.zeros(len(rows), width * groups.count, dtype=torch.int64, device=device)
            ties.scatter_add_(1, equal_to * groups.count + groups.of_gallery, tied_before)
            by_group[rows] += ties.view(len(rows), width, groups.count)
    return positions, other_tie & candidate_tie, by_group


def _positions_by_sorting(dist: torch.Tensor, cand_idx: torch.Tensor, groups: _GalleryGroupsByLabel | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact positions of the candidates in a stable ascending sort of their rows, and with `groups`
    how many items of each gallery group precede each candidate ([B, M, G])."""
    batch, num_gallery = dist.shape
    order = torch.sort(dist, dim=1, stable=True).indices
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(num_gallery, device=dist.device).expand(batch, -1))
    cand_position = position.gather(1, cand_idx)
    if groups is None:
        return cand_position, None
    ahead = (position.unsqueeze(1) < cand_position.unsqueeze(2)).double()  # [B, M, Ng]; few rows get here
    member = F.one_hot(groups.of_gallery.long(), groups.count).double()
    return cand_position, torch.matmul(ahead, member).round().long()


class _GalleryGroupsByLabel:
    """The gallery split into groups, one per (camera, view) pair present, for the breakdowns: every
    pairing (evaluation/breakdown.PAIRINGS) puts each group in one of its gallery columns, and each query
    in one of its rows."""

    def __init__(self, labels: dict, num_query: int, num_gallery: int, device: torch.device):
        """labels: {'q_camids', 'g_camids', 'q_views', 'g_views': 1-D label arrays or tensors}."""
        tensors = {key: _labels(values, key, num_query if key.startswith('q') else num_gallery, device)
                   for key, values in labels.items()}
        cameras, views = tensors['g_camids'], tensors['g_views']
        lowest_view, num_views = views.min(), views.max() - views.min() + 1
        keys, of_gallery = torch.unique((cameras * num_views + views - lowest_view), return_inverse=True)
        pairs = torch.stack((torch.div(keys, num_views, rounding_mode='floor'), keys % num_views + lowest_view), 1)
        self.of_gallery = of_gallery.to(torch.int32)
        self.count = len(pairs)
        self.pairings = {}  # name -> (query rows, gallery columns, row of each query, column of each group)
        for column, (name, label) in enumerate(PAIRINGS.items()):
            gallery_groups, column_of = torch.unique(pairs[:, column], return_inverse=True)
            query_groups, row_of = torch.unique(tensors[f'q_{label}'], return_inverse=True)
            self.pairings[name] = (query_groups, gallery_groups, row_of, column_of)

    def one_hot(self, cand_idx: torch.Tensor, cand_valid: torch.Tensor) -> torch.Tensor:
        """[B, M, G] int64: 1 where candidate m is a valid item of group g."""
        group = self.of_gallery[cand_idx].long()
        return (F.one_hot(group, self.count) * cand_valid.unsqueeze(2)).long()


def query_distances(q_chunk: torch.Tensor, q_sq: torch.Tensor, gallery: torch.Tensor,
                     g_sq: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances |q|^2 + |g|^2 - 2 q.g for a chunk of queries, written into `out`
    when given (reused across chunks: a fresh matrix per chunk costs its page faults every time)."""
    if out is None:
        dist = q_sq.unsqueeze(1) + g_sq.unsqueeze(0)
    else:
        dist = torch.add(q_sq.unsqueeze(1), g_sq.unsqueeze(0), out=out[:len(q_chunk)])
    return dist.addmm_(q_chunk, gallery.T, beta=1, alpha=-2)


def evaluate(qf, gf, q_pids, g_pids, q_camids, g_camids, q_views, g_views, mode: str,
             max_rank: int = 50, chunk_size: int = 1024, device=None, feat_norm: bool = True,
             distmat=None, return_per_query: bool = False, removal: str | None = None,
             breakdown: bool = False) -> dict:
    """CMC / mAP / mINP of protocol `mode` for queries that are already the protocol's subset.

    `removal` (utils/vocabulary.py) says which gallery items are removed for a query:
    'same_view' (the query's pid in its view), 'same_camera' (its pid in its camera) or 'none'.
    Left at None, `mode` must be an MSSL protocol and its rule applies: S2G and G2S 'same_view',
    DDC 'same_camera'. Queries left without a positive are not counted. Work is done in torch on
    `device` (default: the features' device), `chunk_size` queries at a time; peak memory is
    about 3 * chunk_size * num_gallery * 4 bytes on top of the features. `distmat` ([Nq, Ng],
    e.g. from re-ranking) replaces the feature distances when given (qf/gf are then ignored).
    With `return_per_query`, the result also holds 'per_query_ap' (float64, one per counted query),
    'first_hit_rank' (int64, the 0-based rank of its first positive) and 'valid_query_index' (int64,
    the index of each counted query among the given ones). With `breakdown`, 'breakdown' holds
    {'cameras', 'views': evaluation.breakdown.PairTable}: the metrics of each query camera (view)
    against the gallery restricted to each camera (view), from the same ranking.
    """
    return evaluate_protocols(qf, gf, q_pids, g_pids, q_camids, g_camids, q_views, g_views,
                              [(mode, None, removal)], max_rank=max_rank, chunk_size=chunk_size,
                              device=device, feat_norm=feat_norm, distmat=distmat,
                              return_per_query=return_per_query, breakdown=breakdown)[mode]


def _protocol_rows(protocols, num_query: int) -> list:
    """[(name, rows as an int64 array, removal rule)]; rows None means every query."""
    checked, names = [], set()
    for entry in protocols:
        if len(entry) != 3:
            raise ValueError(f"a protocol is (name, query rows, removal rule), got {entry!r}")
        name, rows, removal = entry
        if name in names:
            raise ValueError(f"protocol {name!r} is given twice")
        names.add(name)
        rule = _removal_rule(name, removal)
        rows = np.arange(num_query) if rows is None else _to_numpy_1d(rows, f'rows of {name}')
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= num_query):
            raise ValueError(f"query rows of {name} must lie in [0, {num_query})")
        if len(np.unique(rows)) != len(rows):
            raise ValueError(f"query rows of {name} repeat")
        checked.append((name, rows, rule))
    if not checked:
        raise ValueError("no protocol to evaluate")
    return checked


class _ProtocolTotals:
    """One protocol's running sums over the chunks of queries."""

    def __init__(self, name: str, rows: np.ndarray, removal: str, hist_len: int, device,
                 groups: _GalleryGroupsByLabel | None = None):
        self.name, self.rows, self.removal = name, rows, removal
        self.first_hit_hist = torch.zeros(hist_len + 1, dtype=torch.int64, device=device)
        self.ap_sum = self.inp_sum = 0.0
        self.num_valid = 0
        self.per_query_ap, self.first_hit, self.valid_index = [], [], []
        # Per pairing: [rows, columns] float64 sums of (valid queries, AP, first hits).
        self.pairs = {} if groups is None else {
            name: torch.zeros(3, len(query_groups), len(gallery_groups), dtype=torch.float64, device=device)
            for name, (query_groups, gallery_groups, _, _) in groups.pairings.items()}


def evaluate_protocols(qf, gf, q_pids, g_pids, q_camids, g_camids, q_views, g_views, protocols,
                       max_rank: int = 50, chunk_size: int = 1024, device=None,
                       feat_norm: bool = True, distmat=None,
                       return_per_query: bool = False, breakdown: bool = False) -> dict:
    """Several protocols over one gallery from one pass: {name: the dict `evaluate` returns}.

    `protocols` is a list of (name, query rows, removal rule): the rows (indices into qf, or None
    for all) are the protocol's queries, the rule as in `evaluate` (None: the MSSL rule of
    `name`). Each query's distances to the gallery, and the stable positions of its same-pid
    gallery items, are computed once however many protocols share it (MSSL: S2G and G2S queries
    are subsets of DDC's); only the cheap per-protocol step (removing junk, scoring) is repeated.
    'valid_query_index' indexes a protocol's own rows.
    """
    for name, value in (('max_rank', max_rank), ('chunk_size', chunk_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    max_rank, chunk_size = int(max_rank), int(chunk_size)
    device = _resolve_device(device, distmat, qf, gf)

    num_query, num_gallery = len(q_pids), len(g_pids)
    protocols = _protocol_rows(protocols, num_query)
    rules = {rule for _, _, rule in protocols}
    q_pid = _labels(q_pids, 'q_pids', num_query, device)
    g_pid = _labels(g_pids, 'g_pids', num_gallery, device)
    attributes = {}  # removal rule -> (query attribute, gallery attribute) that must differ
    if SAME_CAMERA in rules:
        attributes[SAME_CAMERA] = (_labels(q_camids, 'q_camids', num_query, device),
                                   _labels(g_camids, 'g_camids', num_gallery, device))
    if SAME_VIEW in rules:
        attributes[SAME_VIEW] = (_labels(q_views, 'q_views', num_query, device),
                                 _labels(g_views, 'g_views', num_gallery, device))
    groups = None
    if breakdown:
        groups = _GalleryGroupsByLabel(dict(q_camids=q_camids, g_camids=g_camids, q_views=q_views,
                                            g_views=g_views), num_query, num_gallery, device)

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
        _check_finite(query.sum(1), 'qf')
        _check_finite(gallery.sum(1), 'gf')
        if feat_norm:
            query, gallery = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
        q_sq, g_sq = (query * query).sum(1), (gallery * gallery).sum(1)
        dist_buffer = torch.empty(min(chunk_size, num_query), num_gallery, dtype=query.dtype, device=device)

    # Every query some protocol uses, once; each protocol's rows as positions in that union.
    union = np.unique(np.concatenate([rows for _, rows, _ in protocols]))
    union_t = torch.from_numpy(union).to(device)
    hist_len = max(max_rank, 10)
    totals = [_ProtocolTotals(name, rows, rule, hist_len, device, groups) for name, rows, rule in protocols]
    member = []  # per protocol: position of each union query in the protocol's rows, or -1
    for total in totals:
        where = np.full(len(union), -1, dtype=np.int64)
        where[np.searchsorted(union, total.rows)] = np.arange(len(total.rows))
        member.append(torch.from_numpy(where).to(device))

    by_pid = _GalleryGroups(g_pid)
    for start in range(0, len(union), chunk_size):
        rows = union_t[start:start + chunk_size]
        if distmat is None:
            dist = query_distances(query[rows], q_sq[rows], gallery, g_sq, dist_buffer)
        else:
            dist = distmat[rows.to(distmat.device)].to(device)

        cand_idx, cand_valid = by_pid.candidates(q_pid[rows])
        if cand_idx.shape[1] == 0:
            continue
        cand_dist, order = torch.sort(torch.where(cand_valid, dist.gather(1, cand_idx), float('inf')),
                                      dim=1, stable=True)
        cand_idx, cand_valid = cand_idx.gather(1, order), cand_valid.gather(1, order)
        positions, needs_sort, by_group = _candidate_positions(dist, cand_dist, cand_idx, cand_valid, groups)
        if bool(needs_sort.any()):
            sorted_rows = needs_sort.nonzero().squeeze(1)
            positions[sorted_rows], sorted_by_group = _positions_by_sorting(dist[sorted_rows], cand_idx[sorted_rows],
                                                                            groups)
            if groups is not None:
                by_group[sorted_rows] = sorted_by_group
        if groups is not None:
            with _one_thread_on_cpu(device):
                columns = _candidate_columns(groups, by_group, cand_idx, cand_valid)

        for total, where in zip(totals, member):
            index = where[start:start + chunk_size]
            local = (index >= 0).nonzero().squeeze(1)
            if local.numel():
                junk = _score_chunk(total, index[local], rows[local], positions[local], cand_idx[local],
                                    cand_valid[local], attributes.get(total.removal), return_per_query)
                if groups is not None:
                    with _one_thread_on_cpu(device):
                        local_columns = {name: tuple(part[local] for part in parts) for name, parts in columns.items()}
                        _score_pairs(total, groups, rows[local], local_columns, cand_valid[local] & ~junk, junk)

    results = {}
    for total in totals:
        results[total.name] = _summary(total, num_gallery, max_rank, return_per_query, groups)
    return results


def _score_chunk(total: _ProtocolTotals, index: torch.Tensor, rows: torch.Tensor,
                 positions: torch.Tensor, cand_idx: torch.Tensor, cand_valid: torch.Tensor,
                 attribute, return_per_query: bool) -> torch.Tensor:
    """Add the AP, INP and first hit of some queries of one protocol to its totals; return which
    candidates the removal rule removes (junk).

    positions: stable positions of the candidates in the full row, ascending along each row; a
    positive's rank among the kept items is its position minus the junk candidates before it.
    """
    if attribute is None:  # removal 'none': no junk
        junk = torch.zeros_like(cand_valid)
    else:
        q_attr, g_attr = attribute
        junk = cand_valid & (g_attr[cand_idx] == q_attr[rows].unsqueeze(1))
    positive = cand_valid & ~junk
    num_pos = positive.sum(1)
    valid = num_pos > 0
    if not bool(valid.any()):
        return junk
    junk_before = torch.cumsum(junk, 1) - junk.long()
    ranks = (positions - junk_before)[valid].double()
    positive, count = positive[valid], num_pos[valid]
    ordinal = torch.cumsum(positive, 1).double()  # 1-based index among the positives
    ap = torch.where(positive, ordinal / (ranks + 1), 0.0).sum(1) / count
    first = torch.where(positive, ranks, float('inf')).min(1).values
    last = torch.where(positive, ranks, -1.0).max(1).values
    inp = count / (last + 1)
    hist_len = len(total.first_hit_hist) - 1
    total.first_hit_hist += torch.bincount(first.clamp(max=hist_len).long(), minlength=hist_len + 1)
    total.ap_sum += float(ap.sum())
    total.inp_sum += float(inp.sum())
    total.num_valid += int(valid.sum())
    if return_per_query:
        total.per_query_ap.append(ap.cpu().numpy())
        total.first_hit.append(first.cpu().numpy())
        total.valid_index.append(index[valid].cpu().numpy())
    return junk


@contextmanager
def _one_thread_on_cpu(device: torch.device):
    """The breakdowns' many small operations per chunk run on one CPU thread. Split over several, each
    waits for all of them, which on a busy machine can cost a scheduler tick per operation."""
    threads = torch.get_num_threads()
    if device.type != 'cpu' or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _candidate_columns(groups: _GalleryGroupsByLabel, by_group: torch.Tensor, cand_idx: torch.Tensor,
                       cand_valid: torch.Tensor) -> dict:
    """What every protocol's breakdown needs of a chunk, per pairing: each candidate's gallery column
    [B, M], how many of its column's items precede it in the full stable order [B, M], and which earlier
    candidates share its column [B, M, M]."""
    in_group = groups.of_gallery[cand_idx].long()
    earlier = torch.ones(cand_idx.shape[1], cand_idx.shape[1], dtype=torch.bool, device=cand_idx.device).tril(-1)
    columns = {}
    counts = by_group.double()  # exact: counts stay far below 2**53
    for name, (_, gallery_groups, _, column_of) in groups.pairings.items():
        column = column_of[in_group]
        member = F.one_hot(column_of, len(gallery_groups)).double()  # [G, columns]
        ahead = torch.matmul(counts, member).gather(2, column.unsqueeze(2)).squeeze(2).long()
        shared = (column.unsqueeze(2) == column.unsqueeze(1)) & earlier & cand_valid.unsqueeze(1)
        columns[name] = (column, ahead, shared)
    return columns


def _score_pairs(total: _ProtocolTotals, groups: _GalleryGroupsByLabel, rows: torch.Tensor, columns: dict,
                 positive: torch.Tensor, junk: torch.Tensor) -> None:
    """Add some queries' AP and first hit against each gallery column to the protocol's breakdowns.

    Restricted to a column, a positive's rank is the number of the column's items ahead of it in the full
    stable order minus the column's junk candidates before it.
    """
    for name, (column, ahead, shared) in columns.items():
        _, gallery_groups, row_of, _ = groups.pairings[name]
        rank = (ahead - (shared & junk.unsqueeze(1)).sum(2)).double()
        ordinal = (shared & positive.unsqueeze(1)).sum(2) + 1  # 1-based among the column's positives
        precision = torch.where(positive, ordinal / (rank + 1), 0.0)
        shape = (len(rows), len(gallery_groups))
        count = torch.zeros(shape, dtype=torch.float64, device=rank.device).scatter_add_(1, column, positive.double())
        ap_sum = torch.zeros_like(count).scatter_add_(1, column, precision)
        first_hit = torch.zeros_like(count).scatter_add_(1, column, (positive & (rank == 0)).double())
        valid = count > 0
        sums = torch.stack((valid.double(), torch.where(valid, ap_sum / count.clamp(min=1), 0.0), first_hit))
        total.pairs[name].index_add_(1, row_of[rows], sums)


def _pair_tables(total: _ProtocolTotals, groups: _GalleryGroupsByLabel) -> dict:
    tables = {}
    for name, (query_groups, gallery_groups, row_of, _) in groups.pairings.items():
        queries = torch.bincount(row_of[torch.from_numpy(total.rows).to(row_of.device)],
                                 minlength=len(query_groups)).cpu().numpy()
        present = queries > 0  # the query groups of this protocol
        valid, ap_sum, hits = total.pairs[name].cpu().numpy()[:, present]
        tables[name] = PairTable(query_groups=query_groups.cpu().numpy()[present],
                                 gallery_groups=gallery_groups.cpu().numpy(), queries=queries[present],
                                 valid=valid.round().astype(np.int64), ap_sum=ap_sum, hits=hits.round().astype(np.int64))
    return tables


def _summary(total: _ProtocolTotals, num_gallery: int, max_rank: int, return_per_query: bool,
             groups: _GalleryGroupsByLabel | None = None) -> dict:
    if total.num_valid == 0:
        raise UserError(f"no query of mode {total.name} has a positive in the gallery")
    hist_len = len(total.first_hit_hist) - 1
    hits = (torch.cumsum(total.first_hit_hist[:hist_len], 0).cpu().numpy().astype(np.float64)
            / total.num_valid)
    result = {
        'mode': total.name,
        'mAP': total.ap_sum / total.num_valid,
        'mINP': total.inp_sum / total.num_valid,
        'cmc': hits[:max_rank].copy(),
        'rank1': float(hits[0]),
        'rank5': float(hits[4]),
        'rank10': float(hits[9]),
        'num_query': len(total.rows),
        'num_valid_query': total.num_valid,
        'num_gallery': num_gallery,
    }
    if return_per_query:
        # Chunks follow the union's order; a protocol's own rows may be in any order.
        ap = np.concatenate(total.per_query_ap).astype(np.float64)
        first_hit = np.concatenate(total.first_hit).astype(np.int64)
        index = np.concatenate(total.valid_index).astype(np.int64)
        order = np.argsort(index, kind='stable')
        result['per_query_ap'], result['valid_query_index'] = ap[order], index[order]
        result['first_hit_rank'] = first_hit[order]
    if groups is not None:
        result['breakdown'] = _pair_tables(total, groups)
    return result
