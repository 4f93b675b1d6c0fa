"""Input checking and coercion shared by the engine, the baseline and the CLI.

Every public function accepts 1-D numpy arrays or CPU torch tensors; these helpers turn them into
contiguous numpy arrays without copying when they can, and raise a :class:`~shfcas_fast.errors.ShfcasTypeError`/``ShfcasValueError``
that names the argument and the problem when they cannot.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# numpy loads numpy.ma lazily, on first use: import it with the package instead, so that no call into
# the engine imports a module (a fork while another thread is mid-import would leave the child
# waiting forever on that module's import lock).
import numpy.ma  # noqa: F401

from . import _core
from .errors import ShfcasTypeError, ShfcasValueError

__all__ = ["as_count", "as_seed", "as_float_vector", "as_float_pair", "group_offsets", "check_finite"]


_NUMPY_FLOAT_TENSORS = {"torch.float16", "torch.float32", "torch.float64"}
#: The largest count the core takes (its index type is 64-bit).
_LARGEST_COUNT = 2**63 - 1


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """Return ``value`` as a numpy array, sharing memory with CPU torch tensors.

    torch is never imported here: the engine works with numpy alone. A masked array is refused when
    anything is masked (its mask would be lost in every conversion) and read as its data otherwise.
    """
    if isinstance(value, np.ma.MaskedArray):
        return _unmasked_data(value, name)
    if isinstance(value, np.ndarray):
        return value
    module = type(value).__module__
    if module.startswith("torch"):
        if value.device.type != "cpu":
            raise ShfcasTypeError(
                f"{name} is a torch tensor on {value.device}; move it to the CPU first "
                f"(the GPU path is shfcas_fast.score_logits)"
            )
        if str(value.layout) != "torch.strided":
            raise ShfcasTypeError(f"{name} is a {value.layout} torch tensor; pass a dense one (tensor.to_dense())")
        value = value.detach()
        if value.dtype.is_floating_point and str(value.dtype) not in _NUMPY_FLOAT_TENSORS:
            value = value.float()  # bfloat16 and float8 have no numpy dtype
        try:
            return value.resolve_conj().resolve_neg().numpy()
        except (RuntimeError, TypeError) as err:  # quantized, nested and other tensors numpy cannot view
            raise ShfcasTypeError(f"{name} cannot be read as an array ({err}); pass a dense CPU tensor of real numbers") from None
    if isinstance(value, (str, bytes)):
        raise ShfcasTypeError(f"{name} must be a 1-D numeric array, got {type(value).__name__}")
    try:
        return np.asarray(value)
    except Exception as err:  # ragged lists and other unconvertible objects
        raise ShfcasTypeError(f"{name} must be a 1-D numeric array: {err}") from None


def _unmasked_data(value: np.ma.MaskedArray, name: str) -> np.ndarray:
    """The data of a masked array in which nothing is masked; else a ``ShfcasTypeError`` saying what to pass."""
    masked = np.flatnonzero(np.ma.getmaskarray(value))
    if masked.size:
        first = np.unravel_index(masked[0], value.shape)
        where = int(first[0]) if len(first) == 1 else tuple(int(i) for i in first)
        plural = "" if masked.size == 1 else "s"
        raise ShfcasTypeError(
            f"{name} is a masked array with {masked.size} masked value{plural} (the first at index {where}), "
            f"and its mask would be ignored; pass {name}.filled(value) to give them a value, or leave out "
            f"the masked rows ({name}.compressed(), with every other argument and the group sizes to match)"
        )
    return np.ma.getdata(value)


def as_float_vector(value: Any, name: str, *, finite: bool = True, exact_order: bool = False) -> np.ndarray:
    """Coerce ``value`` to a contiguous 1-D float32 or float64 array.

    float32 and float64 inputs are kept as they are (zero-copy when contiguous); integer and float16
    inputs are converted to float64; bool, complex, string and object inputs are refused.

    With ``exact_order`` (for rank statistics such as Kendall's tau), integers beyond +-2**53, which
    float64 would round and so make ties of distinct values, are replaced by their dense ranks
    (0, 1, 2, ... in order of value, equal values equal): the order and the ties stay exact.
    """
    array = _to_numpy(value, name)
    kind = array.dtype.kind
    if kind == "c":
        raise ShfcasTypeError(f"{name} has complex dtype {array.dtype}; pass real numbers")
    if kind == "b":
        raise ShfcasTypeError(f"{name} has dtype bool; pass real numbers")
    if kind not in "iuf":
        raise ShfcasTypeError(f"{name} must be numeric, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ShfcasValueError(f"{name} must be 1-D, got shape {tuple(array.shape)}")
    if exact_order and kind in "iu" and array.size and (array.max() > 2**53 or array.min() < -(2**53)):
        array = np.unique(array, return_inverse=True)[1].reshape(-1)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    array = np.ascontiguousarray(array)
    if finite:
        check_finite(array, name)
    return array


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming the first NaN or infinite element of a 1-D float array."""
    bad = _core.first_non_finite(array)
    if bad is not None:
        value = array[bad]
        what = "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")
        raise ShfcasValueError(f"{name}[{bad}] is {what}; every value must be finite")


