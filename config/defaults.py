"""Every configuration key, its default and what it means.

A YAML file (`--config_file`) and `KEY VALUE` pairs on the command line override these defaults;
`config.load_config` merges both and validates the result (`config/validate.py`).
"""
from yacs.config import CfgNode as CN

_C = CN()

# ---------------------------------------------------------------------------------------------
# MODEL
# ---------------------------------------------------------------------------------------------
_C.MODEL = CN()
# 'auto' = CUDA when available, else CPU; or an explicit torch device string ('cpu', 'cuda', 'cuda:1').
_C.MODEL.DEVICE = 'auto'
# open_clip architecture name of an OpenAI CLIP: 'ViT-B-16' (the published recipe) or another ViT, 'RN50'
# (CLIP-ReID's CNN backbone) or another ResNet; or 'ViT-Tiny-16' / 'RN-Tiny' (tiny randomly initialised
# models of the two families for the demo and the tests).
_C.MODEL.NAME = 'ViT-B-16'
# Local OpenAI CLIP checkpoint (TorchScript archive or state dict). Empty: open_clip's own resolution of
# the 'openai' pretrained tag (its cache, or a download when online).
_C.MODEL.PRETRAIN_PATH = ''
# Stride of the patch embedding [height, width]; smaller than the patch size gives overlapping patches
# (the seed's commands use [12, 12]). ViT only: a ResNet keeps [16, 16].
_C.MODEL.STRIDE_SIZE = [16, 16]
# Side-information embedding (SIE) added to the class token: a learnable table per camera, per view or
# per (camera, view), scaled by SIE_COE. ViT only (as in CLIP-ReID): a ResNet has no class token.
_C.MODEL.SIE_CAMERA = False
_C.MODEL.SIE_VIEW = False
_C.MODEL.SIE_COE = 3.0
# Prompt templates; consecutive 'X' words are replaced by learnable per-identity context vectors.
# The number of fixed tokens before them is derived from the template.
# 'all' text view (single-prompt CLIP-ReID): empty = the training dataset's own, as CLIP-ReID chooses
# it: 'A photo of a X X X X vehicle.' for veri and vehicleid, 'A photo of a X X X X person.' for the
# others (the log and the saved config show the one used). 'sky' view (drone images), 'ground' view.
_C.MODEL.PROMPT_TEMPLATE = ''
_C.MODEL.PROMPT_TEMPLATE_SKY = 'A sky photo of a X X X X person.'
_C.MODEL.PROMPT_TEMPLATE_GROUND = 'A ground photo of a X X X X person.'
# Stage-2 loss = ID_LOSS_WEIGHT * ID + TRIPLET_LOSS_WEIGHT * triplet + sum of image-to-text terms.
_C.MODEL.ID_LOSS_WEIGHT = 0.25
_C.MODEL.TRIPLET_LOSS_WEIGHT = 1.0
# Label smoothing (epsilon 0.1) for the ID and image-to-text cross-entropies: 'on' or 'off'.
_C.MODEL.IF_LABELSMOOTH = 'on'
# Image-to-text terms, one per position in these three tuples: cross-entropy of the images of view
# I2T_IMAGE_VIEWS[i] ('all', 'sky', 'ground') against the per-identity text features of text view
# I2T_TEXT_VIEWS[i] ('all' = PROMPT_TEMPLATE, 'sky', 'ground'), weighted by I2T_LOSS_WEIGHTS[i].
# Stage 1 learns the text views that have a non-zero weight. The defaults are the published MSP terms:
# all images vs ground text (1.0), ground images vs sky text (0.1), single prompt (0.0).
# CLIP-ReID baseline: ('all',), ('all',), (1.0,). No-text baseline: all weights 0 (stage 1 skipped).
_C.MODEL.I2T_TEXT_VIEWS = ('ground', 'sky', 'all')
_C.MODEL.I2T_IMAGE_VIEWS = ('all', 'ground', 'all')
_C.MODEL.I2T_LOSS_WEIGHTS = (1.0, 0.1, 0.0)

