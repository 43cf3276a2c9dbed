"""Gradient accumulation (SOLVER.STAGE2.ACCUM_STEPS): what equals the full batch and what does not."""
import pytest
import torch
from torch import nn

from config import load_config
from loss.make_loss import Stage2Criterion
from model import make_model
from processor.accumulation import accumulated_step, check_sub_batches, sub_batches
from tests.helpers import tiny_opts
from utils.errors import UserError
from processor.settings import model_settings

CPU = torch.device('cpu')
NUM_CLASSES, K, IDS = 6, 4, 4  # a P x K batch of 4 identities x 4 images


def tiny_model():
    cfg = load_config('', tiny_opts('unused', 'unused'))
    torch.manual_seed(0)
    model = make_model(model_settings(cfg), NUM_CLASSES, camera_num=4, view_num=2, load_pretrained=False)
    return model


def batch():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(IDS * K, 3, 64, 32, generator=generator)
    pids = torch.tensor([0, 0, 0, 0, 3, 3, 3, 3, 1, 1, 1, 1, 5, 5, 5, 5])
    camids = torch.randint(0, 4, (IDS * K,), generator=generator)
    # Sky (1) and ground (0) images spread unevenly over the sub-batches, so the masked image-to-text
    # terms need their per-view shares, not 1/N.
    viewids = torch.tensor([1, 1, 1, 0, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0])
    return images, pids, camids, viewids


def i2t_terms(model, images, camids, viewids):
    with torch.no_grad():
        embed = model(images[:2], cam_label=camids[:2], view_label=viewids[:2])['proj'].shape[1]
    generator = torch.Generator().manual_seed(2)
    return [(torch.randn(NUM_CLASSES, embed, generator=generator), 'all', 1.0),
            (torch.randn(NUM_CLASSES, embed, generator=generator), 'ground', 0.1),
            (torch.randn(NUM_CLASSES, embed, generator=generator), 'sky', 0.5)]


def gradients(accum_steps, triplet_weight=0.0, batchnorm_in_train_mode=False):
    model = tiny_model()
    images, pids, camids, viewids = batch()
    terms = i2t_terms(model, images, camids, viewids)
    model.train()
    if not batchnorm_in_train_mode:
        # With the BatchNorm necks in eval mode every image's output depends on that image alone.
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    scaler = torch.amp.GradScaler('cpu', enabled=False)
    criterion = Stage2Criterion(NUM_CLASSES, id_weight=0.25, triplet_weight=triplet_weight, margin=0.3,
                                label_smoothing=0.1, i2t_terms=terms)
    loss, parts, correct = accumulated_step(model, criterion, images, pids, camids, viewids, scaler, None,
                                            accum_steps)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss, parts, int(correct), grads


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() / (a[k].abs().max().item() + 1e-12) for k in a)


@pytest.mark.parametrize('accum_steps', [2, 4])
def test_id_and_image_to_text_gradients_equal_the_full_batch(accum_steps):
    full_loss, full_parts, full_correct, full = gradients(1)
    loss, parts, correct, accumulated = gradients(accum_steps)
    assert len(full) > 10  # the image tower, SIE, necks and classifiers all received gradients
    assert max_difference(full, accumulated) < 1e-4
    assert loss.item() == pytest.approx(full_loss.item(), rel=1e-5)
    for name in ('id', 'i2t_0', 'i2t_1', 'i2t_2'):
        assert parts[name].item() == pytest.approx(full_parts[name].item(), rel=1e-5), name
    assert correct == full_correct


def test_triplet_mining_and_batchnorm_statistics_differ_from_the_full_batch():
    # Documented differences (README): batch-hard mining within a sub-batch, BatchNorm per sub-batch.
    assert max_difference(gradients(1, triplet_weight=1.0)[3], gradients(2, triplet_weight=1.0)[3]) > 1e-3
    assert max_difference(gradients(1, batchnorm_in_train_mode=True)[3],
                          gradients(2, batchnorm_in_train_mode=True)[3]) > 1e-3


def test_sub_batches_keep_whole_identities():
    assert sub_batches(16, 2) == [slice(0, 8), slice(8, 16)]
    assert check_sub_batches(16, 2, 4) == ''
    assert 'at least 2 whole identities' in check_sub_batches(16, 4, 4)  # 4 images = 1 identity
    assert check_sub_batches(24, 3, 4) == ''  # 8 images: 2 identities
    assert check_sub_batches(24, 4, 4)  # 6 images: an identity would be cut in two


def test_accum_steps_is_validated():
    with pytest.raises(UserError, match=r'SOLVER.STAGE2.ACCUM_STEPS = 4: must split SOLVER.STAGE2.IMS_PER_BATCH'):
        load_config('', ['SOLVER.STAGE2.IMS_PER_BATCH', '16', 'DATALOADER.NUM_INSTANCE', '4',
                         'SOLVER.STAGE2.ACCUM_STEPS', '4'])
    with pytest.raises(UserError, match='SOLVER.STAGE2.ACCUM_STEPS = 0: must be an integer >= 1'):
        load_config('', ['SOLVER.STAGE2.ACCUM_STEPS', '0'])
    assert load_config('', ['SOLVER.STAGE2.ACCUM_STEPS', '8']).SOLVER.STAGE2.ACCUM_STEPS == 8  # 64 = 8 x 2 x 4