def as_float_pair(
    x: Any, y: Any, x_name: str, y_name: str, *, exact_order: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Coerce two equal-length vectors to one common float dtype (``exact_order``: see :func:`as_float_vector`)."""
    xa = as_float_vector(x, x_name, exact_order=exact_order)
    ya = as_float_vector(y, y_name, exact_order=exact_order)
    if xa.shape[0] != ya.shape[0]:
        raise ShfcasValueError(
            f"{x_name} and {y_name} must have the same length, got {xa.shape[0]} and {ya.shape[0]}"
        )
    if xa.dtype != ya.dtype:
        xa = xa.astype(np.float64)
        ya = ya.astype(np.float64)
    return xa, ya


def group_offsets(group_sizes: Any, n: int, name: str = "group_sizes") -> np.ndarray:
    """Turn ``group_sizes`` (an int or a 1-D integer array) into int64 offsets of length g + 1.

    Group ``i`` holds items ``offsets[i]:offsets[i + 1]``. Zero-size groups are allowed.
    """
    if isinstance(group_sizes, (bool, np.bool_)):
        raise ShfcasTypeError(f"{name} must be an int or a 1-D integer array, got bool")
    if isinstance(group_sizes, (int, np.integer)):
        size = int(group_sizes)
        if size <= 0:
            raise ShfcasValueError(f"{name} must be positive when given as an int, got {size}")
        if n % size:
            raise ShfcasValueError(
                f"{name}={size} does not divide the number of items {n}; "
                f"pass one size per group instead"
            )
        return np.arange(0, n + 1, size, dtype=np.int64)
    sizes = _to_numpy(group_sizes, name)
    if sizes.ndim != 1:
        raise ShfcasValueError(f"{name} must be an int or a 1-D array, got shape {tuple(sizes.shape)}")
    if sizes.dtype.kind not in "iu" and sizes.size:  # an empty list arrives as float64
        raise ShfcasTypeError(f"{name} must hold integers, got dtype {sizes.dtype}")
    sizes = sizes.astype(np.int64, copy=False)
    if sizes.size and sizes.min() < 0:
        first = int(np.argmax(sizes < 0))
        raise ShfcasValueError(f"{name}[{first}] is {int(sizes[first])}; group sizes must be >= 0")
    offsets = np.zeros(sizes.shape[0] + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    if offsets[-1] != n:
        raise ShfcasValueError(f"{name} sums to {int(offsets[-1])} but there are {n} items")
    return offsets


def as_count(value: Any, name: str) -> int:
    """Check that ``value`` is an int in [0, 2**63 - 1] (``k``, ``budget``) and return it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ShfcasTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ShfcasValueError(f"{name} must be >= 0, got {value}")
    if value > _LARGEST_COUNT:
        raise ShfcasValueError(
            f"{name} must be at most 2**63 - 1, got a {int(value).bit_length()}-bit integer; "
            f"any count at least the number of candidates takes them all"
        )
    return int(value)


def as_seed(value: Any, name: str = "seed") -> int:
    """Check that ``value`` is a non-negative int (of any size) for ``numpy.random.default_rng`` and return it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ShfcasTypeError(f"{name} must be a non-negative int, got {type(value).__name__}")
    if value < 0:
        raise ShfcasValueError(f"{name} must be a non-negative int, got {value}")
    return int(value)
