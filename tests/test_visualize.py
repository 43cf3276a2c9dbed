"""Ranked lists, curves, results.md, metrics.jsonl and progress bars."""
import io
import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

import test_clipreid
import train_clipreid
from config import load_config
from processor.settings import report_settings
from tests.helpers import tiny_opts
from evaluation import ranked_lists
from reporting import metrics_log, visualize
from utils import progress
from utils.vocabulary import MSSL_REMOVAL
from utils.errors import UserError
from evaluation.rank import evaluate
from reporting.visualize import BACKGROUND, MATCH_COLOR, MISS_COLOR, QUERY_COLOR, Layout

LOGGER = logging.getLogger('test.visualize')


def _solid_images(folder, colors) -> np.ndarray:
    paths = []
    for k, color in enumerate(colors):
        path = folder / f'img_{k:03d}.png'
        Image.new('RGB', (20, 40), tuple(color)).save(path)
        paths.append(str(path))
    return np.array(paths)


def _columns(paths, pids, camids, views) -> dict:
    return dict(paths=np.asarray(paths), pids=np.array(pids, dtype=np.int64),
                camids=np.array(camids, dtype=np.int64), views=np.array(views, dtype=np.int64))


def _unit(angles) -> torch.Tensor:
    angles = torch.tensor(angles, dtype=torch.float32)
    return torch.stack((torch.cos(angles), torch.sin(angles)), dim=1)


def _expected_size(layout: Layout, rows: int, topk: int) -> tuple:
    cell_w = layout.image_size[1] + 2 * layout.border
    cell_h = layout.image_size[0] + 2 * layout.border
    width = 2 * layout.margin + (topk + 1) * cell_w + layout.gap + (topk - 1) * layout.spacing
    height = (2 * layout.margin + layout.title_height
              + rows * (layout.header_height + cell_h + layout.text_height) + (rows - 1) * layout.row_gap)
    return width, height


@pytest.fixture
def scene(tmp_path):
    """One sky query (pid 1, camera 3) and a gallery ranked by index (growing angle)."""
    colors = [(30 * k, 200 - 30 * k, 90) for k in range(6)]
    gallery = _columns(_solid_images(tmp_path, colors),
                       pids=[1, 2, 1, 3, 1, 2], camids=[4, 0, 0, 3, 1, 1], views=[1, 0, 0, 1, 0, 0])
    query_path = tmp_path / 'query.png'
    Image.new('RGB', (20, 40), (250, 250, 0)).save(query_path)
    query = _columns([str(query_path)], pids=[1], camids=[3], views=[1])
    qf, gf = _unit([0.0]), _unit([0.05 * (k + 1) for k in range(6)])
    return query, gallery, qf, gf, colors


@pytest.mark.parametrize('mode, expected, matches', [
    ('S2G', [1, 2, 3, 4], [False, True, False, True]),  # gallery 0 (same pid, sky) removed
    ('DDC', [0, 1, 2, 3], [True, False, True, False]),  # no same-pid item in camera 3: nothing removed
])
def test_ranking_applies_the_protocol_removal_rule(scene, mode, expected, matches):
    query, gallery, qf, gf, _ = scene
    ranked, = ranked_lists.rank_queries(MSSL_REMOVAL[mode], [(0, 'hard', 0.5)], query, gallery, qf=qf, gf=gf, topk=4)
    assert ranked.gallery.tolist() == expected
    assert ranked.match.tolist() == matches
    assert np.all(np.diff(ranked.dist) > 0)


