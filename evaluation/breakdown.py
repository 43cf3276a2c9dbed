"""Where a model fails: a protocol's metrics per query group and gallery group.

`evaluation/rank.py` fills the camera and view tables in its ranking pass (`breakdown=True`): for every
query camera (view) and gallery camera (view), the queries of that camera against the gallery restricted
to that camera, after the protocol's removal rule; a query without a positive there is not counted in
that cell. Grouping the queries alone (MSSL: the hour of capture) needs no new ranking: `query_groups`
reads it off each query's AP and first hit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The pairings evaluation/rank.py breaks a protocol down by: name -> the label both sides are grouped by.
PAIRINGS = {'cameras': 'camids', 'views': 'views'}


def _ratio(numerator: np.ndarray, count: np.ndarray) -> np.ndarray:
    """numerator / count, NaN where count is 0."""
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(count > 0, numerator / np.maximum(count, 1), np.nan)


class _Rates:
    """mAP and Rank-1 from the sums `valid`, `ap_sum` and `hits` (NaN where no query is valid)."""
    valid: np.ndarray
    ap_sum: np.ndarray
    hits: np.ndarray

    @property
    def mAP(self) -> np.ndarray:
        return _ratio(self.ap_sum, self.valid)

    @property
    def rank1(self) -> np.ndarray:
        return _ratio(self.hits, self.valid)


@dataclass
class PairTable(_Rates):
    """One protocol's metrics for each (query group, gallery group) pair.

    query_groups / gallery_groups: the label (camera or view id) of each row / column; queries[r]: the
    protocol's queries in row r's group; valid[r, c]: those with a positive in column c's gallery after the
    removal rule; ap_sum[r, c]: their summed AP there; hits[r, c]: those whose first kept item there is a
    positive."""
    query_groups: np.ndarray
    gallery_groups: np.ndarray
    queries: np.ndarray
    valid: np.ndarray
    ap_sum: np.ndarray
    hits: np.ndarray


@dataclass
class GroupTable(_Rates):
    """One protocol's metrics for each group of its queries (against the whole gallery)."""
    groups: np.ndarray
    queries: np.ndarray
    valid: np.ndarray
    ap_sum: np.ndarray
    hits: np.ndarray


def query_groups(labels, per_query_ap, first_hit_rank, valid_query_index) -> GroupTable:
    """Group a protocol's queries by `labels` (one per query; e.g. the hour of capture).

    per_query_ap / first_hit_rank / valid_query_index: the evaluator's per-query results
    (`return_per_query`): the AP and the 0-based rank of the first positive of each counted query, and
    the query's index."""
    labels = np.asarray(labels)
    groups, group_of = np.unique(labels, return_inverse=True)
    counted = group_of[np.asarray(valid_query_index, dtype=np.int64)]
    size = len(groups)
    return GroupTable(
        groups=groups,
        queries=np.bincount(group_of, minlength=size),
        valid=np.bincount(counted, minlength=size),
        ap_sum=np.bincount(counted, weights=np.asarray(per_query_ap, dtype=np.float64), minlength=size),
        hits=np.bincount(counted, weights=(np.asarray(first_hit_rank) == 0).astype(np.float64), minlength=size))