# ---------------------------------------------------------------------------------------------
# INPUT
# ---------------------------------------------------------------------------------------------
_C.INPUT = CN()
# Image size [height, width] for training and for testing.
_C.INPUT.SIZE_TRAIN = [256, 128]
_C.INPUT.SIZE_TEST = [256, 128]
# Horizontal-flip probability, random-erasing probability and padding before the random crop.
_C.INPUT.PROB = 0.5
_C.INPUT.RE_PROB = 0.5
_C.INPUT.PADDING = 10
# Normalisation: (x - mean) / std per channel of the 0-1 image. The published recipe uses 0.5 / 0.5
# (not CLIP's statistics, 0.481 0.458 0.408 / 0.269 0.261 0.276, which a model trained here can also use).
_C.INPUT.PIXEL_MEAN = [0.5, 0.5, 0.5]
_C.INPUT.PIXEL_STD = [0.5, 0.5, 0.5]

# ---------------------------------------------------------------------------------------------
# DATASETS
# ---------------------------------------------------------------------------------------------
_C.DATASETS = CN()
# 'mssl', 'agreid' (AG-ReID v1), 'agreid_v2', 'cargo', 'g2aps_reid', 'lagper', CLIP-ReID's 'market1501',
# 'msmt17', 'dukemtmcreid' (or CLIP-ReID's name 'dukemtmc'), 'occ_duke', 'veri', 'vehicleid' (or
# 'VehicleID'), or 'csv' (your own dataset from CSV files). Layouts and protocols: README.md, "Datasets".
_C.DATASETS.NAMES = 'mssl'
# Folder holding the dataset's split folders (for MSSL: bounding_box_train, bounding_box_test, query) and,
# for the datasets that ship them, the protocol lists (for AG-ReID.v2 the outer AG-ReID.v2/ folder).
_C.DATASETS.ROOT_DIR = 'data/mssl'
# Cross-dataset testing: the datasets to evaluate on, comma-separated names as in NAMES (e.g.
# 'agreid' or 'agreid,cargo'), each read from the folder at the same place in TEST_ROOT_DIR (comma-
# separated too). Used by test_clipreid.py and by training's evaluations; results go to
# OUTPUT_DIR/test_<name>/. Empty: evaluate on the training dataset, results in OUTPUT_DIR.
_C.DATASETS.TEST_NAMES = ''
_C.DATASETS.TEST_ROOT_DIR = ''
# VehicleID's test set: the vehicles of train_test_split/test_list_<size>.txt, 800, 1600 or 2400.
_C.DATASETS.VEHICLEID_TEST_SIZE = 800

# ---------------------------------------------------------------------------------------------
# DATALOADER
# ---------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
# Worker processes per data loader (0 = load in the main process); capped at the CPUs available.
_C.DATALOADER.NUM_WORKERS = 8
# K, the images per identity in a P x K training batch (P = SOLVER.STAGE2.IMS_PER_BATCH / K).
_C.DATALOADER.NUM_INSTANCE = 4
# False: an unreadable image stops the run naming the file. True: it is skipped and counted.
_C.DATALOADER.SKIP_BAD_IMAGES = False

# ---------------------------------------------------------------------------------------------
# SOLVER
# ---------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# Seed of every random number generator (model init, sampler, augmentation).
_C.SOLVER.SEED = 1234
# Mixed precision of training (stage 1's feature pass and prompt steps, stage 2's steps). On CUDA:
# 'fp16' = the published choice (fp16 autocast with a gradient scaler), 'bf16' (bf16 autocast, no scaler
# needed), 'auto' (bf16 where the GPU supports it, else fp16) or 'off' (fp32). On CPU only an explicit
# 'bf16' applies (fast on CPUs with AVX512-BF16 or AMX, slow on others; docs/BENCHMARKS.md); 'auto' and
# 'fp16' run in fp32 there. Evaluation during training follows TEST.AMP, not this key.
_C.SOLVER.AMP = 'auto'
# torch.compile the model for the stage-2 training steps. The first steps are slower while it compiles
# (about a minute for ViT-B-16); the steps after are faster (docs/BENCHMARKS.md). Needs a C++ compiler
# on CPU and Triton on CUDA.
_C.SOLVER.COMPILE = False
# Continue an interrupted training run: '' = start afresh; 'auto' = OUTPUT_DIR/resume.pth when it exists
# (else start afresh); or the path of a resume.pth. Every stage-2 epoch rewrites OUTPUT_DIR/resume.pth
# (weights, optimizer, scheduler, AMP scaler, epoch, RNG states, stage-1 text features); an epoch cut off
# part-way is trained again from its start, with the same result.
_C.SOLVER.RESUME = ''
# Keep only the newest N {MODEL.NAME}_{epoch}.pth weights checkpoints of a run; 0 = keep them all.
_C.SOLVER.KEEP_CHECKPOINTS = 0
# Deterministic mode: PyTorch's deterministic algorithms only (an operation without one stops the run,
# naming it), cuDNN's deterministic kernels without autotuning, and CUBLAS_WORKSPACE_CONFIG ':4096:8'
# (unless already set), so that two runs with the same seed on the same machine give identical weights.
# It costs speed (docs/training.md, "Deterministic mode"); off, a run differs from another in about the
# last digits of its floats, and that grows over epochs.
_C.SOLVER.DETERMINISTIC = False

