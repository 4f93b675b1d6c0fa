"""The engine's public scoring API: PACS, Kendall tau-b, top-k and conflict-aware selection.

All heavy work runs in the compiled Rust core (``shfcas_fast._core``) with the interpreter released.
Definitions follow SHF-CAS (Liu et al., 2025): per prompt, z-scores of the log-probs ``l`` and the
rewards ``r`` with the population standard deviation, ``z = (v - mean) / (std + 1e-8)``;
``PACS = z_r - z_l``; the prompt's conflict is ``mean |PACS|``; Kendall's tau-b between ``l`` and
``r``. A prompt is *degenerate* (its PACS and conflict are 0 and it is never selected) when it has
fewer than two completions, or when the log-probs or the rewards have no usable spread: for ``n``
values, ``std < 1e-6``, or ``std <= n * 2.2e-16 * |mean|`` (float64's epsilon): a spread that small
is within the rounding error of the computed mean, so a constant prompt counts as constant at any
magnitude. Below ``|mean| = 1e-6 / (n * 2.2e-16)`` (5.6e8 for 8 completions) only the first rule
matters. Moments are taken in float64 on values scaled by a power of two where needed, so every
finite input, up to 1.8e308, gives the right z-scores.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Literal, get_args

import numpy as np

from . import _core
from .errors import ShfcasSelectionWarning, ShfcasTypeError, ShfcasValueError
from .grouping import CoreKeys, KeyGroups, _group, core_keys, groups_from_core, num_core_keys
from ._validation import as_count, as_float_pair, as_float_vector, as_seed, group_offsets

__all__ = [
    "STRATEGIES",
    "Strategy",
    "check_strategy",
    "default_threshold",
    "strategy_measure",
    "ConflictScores",
    "KeyedConflictScores",
    "PromptScores",
    "pacs",
    "kendall_tau",
    "kendall_distance",
    "top_k",
    "score",
    "select",
    "DEFAULT_PACS_THRESHOLD",
    "DEFAULT_KENDALL_THRESHOLD",
    "DEFAULT_MIN_GROUP_SIZE",
]

#: The paper's selection rule: a prompt is high-conflict when mean |PACS| > 1.0.
DEFAULT_PACS_THRESHOLD = 1.0
#: Ours: a Kendall distance above 0.5 means more discordant than concordant pairs (tau_b < 0).
DEFAULT_KENDALL_THRESHOLD = 0.5
#: pacs/kendall selection never chooses a prompt with fewer completions (see :func:`select`).
DEFAULT_MIN_GROUP_SIZE = 3

#: How prompts are chosen for feedback: ``"pacs"`` (highest mean |PACS|, SHF-CAS), ``"kendall"``
#: (highest Kendall distance) or ``"random"`` (uniform, the paper's baseline; needs a budget). The
#: one definition every part of the package (select, the CLI, the loop, the demo, reports) uses.
Strategy = Literal["pacs", "kendall", "random"]
STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)


@dataclasses.dataclass(frozen=True, eq=False)
class PromptScores:
    """Conflict measures of ``g`` prompts: everything :func:`select` needs.

    ``group_conflict`` (mean |PACS|), ``kendall_tau`` (tau-b, NaN where scipy gives NaN),
    ``kendall_distance`` ((1 - tau_b) / 2) and ``degenerate`` (fewer than two completions, or a
    log-prob or reward standard deviation ``std`` of ``n`` values with ``std < 1e-6`` or
    ``std <= n * 2.2e-16 * |mean|``, the rounding error of their mean), each of length ``g``;
    ``group_sizes`` (int64 ``[g]``, completions per prompt; ``None`` where the maker did not know
    them), which lets :func:`select` leave out prompts too small to measure conflict.
    """

    group_conflict: np.ndarray
    kendall_tau: np.ndarray
    kendall_distance: np.ndarray
    degenerate: np.ndarray
    group_sizes: np.ndarray | None = dataclasses.field(default=None, kw_only=True)

    @property
    def num_groups(self) -> int:
        return int(self.group_conflict.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class ConflictScores(PromptScores):
    """Conflict scores of ``n`` completions grouped into ``g`` prompts.

    The per-prompt fields of :class:`PromptScores`, and per completion (length ``n``):
    ``z_logprob``, ``z_reward`` (per-prompt z-scores, population standard deviation) and the signed
    ``pacs = z_reward - z_logprob`` (0 in degenerate prompts).
    """

    pacs: np.ndarray
    z_logprob: np.ndarray
    z_reward: np.ndarray

    @property
    def num_items(self) -> int:
        return int(self.pacs.shape[0])

    @property
    def prompt_index(self) -> np.ndarray:
        """int64 ``[n]``: the prompt of each completion (computed from ``group_sizes``)."""
        if self.group_sizes is None:
            raise ShfcasValueError("these scores carry no group_sizes, so their completions cannot be mapped to prompts")
        return np.repeat(np.arange(self.num_groups, dtype=np.int64), self.group_sizes)


@dataclasses.dataclass(frozen=True, eq=False)
class KeyedConflictScores(ConflictScores):
    """Conflict scores of completions grouped by prompt key (``score(..., groups=keys)``).

    Per-completion fields are in the input row order; per-prompt fields in order of the keys' first
    appearance. ``groups`` is the :class:`~shfcas_fast.KeyGroups` that maps rows to prompts.
    """

    groups: KeyGroups

    @property
    def prompt_index(self) -> np.ndarray:
        """int64 ``[n]``: the prompt of each completion, ``groups.index``."""
        return self.groups.index


def _raw_keys(group_sizes: Any, groups: Any, n: int) -> CoreKeys | None:
    """``groups`` as the core reads them when it holds prompt keys (not a :class:`KeyGroups`, and no
    ``group_sizes``): such rows are grouped and scored in one core call. None otherwise."""
    if group_sizes is not None or groups is None or isinstance(groups, KeyGroups):
        return None
    keys = core_keys(groups, "groups")
    num_keys = num_core_keys(keys)
    if num_keys != n:
        raise ShfcasValueError(f"groups has {num_keys} keys but there are {n} items")
    return keys


def _grouping(group_sizes: Any, groups: Any, n: int) -> tuple[np.ndarray, KeyGroups | None]:
    """The group offsets of ``n`` items and, for keyed groups, their :class:`KeyGroups`."""
    if group_sizes is not None and groups is not None:
        raise ShfcasValueError(
            "pass either group_sizes= (the rows of each prompt are contiguous) or groups= "
            "(one prompt key per row), not both"
        )
    if groups is None:
        if group_sizes is None:
            raise ShfcasValueError(
                "pass group_sizes= (sizes of contiguous prompts, or one int) or groups= (one prompt key per row)"
            )
        return group_offsets(group_sizes, n), None
    key_groups = groups if isinstance(groups, KeyGroups) else _group(groups, "groups")
    if key_groups.num_rows != n:
        raise ShfcasValueError(f"groups has {key_groups.num_rows} keys but there are {n} items")
    return key_groups.offsets, key_groups



def check_strategy(strategy: object, *, budget: int | None, threshold: float | None) -> None:
    """Raise a ShfcasValueError unless ``strategy`` is a :data:`Strategy` whose rules ``budget`` and
    ``threshold`` follow (``"random"`` needs a budget and takes no threshold)."""
    if strategy not in STRATEGIES:
        names = ", ".join(f'"{name}"' for name in STRATEGIES[:-1]) + f' or "{STRATEGIES[-1]}"'
        raise ShfcasValueError(f"strategy must be {names}, got {strategy!r}")
    if strategy == "random":
        if budget is None:
            raise ShfcasValueError('strategy="random" needs a budget')
        if threshold is not None:
            raise ShfcasValueError('strategy="random" takes no threshold')


def strategy_measure(scores: PromptScores, strategy: Strategy) -> tuple[str, np.ndarray]:
    """The name and values of the per-prompt score ``strategy`` ranks by (``random`` is described by
    conflict), and :func:`default_threshold` gives its paper-style cut."""
    if strategy == "kendall":
        return "kendall_distance", scores.kendall_distance
    return "group_conflict", scores.group_conflict


def default_threshold(strategy: Strategy) -> float | None:
    """The threshold ``strategy`` uses when given neither a budget nor a threshold (None for random)."""
    return {"pacs": DEFAULT_PACS_THRESHOLD, "kendall": DEFAULT_KENDALL_THRESHOLD}.get(strategy)


def pacs(logprobs: Any, rewards: Any, group_sizes: Any = None, *, groups: Any = None) -> np.ndarray:
    """Signed Proxy-Policy Alignment Conflict Score of every completion.

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> shfcas_fast.pacs(np.array([-3.0, -1.0]), np.array([1.0, 0.0]), 2)  # 1e-8 added to each std
    array([ 1.99999997, -1.99999997])
    >>> shfcas_fast.pacs(np.array([-3.0, 5.0, -1.0]), np.array([1.0, 2.0, 0.0]), groups=["a", "b", "a"])
    array([ 1.99999997,  0.        , -1.99999997])

    ```

    Args:
        logprobs: sequence log-probabilities ``l`` under the policy, shape ``[n]``.
        rewards: proxy rewards ``r`` (higher is better), shape ``[n]``.
        group_sizes: completions per prompt, an int or ``g`` sizes summing to ``n``; the
            completions of one prompt are contiguous.
        groups: instead of ``group_sizes``, the prompt key of each completion, rows in any order
            (anything :func:`~shfcas_fast.group_keys` takes, or its :class:`~shfcas_fast.KeyGroups`).

    Returns:
        float64 ``[n]`` in row order: ``z_r - z_l`` per prompt, 0 in degenerate prompts.
    """
    lp, rw = as_float_pair(logprobs, rewards, "logprobs", "rewards")
    keys = _raw_keys(group_sizes, groups, lp.shape[0])
    if keys is not None:
        (_, _, pacs_values, _, _, _), _ = _core.score_keys(keys, lp, rw, "pacs")
        return pacs_values
    offsets, key_groups = _grouping(group_sizes, groups, lp.shape[0])
    if key_groups is None or key_groups.contiguous:
        return _core.pacs(lp, rw, offsets)
    return _core.pacs_reordered(lp, rw, key_groups.order, offsets)


def kendall_tau(x: Any, y: Any, group_sizes: Any = None, *, groups: Any = None) -> Any:
    """Kendall's tau-b, exactly as ``scipy.stats.kendalltau`` (ties corrected).

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> shfcas_fast.kendall_tau(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0]))
    0.33333333333333337

    ```

    Without ``group_sizes`` or ``groups``: one float over all ``n`` items in O(n log n), NaN when
    either vector is constant or shorter than 2. With ``group_sizes`` (contiguous groups) or
    ``groups`` (a key per item, items in any order; see :func:`~shfcas_fast.group_keys`): float64
    ``[g]``, one tau-b per group, keyed groups in order of first appearance. Integer inputs are
    ranked exactly, also beyond 2**53 where float64 would tie distinct values.
    """
    xa, ya = as_float_pair(x, y, "x", "y", exact_order=True)
    if group_sizes is None and groups is None:
        return float(_core.kendall_tau(xa, ya))
    keys = _raw_keys(group_sizes, groups, xa.shape[0])
    if keys is not None:
        (_, _, _, _, tau, _), _ = _core.score_keys(keys, xa, ya, "kendall")
        return tau
    offsets, key_groups = _grouping(group_sizes, groups, xa.shape[0])
    if key_groups is None or key_groups.contiguous:
        return _core.kendall_tau_grouped(xa, ya, offsets)
    return _core.kendall_tau_reordered(xa, ya, key_groups.order, offsets)


def kendall_distance(x: Any, y: Any, group_sizes: Any = None, *, groups: Any = None) -> Any:
    """Kendall distance ``(1 - tau_b) / 2`` in [0, 1]; same arguments and shapes as :func:`kendall_tau`."""
    return (1.0 - kendall_tau(x, y, group_sizes, groups=groups)) / 2.0


def top_k(scores: Any, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, by score descending, ties to the lower index.

    NaN is never chosen; when fewer than ``k`` non-NaN values exist, all of them are returned.

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> shfcas_fast.top_k(np.array([0.5, np.nan, 2.0, 0.5]), 2)
    array([2, 0])

    ```
    """
    k = as_count(k, "k")
    values = as_float_vector(scores, "scores", finite=False)
    return _core.top_k(values, k)


