import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.errors import UserError
from utils.vocabulary import METRIC_KEYS
from evaluation.rank import MODES, evaluate, evaluate_protocols, mode_query_mask
from evaluation.rerank import re_ranking

DATA = Path(__file__).parent / 'data'


# ---------------------------------------------------------------- plain references
def reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, q_views, g_views, mode,
                       max_rank=50):
    """Per-query loop with a full stable argsort, as the usual Market-style evaluator."""
    q_attr, g_attr = (q_camids, g_camids) if mode == 'DDC' else (q_views, g_views)
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind='stable')
        same_pid = g_pids[order] == q_pids[i]
        keep = ~(same_pid & (g_attr[order] == q_attr[i]))
        hits = same_pid[keep].astype(np.float64)
        if hits.sum() == 0:
            continue
        cmc = np.minimum(np.cumsum(hits), 1.0)
        cmc = np.concatenate([cmc, np.ones(max(0, max_rank - len(cmc)))])[:max_rank]
        cmcs.append(cmc)
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append((precision * hits).sum() / hits.sum())
        last = np.flatnonzero(hits)[-1]
        inps.append(hits.sum() / (last + 1))
    return {'num_valid_query': len(aps), 'mAP': np.mean(aps), 'mINP': np.mean(inps),
            'cmc': np.mean(cmcs, axis=0)}


def squared_distances(qf, gf):
    return (qf ** 2).sum(1)[:, None] + (gf ** 2).sum(1)[None, :] - 2 * qf @ gf.T


def reference_re_ranking(qf, gf, k1, k2, lambda_value):
    """k-reciprocal re-ranking, written row by row from the paper's description."""
    feats = np.concatenate([qf, gf]).astype(np.float64)
    num_query, num_all = len(qf), len(feats)
    dist = squared_distances(feats, feats)
    dist = dist / dist.max(axis=1, keepdims=True)
    rank = np.argsort(dist, axis=1, kind='stable')

    def reciprocal(i, k):
        return [j for j in rank[i, :k + 1] if i in rank[j, :k + 1]]

    weights = np.zeros((num_all, num_all))
    for i in range(num_all):
        base = reciprocal(i, k1)
        expanded = set(base)
        for c in base:
            half_set = reciprocal(c, int(round(k1 / 2)))
            if len(set(half_set) & set(base)) > 2 / 3 * len(half_set):
                expanded |= set(half_set)
        members = sorted(expanded)
        w = np.exp(-dist[i, members])
        weights[i, members] = w / w.sum()
    if k2 > 1:
        weights = np.stack([weights[rank[i, :k2]].mean(axis=0) for i in range(num_all)])
    overlap = np.minimum(weights[:num_query, None, :], weights[None, num_query:, :]).sum(2)
    jaccard = 1 - overlap / (2 - overlap)
    return (1 - lambda_value) * jaccard + lambda_value * dist[:num_query, num_query:]


def random_protocol(rng, num_query, num_gallery, num_ids, dim, int_range=0):
    """Random ids/cams/views (view decided by camera) and features; some query ids absent.

    int_range > 0: integer features in [-int_range, int_range], so that float32 distances are
    exact and equal distances really tie; the last 10 gallery rows then duplicate the first 10
    under other ids, so the tie order changes the metrics. (With real-valued features a BLAS
    matmul need not give duplicate columns bit-identical distances, so duplicates there keep
    their id and camera, as in the protocol vectors.)
    """
    q_pids = rng.integers(0, num_ids + 3, num_query)  # ids >= num_ids never in the gallery
    g_pids = rng.integers(0, num_ids, num_gallery)
    q_cams, g_cams = rng.integers(0, 6, num_query), rng.integers(0, 6, num_gallery)
    if int_range:
        qf = rng.integers(-int_range, int_range + 1, (num_query, dim)).astype(np.float32)
        gf = rng.integers(-int_range, int_range + 1, (num_gallery, dim)).astype(np.float32)
    else:
        qf, gf = rng.standard_normal((num_query, dim)), rng.standard_normal((num_gallery, dim))
        g_pids[-10:], g_cams[-10:] = g_pids[:10], g_cams[:10]
    gf[-10:] = gf[:10]
    q_views, g_views = (q_cams < 3).astype(np.int64), (g_cams < 3).astype(np.int64)
    return qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views


