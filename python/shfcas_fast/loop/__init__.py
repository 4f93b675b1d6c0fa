"""The SHF-CAS loop on TRL: sampling, oracles, preference pairs, reward-model and policy refinement,
evaluation, a conflict-monitoring callback, and the embedded synthetic safety task (the experiment on
it is :mod:`shfcas_fast.experiments`).

Example:
```python
>>> from shfcas_fast.loop import SHFCASConfig, preference_pairs
>>> list(preference_pairs(["q ", "q "], ["worse", "better"], [-1.0, 1.0], group_sizes=2)["chosen"])
['better']

```

Needs the ``trl`` extra (``pip install shfcas-fast[trl]``).
"""

from __future__ import annotations

from .callback import ConflictMonitorCallback
from .evaluation import conflict_summary, evaluate_policy
from .loop import STAGES, SHFCASConfig, SHFCASLoop
from .oracles import CallableOracle, FileOracle, LabelsPending, Oracle, RewardModelOracle, label_key
from .policy import refine_policy_dpo, refine_policy_grpo
from .preference import preference_pairs
from .reward_model import fresh_copy, train_reward_model
from .run_directory import claim_output_dir, write_text_atomic
from .sampling import SampledCompletions, model_prompts, sample_completions

__all__ = [
    "STAGES",
    "CallableOracle",
    "ConflictMonitorCallback",
    "FileOracle",
    "LabelsPending",
    "Oracle",
    "RewardModelOracle",
    "SHFCASConfig",
    "SHFCASLoop",
    "SampledCompletions",
    "claim_output_dir",
    "conflict_summary",
    "evaluate_policy",
    "fresh_copy",
    "label_key",
    "model_prompts",
    "preference_pairs",
    "refine_policy_dpo",
    "refine_policy_grpo",
    "sample_completions",
    "train_reward_model",
    "write_text_atomic",
]
