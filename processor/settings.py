"""The config boundary: the explicit settings the rooms below processor/ take, read from the YACS config."""
from datasets.make_dataloader import LoaderSettings
from model.checkpoint_meta import DescriptionSettings
from model.make_model_clipreid import ModelSettings
from reporting.visualize import ReportSettings
from utils.vocabulary import PROMPT_TEMPLATE_KEYS


def model_settings(cfg) -> ModelSettings:
    return ModelSettings(
        name=cfg.MODEL.NAME, pretrain_path=cfg.MODEL.PRETRAIN_PATH, image_size=tuple(cfg.INPUT.SIZE_TRAIN),
        stride=tuple(cfg.MODEL.STRIDE_SIZE), sie_camera=cfg.MODEL.SIE_CAMERA, sie_view=cfg.MODEL.SIE_VIEW,
        sie_coe=cfg.MODEL.SIE_COE, neck_feat=cfg.TEST.NECK_FEAT,
        prompt_templates={view: getattr(cfg.MODEL, key) for view, key in PROMPT_TEMPLATE_KEYS.items()})


def description_settings(cfg) -> DescriptionSettings:
    return DescriptionSettings(
        model=model_settings(cfg), dataset=cfg.DATASETS.NAMES, size_test=tuple(cfg.INPUT.SIZE_TEST),
        pixel_mean=tuple(cfg.INPUT.PIXEL_MEAN), pixel_std=tuple(cfg.INPUT.PIXEL_STD))


def loader_settings(cfg) -> LoaderSettings:
    return LoaderSettings(
        size_train=tuple(cfg.INPUT.SIZE_TRAIN), size_test=tuple(cfg.INPUT.SIZE_TEST), prob_flip=cfg.INPUT.PROB,
        padding=cfg.INPUT.PADDING, re_prob=cfg.INPUT.RE_PROB, mean=tuple(cfg.INPUT.PIXEL_MEAN),
        std=tuple(cfg.INPUT.PIXEL_STD), num_workers=cfg.DATALOADER.NUM_WORKERS,
        train_batch=cfg.SOLVER.STAGE2.IMS_PER_BATCH, num_instance=cfg.DATALOADER.NUM_INSTANCE,
        test_batch=cfg.TEST.IMS_PER_BATCH, seed=cfg.SOLVER.SEED, skip_bad_images=cfg.DATALOADER.SKIP_BAD_IMAGES)


def report_settings(cfg) -> ReportSettings:
    return ReportSettings(
        output_dir=cfg.OUTPUT_DIR, dataset=cfg.DATASETS.NAMES, dataset_root=cfg.DATASETS.ROOT_DIR,
        model_name=cfg.MODEL.NAME, feat_norm=cfg.TEST.FEAT_NORM, visualize=cfg.TEST.VISUALIZE,
        visualize_queries=cfg.TEST.VISUALIZE_QUERIES, visualize_topk=cfg.TEST.VISUALIZE_TOPK,
        embedding_map=cfg.TEST.EMBEDDING_MAP, embedding_map_ids=cfg.TEST.EMBEDDING_MAP_IDS)