RANK_KEYS = {key: int(key[len('rank'):]) for key in METRIC_KEYS if key.startswith('rank')}


def assert_ranks_follow_the_cmc(result, cmc, tol=1e-6):
    """Rank-k is the CMC curve at k, for every Rank-k reported."""
    assert set(RANK_KEYS) == {'rank1', 'rank5', 'rank10'}
    for key, k in RANK_KEYS.items():
        assert result[key] == pytest.approx(cmc[k - 1], abs=tol), key


def evaluator_distances(qf, gf, feat_norm):
    """float64 squared distances as the evaluator ranks (integer features: exact, unnormalised)."""
    if feat_norm:
        qf, gf = qf / np.linalg.norm(qf, axis=1, keepdims=True), gf / np.linalg.norm(gf, axis=1, keepdims=True)
    return squared_distances(qf.astype(np.float64), gf.astype(np.float64))


def assert_same(result, expected, tol=1e-6):
    assert result['num_valid_query'] == expected['num_valid_query']
    assert result['mAP'] == pytest.approx(expected['mAP'], abs=tol)
    assert result['mINP'] == pytest.approx(expected['mINP'], abs=tol)
    np.testing.assert_allclose(result['cmc'], expected['cmc'], atol=tol, rtol=0)
    assert_ranks_follow_the_cmc(result, expected['cmc'], tol)


# ---------------------------------------------------------------- published figures
@pytest.mark.parametrize('mode', MODES)
def test_matches_published_evaluator_on_protocol_vectors(mode):
    arrays = np.load(DATA / 'mssl_protocols.npz')
    expected = json.loads((DATA / 'expected.json').read_text())[mode]
    keep = mode_query_mask(mode, arrays['q_views'])
    result = evaluate(arrays['qf'][keep], arrays['gf'], arrays['q_pids'][keep], arrays['g_pids'],
                      arrays['q_camids'][keep], arrays['g_camids'], arrays['q_views'][keep],
                      arrays['g_views'], mode, chunk_size=37)
    assert result['num_query'] == expected['num_query']
    assert result['num_valid_query'] == expected['num_valid_query']
    assert result['mAP'] == pytest.approx(expected['mAP'], abs=1e-6)
    assert result['mINP'] == pytest.approx(expected['mINP'], abs=1e-6)
    np.testing.assert_allclose(result['cmc'][:10], expected['cmc_rank1_to_10'], atol=1e-6, rtol=0)
    assert_ranks_follow_the_cmc(result, expected['cmc_rank1_to_10'])
    assert result['num_gallery'] == len(arrays['g_pids'])


def test_mode_query_mask():
    views = np.array([0, 1, 1, 0])
    assert mode_query_mask('S2G', views).tolist() == [False, True, True, False]
    assert mode_query_mask('G2S', torch.tensor(views)).tolist() == [True, False, False, True]
    assert mode_query_mask('DDC', views).all()


