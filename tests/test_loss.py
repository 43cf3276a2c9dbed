import math

import pytest
import torch

from loss.make_loss import image_to_text_loss, stage2_loss
from loss.softmax_loss import CrossEntropyLabelSmooth
from loss.supcontrast import SupConLoss
from loss.triplet_loss import TripletLoss
from tests.helpers import HostSyncs


def smoothed_ce_by_hand(logits, targets, epsilon):
    total = 0.0
    for row, target in zip(logits, targets):
        num_classes = len(row)
        log_z = math.log(sum(math.exp(v) for v in row))
        for c, v in enumerate(row):
            weight = (1 - epsilon) * (c == target) + epsilon / num_classes
            total -= weight * (v - log_z)
    return total / len(logits)


def test_label_smoothing_2x3_by_hand():
    logits = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    targets = [1, 0]
    # row 0: log_z = log(e + e^2 + e^0.5); target weight 0.9 + 0.1/3, others 0.1/3
    log_z0 = math.log(math.e + math.e ** 2 + math.e ** 0.5)
    row0 = -((0.1 / 3) * (1.0 - log_z0) + (0.9 + 0.1 / 3) * (2.0 - log_z0) + (0.1 / 3) * (0.5 - log_z0))
    log_z1 = math.log(1 + math.e ** -1 + math.e ** 3)
    row1 = -((0.9 + 0.1 / 3) * (0.0 - log_z1) + (0.1 / 3) * (-1.0 - log_z1) + (0.1 / 3) * (3.0 - log_z1))
    expected = (row0 + row1) / 2
    assert expected == pytest.approx(smoothed_ce_by_hand(logits, targets, 0.1))
    loss = CrossEntropyLabelSmooth(num_classes=3, epsilon=0.1)(torch.tensor(logits, dtype=torch.float64),
                                                               torch.tensor(targets))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_label_smoothing_zero_epsilon_is_plain_cross_entropy():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 4, 2, 2])
    loss = CrossEntropyLabelSmooth(5, epsilon=0.0)(logits, targets)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-6)


def test_label_smoothing_empty_batch_is_zero_with_grad():
    logits = torch.zeros(0, 3, requires_grad=True)
    loss = CrossEntropyLabelSmooth(3)(logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert logits.grad is not None


def test_label_smoothing_gradient_flows():
    logits = torch.randn(3, 4, requires_grad=True)
    CrossEntropyLabelSmooth(4)(logits, torch.tensor([0, 1, 3])).backward()
    assert logits.grad.abs().sum() > 0


def triplet_by_hand(points, labels, margin):
    losses = []
    for i, (xi, li) in enumerate(zip(points, labels)):
        pos = [math.dist(xi, xj) for j, (xj, lj) in enumerate(zip(points, labels)) if lj == li and j != i]
        neg = [math.dist(xi, xj) for xj, lj in zip(points, labels) if lj != li]
        if not pos or not neg:
            continue
        d_ap, d_an = max(pos), min(neg)
        losses.append(max(0.0, d_ap - d_an + margin) if margin is not None else math.log1p(math.exp(d_ap - d_an)))
    return sum(losses) / len(losses)


POINTS = [[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [3.5, 0.0], [4.0, 1.0], [10.0, 0.0]]
LABELS = [0, 0, 0, 1, 1, 1]


def test_triplet_batch_hard_picks_hardest_pair():
    features = torch.tensor(POINTS, dtype=torch.float64)
    dist_ap, dist_an, valid = TripletLoss(0.3).hardest_pairs(features, torch.tensor(LABELS))
    assert valid.all()
    # anchor 0 (origin): farthest positive is (3,0), nearest negative is (3.5,0)
    assert dist_ap[0].item() == pytest.approx(3.0)
    assert dist_an[0].item() == pytest.approx(3.5)
    # anchor 3 (3.5,0): farthest positive (10,0), nearest negative (3,0)
    assert dist_ap[3].item() == pytest.approx(6.5)
    assert dist_an[3].item() == pytest.approx(0.5)


@pytest.mark.parametrize("margin", [0.3, 1.0, None])
def test_triplet_matches_hand_computation(margin):
    features = torch.tensor(POINTS, dtype=torch.float64)
    loss = TripletLoss(margin)(features, torch.tensor(LABELS))
    assert loss.item() == pytest.approx(triplet_by_hand(POINTS, LABELS, margin), rel=1e-6)


def test_triplet_skips_anchor_without_positive():
    points = POINTS + [[-5.0, 0.0]]
    labels = LABELS + [7]
    features = torch.tensor(points, dtype=torch.float64)
    loss = TripletLoss(0.3)(features, torch.tensor(labels))
    assert loss.item() == pytest.approx(triplet_by_hand(points, labels, 0.3), rel=1e-6)


def test_triplet_single_identity_is_zero_with_grad():
    features = torch.randn(4, 3, requires_grad=True)
    loss = TripletLoss(0.3)(features, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert features.grad is not None and torch.equal(features.grad, torch.zeros_like(features))


def test_triplet_gradient_flows_and_is_finite_with_duplicates():
    features = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.1, 0.0], [0.1, 0.0]], requires_grad=True)
    loss = TripletLoss(0.3)(features, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert loss.item() > 0
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_triplet_half_precision_grad_is_finite():
    features = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.1, 0.0], [0.1, 0.0]], dtype=torch.float16,
                            requires_grad=True)
    loss = TripletLoss(0.3)(features, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(features.grad.float()).all() and features.grad.float().abs().sum() > 0


def test_triplet_normalize_feature_uses_unit_vectors():
    features = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-3.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    loss = TripletLoss(0.3, normalize_feature=True)(features, labels)
    unit = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]
    assert loss.item() == pytest.approx(triplet_by_hand(unit, [0, 0, 1, 1], 0.3), rel=1e-6)


