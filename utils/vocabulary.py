"""The project's shared vocabulary: views, evaluation protocols and their removal rules, prompt
template keys and output file names. Everything that needs one of these names imports it from here.

A protocol names which queries and which gallery images take part (the dataset decides that) and
which gallery images are removed for each query (the removal rule, applied by the evaluator):
- ``same_view``: the query's identity seen in the query's view (MSSL S2G and G2S, CARGO AG);
- ``same_camera``: the query's identity seen by the query's camera (MSSL DDC, Market-1501, the
  protocol-list loaders);
- ``none``: nothing is removed.
"""
from __future__ import annotations

GROUND = 0
SKY = 1
VIEW_IDS = {'ground': GROUND, 'sky': SKY}
VIEW_NAMES = {GROUND: 'ground', SKY: 'sky'}

SAME_VIEW = 'same_view'
SAME_CAMERA = 'same_camera'
REMOVE_NOTHING = 'none'
REMOVAL_RULES = (SAME_VIEW, SAME_CAMERA, REMOVE_NOTHING)

# TEST.EVAL_MODE value that runs every protocol the dataset declares, from one feature extraction.
ALL_PROTOCOLS = 'ALL'

# MSSL's protocols and their removal rules (the published evaluator's).
MSSL_REMOVAL = {'S2G': SAME_VIEW, 'G2S': SAME_VIEW, 'DDC': SAME_CAMERA}
# The view whose queries a view-specific MSSL protocol uses.
MSSL_QUERY_VIEW = {'S2G': SKY, 'G2S': GROUND}
# Every query against the whole gallery, the query's identity in the query's camera removed: MSSL's
# DDC, and the one protocol of the single-view datasets (Market-1501, MSMT17, DukeMTMC-reID, VeRi-776).
DDC = 'DDC'
# VehicleID: one protocol per random draw of its gallery (trial1, trial2, ...), reported together as
# the mean and sample standard deviation over the draws under the name TRIALS.
TRIAL_PREFIX = 'trial'
TRIALS = 'trials'

# Text views: 'all' is the single CLIP-ReID prompt, 'sky' / 'ground' the MSP view prompts.
TEXT_VIEWS = ('all', 'sky', 'ground')
PROMPT_TEMPLATE_KEYS = {'all': 'PROMPT_TEMPLATE', 'sky': 'PROMPT_TEMPLATE_SKY', 'ground': 'PROMPT_TEMPLATE_GROUND'}

# Metrics written for every protocol, in this order.
METRIC_KEYS = ('mAP', 'rank1', 'rank5', 'rank10', 'mINP')

# Output file names.
TRAIN_LOG = 'train_log.txt'
TEST_LOG = 'test_log.txt'
STAGE1_CACHE = 'stage1_text_features.pt'
RESUME_FILE = 'resume.pth'
# The resume state of the epoch before, kept when resume.pth is rewritten (a fallback if it is damaged).
PREVIOUS_RESUME_FILE = 'resume.prev.pth'
# Lock files: the training run that holds OUTPUT_DIR, and the run writing its result files now.
TRAINING_LOCK = 'train.lock'
RESULTS_LOCK = 'results.lock'
METRICS_JSONL = 'metrics.jsonl'
RESULTS_TABLE = 'results.md'
CMC_PLOT = 'cmc.png'
TRAINING_CURVES = 'training_curves.png'
MANIFEST_FILE = 'manifest.json'
TENSORBOARD_DIR = 'tensorboard'
# tools/experiment.py's outputs: its description, one folder per seed, the summary over the seeds.
EXPERIMENT_FILE = 'experiment.json'
SUMMARY_JSON = 'summary.json'
SUMMARY_CSV = 'summary.csv'
SUMMARY_TABLE = 'summary.md'
SUMMARY_PLOT = 'summary.png'
# search_clipreid.py's outputs.
SEARCH_CSV = 'search_results.csv'
SEARCH_JSON = 'search_results.json'
SEARCH_FEATURES = 'search_features.npz'
SEARCH_PICTURE = 'search_ranked.png'


def results_file(protocol: str) -> str:
    return f'results_{protocol}.json'


def features_file(protocol: str) -> str:
    return f'features_{protocol}.npz'


def ranked_file(protocol: str) -> str:
    return f'ranked_{protocol}.png'


def seed_folder(seed: int) -> str:
    return f'seed_{seed}'


# Breakdowns of a protocol (evaluation/breakdown.py) and the columns of their CSV files.
BREAKDOWN_COLUMNS = {
    'cameras': ('query_camera', 'gallery_camera', 'queries', 'valid_queries', 'mAP', 'rank1'),
    'views': ('query_view', 'gallery_view', 'queries', 'valid_queries', 'mAP', 'rank1'),
    'hours': ('hour', 'queries', 'valid_queries', 'mAP', 'rank1'),
}
# tools/attention_maps.py: one picture per image (its name + this suffix) and one grid of all.
ATTENTION_SUFFIX = '_attention.png'
ATTENTION_GRID = 'attention_maps.png'


def breakdown_file(protocol: str, kind: str) -> str:
    """breakdown_<protocol>_<kind>.csv, kind one of BREAKDOWN_COLUMNS."""
    return f'breakdown_{protocol}_{kind}.csv'


def breakdown_heatmap_file(protocol: str) -> str:
    return f'breakdown_{protocol}_cameras.png'


def embedding_file(protocol: str) -> str:
    return f'embedding_{protocol}.png'


def checkpoint_file(model_name: str, epoch: int) -> str:
    return f'{model_name}_{epoch}.pth'
