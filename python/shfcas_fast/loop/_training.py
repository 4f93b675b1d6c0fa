"""Running a TRL trainer the way every stage of the loop does, with the user's trainer settings."""

from __future__ import annotations

import copy
from typing import Any, TypeVar

import torch
from transformers import PrinterCallback, Trainer, TrainingArguments

ArgsT = TypeVar("ArgsT", bound=TrainingArguments)

#: Trainer settings that change how a run is watched, not what it computes: a resumed run may change them.
COSMETIC_TRAINER_SETTINGS = frozenset(
    {
        "output_dir",
        "logging_dir",
        "logging_strategy",
        "logging_steps",
        "logging_first_step",
        "report_to",
        "run_name",
        "disable_tqdm",
        "save_strategy",
        "save_steps",
        "log_level",
        "log_level_replica",
        "log_completions",
    }
)


def hardware_defaults() -> dict[str, Any]:
    """Settings for a trainer config the user did not give: bf16 where the GPU supports it, fp32 elsewhere
    (TRL defaults to bf16, which a CPU-only machine refuses)."""
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "report_to": "none", "save_strategy": "no"}


def stage_args(args: ArgsT, *, output_dir: str, seed: int) -> ArgsT:
    """A copy of the user's ``args`` with the stage's own output directory and seed; nothing else changes.

    A shallow copy with attributes set, not ``dataclasses.replace``: TRL configs derive fields in
    ``__post_init__`` (GRPO's generation batch size) and refuse to be built again from derived values.
    """
    staged = copy.copy(args)
    staged.output_dir = output_dir
    staged.seed = seed
    staged.data_seed = seed
    return staged


def recorded_settings(args: TrainingArguments) -> dict[str, Any]:
    """What a run directory records of a trainer config: its class and every setting that changes results."""
    settings = {key: value for key, value in args.to_dict().items() if key not in COSMETIC_TRAINER_SETTINGS}
    return {"class": type(args).__name__, **settings}


def train_and_return_model(trainer: Trainer) -> Any:
    """Train, then return the trained model in eval mode.

    Conflict monitors are moved to the front of the trainer's callbacks, so that the metrics they add to
    a log reach the loggers of ``report_to`` (TensorBoard, W&B), which run after them. Without progress
    bars (``disable_tqdm``) transformers prints every metrics dict instead; the loop's stages are short
    and many, so that printer is dropped to keep the output readable.
    """
    from .callback import ConflictMonitorCallback

    ConflictMonitorCallback.run_first(trainer)
    if trainer.args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
    trainer.train()
    if trainer.model is None:
        raise RuntimeError(f"{type(trainer).__name__} returned no model")
    return trainer.model.eval()
