from model.clip_loader import build_clip, load_clip
from model.make_model_clipreid import ReIDModel, make_model

__all__ = ['build_clip', 'load_clip', 'make_model', 'ReIDModel']