# ---------------------------------------------------------------- plain reference, random data
@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('integer', [False, True], ids=['float', 'int-ties'])
def test_matches_plain_reference(mode, integer):
    rng = np.random.default_rng(7 + integer)
    qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views = random_protocol(
        rng, num_query=60, num_gallery=45, num_ids=12, dim=6, int_range=2 if integer else 0)
    keep = mode_query_mask(mode, q_views)
    args = (q_pids[keep], g_pids, q_cams[keep], g_cams, q_views[keep], g_views)
    if integer:  # feat_norm False keeps the integer distances exact in float32
        result = evaluate(qf[keep], gf, *args, mode, chunk_size=8, feat_norm=False)
        distmat = squared_distances(qf[keep].astype(np.float64), gf.astype(np.float64))
    else:
        result = evaluate(torch.from_numpy(qf[keep]), torch.from_numpy(gf), *args, mode,
                          chunk_size=8)
        qn = qf[keep] / np.linalg.norm(qf[keep], axis=1, keepdims=True)
        gn = gf / np.linalg.norm(gf, axis=1, keepdims=True)
        distmat = squared_distances(qn, gn)
    expected = reference_evaluate(distmat, *args, mode)
    assert 0 < expected['num_valid_query'] < keep.sum()  # some queries are skipped
    assert result['num_query'] == keep.sum()
    assert len(result['cmc']) == 50  # gallery shorter than max_rank: padded
    assert_same(result, expected)


def test_mixed_tie_and_untied_rows_and_max_rank():
    """Occasional exact ties (duplicate rows) amid distinct distances, torch label inputs."""
    rng = np.random.default_rng(3)
    qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views = random_protocol(
        rng, num_query=40, num_gallery=300, num_ids=20, dim=16, int_range=30)
    qf[:5] = gf[:5]  # some queries sit exactly on duplicated gallery rows
    result = evaluate(qf, gf, torch.from_numpy(q_pids), torch.from_numpy(g_pids), q_cams, g_cams,
                      q_views, g_views, 'DDC', max_rank=20, chunk_size=16, feat_norm=False)
    distmat = squared_distances(qf.astype(np.float64), gf.astype(np.float64))
    expected = reference_evaluate(distmat, q_pids, g_pids, q_cams, g_cams, q_views, g_views,
                                  'DDC', max_rank=20)
    assert len(result['cmc']) == 20
    assert result['rank10'] == pytest.approx(expected['cmc'][9], abs=1e-6)
    assert_same(result, expected)


# ---------------------------------------------------------------- several protocols at once
def mssl_protocols(q_views, order=np.arange):
    """The three MSSL protocols as (name, rows, rule), rows picked by the query view."""
    rows = {mode: np.flatnonzero(mode_query_mask(mode, q_views)) for mode in MODES}
    return [(mode, order(rows[mode]) if order is not np.arange else rows[mode], None)
            for mode in MODES]


@pytest.mark.parametrize('integer', [False, True], ids=['float', 'int-ties'])
def test_protocols_at_once_match_plain_reference_per_protocol(integer):
    rng = np.random.default_rng(21 + integer)
    qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views = random_protocol(
        rng, num_query=70, num_gallery=90, num_ids=10, dim=6, int_range=3 if integer else 0)
    labels = (q_pids, g_pids, q_cams, g_cams, q_views, g_views)
    results = evaluate_protocols(qf, gf, *labels, mssl_protocols(q_views), chunk_size=11,
                                 feat_norm=not integer, return_per_query=True)
    distmat = evaluator_distances(qf, gf, feat_norm=not integer)
    assert list(results) == list(MODES)
    for mode in MODES:
        keep = mode_query_mask(mode, q_views)
        expected = reference_evaluate(distmat[keep], q_pids[keep], g_pids, q_cams[keep], g_cams,
                                      q_views[keep], g_views, mode)
        assert_same(results[mode], expected)
        assert results[mode]['num_query'] == keep.sum()
        single = evaluate(qf[keep], gf, q_pids[keep], g_pids, q_cams[keep], g_cams, q_views[keep],
                          g_views, mode, chunk_size=5, feat_norm=not integer, return_per_query=True)
        np.testing.assert_array_equal(results[mode]['valid_query_index'], single['valid_query_index'])
        np.testing.assert_allclose(results[mode]['per_query_ap'], single['per_query_ap'], atol=1e-12)