def supcon_by_hand(a, b, labels_a, labels_b):
    rows = []
    for ai, la in zip(a, labels_a):
        logits = [sum(x * y for x, y in zip(ai, bj)) for bj in b]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        positives = [v - log_z for v, lb in zip(logits, labels_b) if lb == la]
        rows.append(-sum(positives) / len(positives))
    return sum(rows) / len(rows)


def test_supcon_matches_hand_computation():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    labels_a, labels_b = [0, 1, 1, 2], [1, 0, 2, 1, 0]
    loss = SupConLoss()(a, b, torch.tensor(labels_a), torch.tensor(labels_b))
    assert loss.item() == pytest.approx(supcon_by_hand(a.tolist(), b.tolist(), labels_a, labels_b), rel=1e-10)


def test_supcon_symmetric_stage1_loss():
    gen = torch.Generator().manual_seed(2)
    img = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    txt = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 2])
    supcon = SupConLoss()
    i2t = supcon(img, txt, y, y)
    t2i = supcon(txt, img, y, y)
    # text->image normalises over the columns of img @ txt.T, so the two directions differ ...
    assert i2t.item() != pytest.approx(t2i.item())
    assert t2i.item() == pytest.approx(supcon_by_hand(txt.tolist(), img.tolist(), y.tolist(), y.tolist()))
    # ... but the stage-1 sum is the same whichever set is called "image"
    assert (i2t + t2i).item() == pytest.approx((supcon(txt, img, y, y) + supcon(img, txt, y, y)).item())


