"""What a person looks at after a run: ranked lists, CMC curves, training curves and results.md.

- Ranked lists (`TEST.VISUALIZE`): per mode, ranked_<MODE>.png shows a few easy queries and the
  hardest ones (lowest AP), each with its top-k gallery images after the mode's removal rule; the
  border is green for the query's identity and red for another; every picture is labelled with
  its camera, view (sky/ground) and identity.
- cmc.png: the CMC curve (ranks 1-50) of every evaluated mode.
- training_curves.png: stage-1 loss per text view, stage-2 loss, accuracy, and mAP / Rank-1 per mode
  over the epochs, read from metrics.jsonl.
- results.md: one table of every evaluated mode.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend change);
ranked lists are composed with PIL. Every file is written atomically.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from datasets import camera_name, view_name
from evaluation.rank import evaluate
from evaluation.ranked_lists import RankedQuery, rank_queries, select_queries
from reporting.attention import overlay
from reporting.breakdown import write_breakdowns
from reporting.embedding import plot_embedding
from reporting.figures import fit_image, font, new_figure, save_figure, save_image
from reporting.metrics_log import metrics_path, read_records, training_history
from utils import atomic_io, distributed
from utils.vocabulary import CMC_PLOT, RESULTS_TABLE, TRAINING_CURVES, embedding_file, ranked_file

MATCH_COLOR = (0, 170, 0)
MISS_COLOR = (220, 0, 0)
QUERY_COLOR = (40, 90, 220)
BACKGROUND = (255, 255, 255)
PAD_COLOR = (210, 210, 210)
TEXT_COLOR = (20, 20, 20)

# ---------------------------------------------------------------------------------------------
# Ranked-list picture
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Geometry of a ranked-list picture; column 0 is the query, columns 1..k its gallery."""
    image_size: tuple[int, int] = (128, 64)  # (height, width) of the picture inside a border
    border: int = 4
    text_height: int = 28     # two text lines under each picture
    header_height: int = 16   # one text line above each row
    title_height: int = 22
    gap: int = 16             # between the query and its gallery
    spacing: int = 4          # between gallery cells
    row_gap: int = 10
    margin: int = 8
    attention: bool = False   # the query's attention map under its labels

    @property
    def cell_size(self) -> tuple[int, int]:
        """(width, height) of a bordered picture."""
        return self.image_size[1] + 2 * self.border, self.image_size[0] + 2 * self.border

    @property
    def row_height(self) -> int:
        attention = self.cell_size[1] + self.text_height // 2 if self.attention else 0
        return self.header_height + self.cell_size[1] + self.text_height + attention

    def canvas_size(self, rows: int, topk: int) -> tuple[int, int]:
        cell_w = self.cell_size[0]
        width = 2 * self.margin + cell_w + self.gap + topk * cell_w + max(topk - 1, 0) * self.spacing
        height = 2 * self.margin + self.title_height + rows * self.row_height + max(rows - 1, 0) * self.row_gap
        return width, height

    def cell_origin(self, row: int, col: int) -> tuple[int, int]:
        """Top-left corner of the bordered picture in `row`, `col`."""
        cell_w = self.cell_size[0]
        x = self.margin + (0 if col == 0 else cell_w + self.gap + (col - 1) * (cell_w + self.spacing))
        y = self.margin + self.title_height + row * (self.row_height + self.row_gap) + self.header_height
        return x, y


def _fitted(path: str, size: tuple[int, int]) -> Image.Image:
    """The image scaled to fit (height, width), centred on a neutral pad; a cross if unreadable."""
    height, width = size
    canvas = Image.new('RGB', (width, height), PAD_COLOR)
    try:
        with Image.open(path) as img:
            img = img.convert('RGB')
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        draw = ImageDraw.Draw(canvas)
        draw.line((0, 0, width, height), fill=MISS_COLOR, width=2)
        draw.line((0, height, width, 0), fill=MISS_COLOR, width=2)
        return canvas
    return fit_image(img, size, PAD_COLOR)