def test_protocol_rows_in_any_order_and_removal_rules():
    rng = np.random.default_rng(4)
    qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views = random_protocol(
        rng, num_query=40, num_gallery=60, num_ids=8, dim=5)
    labels = (q_pids, g_pids, q_cams, g_cams, q_views, g_views)
    rows = rng.permutation(40)[:25]
    results = evaluate_protocols(qf, gf, *labels, [('shuffled', rows, 'same_camera'),
                                                    ('nothing removed', None, 'none')],
                                 chunk_size=6, return_per_query=True)
    shuffled = evaluate(qf[rows], gf, q_pids[rows], g_pids, q_cams[rows], g_cams, q_views[rows],
                        g_views, 'DDC', return_per_query=True)
    assert_same(results['shuffled'], shuffled, tol=1e-12)
    np.testing.assert_array_equal(results['shuffled']['valid_query_index'],
                                  shuffled['valid_query_index'])
    np.testing.assert_allclose(results['shuffled']['per_query_ap'], shuffled['per_query_ap'],
                               atol=1e-12)
    distmat = squared_distances(qf / np.linalg.norm(qf, axis=1, keepdims=True),
                                gf / np.linalg.norm(gf, axis=1, keepdims=True))
    no_camera = np.full(40, -1)  # a camera no gallery item has: the reference removes nothing
    expected = reference_evaluate(distmat, q_pids, g_pids, no_camera, g_cams, q_views, g_views, 'DDC')
    assert_same(results['nothing removed'], expected)
    assert results['nothing removed']['mAP'] != pytest.approx(evaluate(qf, gf, *labels, 'DDC')['mAP'])


# ---------------------------------------------------------------- breakdowns
def reference_pairs(distmat, q_pids, g_pids, q_cams, g_cams, q_views, g_views, mode, q_group, g_group):
    """{(query group, gallery group): plain reference on that restricted query set and gallery}."""
    cells = {}
    for a in np.unique(q_group):
        for b in np.unique(g_group):
            qs, gs = q_group == a, g_group == b
            with warnings.catch_warnings():  # a cell without a valid query: the mean of nothing
                warnings.simplefilter('ignore', RuntimeWarning)
                cells[a, b] = reference_evaluate(distmat[qs][:, gs], q_pids[qs], g_pids[gs], q_cams[qs], g_cams[gs],
                                                 q_views[qs], g_views[gs], mode)
    return cells


@pytest.mark.parametrize('integer', [False, True], ids=['float', 'int-ties'])
def test_breakdown_cells_equal_the_protocol_on_each_restricted_gallery(integer):
    rng = np.random.default_rng(31 + integer)
    qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views = random_protocol(
        rng, num_query=70, num_gallery=120, num_ids=10, dim=5, int_range=2 if integer else 0)
    labels = (q_pids, g_pids, q_cams, g_cams, q_views, g_views)
    results = evaluate_protocols(qf, gf, *labels, mssl_protocols(q_views), chunk_size=9,
                                 feat_norm=not integer, breakdown=True)
    distmat = evaluator_distances(qf, gf, feat_norm=not integer)
    checked = 0
    for mode in MODES:
        keep = mode_query_mask(mode, q_views)
        for name, (q_group, g_group) in {'cameras': (q_cams, g_cams), 'views': (q_views, g_views)}.items():
            table = results[mode]['breakdown'][name]
            expected = reference_pairs(distmat[keep], q_pids[keep], g_pids, q_cams[keep], g_cams, q_views[keep],
                                       g_views, mode, q_group[keep], g_group)
            np.testing.assert_array_equal(table.query_groups, np.unique(q_group[keep]))
            np.testing.assert_array_equal(table.gallery_groups, np.unique(g_group))
            np.testing.assert_array_equal(table.queries, [(q_group[keep] == a).sum() for a in table.query_groups])
            for i, a in enumerate(table.query_groups):
                for j, b in enumerate(table.gallery_groups):
                    cell = expected[a, b]
                    assert table.valid[i, j] == cell['num_valid_query'], (mode, name, a, b)
                    if cell['num_valid_query']:
                        assert table.mAP[i, j] == pytest.approx(cell['mAP'], abs=1e-9), (mode, name, a, b)
                        assert table.rank1[i, j] == pytest.approx(cell['cmc'][0], abs=1e-9), (mode, name, a, b)
                        checked += 1
                    else:
                        assert np.isnan(table.mAP[i, j]) and np.isnan(table.rank1[i, j])
    assert checked > 40