def score(logprobs: Any, rewards: Any, group_sizes: Any = None, *, groups: Any = None) -> ConflictScores:
    """Every SHF-CAS conflict measure of grouped completions, in one parallel pass.

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> rng = np.random.default_rng(0)
    >>> scores = shfcas_fast.score(rng.normal(size=80), rng.normal(size=80), 8)
    >>> scores.group_conflict.shape, scores.pacs.shape
    ((10,), (80,))
    >>> prompts = np.array(["p2", "p1", "p2", "p3", "p1", "p3"])  # rows of a prompt apart
    >>> keyed = shfcas_fast.score(rng.normal(size=6), rng.normal(size=6), groups=prompts)
    >>> keyed.group_sizes.tolist(), prompts[keyed.groups.first_rows].tolist(), keyed.prompt_index.tolist()
    ([2, 2, 2], ['p2', 'p1', 'p3'], [0, 1, 0, 2, 1, 2])

    ```

    Args:
        logprobs: sequence log-probabilities under the policy, ``[n]``.
        rewards: proxy rewards, higher is better (negate a cost model first), ``[n]``.
        group_sizes: completions per prompt (an int, or ``g`` sizes summing to ``n``), the
            completions of each prompt contiguous: the fast path.
        groups: instead of ``group_sizes``, the prompt key of each completion, rows in any order
            (anything :func:`~shfcas_fast.group_keys` takes, or its :class:`~shfcas_fast.KeyGroups`).

    Returns:
        A :class:`ConflictScores`; with ``groups``, a :class:`KeyedConflictScores` whose per-completion
        fields are in row order, per-prompt fields in order of first appearance, and ``groups`` maps
        rows to prompts.
    """
    lp, rw = as_float_pair(logprobs, rewards, "logprobs", "rewards")
    keys = _raw_keys(group_sizes, groups, lp.shape[0])
    if keys is not None:
        arrays, (index, sizes, first_rows, contiguous) = _core.score_keys(keys, lp, rw, "all")
        key_groups = groups_from_core(sizes, first_rows, contiguous, index=index)
        return KeyedConflictScores(**core_score_fields(arrays), group_sizes=sizes, groups=key_groups)
    offsets, grouped_keys = _grouping(group_sizes, groups, lp.shape[0])
    if grouped_keys is None:
        return ConflictScores(**core_score_fields(_core.score(lp, rw, offsets)), group_sizes=np.diff(offsets))
    if grouped_keys.contiguous:
        arrays = _core.score(lp, rw, offsets)
    else:
        arrays = _core.score_reordered(lp, rw, grouped_keys.order, offsets)
    return KeyedConflictScores(**core_score_fields(arrays), group_sizes=grouped_keys.sizes, groups=grouped_keys)


