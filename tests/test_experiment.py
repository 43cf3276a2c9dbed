"""tools/experiment.py: seeds, skipping and resuming, summaries, and the mistakes it refuses."""
import csv
import functools
import importlib.util
import json
import os

import numpy as np
import pytest
import torch

from config import load_config
from reporting.manifest import FINISHED, FORMAT, MANIFEST_FILE
from reporting.summary import summarize, write_summary
from tests.helpers import ROOT, TINY_OPTS, fails
from utils.vocabulary import METRIC_KEYS

_spec = importlib.util.spec_from_file_location('experiment_cli', ROOT / 'tools' / 'experiment.py')
experiment_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(experiment_cli)


def _results(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {mode: {metric: float(rng.uniform(0.2, 0.9)) for metric in METRIC_KEYS} for mode in ('S2G', 'G2S', 'DDC')}


class FakeRuns:
    """Stands in for train_clipreid.py / test_clipreid.py: writes what a finished run leaves behind (its
    manifest, with the config the command asks for, and results_<MODE>.json), or stops part-way."""

    def __init__(self, stop_seeds=()):
        self.commands = []
        self.stop_seeds = set(stop_seeds)

    def __call__(self, command) -> int:
        self.commands.append(command)
        args = command[2:]
        config_file = args[1] if args[0] == '--config_file' else ''
        cfg = load_config(config_file, args[2:] if config_file else args)
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        status = 'failed' if cfg.SOLVER.SEED in self.stop_seeds else FINISHED
        manifest = {'format': FORMAT, 'run': 'test' if cfg.TEST.WEIGHT else 'train', 'status': status,
                    'config': json.loads(json.dumps(cfg)), 'device': {'type': 'cpu', 'name': 'test CPU', 'count': 2}}
        with open(os.path.join(cfg.OUTPUT_DIR, MANIFEST_FILE), 'w') as handle:
            json.dump(manifest, handle)
        if status != FINISHED:
            return 1
        for mode, metrics in _results(cfg.SOLVER.SEED).items():
            with open(os.path.join(cfg.OUTPUT_DIR, f'results_{mode}.json'), 'w') as handle:
                json.dump({'mode': mode, **metrics}, handle)
        return 0


def opts(root='data/x', *extra):
    return [*TINY_OPTS, 'DATASETS.ROOT_DIR', root, *extra]


def test_statistics_are_mean_sample_std_min_max_n():
    runs = [{'seed': s, 'output_dir': '', 'results': _results(s)} for s in (1, 2, 3, 4)]
    runs[3]['results'].pop('DDC')  # a protocol one seed lacks counts the others only
    summary = summarize(runs)
    for mode in ('S2G', 'DDC'):
        for metric in METRIC_KEYS:
            values = [r['results'][mode][metric] for r in runs if mode in r['results']]
            stats = summary[mode][metric]
            assert stats['mean'] == pytest.approx(np.mean(values), abs=1e-12)
            assert stats['std'] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
            assert (stats['min'], stats['max'], stats['n']) == (min(values), max(values), len(values))
    assert summarize(runs[:1])['S2G']['mAP']['std'] is None  # one seed has no sample deviation


def test_summary_files_agree(tmp_path):
    runs = [{'seed': s, 'output_dir': f'seed_{s}',
             'results': {f'agreid/{mode}': metrics for mode, metrics in _results(s).items()}} for s in (1, 2)]
    summary, paths = write_summary(str(tmp_path), runs, {'config file': 'x.yml'})
    written = json.loads((tmp_path / 'summary.json').read_text())
    assert written['runs'] == runs and written['summary'] == summary
    rows = list(csv.DictReader((tmp_path / 'summary.csv').open()))
    assert len(rows) == 3 * len(METRIC_KEYS)
    for row in rows:
        values = [r['results'][row['protocol']][row['metric']] for r in runs]
        assert float(row['mean']) == np.mean(values) and float(row['std']) == pytest.approx(np.std(values, ddof=1))
        assert int(row['n']) == 2
    table = (tmp_path / 'summary.md').read_text()
    mean, std = summary['agreid/S2G']['mAP']['mean'], summary['agreid/S2G']['mAP']['std']
    assert f"| agreid/S2G | {100 * mean:.1f} ± {100 * std:.1f} |" in table
    assert (tmp_path / 'summary.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_each_seed_runs_once_and_an_interrupted_one_resumes(tmp_path, capsys):
    out = str(tmp_path / 'exp')
    stopping = FakeRuns(stop_seeds={2})
    with pytest.raises(SystemExit):
        experiment_cli.main(['--seeds', '1', '2', '--output', out, *opts()], execute=stopping)
    assert 'seed 2: train_clipreid.py stopped' in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, 'summary.json'))  # no summary of a half-done experiment
    seed1 = os.path.join(out, 'seed_1', 'results_S2G.json')
    before = (os.path.getmtime(seed1), open(seed1).read())

    again = FakeRuns()
    summary = experiment_cli.main(['--seeds', '1', '2', '--output', out, *opts()], execute=again)
    assert len(again.commands) == 1  # seed 1 finished: skipped
    command = again.commands[0]
    assert command[command.index('SOLVER.SEED') + 1] == '2' and command[command.index('SOLVER.RESUME') + 1] == 'auto'
    assert command[command.index('OUTPUT_DIR') + 1] == os.path.join(out, 'seed_2')
    assert (os.path.getmtime(seed1), open(seed1).read()) == before
    expected = [_results(1)['G2S']['mAP'], _results(2)['G2S']['mAP']]
    assert summary['G2S']['mAP']['mean'] == pytest.approx(np.mean(expected))

    idle = FakeRuns()
    experiment_cli.main(['--seeds', '1', '2', '--output', out, *opts()], execute=idle)
    assert idle.commands == []
    assert 'seed 1: finished' in capsys.readouterr().out


