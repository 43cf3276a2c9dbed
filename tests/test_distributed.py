"""Several processes train one model: torchrun with two CPU processes (gloo), and the helpers behind it."""
import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import tiny_opts
from utils import distributed
from processor.settings import model_settings

pytestmark = pytest.mark.slow  # subprocess runs of the scripts

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
CHECKPOINT = 'ViT-Tiny-16_2.pth'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _worker(rank: int, port: int, check, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR='127.0.0.1',
                      MASTER_PORT=str(port), OMP_NUM_THREADS='1')
    torch.set_num_threads(1)
    assert distributed.setup(torch.device('cpu')) == torch.device('cpu')
    try:
        check(*args)
    finally:
        distributed.cleanup()


def run_in_group(check, *args) -> None:
    """Run check(*args) in each of two gloo processes; an assertion failing in either fails the test."""
    mp.spawn(_worker, args=(_free_port(), check, args), nprocs=WORLD)


def _check_helpers(out_dirs) -> None:
    assert distributed.is_distributed() and distributed.world_size() == WORLD
    rank = distributed.rank()

    # Contiguous blocks in rank order come back in the original order, also when a rank has none.
    for total in (1, 2, 5, 7):
        local = distributed.local_shard(list(range(total)))
        assert len(local) >= 1
        rows = torch.tensor(local, dtype=torch.float32).unsqueeze(1)
        assert distributed.gather_shards(rows, total).squeeze(1).tolist() == list(range(total))

    # Stage 1's scheme: each rank encodes its share of a batch, the loss is computed on every rank from
    # the gathered rows, the summed gradients equal the gradient of the single-process loss.
    torch.manual_seed(0)
    table = torch.randn(6, 3, requires_grad=True)
    images = torch.randn(5, 3)
    labels = torch.tensor([0, 2, 2, 5, 1])

    def loss_of(text):
        return (images @ text.T).log_softmax(dim=1).diagonal().sum() + (text ** 3).sum()

    expected, = torch.autograd.grad(loss_of(table[labels]), table)
    text = distributed.gather_shards(table[distributed.local_shard(labels)], len(labels), keep_grad=True)
    loss_of(text).backward()
    assert not torch.allclose(table.grad, expected)  # each rank alone holds only its share
    distributed.all_reduce_grads([table])
    torch.testing.assert_close(table.grad, expected, rtol=0, atol=1e-6)

    # A non-finite loss on one rank is seen by all of them.
    mean, = distributed.mean_across_ranks(float('nan') if rank == 1 else 1.0)
    assert mean != mean
    assert distributed.mean_across_ranks(1.0, float(rank)) == (1.0, 0.5)
    assert distributed.broadcast_object({'rank': rank}) == {'rank': 0}

    with pytest.raises(distributed.UserError, match='divisible by the number of processes'):
        distributed.require_divisible(3, 'identities per batch')

    # Only rank 0 writes checkpoints and results (each rank is given its own folder here to tell).
    from config import load_config
    from processor.inference import write_results
    from processor.stage2 import save_checkpoint
    out = Path(out_dirs[rank])
    from model import make_model
    cfg = load_config('', ['OUTPUT_DIR', str(out), 'MODEL.NAME', 'ViT-Tiny-16'])
    model = make_model(model_settings(cfg), 4, 15, 2, load_pretrained=False)  # a checkpoint describes a real model
    path = save_checkpoint(cfg, model, 3)
    metrics = dict(mode='S2G', mAP=0.5, rank1=0.5, rank5=1.0, rank10=1.0, mINP=0.5, num_query=2,
                   num_valid_query=2, num_gallery=4, cmc=[0.5, 1.0])
    written = write_results(str(out), {'S2G': {'metrics': metrics}}, save_features=False)
    assert Path(path) == out / f'{cfg.MODEL.NAME}_3.pth'
    names = sorted(p.name for p in out.iterdir())
    assert names == ([f'{cfg.MODEL.NAME}_3.pth', 'results_S2G.json'] if rank == 0 else []), names
    assert len(written) == (1 if rank == 0 else 0)


def _check_replicas_catch_a_difference() -> None:
    os.environ[distributed.CHECK_REPLICAS_ENV] = '1'  # this process only
    weights = [torch.ones(4), torch.arange(3.0)]
    distributed.check_replicas(weights, 'identical weights')
    if distributed.rank() == 1:
        weights[0][2] += 1e-6
    with pytest.raises(distributed.ReplicaMismatch, match=r'ranks \[1\] hold different weights'):
        distributed.check_replicas(weights, 'a perturbed step')


def _check_helpers_and_replica_check(out_dirs) -> None:
    _check_helpers(out_dirs)
    _check_replicas_catch_a_difference()


def test_collective_helpers_and_the_replica_check_in_a_two_process_group(tmp_path):
    # One process group for both (starting processes is what costs time here).
    folders = [tmp_path / f'rank{r}' for r in range(WORLD)]
    for folder in folders:
        folder.mkdir()
    run_in_group(_check_helpers_and_replica_check, [str(folder) for folder in folders])


