"""Train MSP (or the CLIP-ReID / no-text baselines): stage 1 per text view, then stage 2.

    python train_clipreid.py --config_file configs/person/vit_clipreid.yml [KEY VALUE ...]
"""
import sys

from model import make_model
from processor.stage1 import run_stage1, text_views_to_learn
from processor.stage2 import train_stage2
from processor.test_sets import evaluate_test_sets
from datasets.make_dataloader import make_train_loader
from utils import distributed
from processor.resume import start_or_resume
from processor.run import Run
from utils.device import deterministic_operations_only, seed_everything
from utils.errors import exit_on_user_error
from utils.vocabulary import TRAIN_LOG
from reporting.visualize import write_training_curves
from processor.settings import loader_settings, model_settings


@exit_on_user_error
def main(argv=None) -> dict:
    # The run holds OUTPUT_DIR's training lock until it ends, however it ends.
    with Run(argv, 'Train a CLIP-ReID / MSP re-ID model', TRAIN_LOG, 'msp.train', training=True) as run, \
            deterministic_operations_only():
        return train(run)


def train(run: Run) -> dict:
    cfg, dataset, device, logger = run.cfg, run.dataset, run.device, run.logger
    distributed.require_divisible(cfg.SOLVER.STAGE2.IMS_PER_BATCH // cfg.DATALOADER.NUM_INSTANCE,
                                  'identities per stage-2 batch (SOLVER.STAGE2.IMS_PER_BATCH // DATALOADER.NUM_INSTANCE)')
    text_views = text_views_to_learn(cfg)
    resume = start_or_resume(cfg, logger, text_views)  # SOLVER.RESUME; None = start afresh
    if resume is not None:
        run.manifest.note(resumed_from_epoch=resume['epoch'])
    # Built first, so that a training set too small for a batch stops the run straight away.
    train_loader = make_train_loader(loader_settings(cfg), dataset.train, device, num_replicas=distributed.world_size(),
                                     rank=distributed.rank())
    model = make_model(model_settings(cfg), dataset.num_train_pids, dataset.num_train_cams, dataset.num_train_views,
                       text_views=text_views, load_pretrained=resume is None).to(device)
    if resume is not None:
        text_features = resume['text_features']  # the ones the interrupted run trained against
    else:
        with run.manifest.stage('stage1'):
            text_features = run_stage1(cfg, model, dataset.train, dataset.num_train_pids, device, logger,
                                       run.amp_dtype, dataset.train_by_view) if text_views else {}
    seed_everything(cfg.SOLVER.SEED)  # stage 2 starts alike whether stage 1 ran or came from its cache
    distributed.seed_per_rank(cfg.SOLVER.SEED)

    def evaluate_fn(trained_model):
        with run.manifest.stage('evaluation'):  # part of stage 2's time too
            return evaluate_test_sets(cfg, trained_model, run.test_sets, device, logger, run.test_amp_dtype,
                                      save_features=cfg.TEST.SAVE_FEATURES,
                                      details={'evaluated': 'the latest evaluation during training'})

    with run.manifest.stage('stage2'):
        result = train_stage2(cfg, model, text_features, train_loader, dataset.num_train_pids, device, logger,
                              evaluate_fn=evaluate_fn, amp_dtype=run.amp_dtype, resume=resume)
    write_training_curves(cfg.OUTPUT_DIR, logger)
    return result


if __name__ == '__main__':
    main(sys.argv[1:])