def test_ranked_list_borders_images_and_size(scene, tmp_path):
    query, gallery, qf, gf, colors = scene
    topk, layout = 6, Layout()
    ranked = ranked_lists.rank_queries(MSSL_REMOVAL['S2G'], [(0, 'hard', 0.5)], query, gallery, qf=qf, gf=gf, topk=topk)
    assert len(ranked[0].gallery) == 5  # only 5 gallery items survive the removal: the 6th cell stays empty
    path = tmp_path / 'ranked.png'
    size = visualize.draw_ranked_lists(ranked, query, gallery, str(path), 'S2G', 'mssl', topk, layout)
    picture = Image.open(path).convert('RGB')
    assert picture.size == size == _expected_size(layout, rows=1, topk=topk)

    cell_w, cell_h = layout.cell_size
    expected_border = [QUERY_COLOR, MISS_COLOR, MATCH_COLOR, MISS_COLOR, MATCH_COLOR, MISS_COLOR]
    expected_image = [(250, 250, 0)] + [colors[k] for k in (1, 2, 3, 4, 5)]
    for col, (border, image) in enumerate(zip(expected_border, expected_image)):
        x, y = layout.cell_origin(0, col)
        for point in ((x + 1, y + 1), (x + 1, y + cell_h // 2), (x + cell_w - 2, y + cell_h - 2)):
            assert picture.getpixel(point) == border
        assert picture.getpixel((x + cell_w // 2, y + cell_h // 2)) == image
    green, red = MATCH_COLOR, MISS_COLOR
    assert green[1] > 2 * green[0] and green[1] > 2 * green[2] and red[0] > 2 * red[1] and red[0] > 2 * red[2]
    x, y = layout.cell_origin(0, topk)
    assert picture.getpixel((x + 1, y + 1)) == BACKGROUND


@pytest.mark.parametrize('mode, use_distmat', [('S2G', False), ('G2S', False), ('DDC', False), ('DDC', True)])
def test_ranked_lists_agree_with_the_evaluators_per_query_ap(mode, use_distmat):
    gen = torch.Generator().manual_seed(7)
    num_query, num_gallery = 12, 40
    q_pids = torch.randint(0, 6, (num_query,), generator=gen).numpy()
    q_views = torch.randint(0, 2, (num_query,), generator=gen).numpy()
    g_pids = torch.randint(0, 6, (num_gallery,), generator=gen).numpy()
    g_views = torch.randint(0, 2, (num_gallery,), generator=gen).numpy()
    q_cams = q_views * 5 + torch.randint(0, 3, (num_query,), generator=gen).numpy()
    g_cams = g_views * 5 + torch.randint(0, 3, (num_gallery,), generator=gen).numpy()
    qf, gf = torch.randn(num_query, 8, generator=gen), torch.randn(num_gallery, 8, generator=gen)
    query = _columns(['q'] * num_query, q_pids, q_cams, q_views)
    gallery = _columns(['g'] * num_gallery, g_pids, g_cams, g_views)

    distmat = torch.rand(num_query, num_gallery, generator=gen) if use_distmat else None  # as from re-ranking
    scored = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, q_views, g_views, mode, distmat=distmat,
                      return_per_query=True)
    assert np.mean(scored['per_query_ap']) == pytest.approx(scored['mAP'], abs=1e-12)
    assert len(scored['valid_query_index']) == scored['num_valid_query'] > 0
    picks = [(int(i), 'hard', float(ap)) for i, ap in zip(scored['valid_query_index'], scored['per_query_ap'])]
    for entry in ranked_lists.rank_queries(MSSL_REMOVAL[mode], picks, query, gallery, qf=qf, gf=gf, distmat=distmat,
                                        topk=num_gallery):
        hits = np.flatnonzero(entry.match)
        ap = np.mean([(k + 1) / (rank + 1) for k, rank in enumerate(hits)])
        assert ap == pytest.approx(entry.ap, abs=1e-9)


def test_query_selection_takes_a_few_easy_and_the_hardest():
    ap = [0.9, 0.1, 1.0, 0.05, 0.5, 0.3, 1.0, 0.2]
    index = [10, 11, 12, 13, 14, 15, 16, 17]
    picks = ranked_lists.select_queries(ap, index, 6)
    assert picks == [(12, 'easy', 1.0), (16, 'easy', 1.0),
                     (13, 'hard', 0.05), (11, 'hard', 0.1), (17, 'hard', 0.2), (15, 'hard', 0.3)]
    assert [p[0] for p in ranked_lists.select_queries(ap[:2], index[:2], 8)] == [11, 10]  # fewer than asked: all


def _outcome(tmp_path, modes) -> dict:
    gen = torch.Generator().manual_seed(3)
    paths = _solid_images(tmp_path, [(10 * k, 100, 200) for k in range(18)])
    outcome = {}
    for mode in modes:
        query = _columns(paths[:6], [0, 1, 2, 0, 1, 2], [4, 4, 9, 0, 1, 2], [1, 1, 1, 0, 0, 0])
        gallery = _columns(paths[6:], [0, 1, 2, 3] * 3, [0, 1, 2, 4, 4, 9, 5, 6, 7, 10, 11, 12],
                           [0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1])
        qf, gf = torch.randn(6, 4, generator=gen), torch.randn(12, 4, generator=gen)
        metrics = evaluate(qf, gf, query['pids'], gallery['pids'], query['camids'], gallery['camids'],
                           query['views'], gallery['views'], mode)
        outcome[mode] = dict(metrics=metrics, query=query, gallery=gallery, qf=qf, gf=gf, removal=MSSL_REMOVAL[mode])
    return outcome


def test_reports_write_the_expected_pictures_and_table(tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    cfg = load_config('', ['OUTPUT_DIR', str(out), 'DATASETS.NAMES', 'mssl', 'TEST.VISUALIZE', 'True',
                           'TEST.VISUALIZE_QUERIES', '3', 'TEST.VISUALIZE_TOPK', '4'])
    outcome = _outcome(tmp_path, ['S2G', 'DDC'])
    written = visualize.write_reports(report_settings(cfg), outcome, LOGGER, {'weights': 'w.pth'})
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ['results.md', 'cmc.png', 'ranked_S2G.png', 'ranked_DDC.png'])
    assert len(written) == 4
    for mode in ('S2G', 'DDC'):
        assert Image.open(out / f'ranked_{mode}.png').size == _expected_size(Layout(), rows=3, topk=4)
    assert Image.open(out / 'cmc.png').size == (640, 440)

    rows = [line for line in (out / 'results.md').read_text().splitlines() if line.startswith('| S2G')
            or line.startswith('| DDC')]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip('|').split('|')]
        metrics = outcome[cells[0]]['metrics']
        assert float(cells[1]) == pytest.approx(100 * metrics['mAP'], abs=0.05)
        assert float(cells[2]) == pytest.approx(100 * metrics['rank1'], abs=0.05)
        assert cells[6] == str(metrics['num_query']) and cells[7] == '12'


def test_no_ranked_lists_unless_asked(tmp_path):
    cfg = load_config('', ['OUTPUT_DIR', str(tmp_path), 'DATASETS.NAMES', 'mssl'])
    visualize.write_reports(report_settings(cfg), _outcome(tmp_path, ['G2S']), LOGGER)
    assert not list(tmp_path.glob('ranked_*.png'))
    assert (tmp_path / 'results.md').is_file() and (tmp_path / 'cmc.png').is_file()


@pytest.mark.parametrize('key, value', [('TEST.VISUALIZE_TOPK', '0'), ('TEST.VISUALIZE_TOPK', '51'),
                                        ('TEST.VISUALIZE_QUERIES', '0'), ('TEST.VISUALIZE', '3')])
def test_bad_visualize_values_name_the_key(key, value):
    with pytest.raises(UserError, match=key):
        load_config('', [key, value])


def test_metrics_jsonl_lines_parse_and_resumed_epochs_replace_the_old_ones(tmp_path):
    for epoch in (1, 2, 3):
        metrics_log.append_record(str(tmp_path), 'stage2_epoch', epoch=epoch, loss=float(10 - epoch),
                                  acc=np.float32(0.5), lr=torch.tensor(1e-3))
    for epoch in (2, 3):  # resumed after epoch 1
        metrics_log.append_record(str(tmp_path), 'stage2_epoch', epoch=epoch, loss=-float(epoch), acc=0.9,
                                  lr=1e-3)
    metrics_log.append_record(str(tmp_path), 'stage2_iter', epoch=3, iter=1, loss=math.inf)
    lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 6 and all('time' in r for r in records)
    assert records[0]['acc'] == 0.5 and records[0]['lr'] == pytest.approx(1e-3)
    assert records[-1]['loss'] is None  # infinity is not JSON: written as null

    history = metrics_log.training_history(metrics_log.read_records(str(tmp_path / 'metrics.jsonl')))
    assert [(r['epoch'], r['loss']) for r in history['stage2']] == [(1, 9.0), (2, -2.0), (3, -3.0)]


def test_a_cut_off_last_line_is_ignored_and_a_bad_line_is_named(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"event": "stage2_epoch", "epoch": 1, "loss": 1.0}\n{"event": "stage2_ep')
    assert len(metrics_log.read_records(str(path))) == 1
    path.write_text('{"event": "eval"}\nnot json\n{"event": "eval"}\n')
    with pytest.raises(UserError, match='line 2'):
        metrics_log.read_records(str(path))


def test_metrics_are_not_written_by_other_ranks(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_log.distributed, 'is_main', lambda: False)
    assert metrics_log.append_record(str(tmp_path), 'eval', mAP=0.5) is None
    assert not (tmp_path / 'metrics.jsonl').exists()


class _FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_only_on_a_terminal_of_the_main_process(monkeypatch):
    stream = _FakeTerminal()
    monkeypatch.setattr('sys.stderr', io.StringIO())
    assert not progress.bars_enabled()
    assert list(progress.progress(range(3), desc='quiet')) == [0, 1, 2]
    monkeypatch.setattr('sys.stderr', stream)
    assert progress.bars_enabled()
    monkeypatch.setattr(progress.distributed, 'is_main', lambda: False)
    assert not progress.bars_enabled()
    assert list(progress.progress(range(3), desc='rank 1')) == [0, 1, 2]
    assert stream.getvalue() == ''


def test_a_bar_routes_log_lines_and_restores_the_handlers(monkeypatch):
    stream = _FakeTerminal()
    monkeypatch.setattr('sys.stderr', stream)
    logger = logging.getLogger('test.visualize.bar')
    logger.propagate = False
    console = logging.StreamHandler(stream=stream)
    logger.handlers = [console]
    bar = progress.progress(total=2, desc='stage 2', logger=logger)
    assert console not in logger.handlers
    bar.update(2)
    bar.close()
    assert logger.handlers == [console]
    assert 'stage 2' in stream.getvalue()


@pytest.mark.slow
def test_training_and_testing_write_metrics_curves_and_reports(tiny_mssl, tmp_path):
    train_out, test_out = tmp_path / 'train', tmp_path / 'test'
    train_clipreid.main(tiny_opts(tiny_mssl, str(train_out)))
    records = metrics_log.read_records(str(train_out / 'metrics.jsonl'))
    events = [r['event'] for r in records]
    assert events.count('stage1_epoch') == 2 * 3 and events.count('stage2_epoch') == 2
    assert sorted((r['mode'], r['epoch']) for r in records if r['event'] == 'eval') == [
        ('DDC', 2), ('G2S', 2), ('S2G', 2)]
    assert Image.open(train_out / 'training_curves.png').size == (4 * 420, 360)  # 4 panels
    assert (train_out / 'results.md').is_file() and not list(train_out.glob('ranked_*.png'))

    checkpoint = str(train_out / 'ViT-Tiny-16_2.pth')
    test_clipreid.main(tiny_opts(tiny_mssl, str(test_out), 'TEST.WEIGHT', checkpoint, 'TEST.VISUALIZE', 'True',
                                 'TEST.VISUALIZE_QUERIES', '3', 'TEST.VISUALIZE_TOPK', '5'))
    for mode in ('S2G', 'G2S', 'DDC'):
        result = json.loads((test_out / f'results_{mode}.json').read_text())
        rows = min(3, result['num_valid_query'])
        assert Image.open(test_out / f'ranked_{mode}.png').size == _expected_size(Layout(), rows, topk=5)
        assert f"| {mode} | {100 * result['mAP']:.1f} | {100 * result['rank1']:.1f} |" in (
            test_out / 'results.md').read_text()
    evals = metrics_log.read_records(str(test_out / 'metrics.jsonl'))
    assert [r['weight'] for r in evals] == [checkpoint] * 3


# ---------------------------------------------------------------------------------------------
# Breakdown files
# ---------------------------------------------------------------------------------------------
def test_camera_heatmap_groups_the_15_mssl_cameras_by_view(tmp_path):
    from datasets.mssl import CAMERA_VIEW
    from evaluation.breakdown import PairTable
    from reporting.breakdown import plot_camera_heatmap
    rng = np.random.default_rng(0)
    cameras = np.arange(15)
    valid = rng.integers(0, 6, (15, 15))
    table = PairTable(query_groups=cameras, gallery_groups=cameras, queries=np.full(15, 6), valid=valid,
                      ap_sum=valid * rng.random((15, 15)), hits=np.minimum(valid, 1))
    path = tmp_path / 'heatmap.png'
    rows, columns = plot_camera_heatmap(table, {number - 1: view for number, view in CAMERA_VIEW.items()},
                                        str(path), 'DDC', 'mssl')
    sky, ground = ['c04', 'c05', 'c09', 'c10', 'c14', 'c15'], ['c01', 'c02', 'c03', 'c06', 'c07', 'c08', 'c11',
                                                               'c12', 'c13']
    assert rows == columns == sky + ground
    with Image.open(path) as image:
        assert image.width > 600 and image.height > 500


def test_breakdown_csv_files(tmp_path):
    from evaluation.breakdown import GroupTable, PairTable
    from reporting.breakdown import write_breakdowns
    pairs = PairTable(query_groups=np.array([0, 1]), gallery_groups=np.array([0, 1]), queries=np.array([3, 2]),
                      valid=np.array([[0, 3], [2, 1]]), ap_sum=np.array([[0.0, 1.5], [2.0, 0.25]]),
                      hits=np.array([[0, 1], [2, 0]]))
    hours = GroupTable(groups=np.array([-1, 9, 15]), queries=np.array([1, 2, 2]), valid=np.array([1, 2, 0]),
                       ap_sum=np.array([0.5, 1.0, 0.0]), hits=np.array([1, 1, 0]))
    columns = _columns(['a.jpg', 'b.jpg'], [1, 2], [0, 1], [1, 0])
    written = write_breakdowns(str(tmp_path), 'S2G', {'views': pairs, 'cameras': pairs, 'hours': hours},
                               columns, columns, 'mssl')
    assert [p.rsplit('/', 1)[1] for p in written] == [
        'breakdown_S2G_views.csv', 'breakdown_S2G_cameras.csv', 'breakdown_S2G_hours.csv', 'breakdown_S2G_cameras.png']
    assert (tmp_path / 'breakdown_S2G_views.csv').read_text().splitlines() == [
        'query_view,gallery_view,queries,valid_queries,mAP,rank1',
        'ground,ground,3,0,,', 'ground,sky,3,3,0.500000,0.333333',
        'sky,ground,2,2,1.000000,1.000000', 'sky,sky,2,1,0.250000,0.000000']
    assert (tmp_path / 'breakdown_S2G_cameras.csv').read_text().splitlines()[1] == 'c01,c01,3,0,,'
    assert (tmp_path / 'breakdown_S2G_hours.csv').read_text().splitlines() == [
        'hour,queries,valid_queries,mAP,rank1', 'unknown,1,1,0.500000,1.000000', '9,2,2,0.500000,0.500000',
        '15,2,0,,']


def test_embedding_map_of_clustered_features(tmp_path):
    from reporting.embedding import chosen_identities, plot_embedding
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((30, 16)) * 4
    q_pids, g_pids = np.repeat(np.arange(25), 2), np.repeat(np.arange(5, 30), 6)  # ids 5-24 in both
    qf, gf = centres[q_pids] + rng.standard_normal((50, 16)), centres[g_pids] + rng.standard_normal((150, 16))
    query = _columns(['q.jpg'] * 50, q_pids, np.zeros(50), q_pids % 2)
    gallery = _columns(['g.jpg'] * 150, g_pids, np.zeros(150), np.arange(150) % 2)
    np.testing.assert_array_equal(chosen_identities(query, gallery, 8), np.arange(5, 13))
    drawn = plot_embedding(torch.from_numpy(qf), torch.from_numpy(gf), query, gallery, str(tmp_path / 'map.png'),
                           'DDC', max_ids=8)
    assert drawn['points'] == 8 * 2 + 8 * 6 and drawn['query_points'] == 16
    with Image.open(tmp_path / 'map.png') as picture:
        assert picture.size == (760, 640)
    assert plot_embedding(qf, gf, query, _columns(['g.jpg'], [99], [0], [0]), str(tmp_path / 'none.png'), 'DDC',
                          max_ids=8)['points'] == 0
    assert not (tmp_path / 'none.png').exists()


def test_ranked_list_with_attention_maps_under_the_queries(tmp_path):
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    paths = _solid_images(tmp_path, colors)
    query = _columns(paths[:2], [1, 2], [0, 1], [1, 0])
    gallery = _columns(paths[2:], [1, 2], [2, 3], [0, 1])
    ranked = [ranked_lists.RankedQuery(query=q, tag='hard', ap=0.5, gallery=np.array([0, 1]),
                                       match=np.array([q == 0, q == 1]), dist=np.zeros(2)) for q in (0, 1)]
    plain = visualize.draw_ranked_lists(ranked, query, gallery, str(tmp_path / 'plain.png'), topk=2)
    heat = np.zeros((8, 4))
    heat[:2] = 1.0
    size = visualize.draw_ranked_lists(ranked, query, gallery, str(tmp_path / 'maps.png'), topk=2,
                                       query_attention=[heat, heat])
    assert size[0] == plain[0] and size[1] > plain[1]
    with Image.open(tmp_path / 'maps.png') as picture:
        layout = visualize.Layout(attention=True)
        x, y = layout.cell_origin(1, 0)
        y += layout.cell_size[1] + layout.text_height + layout.border
        top, bottom = picture.getpixel((x + 30, y + 10)), picture.getpixel((x + 30, y + layout.image_size[0] - 10))
    assert top[0] - bottom[0] > 40 and bottom[2] - top[2] > 40  # high top half: red; low bottom half: blue


def test_pictures_name_each_datasets_cameras_and_views():
    from datasets import camera_name, view_name
    assert [camera_name(name, 0) for name in ('mssl', 'msmt17', 'dukemtmcreid', 'veri', 'vehicleid')] == [
        'c01', 'c01', 'c1', 'c001', 'cam0']
    assert view_name('mssl', 1) == 'sky' and view_name('msmt17', 1) == 'sky'
    assert view_name('veri', 1) == 'viewpoint 1' and view_name('vehicleid', 0) == ''
