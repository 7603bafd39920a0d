"""Training recipes and the accelerate-based trainer: ``facellm train --recipe default``."""

from .recipe import Recipe, RecipeError, StageRecipe
from .trainer import TrainError, Trainer, train

__all__ = ["Recipe", "RecipeError", "StageRecipe", "TrainError", "Trainer", "train"]
