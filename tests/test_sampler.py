from collections import Counter

import pytest
import torch
from PIL import Image

from datasets.sampler import RandomIdentitySampler
from datasets.transforms import PUBLISHED_MEAN, PUBLISHED_STD, build_transforms


def make_data(counts):
    """counts: {pid: number of images} -> list of (path, pid, camid, viewid)."""
    data = []
    for pid, count in counts.items():
        for i in range(count):
            data.append((f"{pid}_{i}.jpg", pid, i % 3, i % 2))
    return data


COUNTS = {pid: 3 + (pid * 7) % 9 for pid in range(12)}  # 3..11 images per identity
DATA = make_data(COUNTS)


def batches_of(sampler, size):
    indices = list(sampler)
    assert len(indices) == len(sampler)
    assert len(indices) % size == 0
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def pid_blocks(batch, k):
    return [[DATA[i][1] for i in batch[j:j + k]] for j in range(0, len(batch), k)]


def test_every_batch_has_p_distinct_ids_with_k_images():
    sampler = RandomIdentitySampler(DATA, batch_size=16, num_instances=4, seed=3)
    batches = batches_of(sampler, 16)
    assert len(batches) > 2
    for batch in batches:
        blocks = pid_blocks(batch, 4)
        assert len(blocks) == 4
        assert all(len(set(block)) == 1 for block in blocks)  # each block is one identity, K images
        assert len({block[0] for block in blocks}) == 4  # P distinct identities


def test_no_image_repeated_within_epoch_when_identities_have_k_or_more():
    sampler = RandomIdentitySampler(DATA, batch_size=12, num_instances=3, seed=0)
    counts = Counter(sampler)
    assert max(counts.values()) == 1


def test_same_epoch_is_deterministic_and_epochs_differ():
    a = RandomIdentitySampler(DATA, 16, 4, seed=5)
    b = RandomIdentitySampler(DATA, 16, 4, seed=5)
    assert list(a) == list(b)
    assert list(a) == list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != list(b)
    b.set_epoch(1)
    assert list(b) == epoch1
    c = RandomIdentitySampler(DATA, 16, 4, seed=6)
    assert list(c) != list(RandomIdentitySampler(DATA, 16, 4, seed=5))


def test_does_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    sampler = RandomIdentitySampler(DATA, 16, 4, seed=1)
    list(sampler)
    assert torch.rand(1) == expected


def test_identity_with_fewer_than_k_images_is_padded():
    data = make_data({0: 1, 1: 2, 2: 5, 3: 4})
    sampler = RandomIdentitySampler(data, batch_size=8, num_instances=4, seed=0)
    indices = list(sampler)
    assert len(indices) == len(sampler) > 0
    taken = Counter(data[i][1] for i in indices)
    # pid 0 (one image) and pid 1 (two images) each appear as a full chunk of K images
    for pid in (0, 1):
        assert taken[pid] == 4
    # drawn with replacement from the identity's own images, as the published sampler does
    assert {i for i in indices if data[i][1] == 0} == {0}
    assert {i for i in indices if data[i][1] == 1} <= {1, 2}


def test_distributed_ranks_split_each_global_batch():
    batch_size, k = 16, 2  # P = 8 identities per global batch, 4 per rank
    single = RandomIdentitySampler(DATA, batch_size, k, seed=9)
    ranks = [RandomIdentitySampler(DATA, batch_size, k, seed=9, num_replicas=2, rank=r) for r in range(2)]
    for sampler in [single, *ranks]:
        sampler.set_epoch(4)
    global_batches = batches_of(single, batch_size)
    rank_batches = [batches_of(s, batch_size // 2) for s in ranks]
    assert len(rank_batches[0]) == len(rank_batches[1]) == len(global_batches)
    for global_batch, b0, b1 in zip(global_batches, *rank_batches):
        ids0 = {DATA[i][1] for i in b0}
        ids1 = {DATA[i][1] for i in b1}
        assert len(ids0) == len(ids1) == 4
        assert not ids0 & ids1
        assert ids0 | ids1 == {DATA[i][1] for i in global_batch}
        assert sorted(b0 + b1) == sorted(global_batch)


def test_validation():
    with pytest.raises(ValueError, match="multiple of num_instances"):
        RandomIdentitySampler(DATA, batch_size=10, num_instances=4)
    with pytest.raises(ValueError, match="identities"):
        RandomIdentitySampler(make_data({0: 4, 1: 4}), batch_size=12, num_instances=4)
    with pytest.raises(ValueError, match="divisible"):
        RandomIdentitySampler(DATA, batch_size=12, num_instances=4, num_replicas=2)


def test_len_consistent_across_epochs():
    sampler = RandomIdentitySampler(DATA, 12, 4, seed=2)
    for epoch in range(5):
        sampler.set_epoch(epoch)
        assert len(list(sampler)) == len(sampler)


def test_works_with_dataloader():
    dataset = torch.arange(len(DATA))
    sampler = RandomIdentitySampler(DATA, 8, 2, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == len(sampler) // 8
    assert all(b.shape == (8,) for b in batches)


def test_transform_shapes_train_and_test():
    image = Image.new("RGB", (40, 90), color=(120, 30, 200))
    train = build_transforms([32, 16], [24, 12], is_train=True, padding=2, re_prob=1.0)
    test = build_transforms([32, 16], [24, 12], is_train=False)
    out_train = train(image)
    out_test = test(image)
    assert out_train.shape == (3, 32, 16) and out_train.dtype == torch.float32
    assert out_test.shape == (3, 24, 12)
    # uniform image: every test pixel is the normalised colour
    expected = [(v / 255 - m) / s for v, m, s in zip((120, 30, 200), PUBLISHED_MEAN, PUBLISHED_STD)]
    assert torch.allclose(out_test.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-2)
    # erasing with p=1 (timm, per-pixel normal noise) replaces a box of the uniform image with varied values
    padded = {-1.0, *expected}  # the pad colour (0) normalises to -1
    assert any(not any(abs(float(v) - c) < 1e-6 for c in padded) for v in out_train.flatten()[::7])


def test_transform_validation():
    with pytest.raises(ValueError, match="size_train"):
        build_transforms([32], [24, 12], is_train=True)
    with pytest.raises(ValueError, match="re_prob"):
        build_transforms([32, 16], [24, 12], is_train=True, re_prob=1.5)