def test_test_only_reads_the_seeds_from_the_checkpoints(tmp_path):
    weights = []
    for seed in (5, 7):
        path = tmp_path / f'w{seed}.pth'
        torch.save({'model': {}, 'config': load_config('', ['SOLVER.SEED', str(seed)]).dump()}, path)
        weights.append(str(path))
    runs = FakeRuns()
    out = str(tmp_path / 'exp')
    summary = experiment_cli.main(['--test-only', *weights, '--output', out, *opts()], execute=runs)
    assert [c[c.index('TEST.WEIGHT') + 1] for c in runs.commands] == weights
    assert [c[1].endswith('test_clipreid.py') for c in runs.commands] == [True, True]
    assert sorted(os.listdir(out)) == ['experiment.json', 'seed_5', 'seed_7', 'summary.csv', 'summary.json',
                                       'summary.md', 'summary.png']
    assert summary['S2G']['mAP']['n'] == 2


@pytest.mark.parametrize('options, overrides, message', [
    (['--seeds', '1', 'x'], [], "--seeds 'x' is not a seed"),
    (['--seeds', '1', '-3'], [], "--seeds '-3' is not a seed"),
    (['--seeds', '2', '2'], [], 'names seed 2 twice'),
    (['--seeds'], [], 'expected at least one argument'),
    ([], [], '--seeds: name the seed of each run'),
    (['--seeds', '1', '--test-only', 'missing.pth'], [], "--test-only 'missing.pth' does not exist"),
    (['--seeds', '1'], ['SOLVER.SEED', '3'], 'SOLVER.SEED is set by the experiment for each seed; use --seeds'),
    (['--seeds', '1'], ['SOLVER.STAGE2.MAX_EPOCHS', '0'], 'SOLVER.STAGE2.MAX_EPOCHS'),
])
def test_bad_seed_lists_and_overrides_give_one_line(tmp_path, capsys, options, overrides, message):
    out = tmp_path / 'exp'
    line = fails(functools.partial(experiment_cli.main, execute=FakeRuns()),
                 [*options, '--output', str(out), *opts(), *overrides], capsys)
    assert message in line
    assert not out.exists()


def test_test_only_seed_count_and_checkpoints_without_a_seed(tmp_path, capsys):
    bare = tmp_path / 'published.pth'
    torch.save({'model': {}}, bare)
    line = fails(functools.partial(experiment_cli.main, execute=FakeRuns()),
                 ['--test-only', str(bare), '--output', str(tmp_path / 'e'), *opts()], capsys)
    assert 'records no training seed' in line and '--seeds' in line
    line = fails(functools.partial(experiment_cli.main, execute=FakeRuns()),
                 ['--seeds', '1', '2', '--test-only', str(bare), '--output', str(tmp_path / 'e'), *opts()], capsys)
    assert '2 seed(s) for 1 --test-only checkpoint(s)' in line