def _draw_cell(canvas: Image.Image, draw: ImageDraw.ImageDraw, layout: Layout, row: int, col: int,
               path: str, color: tuple, lines: list[str], font) -> None:
    x, y = layout.cell_origin(row, col)
    cell_w, cell_h = layout.cell_size
    draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=color)
    canvas.paste(_fitted(path, layout.image_size), (x + layout.border, y + layout.border))
    for k, line in enumerate(lines):
        draw.text((x, y + cell_h + 2 + 13 * k), line, fill=TEXT_COLOR, font=font)


def _draw_attention(canvas: Image.Image, layout: Layout, row: int, path: str, heat, text_font) -> None:
    """The query's attention map over it, under the query's labels, with a grey border and a caption."""
    x, y = layout.cell_origin(row, 0)
    y += layout.cell_size[1] + layout.text_height
    try:
        with Image.open(path) as image:
            picture = overlay(image.convert('RGB'), heat)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return  # the query cell above already shows it as unreadable
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x, y, x + layout.cell_size[0] - 1, y + layout.cell_size[1] - 1), fill=PAD_COLOR)
    canvas.paste(fit_image(picture, layout.image_size, PAD_COLOR), (x + layout.border, y + layout.border))
    draw.text((x, y + layout.cell_size[1] + 1), 'attention', fill=TEXT_COLOR, font=text_font)


