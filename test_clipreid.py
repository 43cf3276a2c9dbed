"""Evaluate a re-ID checkpoint (TEST.WEIGHT) in one protocol of the test dataset (MSSL: S2G, G2S, DDC)
or ALL of them; on the training dataset, or on those of DATASETS.TEST_NAMES.

    python test_clipreid.py --config_file configs/person/vit_clipreid.yml TEST.EVAL_MODE S2G TEST.WEIGHT path.pth
"""
import sys

from model import make_model
from model.checkpoint_meta import config_differences
from processor.run import Run
from processor.test_sets import evaluate_test_sets
from reporting.metrics_log import log_evaluation
from utils.checkpoint import load_checkpoint_file
from utils.device import deterministic_operations_only
from utils.errors import UserError, exit_on_user_error
from utils.vocabulary import TEST_LOG
from processor.settings import description_settings, model_settings


def load_reid_checkpoint(path: str) -> tuple[dict, dict | None]:
    """(state dict, the checkpoint's model description or None)."""
    checkpoint = load_checkpoint_file(path, f"TEST.WEIGHT '{path}'")
    state = checkpoint.get('model', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise UserError(f"TEST.WEIGHT '{path}' holds no state dict")
    return state, (checkpoint.get('meta') if state is not checkpoint else None)


@exit_on_user_error
def main(argv=None) -> dict:
    with Run(argv, 'Evaluate a CLIP-ReID / MSP re-ID model', TEST_LOG, 'msp.test') as run, \
            deterministic_operations_only():
        return evaluate(run)


def evaluate(run: Run) -> dict:
    cfg, dataset, device, logger = run.cfg, run.dataset, run.device, run.logger
    weight = cfg.TEST.WEIGHT
    state, meta = load_reid_checkpoint(weight) if weight else (None, None)
    for difference in config_differences(meta, description_settings(cfg)):
        logger.warning(f"{weight} was trained with {difference}: the features may not be what it learnt")
    model = make_model(model_settings(cfg), dataset.num_train_pids, dataset.num_train_cams, dataset.num_train_views,
                       load_pretrained=state is None)
    if state is not None:
        model.load_image_state_dict(state, for_test=True)
        logger.info(f"loaded re-ID weights from {weight}")
    else:
        logger.info('TEST.WEIGHT is empty: evaluating the CLIP backbone without re-ID training')
    with run.manifest.stage('evaluation'):
        metrics = evaluate_test_sets(cfg, model.to(device), run.test_sets, device, logger, run.test_amp_dtype,
                                     save_features=cfg.TEST.SAVE_FEATURES,
                                     details={'weights': weight or '(none: the CLIP backbone without re-ID training)'})
    log_evaluation(cfg.OUTPUT_DIR, metrics, weight=weight)
    return metrics


if __name__ == '__main__':
    main(sys.argv[1:])
