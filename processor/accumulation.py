"""One stage-2 training step over SOLVER.STAGE2.ACCUM_STEPS sub-batches (gradient accumulation).

The P x K batch is cut into ACCUM_STEPS consecutive sub-batches of whole identities (each holds all K
images of its identities). Each sub-batch goes forward and backward on its own, so only one
sub-batch's activations are in memory at a time; the optimizer steps once per batch.

Each sub-batch's loss is weighted by its share of the full batch, term by term:
- ID: the batch mean over images -> weight (sub-batch images / batch images);
- image-to-text: the mean over the images of the term's view -> weight (that view's images in the
  sub-batch / in the batch);
so the summed gradients of these terms equal the full batch's (tests/test_accumulation.py), as long
as each image's output does not depend on the others. Two things do differ from a full batch:
- triplet: batch-hard mining only sees the sub-batch's identities (fewer, so easier, negatives);
  the sub-batches' triplet losses are averaged;
- BatchNorm (the necks before the classifiers): normalised with each sub-batch's statistics, and the
  running statistics are updated once per sub-batch.
"""
from __future__ import annotations

from contextlib import nullcontext

from loss.make_loss import image_view_mask
from utils.device import autocast


def sub_batches(batch_size: int, accum_steps: int) -> list:
    """Slices of `accum_steps` equal consecutive sub-batches (the caller checks divisibility)."""
    size = batch_size // accum_steps
    return [slice(i * size, (i + 1) * size) for i in range(accum_steps)]


def check_sub_batches(local_batch: int, accum_steps: int, num_instance: int) -> str:
    """'' when `local_batch` images split into `accum_steps` sub-batches of at least 2 whole identities,
    else why not."""
    if local_batch % accum_steps or (local_batch // accum_steps) % num_instance \
            or local_batch // accum_steps // num_instance < 2:
        return (f"SOLVER.STAGE2.ACCUM_STEPS {accum_steps} must split the {local_batch} images per process into "
                f"sub-batches of at least 2 whole identities of DATALOADER.NUM_INSTANCE ({num_instance}) images")
    return ''


def accumulated_step(net, criterion, images, pids, camids, viewids, scaler, amp_dtype, accum_steps: int):
    """Forward and backward over `accum_steps` sub-batches; the gradients are left for the optimizer.

    `criterion`: loss.make_loss.Stage2Criterion (its weights and image-to-text terms give each part's
    share). Returns (loss, parts, correct): the loss and its unweighted parts as the full batch's
    (summed over sub-batches with their shares; for the triplet, the mean), as detached tensors, and
    the number of images the first classifier got right.
    """
    if accum_steps == 1:  # the plain step
        with autocast(images.device, amp_dtype):
            out = net(images, cam_label=camids, view_label=viewids)
        loss, parts = criterion(out, pids, viewids)
        scaler.scale(loss).backward()
        correct = (out['cls_scores'][0].argmax(dim=1) == pids).sum()
        return loss.detach(), {name: part.detach() for name, part in parts.items()}, correct
    terms = criterion.terms()
    masks = [image_view_mask(viewids, image_view) for _, image_view, _ in terms]
    view_counts = [mask.sum().clamp(min=1) for mask in masks]
    weights = {'id': criterion.id_weight, 'triplet': criterion.triplet_weight,
               **{f'i2t_{k}': weight for k, (_, _, weight) in enumerate(terms)}}
    pieces = sub_batches(len(pids), accum_steps)
    no_sync = getattr(net, 'no_sync', None)  # DDP: all-reduce the gradients once, after the last piece
    loss_sum, part_sums, correct = 0.0, {}, 0
    for i, piece in enumerate(pieces):
        syncing = no_sync is None or i == len(pieces) - 1
        with nullcontext() if syncing else no_sync():
            with autocast(images.device, amp_dtype):
                out = net(images[piece], cam_label=camids[piece], view_label=viewids[piece])
            _, parts = criterion(out, pids[piece], viewids[piece])
            shares = {'id': len(pids[piece]) / len(pids), 'triplet': 1.0 / accum_steps}
            for k, mask in enumerate(masks):
                shares[f'i2t_{k}'] = mask[piece].sum() / view_counts[k]
            loss = sum(weights[name] * shares[name] * part for name, part in parts.items())
            scaler.scale(loss).backward()
        loss_sum = loss_sum + loss.detach()
        for name, part in parts.items():
            part_sums[name] = part_sums.get(name, 0.0) + shares[name] * part.detach()
        correct = correct + (out['cls_scores'][0].argmax(dim=1) == pids[piece]).sum()
    return loss_sum, part_sums, correct
