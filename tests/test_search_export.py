"""search_clipreid.py and tools/export_onnx.py through their command lines; the chunked ranking."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.feature_api import FeatureExtractor, load_reid_model
from processor.search import top_k
from tests.test_feature_api import write_tiny_checkpoint
from evaluation.rank import query_distances

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_one_error_line(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr[-2000:]
    for word in words:
        assert word in lines[0]


@pytest.fixture(scope='module')
def checkpoint(tiny_mssl, tmp_path_factory):
    return write_tiny_checkpoint(tiny_mssl, str(tmp_path_factory.mktemp('ckpt')))[3]


def test_chunked_top_k_equals_the_full_ranking():
    generator = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(7, 5, generator=generator), torch.randn(23, 5, generator=generator)
    gf[10] = gf[3]  # a tie: the lower gallery index ranks first
    dist, index = top_k(qf, gf, k=6, chunk_size=4)
    full = query_distances(qf, (qf * qf).sum(1), gf, (gf * gf).sum(1))
    expected = torch.sort(full, dim=1, stable=True)
    assert torch.equal(index, expected.indices[:, :6])
    assert torch.allclose(dist, expected.values[:, :6])
    assert top_k(qf, gf[:3], k=10, chunk_size=2)[1].shape == (7, 3)


@pytest.mark.parametrize('device', ['cpu'] + (['cuda'] if torch.cuda.is_available() else []))
def test_search_ranks_on_the_model_device(tiny_mssl, checkpoint, tmp_path, monkeypatch, device):
    """--device cuda extracts on the GPU and ranks there too (the features come back to the CPU first)."""
    import search_clipreid
    from processor import search
    asked, computed = [], []
    real_top_k, real_distances = search.top_k, search.query_distances
    monkeypatch.setattr(search_clipreid, 'top_k',
                        lambda *a, **k: asked.append(k.get('device')) or real_top_k(*a, **k))
    monkeypatch.setattr(search, 'query_distances',
                        lambda q, *a: computed.append(q.device.type) or real_distances(q, *a))
    search_clipreid.main(['--weight', checkpoint, '--query', f'{tiny_mssl}/query', '--gallery',
                          f'{tiny_mssl}/bounding_box_test', '--output', str(tmp_path), '--workers', '0',
                          '--picture-queries', '0', '--device', device])
    assert [getattr(where, 'type', where) for where in asked] == [device]
    assert computed and set(computed) == {device}


@pytest.mark.slow
def test_search_with_dataset_file_names(tiny_mssl, checkpoint, tmp_path):
    result = run('search_clipreid.py', '--weight', checkpoint, '--query', f'{tiny_mssl}/query',
                 '--gallery', f'{tiny_mssl}/bounding_box_test', '--output', str(tmp_path), '--topk', '5',
                 '--chunk-size', '7', '--workers', '0', '--picture-queries', '3')
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / 'search_results.csv').open()))
    queries = sorted(p.name for p in Path(tiny_mssl, 'query').iterdir())
    assert len(rows) == 5 * len(queries)
    for row in rows:
        assert row['match'] == str(int(row['query_person'] == row['gallery_person']))
        assert row['query_person'] == Path(row['query']).name.split('_')[0].lstrip('0')
    report = json.loads((tmp_path / 'search_results.json').read_text())
    assert [Path(q['query']).name for q in report['queries']] == queries
    assert all(q['view'] in (0, 1) and q['camera'] >= 0 for q in report['queries'])

    saved = np.load(tmp_path / 'search_features.npz', allow_pickle=False)
    model = load_reid_model(checkpoint, device='cpu')
    expected = FeatureExtractor(model)(list(saved['query_paths']), cameras=saved['query_cameras'].tolist(),
                                       views=saved['query_views'].tolist())
    assert np.allclose(saved['query_features'], expected.numpy(), atol=1e-6)
    first = report['queries'][0]['results']
    distances = ((saved['query_features'][0] - saved['gallery_features']) ** 2).sum(1)
    assert [r['gallery'] for r in first] == list(saved['gallery_paths'][np.argsort(distances, kind='stable')[:5]])
    with Image.open(tmp_path / 'search_ranked.png') as picture:
        assert picture.width > 5 * 40 and picture.height > 3 * 64
        colours = set(map(tuple, np.array(picture.convert('RGB')).reshape(-1, 3).tolist()))
    assert (0, 170, 0) in colours or (220, 0, 0) in colours  # identities known: green / red borders


@pytest.mark.slow
def test_search_with_arbitrary_names_a_single_query_and_a_csv(tiny_mssl, checkpoint, tmp_path):
    gallery = tmp_path / 'gallery'
    gallery.mkdir()
    sources = sorted(Path(tiny_mssl, 'bounding_box_test').iterdir())[:6]
    for k, source in enumerate(sources):
        shutil.copy(source, gallery / f'frame {k:03d}.jpg')
    labels = tmp_path / 'labels.csv'
    labels.write_text('image,view,camera\n' + ''.join(
        f'frame {k:03d}.jpg,{"sky" if k % 2 else "ground"},\n' for k in range(6)))
    out = tmp_path / 'out'
    result = run('search_clipreid.py', '--weight', checkpoint, '--query', str(gallery / 'frame 002.jpg'),
                 '--gallery', str(gallery), '--output', str(out), '--labels', str(labels), '--workers', '0')
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader((out / 'search_results.csv').open()))
    assert list(rows[0]) == ['query', 'rank', 'gallery', 'distance']  # no persons known
    assert len(rows) == 6 and Path(rows[0]['gallery']).name == 'frame 002.jpg'
    assert float(rows[0]['distance']) == pytest.approx(0.0, abs=1e-5)
    saved = np.load(out / 'search_features.npz', allow_pickle=False)
    assert saved['gallery_views'].tolist() == [0, 1, 0, 1, 0, 1]
    assert saved['gallery_cameras'].tolist() == [-1] * 6
    with Image.open(out / 'search_ranked.png') as picture:
        colours = set(map(tuple, np.array(picture.convert('RGB')).reshape(-1, 3).tolist()))
    assert (0, 170, 0) not in colours and (220, 0, 0) not in colours


@pytest.mark.slow
def test_search_refuses_bad_input_in_one_line(tiny_mssl, checkpoint, tmp_path):
    gallery = tmp_path / 'gallery'
    gallery.mkdir()
    shutil.copy(next(Path(tiny_mssl, 'query').iterdir()), gallery / 'good.jpg')
    (gallery / 'broken.jpg').write_bytes(b'not a jpeg')
    empty = tmp_path / 'empty'
    empty.mkdir()
    cache = tmp_path / 'stage1_text_features.pt'
    torch.save({'features': {'sky': torch.zeros(2, 3)}}, cache)
    common = ['--query', str(gallery / 'good.jpg'), '--output', str(tmp_path / 'out'), '--workers', '0']
    assert_one_error_line(run('search_clipreid.py', '--weight', checkpoint, '--gallery', str(gallery), *common),
                          'broken.jpg')
    assert_one_error_line(run('search_clipreid.py', '--weight', checkpoint, '--gallery', str(empty), *common),
                          'empty', 'no')
    assert_one_error_line(run('search_clipreid.py', '--weight', str(cache), '--gallery', str(empty / '..' / 'gallery'),
                              *common), 'not a re-ID model checkpoint')
    assert not (tmp_path / 'out' / 'search_results.csv').exists()


def _resized_uint8(paths, meta) -> np.ndarray:
    from model.feature_api import test_transform
    resize = test_transform(meta).transforms[0]  # the extractor's own resize step
    return np.stack([np.array(resize(Image.open(p).convert('RGB'))).transpose(2, 0, 1) for p in paths])


@pytest.mark.slow
def test_onnx_export_runs_in_onnx_runtime_with_the_same_features(tiny_mssl, checkpoint, tmp_path):
    import onnxruntime as ort
    path = tmp_path / 'reid.onnx'
    result = run('tools/export_onnx.py', '--weight', checkpoint, '--output', str(path), '--input', 'uint8',
                 '--side', 'inputs')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'ONNX Runtime vs PyTorch' in result.stdout
    items = sorted(Path(tiny_mssl, 'query').iterdir())[:5]
    model = load_reid_model(checkpoint, device='cpu')
    meta = model.reid_meta
    from datasets.mssl import parse_mssl_name
    cams, views = zip(*[parse_mssl_name(p.name)[1:] for p in items])
    expected = FeatureExtractor(model)([str(p) for p in items], cameras=cams, views=views).numpy()
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for batch in (1, 5):  # the batch axis is dynamic
        got = session.run(['features'], {'images': _resized_uint8(items[:batch], meta),
                                         'camera': np.array(cams[:batch], dtype=np.int64),
                                         'view': np.array(views[:batch], dtype=np.int64)})[0]
        assert got.dtype == np.float32 and got.shape == (batch, meta['feature_dim'])
        assert np.abs(got - expected[:batch]).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.slow
def test_onnx_export_to_an_unwritable_path_fails_in_one_line(checkpoint, tmp_path):
    result = run('tools/export_onnx.py', '--weight', checkpoint, '--output', str(tmp_path / 'missing' / 'm.onnx'))
    assert_one_error_line(result, 'missing', 'does not exist')
    folder = tmp_path / 'a_folder.onnx'
    folder.mkdir()
    result = run('tools/export_onnx.py', '--weight', checkpoint, '--output', str(folder), '--no-check')
    assert_one_error_line(result, 'a_folder.onnx')


@pytest.mark.slow
def test_published_format_round_trip(checkpoint, tiny_mssl, tmp_path):
    published, back = tmp_path / 'msp_state.pth', tmp_path / 'back.pth'
    result = run('tools/convert_published.py', '--to', 'published', '--weight', checkpoint, '--output', str(published))
    assert result.returncode == 0, result.stderr[-2000:]
    state = torch.load(published, weights_only=True)
    assert 'cv_embed' in state and 'image_encoder.transformer.resblocks.0.attn.in_proj_weight' in state
    assert not any(key.startswith('image_encoder.resblocks.') for key in state)
    opts = ['MODEL.NAME', 'ViT-Tiny-16', 'MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_VIEW', 'True', 'MODEL.SIE_COE',
            '0.5', 'MODEL.STRIDE_SIZE', '[12, 12]', 'INPUT.SIZE_TRAIN', '[64, 32]', 'INPUT.SIZE_TEST', '[64, 32]']
    result = run('tools/convert_published.py', '--to', 'project', '--weight', str(published), '--output', str(back),
                 *opts)
    assert result.returncode == 0, result.stderr[-2000:]
    original, converted = torch.load(checkpoint, weights_only=True), torch.load(back, weights_only=True)
    assert set(converted['model']) == set(original['model'])
    assert all(torch.equal(converted['model'][key], value) for key, value in original['model'].items())
    for key in ('arch', 'num_classes', 'camera_num', 'view_num', 'image_size', 'stride', 'sie_coe', 'feature_dim'):
        assert converted['meta'][key] == original['meta'][key]
    paths = [str(p) for p in sorted(Path(tiny_mssl, 'query').iterdir())[:3]]
    features = [FeatureExtractor(load_reid_model(path, device='cpu', opts=opts))(paths, views=[1, 0, 1])
                for path in (checkpoint, str(back), str(published))]  # the published file loads directly too
    assert torch.allclose(features[1], features[0], atol=1e-6) and torch.allclose(features[2], features[0], atol=1e-6)
    # Settings that do not fit the file: one line, nothing written.
    result = run('tools/convert_published.py', '--to', 'project', '--weight', str(published),
                 '--output', str(tmp_path / 'wrong.pth'), *opts[:-4])
    assert_one_error_line(result, 'INPUT.SIZE_TRAIN')
    assert not (tmp_path / 'wrong.pth').exists()