def draw_ranked_lists(ranked: list[RankedQuery], query: dict, gallery: dict, path: str, title: str = '',
                      dataset_name: str = '', topk: int = 10, layout: Layout = Layout(),
                      identities_known: bool = True, query_attention: list | None = None) -> tuple[int, int]:
    """One row per ranked query: the query (blue border) and its top-k gallery images (green:
    same identity, red: another), labelled with rank, camera, view and identity. Returns (w, h).

    identities_known=False (a search among unlabelled images): grey borders, no identities, distances
    instead; a camera or view id of -1 is drawn as '?'. An AP of NaN is left out of the row header.
    query_attention: one map per row (model/attention_maps.py), drawn over the query under its labels."""
    if query_attention is not None:
        layout = replace(layout, attention=True)
    width, height = layout.canvas_size(len(ranked), topk)
    canvas = Image.new('RGB', (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    text_font = font()
    draw.text((layout.margin, layout.margin + 4), title, fill=TEXT_COLOR, font=font(13))

    def labels(columns: dict, index: int, prefix: str, second: str) -> list[str]:
        camid, viewid = int(columns['camids'][index]), int(columns['views'][index])
        if camid < 0 and viewid < 0:
            return [prefix.strip(), second]
        cam = camera_name(dataset_name, camid) if camid >= 0 else '?'
        view = view_name(dataset_name, viewid) if viewid >= 0 else '?'
        return [f"{prefix}{cam} {view}", second]

    def identity(columns: dict, index: int) -> str:
        return f"id {columns['pids'][index]}" if identities_known else ''

    for row, entry in enumerate(ranked):
        x, y = layout.cell_origin(row, 0)
        name = os.path.basename(str(query['paths'][entry.query]))
        header = [entry.tag] + ([] if np.isnan(entry.ap) else [f"AP {entry.ap:.1%}"])
        if identities_known:
            first_hit = np.flatnonzero(entry.match)
            header.append(f"first match at rank {first_hit[0] + 1}" if first_hit.size
                          else f"no match in the top {topk}")
        draw.text((x, y - layout.header_height + 2), ' | '.join(header + [name]), fill=TEXT_COLOR, font=text_font)
        _draw_cell(canvas, draw, layout, row, 0, str(query['paths'][entry.query]), QUERY_COLOR,
                   labels(query, entry.query, 'query ', identity(query, entry.query)), text_font)
        if query_attention is not None:
            _draw_attention(canvas, layout, row, str(query['paths'][entry.query]), query_attention[row], text_font)
        for rank, (g_index, match, dist) in enumerate(zip(entry.gallery, entry.match, entry.dist), start=1):
            color = (MATCH_COLOR if match else MISS_COLOR) if identities_known else PAD_COLOR
            second = identity(gallery, g_index) if identities_known else f"d {float(dist):.3f}"
            _draw_cell(canvas, draw, layout, row, rank, str(gallery['paths'][g_index]), color,
                       labels(gallery, g_index, f'{rank}. ', second), text_font)
    save_image(canvas, path)
    return width, height


@dataclass(frozen=True)
class ReportSettings:
    """What the result files of a test need (processor/settings.py reads it from the config)."""
    output_dir: str
    dataset: str  # DATASETS.NAMES: camera and view names in the pictures
    dataset_root: str = ''
    model_name: str = ''
    feat_norm: bool = True
    visualize: bool = False
    visualize_queries: int = 8
    visualize_topk: int = 10
    embedding_map: bool = False
    embedding_map_ids: int = 20


def ranked_list_for_mode(settings: ReportSettings, mode: str, result: dict, path: str,
                         attention=None) -> tuple[int, int]:
    """ranked_<MODE>.png from one mode's inference outcome (processor/inference.evaluate_model).
    attention: with TEST.ATTENTION_MAPS, a function (query columns, query indices) -> their maps."""
    query, gallery = result['query'], result['gallery']
    distmat = result.get('distmat')
    if 'per_query_ap' in result:
        per_query_ap, valid_index = result['per_query_ap'], result['valid_query_index']
    else:
        scored = evaluate(result['qf'], result['gf'], query['pids'], gallery['pids'], query['camids'],
                          gallery['camids'], query['views'], gallery['views'], mode,
                          feat_norm=settings.feat_norm, distmat=distmat, return_per_query=True,
                          removal=result['removal'])
        per_query_ap, valid_index = scored['per_query_ap'], scored['valid_query_index']
    picks = select_queries(per_query_ap, valid_index, settings.visualize_queries)
    topk = settings.visualize_topk
    ranked = rank_queries(result['removal'], picks, query, gallery, qf=result['qf'], gf=result['gf'], distmat=distmat,
                          topk=topk, feat_norm=settings.feat_norm)
    num_easy = sum(entry.tag == 'easy' for entry in ranked)
    title = (f"{mode}: top-{topk} gallery of {num_easy} easy and {len(ranked) - num_easy} hardest queries "
             f"(green: same identity, red: another)")
    heats = list(attention(query, [entry.query for entry in ranked])) if attention is not None and ranked else None
    return draw_ranked_lists(ranked, query, gallery, path, title, settings.dataset, topk, query_attention=heats)


# ---------------------------------------------------------------------------------------------
# Curves
# ---------------------------------------------------------------------------------------------
def plot_cmc(cmc_by_mode: dict, path: str, max_rank: int = 50) -> None:
    """cmc_by_mode: {mode: matching rate per rank, from rank 1}."""
    figure = new_figure(6.4, 4.4)
    axes = figure.add_subplot()
    for mode, cmc in cmc_by_mode.items():
        cmc = np.asarray(cmc, dtype=np.float64)[:max_rank]
        axes.plot(np.arange(1, len(cmc) + 1), 100 * cmc, marker='.', label=f'{mode} (Rank-1 {cmc[0]:.1%})')
    axes.set(xlabel='rank', ylabel='matching rate (%)', title='CMC', xlim=(1, max_rank), ylim=(0, 100.5))
    axes.grid(alpha=0.3)
    axes.legend(loc='lower right')
    figure.tight_layout()
    save_figure(figure, path)


def plot_training_curves(jsonl_path: str, path: str) -> bool:
    """training_curves.png from a metrics.jsonl; False (nothing written) when it has no epochs."""
    history = training_history(read_records(jsonl_path))
    panels = []
    if history['stage1']:
        panels.append(('stage 1 loss', {view: (  # one line per text view
            [r['epoch'] for r in rs], [r['loss'] for r in rs]) for view, rs in history['stage1'].items()}, False))
    if history['stage2']:
        epochs = [r['epoch'] for r in history['stage2']]
        panels.append(('stage 2 loss', {'loss': (epochs, [r['loss'] for r in history['stage2']])}, False))
        panels.append(('stage 2 ID accuracy (%)',
                       {'accuracy': (epochs, [100 * r['acc'] for r in history['stage2']])}, False))
    if history['eval']:
        series = {}
        for mode, rs in history['eval'].items():
            series[f'{mode} mAP'] = ([r['epoch'] for r in rs], [100 * r['mAP'] for r in rs])
            series[f'{mode} Rank-1'] = ([r['epoch'] for r in rs], [100 * r['rank1'] for r in rs])
        panels.append(('evaluation (%)', series, True))
    if not panels:
        return False
    from matplotlib.ticker import MaxNLocator
    figure = new_figure(4.2 * len(panels), 3.6)
    for k, (title, series, markers) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), k + 1)
        colors = {}
        for label, (x, y) in series.items():
            y = [np.nan if v is None else v for v in y]
            family = label.split()[0]
            style = '--' if label.endswith('Rank-1') else '-'
            line, = axes.plot(x, y, style, marker='o' if markers else None, markersize=4, label=label,
                              color=colors.get(family))
            colors.setdefault(family, line.get_color())
        axes.set(title=title, xlabel='epoch')
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if len(series) > 1:
            axes.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
    return True