def test_breakdown_from_a_distance_matrix_and_per_query_first_hits():
    rng = np.random.default_rng(5)
    qf, gf, *labels = random_protocol(rng, num_query=30, num_gallery=50, num_ids=6, dim=4)
    distmat = torch.from_numpy(squared_distances(qf, gf) + rng.random((30, 50)))
    from_features = evaluate(qf, gf, *labels, 'DDC', breakdown=True, return_per_query=True, feat_norm=False)
    from_distmat = evaluate(qf, gf, *labels, 'DDC', distmat=distmat, breakdown=True)
    assert from_distmat['breakdown']['cameras'].mAP[0, 1] != pytest.approx(
        from_features['breakdown']['cameras'].mAP[0, 1], nan_ok=True)
    q_pids, g_pids, q_cams, g_cams, q_views, g_views = labels
    expected = reference_pairs(distmat.numpy(), *labels, 'DDC', q_views, g_views)
    table = from_distmat['breakdown']['views']
    for i, a in enumerate(table.query_groups):
        for j, b in enumerate(table.gallery_groups):
            assert table.mAP[i, j] == pytest.approx(expected[a, b]['mAP'], abs=1e-9)
    rank1 = np.mean(from_features['first_hit_rank'] == 0)
    assert rank1 == pytest.approx(from_features['rank1'])
    assert len(from_features['first_hit_rank']) == from_features['num_valid_query']


def test_query_groups_average_each_groups_counted_queries():
    from evaluation.breakdown import query_groups
    table = query_groups(labels=[9, 15, 9, 9, 15, 7], per_query_ap=[0.5, 1.0, 0.25, 0.2],
                         first_hit_rank=[0, 0, 3, 2], valid_query_index=[0, 1, 2, 4])
    np.testing.assert_array_equal(table.groups, [7, 9, 15])
    np.testing.assert_array_equal(table.queries, [1, 3, 2])
    np.testing.assert_array_equal(table.valid, [0, 2, 2])
    np.testing.assert_allclose(table.mAP, [np.nan, 0.375, 0.6])
    np.testing.assert_allclose(table.rank1, [np.nan, 0.5, 0.5])


def test_protocol_errors():
    rng = np.random.default_rng(0)
    qf, gf, *labels = random_protocol(rng, num_query=10, num_gallery=20, num_ids=5, dim=4)
    with pytest.raises(ValueError, match='repeat'):
        evaluate_protocols(qf, gf, *labels, [('DDC', [0, 1, 1], None)])
    with pytest.raises(ValueError, match='lie in'):
        evaluate_protocols(qf, gf, *labels, [('DDC', [0, 10], None)])
    with pytest.raises(ValueError, match='twice'):
        evaluate_protocols(qf, gf, *labels, [('DDC', None, None), ('DDC', [1], None)])
    with pytest.raises(UserError, match='unknown removal rule'):
        evaluate_protocols(qf, gf, *labels, [('mine', None, 'same_pid')])


@pytest.mark.parametrize('mode', MODES)
def test_distmat_path(mode):
    rng = np.random.default_rng(11)
    _, _, q_pids, g_pids, q_cams, g_cams, q_views, g_views = random_protocol(
        rng, num_query=50, num_gallery=70, num_ids=10, dim=4)
    distmat = rng.random((50, 70))
    distmat[:, 60:] = distmat[:, :10]  # exact ties in a precomputed matrix
    result = evaluate(None, None, q_pids, g_pids, q_cams, g_cams, q_views, g_views, mode,
                      chunk_size=9, distmat=torch.from_numpy(distmat))
    expected = reference_evaluate(distmat, q_pids, g_pids, q_cams, g_cams, q_views, g_views, mode)
    assert_same(result, expected)


