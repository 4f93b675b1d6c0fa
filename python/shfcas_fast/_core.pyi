"""Type stubs of the compiled core (``rust/lib.rs``); checked by ``mypy.stubtest``."""

from typing import Any

import numpy as np
import numpy.typing as npt

_FloatArray = npt.NDArray[np.float64] | npt.NDArray[np.float32]

__all__ = [
    "__version__",
    "Z_EPSILON",
    "DEGENERATE_STD",
    "DEGENERATE_RELATIVE_STD",
    "first_non_finite",
    "pacs",
    "score",
    "kendall_tau_grouped",
    "kendall_tau",
    "top_k",
    "stable_group_order",
    "group_keys",
    "score_keys",
    "hash_keys",
    "pacs_reordered",
    "score_reordered",
    "kendall_tau_reordered",
    "num_threads",
    "build_info",
]

__version__: str
#: Added to each standard deviation before dividing, as in the paper.
Z_EPSILON: float
#: A prompt whose log-prob or reward standard deviation is below this is degenerate.
DEGENERATE_STD: float
#: A prompt of n items whose standard deviation is at most n * this * |mean| is degenerate too.
DEGENERATE_RELATIVE_STD: float

def first_non_finite(values: _FloatArray) -> int | None: ...
def pacs(
    logprobs: _FloatArray, rewards: _FloatArray, offsets: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]: ...
#: The score outputs: (z_logprob, z_reward, pacs, group_conflict, kendall_tau, degenerate).
_ScoreArrays = tuple[
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64],
    npt.NDArray[np.bool_],
]

def score(logprobs: _FloatArray, rewards: _FloatArray, offsets: npt.NDArray[np.int64]) -> _ScoreArrays: ...
def kendall_tau_grouped(
    x: _FloatArray, y: _FloatArray, offsets: npt.NDArray[np.int64]
) -> npt.NDArray[np.float64]: ...
def kendall_tau(x: _FloatArray, y: _FloatArray) -> float: ...
def top_k(scores: _FloatArray, k: int) -> npt.NDArray[np.int64]: ...
def stable_group_order(ids: npt.NDArray[np.int64], num_groups: int) -> npt.NDArray[np.int64]: ...

_IntArray = npt.NDArray[np.int64]
#: (order [n], or for score_keys index [n]; sizes [g], first_rows [g], contiguous): see ``shfcas_fast.KeyGroups``.
_Grouping = tuple[_IntArray, _IntArray, _IntArray, bool]

#: Prompt keys as the core reads them: an integer array, fixed-width strings as (data, width,
#: strip_unit), or Arrow string chunks as [(offsets, data)].
_Keys = (
    npt.NDArray[np.int64]
    | npt.NDArray[np.int32]
    | npt.NDArray[np.uint64]
    | npt.NDArray[np.uint32]
    | tuple[npt.NDArray[np.uint8], int, int]
    | list[tuple[npt.NDArray[np.int32] | npt.NDArray[np.int64], npt.NDArray[np.uint8]]]
)

def group_keys(keys: _Keys, hash_mask: int = ...) -> _Grouping: ...
def score_keys(
    keys: _Keys, logprobs: _FloatArray, rewards: _FloatArray, wanted: str, hash_mask: int = ...
) -> tuple[_ScoreArrays, _Grouping]: ...
def hash_keys(keys: _Keys, hash_mask: int = ...) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]: ...
def pacs_reordered(
    logprobs: _FloatArray, rewards: _FloatArray, order: _IntArray, offsets: _IntArray
) -> npt.NDArray[np.float64]: ...
def score_reordered(
    logprobs: _FloatArray, rewards: _FloatArray, order: _IntArray, offsets: _IntArray
) -> _ScoreArrays: ...
def kendall_tau_reordered(
    x: _FloatArray, y: _FloatArray, order: _IntArray, offsets: _IntArray
) -> npt.NDArray[np.float64]: ...
def num_threads() -> int: ...
def build_info() -> dict[str, Any]: ...
