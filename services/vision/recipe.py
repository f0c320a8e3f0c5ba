"""The training recipe of the vision CNN, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights. The defaults are the recipe `make up` trains."""

    epochs: int = 10
    batch_size: int = 128
    max_learning_rate: float = 4e-3
    weight_decay: float = 5e-4
    width: int = 16
    hidden: int = 128
    dropout: float = 0.3
    downsample: str = "stride"
    seed: int = 0
    train_limit: int = 0

    @property
    def hyperparameters(self) -> dict:
        """The architecture's constructor arguments."""
        return {"width": self.width, "hidden": self.hidden, "dropout": self.dropout, "downsample": self.downsample}
