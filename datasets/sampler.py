"""P x K identity sampler for metric-learning batches."""
from collections import defaultdict
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
from torch.utils.data import Sampler


class RandomIdentitySampler(Sampler[int]):
    """Yields flat indices forming batches of P distinct identities x K images each
    (``P = batch_size // num_instances``, ``K = num_instances``).

    Per epoch: each identity's indices are shuffled and chopped into chunks of K (an incomplete last
    chunk is dropped); an identity with fewer than K images gets one chunk of K draws with replacement.
    Global batches are then formed by repeatedly drawing P distinct identities that still have a
    chunk and taking one chunk from each, until fewer than P identities have chunks left.

    Randomness comes only from a numpy Generator seeded with ``seed + epoch``: call
    ``set_epoch(epoch)`` at the start of every epoch (like ``DistributedSampler``), otherwise every
    epoch repeats epoch 0.

    Distributed (``num_replicas > 1``): every rank builds the same global batches and rank ``r``
    keeps the ``r``-th block of ``P // num_replicas`` identities of each, so one step over all ranks
    sees exactly one global batch of ``batch_size`` images; each rank's DataLoader must use
    ``per_rank_batch_size`` (= ``batch_size // num_replicas``) with this sampler. All ranks get the
    same number of batches.
    """

    def __init__(self, data_source: Sequence[Tuple], batch_size: int, num_instances: int, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0):
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        if batch_size < num_instances or batch_size % num_instances != 0:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of num_instances "
                             f"({num_instances})")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        if self.num_pids_per_batch % num_replicas != 0:
            raise ValueError(f"identities per batch ({self.num_pids_per_batch} = batch_size // num_instances) "
                             f"must be divisible by the number of processes ({num_replicas})")
        self.num_replicas = num_replicas
        self.rank = rank
        self.pids_per_rank = self.num_pids_per_batch // num_replicas
        self.per_rank_batch_size = batch_size // num_replicas
        self.seed = seed
        self.epoch = 0

        indices_by_pid: Dict[int, List[int]] = defaultdict(list)
        for index, item in enumerate(data_source):
            indices_by_pid[int(item[1])].append(index)
        self.pids = sorted(indices_by_pid)
        self.indices_by_pid = {pid: np.asarray(indices_by_pid[pid], dtype=np.int64) for pid in self.pids}
        if len(self.pids) < self.num_pids_per_batch:
            raise ValueError(f"the data has {len(self.pids)} identities, fewer than the "
                             f"{self.num_pids_per_batch} needed per batch (batch_size // num_instances)")
        self._cache_epoch = None
        self._cache_batches: List[List[int]] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks_per_pid(self, rng: np.random.Generator) -> Dict[int, List[np.ndarray]]:
        k = self.num_instances
        chunks = {}
        for pid in self.pids:
            indices = self.indices_by_pid[pid]
            # Like the published sampler: an identity with fewer than K images gets K draws with replacement.
            indices = rng.choice(indices, size=k, replace=True) if len(indices) < k else rng.permutation(indices)
            usable = len(indices) // k * k
            chunks[pid] = list(indices[:usable].reshape(-1, k))
        return chunks

    def global_batches(self, epoch: int) -> List[List[int]]:
        """The global batches (lists of ``batch_size`` indices, identity blocks of K) of ``epoch``."""
        if self._cache_epoch == epoch:
            return self._cache_batches
        rng = np.random.default_rng(self.seed + epoch)
        chunks = self._chunks_per_pid(rng)
        available = [pid for pid in self.pids if chunks[pid]]
        batches = []
        while len(available) >= self.num_pids_per_batch:
            chosen = rng.choice(len(available), size=self.num_pids_per_batch, replace=False)
            batch = []
            for position in chosen:
                batch.extend(int(i) for i in chunks[available[position]].pop())
            batches.append(batch)
            available = [pid for pid in available if chunks[pid]]
        self._cache_epoch, self._cache_batches = epoch, batches
        return batches

    def __iter__(self) -> Iterator[int]:
        start = self.rank * self.pids_per_rank * self.num_instances
        stop = start + self.per_rank_batch_size
        for batch in self.global_batches(self.epoch):
            yield from batch[start:stop]

    def __len__(self) -> int:
        return len(self.global_batches(self.epoch)) * self.per_rank_batch_size
