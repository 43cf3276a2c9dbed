"""utils/run_lock.py: one training run per OUTPUT_DIR, stale locks, the results lock."""
import json
import logging
import os
import socket
import threading
import time

import pytest

from tests.helpers import tiny_opts
from processor import run as cli
from utils.errors import UserError
from utils.run_lock import DirectoryLock, hold_training_lock, results_lock

LOGGER = logging.getLogger('test')


def test_the_lock_file_names_its_holder_and_goes_with_it(tmp_path):
    lock = hold_training_lock(str(tmp_path), LOGGER)
    holder = json.loads((tmp_path / 'train.lock').read_text())
    assert holder['pid'] == os.getpid() and holder['host'] == socket.gethostname() and holder['started']
    with pytest.raises(UserError) as refused:  # a second open file of the same lock, as a second run has
        hold_training_lock(str(tmp_path), LOGGER)
    assert str(refused.value).startswith(f"OUTPUT_DIR '{tmp_path}' is in use by another training run (process "
                                         f"{os.getpid()} on host {socket.gethostname()}, started ")
    lock.release()
    assert not (tmp_path / 'train.lock').exists()
    hold_training_lock(str(tmp_path), LOGGER).release()  # free again


def test_a_lock_file_nobody_holds_is_taken_over_with_a_log_line(tmp_path, caplog):
    # What `kill -9` leaves: the file with the dead run's details, and no flock on it.
    (tmp_path / 'train.lock').write_text(json.dumps({'host': 'node7', 'pid': 4242, 'started': 'yesterday'}))
    with caplog.at_level(logging.INFO, logger='test'):
        lock = hold_training_lock(str(tmp_path), LOGGER)
    assert f"took over the lock file {tmp_path / 'train.lock'} left by process 4242 on host node7, started " \
           f"yesterday, which is no longer running" in caplog.text
    assert json.loads((tmp_path / 'train.lock').read_text())['pid'] == os.getpid()
    lock.release()


def test_a_garbled_lock_file_is_taken_over_too(tmp_path):
    (tmp_path / 'train.lock').write_bytes(b'\x00\xff half written')
    lock = hold_training_lock(str(tmp_path), LOGGER)
    assert lock.previous_holder is None
    lock.release()


def test_results_writers_wait_for_each_other(tmp_path):
    order = []
    with results_lock(str(tmp_path)):
        def second_writer():
            with results_lock(str(tmp_path)):
                order.append('second')

        thread = threading.Thread(target=second_writer)
        thread.start()
        time.sleep(0.3)
        order.append('first')
    thread.join(timeout=10)
    assert order == ['first', 'second']


def test_only_rank_0_takes_the_training_lock(tiny_mssl, tmp_path, monkeypatch):
    out = tmp_path / 'out'
    out.mkdir()
    held = DirectoryLock(str(out), 'train.lock').acquire(wait=False)  # rank 0 of this torchrun job
    monkeypatch.setattr(cli.distributed, 'is_main', lambda: False)
    with cli.Run(tiny_opts(tiny_mssl, str(out)), 'test', 'train_log.txt', 'msp.test_lock', training=True) as run:
        assert run.lock is None
    held.release()
    with cli.Run(tiny_opts(tiny_mssl, str(out)), 'test', 'train_log.txt', 'msp.test_lock', training=False) as run:
        assert run.lock is None and not (out / 'train.lock').exists()  # a test run takes no training lock
