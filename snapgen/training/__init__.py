"""The one training engine (`fit`) and the pieces every stage and CLI share; see engine.py."""

from .engine import (EngineOptions, Models, Phase, Stage, UNHASHED_OPTIONS, dist_info, ema_update, fit,
                     hashed_options, process_rank, step_generator)

__all__ = ["EngineOptions", "Models", "Phase", "Stage", "UNHASHED_OPTIONS", "dist_info", "ema_update", "fit",
           "hashed_options", "process_rank", "step_generator"]