def test_a_folder_of_another_experiment_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / 'exp'
    experiment_cli.main(['--seeds', '1', '--output', str(out), *opts()], execute=FakeRuns())
    files = {p: p.read_bytes() for p in out.rglob('*') if p.is_file()}
    runs = FakeRuns()
    line = fails(functools.partial(experiment_cli.main, execute=runs),
                 ['--seeds', '1', '2', '--output', str(out), *opts('data/x', 'SOLVER.STAGE2.MAX_EPOCHS', '3')], capsys)
    assert f"'{out}' holds another experiment" in line and 'SOLVER.STAGE2.MAX_EPOCHS: 2 there, 3 here' in line
    assert runs.commands == [] and files == {p: p.read_bytes() for p in out.rglob('*') if p.is_file()}

    # without experiment.json, the seed folder's manifest still tells
    (out / 'experiment.json').unlink()
    line = fails(functools.partial(experiment_cli.main, execute=runs),
                 ['--seeds', '1', '--output', str(out), *opts('data/y')], capsys)
    assert 'seed_1 holds another experiment' in line and "DATASETS.ROOT_DIR: 'data/x' there, 'data/y' here" in line
    assert runs.commands == []

    single_run = tmp_path / 'run'
    single_run.mkdir()
    (single_run / 'train_log.txt').write_text('a training run\n')
    line = fails(functools.partial(experiment_cli.main, execute=runs),
                 ['--seeds', '1', '--output', str(single_run), *opts()], capsys)
    assert 'is the OUTPUT_DIR of a single run' in line


@pytest.mark.slow
def test_two_seeds_of_the_demo_config_end_to_end(tiny_mssl, tmp_path):
    out = tmp_path / 'exp'
    command = ['--config_file', 'configs/demo/mssl_synthetic.yml', '--seeds', '1', '2', '--output', str(out),
               'DATASETS.ROOT_DIR', tiny_mssl, 'SOLVER.STAGE1.MAX_EPOCHS', '2', 'SOLVER.STAGE2.MAX_EPOCHS', '3',
               'DATALOADER.NUM_WORKERS', '0', 'MODEL.DEVICE', 'cpu', 'INPUT.SIZE_TRAIN', '[64, 32]',
               'INPUT.SIZE_TEST', '[64, 32]']
    experiment_cli.main(command)  # each seed a train_clipreid.py child process, as on the command line
    written = json.loads((out / 'summary.json').read_text())
    per_seed = {seed: {mode: json.loads((out / f'seed_{seed}' / f'results_{mode}.json').read_text())
                       for mode in ('S2G', 'G2S', 'DDC')} for seed in (1, 2)}
    rows = {(r['protocol'], r['metric']): r for r in csv.DictReader((out / 'summary.csv').open())}
    for mode in ('S2G', 'G2S', 'DDC'):
        for metric in METRIC_KEYS:
            values = [per_seed[seed][mode][metric] for seed in (1, 2)]
            stats = written['summary'][mode][metric]
            assert stats['mean'] == pytest.approx(np.mean(values), abs=1e-12)
            assert stats['std'] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
            assert float(rows[mode, metric]['mean']) == pytest.approx(np.mean(values), abs=1e-12)
            assert float(rows[mode, metric]['std']) == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert [run['seed'] for run in written['runs']] == [1, 2]
    for seed in (1, 2):
        manifest = json.loads((out / f'seed_{seed}' / 'manifest.json').read_text())
        assert manifest['status'] == 'finished' and manifest['seed'] == seed
        assert list((out / f'seed_{seed}' / 'tensorboard').glob('events.out.tfevents.*'))
    assert '| S2G |' in (out / 'summary.md').read_text() and (out / 'summary.png').is_file()

    seed_files = {p: p.stat().st_mtime_ns for p in out.glob('seed_*/**/*') if p.is_file()}
    idle = FakeRuns()  # the same command again, in this process: no seed may start
    again = experiment_cli.main(command, execute=idle)
    assert idle.commands == [] and again == written['summary']
    assert seed_files == {p: p.stat().st_mtime_ns for p in out.glob('seed_*/**/*') if p.is_file()}
