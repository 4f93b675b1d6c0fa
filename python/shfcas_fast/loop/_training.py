"""Running a TRL trainer the way every stage of the loop does."""

from __future__ import annotations

from typing import Any

from transformers import PrinterCallback, Trainer


def train_and_return_model(trainer: Trainer) -> Any:
    """Train, then return the trained model in eval mode.

    Without progress bars (``disable_tqdm``) transformers prints every metrics dict instead; the
    loop's stages are short and many, so that printer is dropped to keep the output readable.
    """
    if trainer.args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
    trainer.train()
    if trainer.model is None:
        raise RuntimeError(f"{type(trainer).__name__} returned no model")
    return trainer.model.eval()
