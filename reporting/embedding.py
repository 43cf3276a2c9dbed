"""embedding_<MODE>.png: a 2-D t-SNE map (scikit-learn) of a protocol's test features.

The identities are the first TEST.EMBEDDING_MAP_IDS (by id) of those the protocol's queries and gallery
share; every query and gallery image of them is placed. Colour: identity; marker: view (circle: ground,
triangle: sky); queries are larger, outlined in black and labelled with their identity. Whether the two
views form separate clusters, and whether an identity's sky and ground images meet, shows at a glance.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from datasets import view_name
from reporting.figures import new_figure, save_figure
from utils.vocabulary import GROUND, SKY

MARKERS = {GROUND: 'o', SKY: '^'}
OTHER_VIEW_MARKER = 's'


def chosen_identities(query: dict, gallery: dict, count: int) -> np.ndarray:
    """Up to `count` identities (lowest ids first) that have both query and gallery images."""
    shared = np.intersect1d(query['pids'], gallery['pids'])
    return shared[:count]


def tsne_points(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """[N, 2] t-SNE coordinates; the perplexity follows the number of points (scikit-learn needs it < N)."""
    from sklearn.manifold import TSNE
    perplexity = float(min(30.0, max(2.0, (len(features) - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init='pca', learning_rate='auto',
                random_state=seed).fit_transform(features)


def plot_embedding(qf, gf, query: dict, gallery: dict, path: str, mode: str, max_ids: int,
                   feat_norm: bool = True, dataset_name: str = '') -> dict:
    """Draw the map of protocol `mode`; returns {'identities', 'points', 'query_points'} (what was drawn;
    nothing is written when fewer than 3 images are left)."""
    identities = chosen_identities(query, gallery, max_ids)
    q_rows = np.flatnonzero(np.isin(query['pids'], identities))
    g_rows = np.flatnonzero(np.isin(gallery['pids'], identities))
    features = torch.cat([torch.as_tensor(qf)[torch.as_tensor(q_rows)].float(),
                          torch.as_tensor(gf)[torch.as_tensor(g_rows)].float()]).cpu()
    if feat_norm:
        features = F.normalize(features, dim=1)
    if len(features) < 3:  # too few for a map; nothing is drawn
        return {'identities': identities, 'points': 0, 'query_points': 0}
    points = tsne_points(features.numpy().astype(np.float64))
    pids = np.concatenate([query['pids'][q_rows], gallery['pids'][g_rows]])
    views = np.concatenate([query['views'][q_rows], gallery['views'][g_rows]])
    is_query = np.arange(len(points)) < len(q_rows)

    from matplotlib import colormaps
    palette = colormaps['tab20' if len(identities) <= 20 else 'turbo']
    colour_of = {pid: palette(k % 20 if len(identities) <= 20 else k / max(len(identities) - 1, 1))
                 for k, pid in enumerate(identities)}
    figure = new_figure(7.6, 6.4)
    axes = figure.add_subplot()
    for view in np.unique(views):
        marker = MARKERS.get(int(view), OTHER_VIEW_MARKER)
        for queries, size, edge in ((False, 26, 'none'), (True, 90, 'black')):
            chosen = (views == view) & (is_query == queries)
            if chosen.any():
                axes.scatter(points[chosen, 0], points[chosen, 1], s=size, marker=marker,
                             c=[colour_of[pid] for pid in pids[chosen]], edgecolors=edge,
                             linewidths=1.4 if queries else 0, alpha=1.0 if queries else 0.75, zorder=3 if queries else 2)
    for (x, y), pid in zip(points[is_query], pids[is_query]):
        axes.annotate(str(pid), (x, y), textcoords='offset points', xytext=(5, 4), fontsize=6, zorder=4)
    handles = [axes.scatter([], [], marker=MARKERS.get(int(view), OTHER_VIEW_MARKER), c='grey', s=30,
                            label=view_name(dataset_name, view) or 'images') for view in np.unique(views)]
    handles.append(axes.scatter([], [], marker='o', c='white', edgecolors='black', linewidths=1.4, s=90,
                                label='query (its identity beside it)'))
    axes.legend(handles=handles, loc='best', fontsize=8, framealpha=0.8)
    axes.set_title(f"{mode}: t-SNE of the test features of {len(identities)} identities ({len(points)} images, "
                   f"{int(is_query.sum())} queries); colour: identity", fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    save_figure(figure, path)
    return {'identities': identities, 'points': len(points), 'query_points': int(is_query.sum())}