def test_supcon_large_logits_are_finite_and_grad_flows():
    # logits around 900: exp() overflows float32 unless the row max is subtracted
    a = torch.tensor([[30.0, 0.0], [0.0, 30.0]], requires_grad=True)
    b = torch.tensor([[30.0, 29.9], [29.9, 30.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    loss = SupConLoss()(a, b, y, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(supcon_by_hand(a.tolist(), b.tolist(), [0, 1], [0, 1]), rel=1e-4)
    assert a.grad is not None and b.grad is not None and torch.isfinite(a.grad).all()
    assert (a.grad.abs().sum() + b.grad.abs().sum()) > 0


def test_stage2_loss_weights_and_parts():
    gen = torch.Generator().manual_seed(3)
    scores = [torch.randn(4, 3, generator=gen, requires_grad=True) for _ in range(2)]
    feats = [torch.randn(4, 5, generator=gen, requires_grad=True) for _ in range(3)]
    targets = torch.tensor([0, 0, 2, 2])
    id_loss, triplet = CrossEntropyLabelSmooth(3), TripletLoss(0.3)
    total, parts = stage2_loss(scores, feats, targets, id_loss, triplet, id_weight=0.25, triplet_weight=2.0)
    expected_id = sum(id_loss(s, targets).item() for s in scores)
    expected_tri = sum(triplet(f, targets).item() for f in feats)
    assert parts["id"].item() == pytest.approx(expected_id, rel=1e-6)
    assert parts["triplet"].item() == pytest.approx(expected_tri, rel=1e-6)
    assert total.item() == pytest.approx(0.25 * expected_id + 2.0 * expected_tri, rel=1e-6)
    total.backward()
    assert all(s.grad is not None for s in scores) and all(f.grad is not None for f in feats)


def test_image_to_text_loss_uses_masked_images_only():
    gen = torch.Generator().manual_seed(4)
    image_proj = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    text = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    targets = torch.tensor([4, 1, 0, 2])
    mask = torch.tensor([True, False, False, True])
    loss = image_to_text_loss(image_proj, text, targets, mask, CrossEntropyLabelSmooth(5))
    logits = [[sum(x * y for x, y in zip(image_proj[i].tolist(), t)) for t in text.tolist()] for i in (0, 3)]
    assert loss.item() == pytest.approx(smoothed_ce_by_hand(logits, [4, 2], 0.1), rel=1e-10)


def test_image_to_text_loss_no_ground_image_is_zero_and_backward_works():
    image_proj = torch.randn(3, 4, requires_grad=True)
    text = torch.randn(6, 4, requires_grad=True)
    loss = image_to_text_loss(image_proj, text, torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.bool),
                              CrossEntropyLabelSmooth(6))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(image_proj.grad, torch.zeros_like(image_proj))
    assert torch.equal(text.grad, torch.zeros_like(text))


# --- the whole stage-2 objective, against a hand computation -------------------------------------

def _smoothed_ce_by_hand(logits, targets, eps=0.1):
    total = 0.0
    for row, target in zip(logits.tolist(), targets.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        log_p = [v - log_z for v in row]
        total += -sum(((1 - eps) * (j == target) + eps / len(row)) * lp for j, lp in enumerate(log_p))
    return total / len(targets)


def _batch_hard_triplet_by_hand(feats, targets, margin):
    rows = feats.tolist()
    labels = targets.tolist()
    losses = []
    for i, anchor in enumerate(rows):
        dist = [math.dist(anchor, other) for other in rows]
        pos = [d for j, d in enumerate(dist) if labels[j] == labels[i] and j != i]
        neg = [d for j, d in enumerate(dist) if labels[j] != labels[i]]
        if pos and neg:
            losses.append(max(0.0, max(pos) - min(neg) + margin))
    return sum(losses) / len(losses)


@pytest.mark.parametrize('view_ids', [[0, 1, 1, 0], [1, 1, 1, 1]], ids=['mixed', 'no-ground-images'])
def test_msp_stage2_loss_matches_hand_computation(view_ids):
    from loss.make_loss import msp_stage2_loss
    gen = torch.Generator().manual_seed(7)
    targets = torch.tensor([0, 0, 2, 2])
    views = torch.tensor(view_ids)
    out = {'cls_scores': [torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)],
           'feats': [torch.randn(4, 5, generator=gen) for _ in range(3)],
           'proj': torch.randn(4, 2, generator=gen)}
    ground_text, sky_text = torch.randn(3, 2, generator=gen), torch.randn(3, 2, generator=gen)
    terms = [(ground_text, 'all', 1.0), (sky_text, 'ground', 0.1)]
    total, parts = msp_stage2_loss(out, targets, views, terms, CrossEntropyLabelSmooth(3, 0.1),
                                   TripletLoss(margin=0.3), id_weight=0.25, triplet_weight=1.0)

    id_part = sum(_smoothed_ce_by_hand(s, targets) for s in out['cls_scores'])
    tri_part = sum(_batch_hard_triplet_by_hand(f, targets, 0.3) for f in out['feats'])
    i2t_all = _smoothed_ce_by_hand(out['proj'] @ ground_text.T, targets)
    ground = views == 0
    i2t_ground = _smoothed_ce_by_hand(out['proj'][ground] @ sky_text.T, targets[ground]) if ground.any() else 0.0
    expected = 0.25 * id_part + 1.0 * tri_part + 1.0 * i2t_all + 0.1 * i2t_ground
    assert parts['i2t_1'].item() == pytest.approx(i2t_ground, abs=1e-6)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert torch.isfinite(total)


def test_losses_read_nothing_on_the_host():
    """No `.item()`, `bool()` or boolean-mask indexing: on a GPU these would make the host wait each step.
    Covers the paths the training steps may not reach: soft margin, anchors and rows left out, empty masks."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(6, 4, generator=generator, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])  # identities 2 and 3 have no positive
    text = torch.randn(4, 4, generator=generator)
    some, none = torch.tensor([True, False] * 3), torch.zeros(6, dtype=torch.bool)
    with HostSyncs() as syncs:
        losses = [TripletLoss(0.3)(features, labels), TripletLoss(None)(features, labels),
                  TripletLoss(0.3)(features, torch.zeros(6, dtype=torch.long)),
                  SupConLoss()(features, text, labels, torch.arange(4)),
                  CrossEntropyLabelSmooth(4)(features, labels),
                  image_to_text_loss(features, text, labels, some, CrossEntropyLabelSmooth(4)),
                  image_to_text_loss(features, text, labels, none, CrossEntropyLabelSmooth(4))]
        sum(losses).backward()
    assert syncs.found == []
    assert all(bool(torch.isfinite(loss)) for loss in losses) and bool(torch.isfinite(features.grad).all())