# Stage 1: per-identity prompt learning, one text view at a time; encoders frozen; stepped per epoch.
_C.SOLVER.STAGE1 = CN()
_C.SOLVER.STAGE1.IMS_PER_BATCH = 64
# 'Adam', 'AdamW' or 'SGD'.
_C.SOLVER.STAGE1.OPTIMIZER_NAME = 'Adam'
_C.SOLVER.STAGE1.BASE_LR = 0.00035
_C.SOLVER.STAGE1.WEIGHT_DECAY = 1e-4
# Epochs per text view; cosine schedule from BASE_LR to LR_MIN after a linear warm-up of WARMUP_EPOCHS
# from WARMUP_LR_INIT.
_C.SOLVER.STAGE1.MAX_EPOCHS = 120
_C.SOLVER.STAGE1.WARMUP_EPOCHS = 5
_C.SOLVER.STAGE1.WARMUP_LR_INIT = 0.00001
_C.SOLVER.STAGE1.LR_MIN = 1e-6
# Log every LOG_PERIOD iterations.
_C.SOLVER.STAGE1.LOG_PERIOD = 50

# Stage 2: re-ID fine-tuning of the image tower; stepped per epoch.
_C.SOLVER.STAGE2 = CN()
_C.SOLVER.STAGE2.IMS_PER_BATCH = 64
# Gradient accumulation: each batch of IMS_PER_BATCH goes forward and backward in ACCUM_STEPS sub-batches
# of whole identities (one optimizer step per batch), so the published batch of 64 fits a smaller GPU.
# ID and image-to-text gradients equal the full batch's; triplet mining and BatchNorm statistics see
# only a sub-batch (README, "Out of memory"). IMS_PER_BATCH / ACCUM_STEPS must hold at least 2 whole
# identities of DATALOADER.NUM_INSTANCE images.
_C.SOLVER.STAGE2.ACCUM_STEPS = 1
_C.SOLVER.STAGE2.OPTIMIZER_NAME = 'Adam'
_C.SOLVER.STAGE2.BASE_LR = 0.00001
# SGD momentum (unused by Adam/AdamW).
_C.SOLVER.STAGE2.MOMENTUM = 0.9
_C.SOLVER.STAGE2.WEIGHT_DECAY = 1e-4
# Biases get BASE_LR * BIAS_LR_FACTOR and WEIGHT_DECAY_BIAS.
_C.SOLVER.STAGE2.BIAS_LR_FACTOR = 2.0
_C.SOLVER.STAGE2.WEIGHT_DECAY_BIAS = 1e-4
# Triplet margin.
_C.SOLVER.STAGE2.MARGIN = 0.3
_C.SOLVER.STAGE2.MAX_EPOCHS = 60
# Multi-step decay: the LR is multiplied by GAMMA at each epoch in STEPS, after a warm-up of
# WARMUP_EPOCHS ('linear' from WARMUP_FACTOR * BASE_LR, or 'constant' at it).
_C.SOLVER.STAGE2.STEPS = [30, 50]
_C.SOLVER.STAGE2.GAMMA = 0.1
_C.SOLVER.STAGE2.WARMUP_FACTOR = 0.1
_C.SOLVER.STAGE2.WARMUP_EPOCHS = 10
_C.SOLVER.STAGE2.WARMUP_METHOD = 'linear'
# Save a checkpoint every CHECKPOINT_PERIOD epochs (and after the last), log every LOG_PERIOD
# iterations, evaluate every EVAL_PERIOD epochs (and after the last).
_C.SOLVER.STAGE2.CHECKPOINT_PERIOD = 60
_C.SOLVER.STAGE2.LOG_PERIOD = 50
_C.SOLVER.STAGE2.EVAL_PERIOD = 5