def plot_seed_summary(runs: list[dict], summary: dict, path: str, metrics=('mAP', 'rank1')) -> None:
    """summary.png of an experiment: per metric, each seed's value per protocol (one colour a seed) and
    the mean ± sample standard deviation beside them."""
    keys = list(summary)
    figure = new_figure(max(4.0, 1.1 * len(keys) + 1.5) * len(metrics), 3.8)
    for k, metric in enumerate(metrics):
        axes = figure.add_subplot(1, len(metrics), k + 1)
        offsets = np.linspace(-0.15, 0.15, len(runs)) if len(runs) > 1 else [0.0]
        for offset, run in zip(offsets, runs):
            x = [i + offset for i, key in enumerate(keys) if run['results'].get(key, {}).get(metric) is not None]
            y = [100 * run['results'][key][metric] for key in keys
                 if run['results'].get(key, {}).get(metric) is not None]
            axes.plot(x, y, 'o', markersize=5, label=f"seed {run['seed']}")
        for i, key in enumerate(keys):
            stats = summary[key].get(metric)
            if stats is not None:
                axes.errorbar(i + 0.3, 100 * stats['mean'], yerr=100 * (stats['std'] or 0.0), fmt='s', color='black',
                              markersize=5, capsize=4, label='mean ± std' if i == 0 else None)
        axes.set_xticks(range(len(keys)), keys, rotation=30 if len(keys) > 4 else 0)
        name = {'rank1': 'Rank-1', 'rank5': 'Rank-5', 'rank10': 'Rank-10'}.get(metric, metric)
        axes.set(title=f"{name} over {len(runs)} seed{'s' if len(runs) != 1 else ''} (%)", xlim=(-0.6, len(keys) - 0.2))
        axes.grid(alpha=0.3, axis='y')
        axes.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


