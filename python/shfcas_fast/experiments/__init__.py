"""The SHF-CAS experiment: a gated synthetic testbed, every baseline arm, paired statistics and a report.

Example:
```python
>>> from shfcas_fast.experiments import ExperimentSettings
>>> ExperimentSettings.preset("fast").num_seeds
2

```

``shfcas demo`` runs it; :func:`run_experiment` gives the per-seed rows, :func:`summarise` the gates and
paired comparisons, :func:`write_report` the ``results.json``, Markdown page and plots. Needs the ``demo``
extra (``pip install shfcas-fast[demo]``).
"""

from __future__ import annotations

from .harness import reward_model_agreement, rso_pairs, run_experiment
from .settings import ARMS, Arm, ExperimentSettings

__all__ = ["ARMS", "Arm", "ExperimentSettings", "reward_model_agreement", "rso_pairs", "run_experiment"]