def core_score_fields(arrays: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """The fields of a :class:`ConflictScores`, but ``group_sizes``, from the core's score arrays
    ``(z_logprob, z_reward, pacs, group_conflict, kendall_tau, degenerate)``."""
    z_logprob, z_reward, pacs_values, conflict, tau, degenerate = arrays
    return dict(
        pacs=pacs_values,
        z_logprob=z_logprob,
        z_reward=z_reward,
        group_conflict=conflict,
        kendall_tau=tau,
        kendall_distance=(1.0 - tau) / 2.0,
        degenerate=degenerate,
    )


def select(
    scores: PromptScores,
    *,
    budget: int | None = None,
    threshold: float | None = None,
    strategy: Strategy = "pacs",
    seed: int = 0,
    min_group_size: int | None = None,
) -> np.ndarray:
    """Indices of the prompts (groups) to send for feedback.

    Example:
    ```python
    >>> import numpy as np, shfcas_fast
    >>> rng = np.random.default_rng(0)
    >>> scores = shfcas_fast.score(rng.normal(size=800), rng.normal(size=800), 8)
    >>> len(shfcas_fast.select(scores, budget=5))
    5

    ```

    Strategies:
        - ``"pacs"``: groups with ``group_conflict > threshold`` (1.0 when neither ``budget`` nor
          ``threshold`` is given), the ``budget`` highest if a budget is given; highest first.
        - ``"kendall"``: the same on ``kendall_distance`` (default threshold 0.5).
        - ``"random"``: ``budget`` non-degenerate groups drawn uniformly from ``seed`` (the paper's
          baseline), in increasing index order.

    Degenerate groups are never chosen, nor groups of fewer than ``min_group_size`` completions
    (default 3 for ``"pacs"`` and ``"kendall"``, no limit for ``"random"``). Small prompts would
    otherwise win on chance alone: with two completions the population z-scores are +-1, so
    ``|PACS|`` is 0 or 2 for both and mean ``|PACS|`` is 0 or 2, and tau-b is +-1 (Kendall distance
    0 or 1). A prompt of two whose completions disagree once scores as "maximally conflicted", above
    any threshold below the maximum; when log-prob and reward are unrelated that is half of all such
    prompts. From three completions on, the scores take graded values (tau-b in {-1, -1/3, 1/3, 1}
    at three, with the extreme -1 only 1 time in 6 by chance).

    When the threshold rule selects more than half of the prompts, a
    :class:`~shfcas_fast.errors.ShfcasSelectionWarning` says so: at that point the threshold hardly
    separates conflicted prompts from the rest.

    Args:
        scores: a :class:`ConflictScores` from :func:`score` (or :class:`PromptScores`).
        budget: at most this many prompts.
        threshold: only prompts scoring above this.
        strategy: ``"pacs"``, ``"kendall"`` or ``"random"``.
        seed: the random strategy's seed.
        min_group_size: prompts with fewer completions are never chosen; 0 or 1 for no limit. Needs
            ``scores.group_sizes``.
    """
    if not isinstance(scores, PromptScores):
        raise ShfcasTypeError(f"scores must be a ConflictScores from shfcas_fast.score, got {type(scores).__name__}")
    if budget is not None:
        budget = as_count(budget, "budget")
    if threshold is not None:
        if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, (int, float, np.integer, np.floating)):
            raise ShfcasTypeError(f"threshold must be a number, got {type(threshold).__name__}")
        try:
            threshold = float(threshold)
        except OverflowError:
            raise ShfcasValueError("threshold must be finite, got an int beyond the float range") from None
        if not math.isfinite(threshold):
            raise ShfcasValueError(f"threshold must be finite, got {threshold!r}")
    check_strategy(strategy, budget=budget, threshold=threshold)
    eligible = ~np.asarray(scores.degenerate, dtype=bool) & _large_enough(scores, strategy, min_group_size)

    if strategy == "random":
        assert budget is not None  # check_strategy
        candidates = np.flatnonzero(eligible)
        take = min(budget, candidates.shape[0])
        chosen = np.random.default_rng(as_seed(seed)).choice(candidates, size=take, replace=False)
        return np.sort(chosen).astype(np.int64)

    _, values = strategy_measure(scores, strategy)
    if threshold is None and budget is None:
        threshold = default_threshold(strategy)
    # NaN marks what may not be chosen; top_k never returns NaN.
    masked = np.where(eligible, values, np.nan)
    if threshold is not None:
        masked = np.where(masked > threshold, masked, np.nan)
    k = budget if budget is not None else int(np.count_nonzero(~np.isnan(masked)))
    chosen = top_k(masked, k)
    if threshold is not None and 2 * chosen.shape[0] > scores.num_groups:
        warnings.warn(
            f"the {strategy} threshold {threshold:g} selected {chosen.shape[0]:,} of {scores.num_groups:,} prompts "
            f"(more than half), so it hardly tells conflicted prompts apart; raise the threshold or give a budget",
            ShfcasSelectionWarning,
            stacklevel=2,
        )
    return chosen


def _large_enough(scores: PromptScores, strategy: Strategy, min_group_size: int | None) -> np.ndarray | bool:
    """Which prompts have at least ``min_group_size`` completions (its default for ``strategy``)."""
    explicit = min_group_size is not None
    if min_group_size is None:
        min_group_size = 1 if strategy == "random" else DEFAULT_MIN_GROUP_SIZE
    min_group_size = as_count(min_group_size, "min_group_size")
    if min_group_size <= 1:
        return True
    if scores.group_sizes is None:
        if explicit:
            raise ShfcasValueError(
                "min_group_size needs the prompt sizes, and these scores carry no group_sizes; "
                "score with shfcas_fast.score, or pass group_sizes when building the scores"
            )
        warnings.warn(
            f"these scores carry no group_sizes, so prompts of fewer than {min_group_size} completions "
            "were not left out; score with shfcas_fast.score, or pass group_sizes when building the scores",
            ShfcasSelectionWarning,
            stacklevel=3,
        )
        return True
    sizes = np.asarray(scores.group_sizes)
    if sizes.shape != (scores.num_groups,):
        raise ShfcasValueError(f"scores.group_sizes has shape {sizes.shape}, want ({scores.num_groups},)")
    return sizes >= min_group_size