# ---------------------------------------------------------------------------------------------
# Results table and the reports of a run
# ---------------------------------------------------------------------------------------------
def results_table(metrics_by_mode: dict) -> str:
    """A markdown table: mode, mAP, R1, R5, R10, mINP (%), queries (counted/all), gallery. A summary
    (processor/inference.summarize_protocols) shows mean ± sample standard deviation over its members."""
    lines = ['| mode | mAP (%) | R1 (%) | R5 (%) | R10 (%) | mINP (%) | queries | gallery |',
             '|:--|--:|--:|--:|--:|--:|--:|--:|']
    for mode, m in metrics_by_mode.items():
        queries = (str(m['num_query']) if m['num_valid_query'] == m['num_query']
                   else f"{m['num_valid_query']}/{m['num_query']}")
        std = m.get('std', {})

        def cell(key):
            return f"{100 * m[key]:.1f}" + (f" ± {100 * std[key]:.1f}" if std.get(key) is not None else '')
        label = f"{mode} (mean ± std of {len(m['members'])})" if 'members' in m else mode
        lines.append(f"| {label} | {cell('mAP')} | {cell('rank1')} | {cell('rank5')} | "
                     f"{cell('rank10')} | {cell('mINP')} | {queries} | {m['num_gallery']} |")
    return '\n'.join(lines)


def write_reports(settings: ReportSettings, outcome: dict, logger, details: dict | None = None, summaries: dict | None = None,
                  attention=None) -> list[str]:
    """results.md (also logged), cmc.png and, with TEST.VISUALIZE, ranked_<MODE>.png in OUTPUT_DIR; the
    breakdowns' files with TEST.BREAKDOWN and embedding_<MODE>.png with TEST.EMBEDDING_MAP.

    outcome: processor/inference.evaluate_model's {mode: {'metrics', 'query', 'gallery', 'qf', 'gf'}};
    details: lines for the head of results.md (e.g. {'weights': path}); summaries: rows after the
    modes (processor/inference.summarize_protocols), whose mean CMC replaces their members' in cmc.png;
    attention: see ranked_list_for_mode.
    """
    if not distributed.is_main():
        return []
    output_dir = settings.output_dir
    summaries = summaries or {}
    metrics = {mode: result['metrics'] for mode, result in outcome.items()}
    table = results_table({**metrics, **summaries})
    summarized = {member for summary in summaries.values() for member in summary['members']}
    curves = {mode: m['cmc'] for mode, m in {**metrics, **summaries}.items() if mode not in summarized}
    logger.info('results:\n' + table)
    details = {'dataset': f"{settings.dataset} ({settings.dataset_root})", 'model': settings.model_name,
               **(details or {})}
    head = '\n'.join(f'- {key}: {value}' for key, value in details.items())
    written = [os.path.join(output_dir, RESULTS_TABLE), os.path.join(output_dir, CMC_PLOT)]
    atomic_io.write_text(written[0], f"# Results\n\n{head}\n\n{table}\n\n"
                                     "Percentages; queries without a positive after removal are not counted.\n")
    plot_cmc(curves, written[1])
    if settings.visualize:
        for mode, result in outcome.items():
            path = os.path.join(output_dir, ranked_file(mode))
            ranked_list_for_mode(settings, mode, result, path, attention)
            written.append(path)
    if settings.embedding_map:
        for mode, result in outcome.items():
            path = os.path.join(output_dir, embedding_file(mode))
            drawn = plot_embedding(result['qf'], result['gf'], result['query'], result['gallery'], path, mode,
                                   settings.embedding_map_ids, settings.feat_norm, settings.dataset)
            if drawn['points']:
                written.append(path)
    for mode, result in outcome.items():
        if 'breakdown' in result:
            written += write_breakdowns(output_dir, mode, result['breakdown'], result['query'], result['gallery'],
                                        settings.dataset)
    for path in written:
        logger.info(f"wrote {path}")
    return written


def write_training_curves(output_dir: str, logger) -> str | None:
    """training_curves.png from OUTPUT_DIR/metrics.jsonl, at the end of training."""
    source, path = metrics_path(output_dir), os.path.join(output_dir, TRAINING_CURVES)
    if not distributed.is_main() or not os.path.isfile(source) or not plot_training_curves(source, path):
        return None
    logger.info(f"wrote {path}")
    return path
