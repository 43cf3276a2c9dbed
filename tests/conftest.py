import pytest

from datasets.synthetic_mssl import generate

# A fast training recipe on the tiny model and tiny images, shared by the processor and CLI tests.
TINY_OPTS = [
    'MODEL.NAME', 'ViT-Tiny-16', 'MODEL.DEVICE', 'cpu', 'MODEL.STRIDE_SIZE', '[12, 12]',
    'MODEL.SIE_CAMERA', 'True', 'MODEL.SIE_VIEW', 'True', 'MODEL.SIE_COE', '0.5',
    'INPUT.SIZE_TRAIN', '[64, 32]', 'INPUT.SIZE_TEST', '[64, 32]', 'INPUT.PADDING', '4',
    'DATALOADER.NUM_WORKERS', '0', 'DATALOADER.NUM_INSTANCE', '4',
    'SOLVER.STAGE1.IMS_PER_BATCH', '16', 'SOLVER.STAGE1.MAX_EPOCHS', '3', 'SOLVER.STAGE1.WARMUP_EPOCHS', '1',
    'SOLVER.STAGE1.BASE_LR', '0.003',
    'SOLVER.STAGE2.IMS_PER_BATCH', '16', 'SOLVER.STAGE2.MAX_EPOCHS', '2', 'SOLVER.STAGE2.WARMUP_EPOCHS', '1',
    'SOLVER.STAGE2.STEPS', '[2]', 'SOLVER.STAGE2.BASE_LR', '0.0005', 'SOLVER.STAGE2.EVAL_PERIOD', '2',
    'SOLVER.STAGE2.CHECKPOINT_PERIOD', '2', 'TEST.IMS_PER_BATCH', '32',
]


@pytest.fixture(scope='session')
def tiny_mssl(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp('tiny_mssl')
    generate(str(root), train_ids=8, test_ids=4, images_per_view=4, seed=3, overwrite=True)
    return str(root)


def tiny_opts(root: str, output_dir: str, *extra: str) -> list:
    return [*TINY_OPTS, 'DATASETS.NAMES', 'mssl', 'DATASETS.ROOT_DIR', root, 'OUTPUT_DIR', output_dir, *extra]
