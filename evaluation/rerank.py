"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in torch, chunked and sparse.

Steps, over all N = Nq + Ng images:
  1. d(i, j): squared Euclidean distance divided by the max of row i (as the authors' release does);
     the K = max(k1 + 1, k2) nearest neighbours of every image.
  2. R(i, k): the k-reciprocal neighbours of i (j among i's k+1 nearest, i among j's k+1 nearest).
     R*(i) = R(i, k1) plus R(c, round(k1/2)) for every c in R(i, k1) whose half set shares more than
     2/3 of its members with R(i, k1).
  3. V[i, j] = exp(-d(i, j)) over j in R*(i), normalised to sum 1 (sparse rows); with k2 > 1 each
     row is replaced by the mean of the rows of its k2 nearest neighbours (local query expansion).
  4. Jaccard distance d_J(q, g) = 1 - S / (2 - S) with S = sum_k min(V[q, k], V[g, k]), computed
     from an inverted index over the gallery rows; final = (1 - lambda) d_J + lambda d.

Memory (N images, D dims, K neighbours, W = nonzeros of a row of V, at most
(k1 + 1) * (round(k1/2) + 2), and k2 * W after expansion): features N*D, neighbour lists N*K
indices, sparse V about N*k2*W (index + value), the output Nq*Ng floats, plus per-chunk
temporaries of chunk_size*N distances and at most `pair_budget` index/value pairs for the Jaccard sums.
"""
from __future__ import annotations

import torch

from utils.errors import UserError


def _squared_distances(rows: torch.Tensor, rows_sq: torch.Tensor, cols: torch.Tensor,
                       cols_sq: torch.Tensor) -> torch.Tensor:
    return torch.addmm(rows_sq.unsqueeze(1) + cols_sq.unsqueeze(0), rows, cols.T, beta=1, alpha=-2)


def _pair_distances(feats: torch.Tensor, sq: torch.Tensor, row_max: torch.Tensor, start: int,
                    index: torch.Tensor, sentinel: int, budget: int = 1 << 24) -> torch.Tensor:
    """Normalised d(start + b, index[b, w]) for a block of rows, gathering features in slices."""
    rows, width = index.shape
    safe = torch.where(index != sentinel, index, 0)
    out = torch.empty(index.shape, dtype=feats.dtype, device=feats.device)
    step = max(1, budget // max(1, width * feats.shape[1]))
    for lo in range(0, rows, step):
        hi = min(lo + step, rows)
        own = slice(start + lo, start + hi)
        dot = torch.einsum('bd,bwd->bw', feats[own], feats[safe[lo:hi]])
        out[lo:hi] = (sq[own].unsqueeze(1) + sq[safe[lo:hi]] - 2 * dot) / row_max[own].unsqueeze(1)
    return out


def _reciprocal_mask(neighbours: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """mask[i, a]: image i is among the neighbours of its a-th neighbour (same list length)."""
    num = neighbours.shape[0]
    mask = torch.empty_like(neighbours, dtype=torch.bool)
    for start in range(0, num, chunk_size):
        stop = min(start + chunk_size, num)
        own = torch.arange(start, stop, device=neighbours.device).view(-1, 1, 1)
        mask[start:stop] = (neighbours[neighbours[start:stop]] == own).any(2)
    return mask


def _merge_sparse_rows(index: torch.Tensor, value: torch.Tensor, sentinel: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum values that share an index within each row; entries with index == sentinel are empty.

    Returns padded rows (sentinel index, value 0) as narrow as the fullest row, sorted by index.
    """
    index, order = torch.sort(index, dim=1)
    value = value.gather(1, order)
    new_run = torch.ones_like(index, dtype=torch.bool)
    new_run[:, 1:] = index[:, 1:] != index[:, :-1]
    run = torch.cumsum(new_run.to(torch.int64), dim=1) - 1
    merged_value = torch.zeros_like(value).scatter_add_(1, run, value)
    merged_index = torch.full_like(index, sentinel).scatter_(1, run, index)
    width = int(((merged_index != sentinel).sum(1)).max()) if index.numel() else 0
    merged_value = torch.where(merged_index[:, :width] == sentinel, 0, merged_value[:, :width])
    return merged_index[:, :width], merged_value


def _pad_columns(parts: list[torch.Tensor], fill) -> torch.Tensor:
    width = max(part.shape[1] for part in parts)
    return torch.cat([torch.nn.functional.pad(part, (0, width - part.shape[1]), value=fill)
                      for part in parts])


def re_ranking(qf, gf, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
               chunk_size: int = 2048, pair_budget: int = 1 << 24) -> torch.Tensor:
    """Final re-ranked distance [Nq, Ng] between query and gallery features, on their device.

    Features are used as given (normalise them first if the evaluation does). `chunk_size` rows
    are processed at a time; see the module docstring for the memory needed. Exactly tied
    neighbour distances are ordered as torch.topk returns them (not necessarily by index).
    """
    if not isinstance(k1, int) or k1 < 1:
        raise UserError(f"re-ranking k1 must be a positive integer, got {k1!r}")
    if not isinstance(k2, int) or k2 < 1:
        raise UserError(f"re-ranking k2 must be a positive integer, got {k2!r}")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise UserError(f"re-ranking lambda must be in [0, 1], got {lambda_value!r}")
    if chunk_size < 1 or pair_budget < 1:
        raise UserError("re-ranking chunk_size and pair_budget must be positive")

    query, gallery = torch.as_tensor(qf).detach(), torch.as_tensor(gf).detach()
    gallery = gallery.to(query.device)
    dtype = torch.float64 if torch.float64 in (query.dtype, gallery.dtype) else torch.float32
    feats = torch.cat([query.to(dtype), gallery.to(dtype)])
    device = feats.device
    num_query, num_all = query.shape[0], feats.shape[0]
    num_gallery = num_all - num_query
    num_nn = max(k1 + 1, k2)
    if num_nn > num_all:
        raise UserError(f"re-ranking needs more images than max(k1 + 1, k2) = {num_nn}, "
                        f"got {num_all} (lower k1/k2)")
    sq = (feats * feats).sum(1)

    # 1. nearest neighbours and the row maxima that normalise the distances
    row_max = torch.empty(num_all, dtype=dtype, device=device)
    nearest = torch.empty(num_all, num_nn, dtype=torch.int64, device=device)
    for start in range(0, num_all, chunk_size):
        stop = min(start + chunk_size, num_all)
        dist = _squared_distances(feats[start:stop], sq[start:stop], feats, sq)
        row_max[start:stop] = dist.max(1).values
        nearest[start:stop] = torch.topk(dist, num_nn, dim=1, largest=False, sorted=True).indices
    row_max.clamp_(min=torch.finfo(dtype).tiny)

    # 2. k-reciprocal sets and their expansion; every row gets at most `width` members
    half = int(round(k1 / 2))
    full_nn, half_nn = nearest[:, :k1 + 1], nearest[:, :half + 1]
    full_ok = _reciprocal_mask(full_nn, chunk_size)
    half_ok = _reciprocal_mask(half_nn, chunk_size)
    sub_chunk = max(1, min(chunk_size, (1 << 22) // ((k1 + 1) * (half + 1) * (k1 + 1))))
    v_index, v_value = [], []
    for start in range(0, num_all, sub_chunk):
        stop = min(start + sub_chunk, num_all)
        members, members_ok = full_nn[start:stop], full_ok[start:stop]
        cand_sets = half_nn[members]                                   # [B, k1+1, half+1]
        cand_ok = half_ok[members] & members_ok.unsqueeze(2)
        shared = (cand_sets.unsqueeze(3) == members.view(-1, 1, 1, k1 + 1)) \
            & members_ok.view(-1, 1, 1, k1 + 1)
        shared = shared.any(3) & cand_ok
        take = 3 * shared.sum(2) > 2 * cand_ok.sum(2)
        cand_ok &= take.unsqueeze(2)
        index = torch.cat([torch.where(members_ok, members, num_all),
                           torch.where(cand_ok, cand_sets, num_all).flatten(1)], dim=1)
        index, _ = _merge_sparse_rows(index, torch.zeros_like(index, dtype=dtype), num_all)
        weight = torch.exp(-_pair_distances(feats, sq, row_max, start, index, num_all))
        weight = torch.where(index != num_all, weight, 0.0)
        v_index.append(index)
        v_value.append(weight / weight.sum(1, keepdim=True).clamp_(min=torch.finfo(dtype).tiny))
    v_index, v_value = _pad_columns(v_index, num_all), _pad_columns(v_value, 0.0)

    # 3. local query expansion over the k2 nearest neighbours
    if k2 > 1:
        exp_index, exp_value = [], []
        step = max(1, min(chunk_size, (1 << 22) // (k2 * v_index.shape[1])))
        for start in range(0, num_all, step):
            stop = min(start + step, num_all)
            around = nearest[start:stop, :k2]
            index, value = _merge_sparse_rows(v_index[around].flatten(1),
                                              v_value[around].flatten(1) / k2, num_all)
            exp_index.append(index)
            exp_value.append(value)
        v_index, v_value = _pad_columns(exp_index, num_all), _pad_columns(exp_value, 0.0)

    # 4. inverted index of the gallery rows: for each column, the gallery rows holding it
    g_index, g_value = v_index[num_query:], v_value[num_query:]
    present = g_index != num_all
    g_col = g_index[present]
    g_row = torch.arange(num_gallery, device=device).unsqueeze(1).expand_as(g_index)[present]
    g_val = g_value[present]
    col_order = torch.argsort(g_col, stable=True)
    g_row, g_val = g_row[col_order], g_val[col_order]
    col_count = torch.bincount(g_col, minlength=num_all)
    col_start = torch.cumsum(col_count, 0) - col_count

    final = torch.empty(num_query, num_gallery, dtype=dtype, device=device)
    gallery_feats, gallery_sq = feats[num_query:], sq[num_query:]
    for start in range(0, num_query, chunk_size):
        stop = min(start + chunk_size, num_query)
        q_index, q_value = v_index[start:stop], v_value[start:stop]
        present = q_index != num_all
        q_row = torch.arange(stop - start, device=device).unsqueeze(1).expand_as(q_index)[present]
        q_col, q_val = q_index[present], q_value[present]
        fan_out = col_count[q_col]
        overlap = torch.zeros((stop - start) * num_gallery, dtype=dtype, device=device)
        ends = torch.cumsum(fan_out, 0)
        first = 0
        while first < len(q_col):
            # entries [first, last) expand to at most pair_budget pairs (or one oversized entry)
            base = int(ends[first - 1]) if first else 0
            last = int(torch.searchsorted(ends, base + pair_budget, right=True))
            last = max(last, first + 1)
            fan = fan_out[first:last]
            entry = torch.repeat_interleave(torch.arange(first, last, device=device), fan)
            offset = torch.arange(len(entry), device=device) - (ends[entry] - fan_out[entry] - base)
            pos = col_start[q_col[entry]] + offset
            overlap.index_add_(0, q_row[entry] * num_gallery + g_row[pos],
                               torch.minimum(q_val[entry], g_val[pos]))
            first = last
        overlap = overlap.view(stop - start, num_gallery)
        jaccard = 1 - overlap / (2 - overlap)
        original = _squared_distances(feats[start:stop], sq[start:stop], gallery_feats, gallery_sq)
        original /= row_max[start:stop].unsqueeze(1)
        final[start:stop] = (1 - lambda_value) * jaccard + lambda_value * original
    return final