def test_single_process_helpers_are_identities(monkeypatch):
    for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_torchrun() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.setup(torch.device('cpu')) == torch.device('cpu')
    rows = torch.arange(6.0).reshape(3, 2)
    assert distributed.local_shard(rows) is rows and distributed.gather_shards(rows, 3) is rows
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(model, torch.device('cpu')) is model


def _run(args: list, env_extra: dict, module: str = None) -> subprocess.CompletedProcess:
    env = {**os.environ, 'OMP_NUM_THREADS': '1', **env_extra}
    command = [sys.executable, *(['-m', module] if module else []), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope='module')
def torchrun_training(tiny_mssl, tmp_path_factory):
    out = tmp_path_factory.mktemp('torchrun_train')
    result = _run([f'--nproc_per_node={WORLD}', '--standalone', 'train_clipreid.py', *tiny_opts(tiny_mssl, str(out))],
                  {distributed.CHECK_REPLICAS_ENV: '1'}, module='torch.distributed.run')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def test_ranks_hold_identical_weights_after_every_step(tiny_mssl, torchrun_training, tmp_path):
    from config import load_config
    from datasets import init_dataset
    from datasets.sampler import RandomIdentitySampler
    _, stdout = torchrun_training
    passed = re.findall(r'^replica check passed: (.*)$', stdout, flags=re.M)
    stage1_images = {view: int(n) for view, n in re.findall(r'Stage 1 \[(\w+)\]: (\d+) images', stdout)}
    assert sorted(stage1_images) == ['ground', 'sky']
    cfg = load_config('', tiny_opts(tiny_mssl, str(tmp_path)))
    stage1 = cfg.SOLVER.STAGE1
    expected = [f'stage 1 [{view}] epoch {epoch} step {step}' for view, n in stage1_images.items()
                for epoch in range(1, stage1.MAX_EPOCHS + 1) for step in range(1, -(-n // stage1.IMS_PER_BATCH) + 1)]
    sampler = RandomIdentitySampler(init_dataset('mssl', tiny_mssl).train, cfg.SOLVER.STAGE2.IMS_PER_BATCH,
                                    cfg.DATALOADER.NUM_INSTANCE, seed=cfg.SOLVER.SEED)
    for epoch in range(1, cfg.SOLVER.STAGE2.MAX_EPOCHS + 1):
        expected += [f'stage 2 epoch {epoch} step {step}'
                     for step in range(1, len(sampler.global_batches(epoch)) + 1)] + ['the buffer sync']
    assert passed == expected


def test_rank_zero_alone_logs_and_writes_one_checkpoint(torchrun_training):
    out, stdout = torchrun_training
    names = {p.name for p in out.iterdir()}
    assert {'train_log.txt', 'stage1_text_features.pt', 'results_S2G.json', 'results_G2S.json',
            'results_DDC.json'} <= names
    assert [p.name for p in out.glob('ViT-Tiny-16_*.pth')] == [CHECKPOINT]  # epoch checkpoints
    assert [p.name for p in out.glob('*log*.txt')] == ['train_log.txt']
    assert not [name for name in names if name.startswith('.')]  # no temporary file left by a second writer
    log = (out / 'train_log.txt').read_text()
    assert '2 processes (gloo), this is rank 0' in log
    for line in ('Stage 1 [sky] epoch 3/3', 'Stage 2 epoch 2/2', 'S2G: mAP'):
        assert log.count(line) == 1 and stdout.count(line) == 1


def test_distributed_evaluation_equals_single_process_evaluation(tiny_mssl, torchrun_training, tmp_path):
    import test_clipreid
    out, _ = torchrun_training
    test_clipreid.main(tiny_opts(tiny_mssl, str(tmp_path), 'TEST.WEIGHT', str(out / CHECKPOINT)))
    for mode in ('S2G', 'G2S', 'DDC'):
        single = json.loads((tmp_path / f'results_{mode}.json').read_text())
        sharded = json.loads((out / f'results_{mode}.json').read_text())
        assert single.keys() == sharded.keys()
        for key, value in single.items():
            assert sharded[key] == (pytest.approx(value, abs=1e-6) if key != 'mode' else value), key


def test_distributed_stage1_learns_the_single_process_prompts(tiny_mssl, torchrun_training, tmp_path):
    from config import load_config
    from datasets import init_dataset
    from model import make_model
    from processor.stage1 import run_stage1, text_views_to_learn
    from utils.device import seed_everything
    out, _ = torchrun_training
    cfg = load_config('', tiny_opts(tiny_mssl, str(tmp_path)))
    seed_everything(cfg.SOLVER.SEED)  # as processor.run.Run does before the model is built
    dataset = init_dataset(cfg.DATASETS.NAMES, cfg.DATASETS.ROOT_DIR)
    model = make_model(model_settings(cfg), dataset.num_train_pids, dataset.num_train_cams, dataset.num_train_views,
                       text_views=text_views_to_learn(cfg))
    single = run_stage1(cfg, model, dataset.train, dataset.num_train_pids, torch.device('cpu'),
                        logging.getLogger('test_distributed'))
    sharded = torch.load(out / 'stage1_text_features.pt', weights_only=True)
    assert sorted(single) == sorted(sharded) == ['ground', 'sky']
    for view in single:
        torch.testing.assert_close(sharded[view]['text_features'], single[view], rtol=0, atol=1e-5)