def test_feat_norm_changes_result_and_false_uses_raw_distances():
    rng = np.random.default_rng(5)
    qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views = random_protocol(
        rng, num_query=30, num_gallery=60, num_ids=8, dim=5)
    scale = rng.uniform(0.1, 10.0, (60, 1))
    gf = gf * scale  # norms now matter
    args = (q_pids, g_pids, q_cams, g_cams, q_views, g_views, 'DDC')
    raw = evaluate(qf, gf, *args, feat_norm=False, chunk_size=7)
    normed = evaluate(qf, gf, *args, feat_norm=True, chunk_size=7)
    assert_same(raw, reference_evaluate(squared_distances(qf, gf), *args))
    assert raw['mAP'] != pytest.approx(normed['mAP'], abs=1e-6)


def test_errors():
    rng = np.random.default_rng(0)
    qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views = random_protocol(
        rng, num_query=10, num_gallery=20, num_ids=5, dim=4)
    with pytest.raises(UserError, match='XYZ'):
        evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views, 'XYZ')
    with pytest.raises(UserError, match='XYZ'):
        mode_query_mask('XYZ', q_views)
    with pytest.raises(UserError, match='no query of mode G2S'):
        evaluate(qf, gf, q_pids + 100, g_pids, q_cams, g_cams, q_views, g_views, 'G2S')
    with pytest.raises(UserError, match='chunk_size'):
        evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views, 'DDC', chunk_size=0)
    qf[0, 0] = np.nan
    with pytest.raises(UserError, match='NaN'):
        evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views, 'DDC')


# ---------------------------------------------------------------- re-ranking
@pytest.mark.parametrize('k1,k2,chunk_size,pair_budget', [(20, 6, 32, 1 << 24), (7, 1, 13, 97),
                                                          (9, 3, 1000, 5)])
def test_re_ranking_matches_reference(k1, k2, chunk_size, pair_budget):
    rng = np.random.default_rng(k1)
    qf = rng.standard_normal((30, 16)).astype(np.float32)
    gf = rng.standard_normal((80, 16)).astype(np.float32)
    gf[40:70] = gf[10:40] + 0.05 * rng.standard_normal((30, 16)).astype(np.float32)  # clusters
    ours = re_ranking(torch.from_numpy(qf), torch.from_numpy(gf), k1=k1, k2=k2,
                      lambda_value=0.3, chunk_size=chunk_size, pair_budget=pair_budget)
    expected = reference_re_ranking(qf, gf, k1, k2, 0.3)
    assert ours.shape == (30, 80) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5, rtol=0)
    assert np.abs(expected - 0.3 * squared_distances(qf, gf)).max() > 0.1  # Jaccard part counts


def test_re_ranking_feeds_evaluate_and_rejects_bad_k():
    rng = np.random.default_rng(1)
    qf, gf = rng.standard_normal((12, 8)), rng.standard_normal((40, 8))
    q_pids, g_pids = np.arange(12) % 6, np.arange(40) % 6
    cams_q, cams_g = np.zeros(12, dtype=int), np.ones(40, dtype=int)
    dist = re_ranking(torch.from_numpy(qf), torch.from_numpy(gf), k1=5, k2=2)
    assert dist.dtype == torch.float64
    result = evaluate(None, None, q_pids, g_pids, cams_q, cams_g, cams_q, cams_g, 'DDC',
                      distmat=dist)
    expected = reference_evaluate(dist.numpy(), q_pids, g_pids, cams_q, cams_g, cams_q, cams_g,
                                  'DDC')
    assert_same(result, expected)
    with pytest.raises(UserError, match='k1'):
        re_ranking(torch.from_numpy(qf), torch.from_numpy(gf), k1=0)
    with pytest.raises(UserError, match='max\\(k1 \\+ 1, k2\\)'):
        re_ranking(torch.from_numpy(qf), torch.from_numpy(gf), k1=60)
