"""Experiments (tools/experiment.py): one config trained once per seed, or given checkpoints tested, each
in <output>/seed_<n>/, then summarised over the seeds (reporting/summary.py).

The experiment folder holds experiment.json: what every seed runs (the config file, the overrides and
the resolved config, but for the keys that differ per seed: SOLVER.SEED, OUTPUT_DIR, SOLVER.RESUME,
TEST.WEIGHT). A folder that holds another experiment, or a seed folder whose manifest.json shows
another config, stops the experiment before anything runs. A seed whose manifest says its run finished
is skipped: nothing of it is run or written again. Any other seed runs train_clipreid.py with
SOLVER.RESUME auto, so an interrupted training continues from its resume.pth (or test_clipreid.py).
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from yacs.config import CfgNode

from config import load_config
from processor.resume import resume_path
from processor.test_sets import labelled_test_datasets, results_folder, results_key
from reporting.manifest import FINISHED, flatten, read_manifest
from reporting.summary import write_summary
from utils import atomic_io
from utils.checkpoint import load_checkpoint_file
from utils.errors import UserError
from utils.vocabulary import EXPERIMENT_FILE, METRIC_KEYS, TEST_LOG, TRAIN_LOG, seed_folder

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {'train': 'train_clipreid.py', 'test': 'test_clipreid.py'}
# Keys the experiment sets for each seed, and what to use instead of overriding them.
SET_PER_SEED = {'SOLVER.SEED': '--seeds', 'OUTPUT_DIR': '--output', 'TEST.WEIGHT': '--test-only',
                'SOLVER.RESUME': 'nothing (an interrupted seed resumes by itself)'}
# Keys that may differ between a seed's manifest and what the experiment asks of it (relative paths).
_NOT_COMPARED_IN_SEEDS = ('OUTPUT_DIR', 'SOLVER.RESUME')


def parse_seeds(values: list[str]) -> list[int]:
    """--seeds: distinct integers >= 0 (SOLVER.SEED's rule)."""
    seeds = []
    for value in values:
        try:
            seed = int(value)
        except ValueError:
            seed = -1
        if seed < 0 or str(seed) != value.lstrip('+'):
            raise UserError(f"--seeds '{value}' is not a seed (an integer >= 0); KEY VALUE overrides go after "
                            f"the options")
        if seed in seeds:
            raise UserError(f"--seeds names seed {seed} twice")
        seeds.append(seed)
    return seeds


def seeds_of_checkpoints(weights: list[str]) -> list[int]:
    """The SOLVER.SEED each checkpoint was trained with (train_clipreid.py stores its config in it)."""
    seeds = {}
    for weight in weights:
        checkpoint = load_checkpoint_file(weight, f"--test-only '{weight}'")
        try:
            seed = int(CfgNode.load_cfg(checkpoint['config']).SOLVER.SEED)
        except Exception:  # any checkpoint without a readable config of this project
            raise UserError(f"--test-only '{weight}' records no training seed (not written by train_clipreid.py); "
                            f"name one seed per checkpoint with --seeds") from None
        if seed in seeds.values():
            other = next(w for w, s in seeds.items() if s == seed)
            raise UserError(f"--test-only '{other}' and '{weight}' were both trained with seed {seed}; name one seed "
                            f"per checkpoint with --seeds")
        seeds[weight] = seed
    return list(seeds.values())


@dataclass
class SeedRun:
    seed: int
    folder: str
    weight: str = ''  # the checkpoint a test-only run evaluates

    def overrides(self) -> list[str]:
        per_seed = ['SOLVER.SEED', str(self.seed), 'OUTPUT_DIR', self.folder]
        return per_seed + (['TEST.WEIGHT', self.weight] if self.weight else ['SOLVER.RESUME', 'auto'])


def _config_dict(cfg) -> dict:
    return flatten(json.loads(json.dumps(cfg)))


def _first_differences(there: dict, here: dict, limit: int = 3) -> str:
    keys = [k for k in {**there, **here} if there.get(k, '(absent)') != here.get(k, '(absent)')]
    shown = '; '.join(f"{k}: {there.get(k, '(absent)')!r} there, {here.get(k, '(absent)')!r} here" for k in keys[:limit])
    return shown + (f"; and {len(keys) - limit} more" if len(keys) > limit else '')


class Experiment:
    def __init__(self, config_file: str, opts: list[str], seeds: list[int], output: str, weights: list[str]):
        """`weights`: the checkpoints to test, one per seed (--test-only); empty: train each seed."""
        if len(opts) % 2:
            raise UserError(f"command-line overrides must be KEY VALUE pairs; '{opts[-1]}' has no value")
        for key in opts[0::2]:
            if key in SET_PER_SEED:
                raise UserError(f"{key} is set by the experiment for each seed; use {SET_PER_SEED[key]}")
        if weights and len(weights) != len(seeds):
            raise UserError(f"--seeds names {len(seeds)} seed(s) for {len(weights)} --test-only checkpoint(s); "
                            f"name one seed per checkpoint")
        self.config_file, self.opts, self.output = config_file, list(opts), output
        self.kind = 'test' if weights else 'train'
        self.runs = [SeedRun(seed, os.path.join(output, seed_folder(seed)), weight)
                     for seed, weight in zip(seeds, weights or [''] * len(seeds))]
        self.configs = {run.seed: load_config(config_file, [*opts, *run.overrides()]) for run in self.runs}

    # -- what the folder holds -------------------------------------------------------------------
    def description(self) -> dict:
        """experiment.json: what every seed of this experiment runs."""
        config = {key: value for key, value in _config_dict(self.configs[self.runs[0].seed]).items()
                  if key not in SET_PER_SEED}
        return {'run': self.kind, 'config_file': self.config_file, 'overrides': self.opts, 'config': config}

    def check_folder(self) -> None:
        """Stop, before anything runs, when --output or a seed folder holds another experiment's runs."""
        output = self.output
        if os.path.exists(output) and not os.path.isdir(output):
            raise UserError(f"--output '{output}' is a file, not a folder")
        path = os.path.join(output, EXPERIMENT_FILE)
        if os.path.isfile(path):
            try:
                with open(path, encoding='utf-8') as handle:
                    there = json.load(handle)
                there_config, there_run = dict(there['config']), there['run']
            except (OSError, ValueError, KeyError, TypeError):
                raise UserError(f"--output '{output}': {path} cannot be read as an experiment description; choose "
                                f"another --output") from None
            here = self.description()
            if there_run != here['run']:
                raise UserError(f"--output '{output}' holds a {there_run} experiment ({path}), this one is a "
                                f"{here['run']} experiment; choose another --output")
            if there_config != here['config']:
                raise UserError(f"--output '{output}' holds another experiment ({path}): "
                                f"{_first_differences(there_config, here['config'])}; choose another --output")
        elif any(os.path.exists(os.path.join(output, name)) for name in (TRAIN_LOG, TEST_LOG)):
            raise UserError(f"--output '{output}' is the OUTPUT_DIR of a single run, not an experiment folder; "
                            f"choose another --output")
        for run in self.runs:
            manifest = read_manifest(run.folder)
            if manifest is None:
                continue
            there = {k: v for k, v in flatten(manifest.get('config', {})).items() if k not in _NOT_COMPARED_IN_SEEDS}
            here = {k: v for k, v in _config_dict(self.configs[run.seed]).items() if k not in _NOT_COMPARED_IN_SEEDS}
            if manifest.get('run') != self.kind or there != here:
                what = (f"a {manifest.get('run')} run" if manifest.get('run') != self.kind
                        else _first_differences(there, here))
                raise UserError(f"--output '{output}': {run.folder} holds another experiment's run ({what}); "
                                f"choose another --output")

    def write_description(self) -> None:
        os.makedirs(self.output, exist_ok=True)
        path = os.path.join(self.output, EXPERIMENT_FILE)
        if not os.path.isfile(path):
            atomic_io.write_text(path, json.dumps(self.description(), indent=1) + '\n')

    def finished(self, run: SeedRun) -> bool:
        manifest = read_manifest(run.folder)
        return manifest is not None and manifest.get('status') == FINISHED and manifest.get('run') == self.kind

    # -- running ---------------------------------------------------------------------------------
    def command(self, run: SeedRun) -> list[str]:
        script = str(ROOT / SCRIPTS[self.kind])
        config = ['--config_file', self.config_file] if self.config_file else []
        return [sys.executable, script, *config, *self.opts, *run.overrides()]

    def run_seeds(self, execute=None, say=print) -> None:
        """Run every seed that is not finished, in order. `execute(command) -> exit code` (default: a
        child process sharing this terminal). A run that fails stops the experiment: exit code 2 means
        the run printed its one `error:` line, and it is passed on as SystemExit(2)."""
        execute = execute or (lambda command: subprocess.run(command).returncode)
        for run in self.runs:
            if self.finished(run):
                say(f"seed {run.seed}: finished in {run.folder}; skipped")
                continue
            if run.weight:
                action = f"testing {run.weight}"
            else:
                action = 'resuming the interrupted training' if os.path.isfile(resume_path(run.folder)) else 'training'
            say(f"seed {run.seed}: {action} in {run.folder}")
            code = execute(self.command(run))
            if code == 2:
                raise SystemExit(2)
            if code != 0:
                how = f"exit code {code}" if code > 0 else f"signal {-code}"
                raise UserError(f"seed {run.seed}: {SCRIPTS[self.kind]} stopped ({how}); the finished seeds are "
                                f"kept; run the same command again to go on")
            if not self.finished(run):
                raise UserError(f"seed {run.seed}: {SCRIPTS[self.kind]} ended without marking {run.folder}/"
                                f"manifest.json finished")

    # -- summary ---------------------------------------------------------------------------------
    def results(self, run: SeedRun) -> dict:
        """{key: {metric: value}} of a seed's results_<PROTOCOL>.json files."""
        labels = [label for _, _, label in labelled_test_datasets(self.configs[run.seed])] or ['']
        results = {}
        for label in labels:
            paths = glob.glob(os.path.join(results_folder(run.folder, label), 'results_*.json'))
            for path in sorted(paths, key=lambda p: (os.path.getmtime(p), p)):
                try:
                    with open(path, encoding='utf-8') as handle:
                        record = json.load(handle)
                    results[results_key(label, record['mode'])] = {m: record[m] for m in METRIC_KEYS}
                except (OSError, ValueError, KeyError, TypeError):
                    raise UserError(f"'{path}' cannot be read as a results file") from None
        if not results:
            raise UserError(f"seed {run.seed}: {run.folder} holds no results_<PROTOCOL>.json")
        return results

    def summary_details(self) -> dict:
        manifests = [read_manifest(run.folder) or {} for run in self.runs]

        def distinct(values):
            return ', '.join(dict.fromkeys(str(v) for v in values if v)) or 'unknown'
        devices = distinct(f"{m['device'].get('name')} ({m['device'].get('count')} {m['device'].get('type')})"
                           for m in manifests if m.get('device'))
        commits = distinct((m['git']['commit'][:12] + (' (uncommitted changes)' if m['git'].get('dirty') else ''))
                           for m in manifests if m.get('git'))
        wall = [m['wall_time_s']['total'] for m in manifests if m.get('wall_time_s', {}).get('total') is not None]
        details = {'run': 'test-only (given checkpoints)' if self.kind == 'test' else 'train and test',
                   'config file': self.config_file or '(defaults)', 'overrides': ' '.join(self.opts) or '(none)',
                   'seeds': ', '.join(str(run.seed) for run in self.runs),
                   'runs': os.path.join(self.output, 'seed_<n>'), 'device': devices,
                   'torch': distinct(m.get('packages', {}).get('torch') for m in manifests), 'code': commits}
        if wall:
            details['wall time per seed'] = f"{sum(wall) / len(wall):.0f} s (mean of the last session of each run)"
        return details

    def write_summary(self) -> tuple[dict, list[str]]:
        runs = [{'seed': run.seed, 'output_dir': run.folder, 'results': self.results(run)} for run in self.runs]
        return write_summary(self.output, runs, self.summary_details())
