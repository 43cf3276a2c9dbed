"""Train MSP (or the CLIP-ReID / no-text baselines): stage 1 per text view, then stage 2.

    python train_clipreid.py --config_file configs/person/vit_clipreid.yml [KEY VALUE ...]
"""
import sys

from model import make_model
from processor.inference import evaluate_model, write_results
from processor.processor_clipreid_stage1 import run_stage1, text_views_to_learn
from processor.processor_clipreid_stage2 import train_stage2
from datasets.make_dataloader import make_train_loader
from utils.cli import Run
from utils.errors import exit_on_user_error


@exit_on_user_error
def main(argv=None) -> dict:
    run = Run(argv, 'Train a CLIP-ReID / MSP re-ID model', 'train_log.txt', 'msp.train')
    cfg, dataset, device, logger = run.cfg, run.dataset, run.device, run.logger
    text_views = text_views_to_learn(cfg)
    model = make_model(cfg, dataset.num_train_pids, dataset.num_train_cams, dataset.num_train_views,
                       text_views=text_views, load_pretrained=True).to(device)
    text_features = run_stage1(cfg, model, dataset.train, dataset.num_train_pids, device, logger,
                               run.amp_dtype) if text_views else {}
    train_loader = make_train_loader(cfg, dataset.train, device)

    def evaluate_fn(trained_model):
        outcome = evaluate_model(cfg, trained_model, dataset, device, logger, run.amp_dtype)
        write_results(cfg.OUTPUT_DIR, outcome, save_features=False)
        return {mode: result['metrics'] for mode, result in outcome.items()}

    return train_stage2(cfg, model, text_features, train_loader, dataset.num_train_pids, device, logger,
                        evaluate_fn=evaluate_fn, amp_dtype=run.amp_dtype)


if __name__ == '__main__':
    main(sys.argv[1:])