# ---------------------------------------------------------------------------------------------
# TEST
# ---------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.IMS_PER_BATCH = 64
# Re-ID checkpoint to evaluate (test_clipreid.py); '' = the CLIP backbone without re-ID training.
_C.TEST.WEIGHT = ''
# A protocol the test dataset declares (MSSL: 'S2G' sky queries, 'G2S' ground queries, 'DDC' all queries;
# the others: README.md, "Datasets") or 'ALL': every protocol it declares, from one feature extraction.
_C.TEST.EVAL_MODE = 'ALL'
# Precision of test feature extraction (test_clipreid.py and the evaluations during training): 'off' =
# fp32, as the published test path; 'bf16', 'fp16' or 'auto' as SOLVER.AMP (faster on a GPU, features
# differ in about the third significant digit).
_C.TEST.AMP = 'off'
# Test feature: last-block and projected class tokens concatenated, 'before' or 'after' the BN necks.
_C.TEST.NECK_FEAT = 'before'
# L2-normalise the test features before ranking.
_C.TEST.FEAT_NORM = True
# k-reciprocal re-ranking of the distances, with its k1, k2 and lambda.
_C.TEST.RE_RANKING = False
_C.TEST.RE_RANKING_K1 = 20
_C.TEST.RE_RANKING_K2 = 6
_C.TEST.RE_RANKING_LAMBDA = 0.3
# Also write features_<MODE>.npz (query/gallery features, ids, cameras, views, paths): in testing, and in
# training at each evaluation (the file then holds the latest one's).
_C.TEST.SAVE_FEATURES = False
# Draw ranked lists (OUTPUT_DIR/ranked_<MODE>.png): for VISUALIZE_QUERIES queries per mode (a third
# of them easy, the rest the hardest, i.e. lowest AP), the top VISUALIZE_TOPK gallery images with a
# green (same identity) or red (another identity) border, labelled with camera and sky/ground view.
_C.TEST.VISUALIZE = False
_C.TEST.VISUALIZE_QUERIES = 8
_C.TEST.VISUALIZE_TOPK = 10
# VehicleID: how many times its gallery (one random image per test vehicle) is drawn, from SOLVER.SEED;
# each draw is the protocol trial<k>, and results_trials.json / results.md give the mean and sample
# standard deviation over the draws (CLIP-ReID averages 10).
_C.TEST.VEHICLEID_TRIALS = 10
# With TEST.VISUALIZE: under each query of the ranked lists, where the model looks (attention rollout of the
# class token for ViT, Grad-CAM for CNN image encoders; tools/attention_maps.py draws them for any image).
_C.TEST.ATTENTION_MAPS = False
# Where a model fails, computed by the evaluator in its ranking pass: breakdown_<MODE>_cameras.csv (each
# query camera against the gallery of each camera, after the protocol's removal rule) and its heatmap
# breakdown_<MODE>_cameras.png, breakdown_<MODE>_views.csv (sky/ground query view x gallery view) and, for
# MSSL, breakdown_<MODE>_hours.csv (by the hour the query was taken). docs/evaluation.md.
_C.TEST.BREAKDOWN = True
# embedding_<MODE>.png: a t-SNE map of the test features of up to EMBEDDING_MAP_IDS identities (colour:
# identity, marker: sky or ground view, queries outlined).
_C.TEST.EMBEDDING_MAP = False
_C.TEST.EMBEDDING_MAP_IDS = 20

# ---------------------------------------------------------------------------------------------
# LOG
# ---------------------------------------------------------------------------------------------
_C.LOG = CN()
# Write TensorBoard event files to OUTPUT_DIR/tensorboard/ (`tensorboard --logdir OUTPUT_DIR`): the losses
# and their parts, learning rates, accuracy and every evaluation's metrics, of stage 1 and stage 2; the
# same numbers as OUTPUT_DIR/metrics.jsonl. Needs the tensorboard package.
_C.LOG.TENSORBOARD = True

# ---------------------------------------------------------------------------------------------
# Where logs, stage-1 text features, checkpoints and results go.
_C.OUTPUT_DIR = 'logs/mssl_msp'


def get_defaults() -> CN:
    return _C.clone()
