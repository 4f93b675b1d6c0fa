//! `shfcas_fast._core`: the compiled core of shfcas-fast.
//!
//! The algorithms are plain Rust functions in the modules below, unit-tested with `cargo test`; this
//! file only adapts them to Python: it borrows numpy arrays without copying, releases the
//! interpreter, runs the work in the engine's own thread pool, and turns every failure (a panic
//! included) into a Python exception.

pub mod buffers;
pub mod checks;
pub mod groups;
pub mod kendall;
pub mod keyed;
pub mod keys;
pub mod pool;
pub mod real;
pub mod scoring;
pub mod topk;

use std::panic::{catch_unwind, AssertUnwindSafe};

use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::pool::PoolError;
use crate::scoring::Wanted;

// Bad input raises the package's own error type (a ValueError subclass), like the Python checks.
pyo3::import_exception!(shfcas_fast.errors, ShfcasValueError);

/// A 1-D float array from Python, borrowed without copying.
#[derive(FromPyObject)]
enum FloatArray<'py> {
    F64(PyReadonlyArray1<'py, f64>),
    F32(PyReadonlyArray1<'py, f32>),
}

/// A contiguous view of a [`FloatArray`].
#[derive(Clone, Copy)]
enum FloatSlice<'a> {
    F64(&'a [f64]),
    F32(&'a [f32]),
}

impl<'py> FloatArray<'py> {
    fn as_slice(&self, name: &str) -> PyResult<FloatSlice<'_>> {
        let contiguous = |_| ShfcasValueError::new_err(format!("{name} must be a contiguous 1-D array"));
        Ok(match self {
            FloatArray::F64(a) => FloatSlice::F64(a.as_slice().map_err(contiguous)?),
            FloatArray::F32(a) => FloatSlice::F32(a.as_slice().map_err(contiguous)?),
        })
    }
}

impl FloatSlice<'_> {
    fn len(&self) -> usize {
        match self {
            FloatSlice::F64(s) => s.len(),
            FloatSlice::F32(s) => s.len(),
        }
    }
}

/// Two equal-length slices of one float type.
fn same_typed<'a>(x: FloatSlice<'a>, y: FloatSlice<'a>, names: (&str, &str)) -> PyResult<Pair<'a>> {
    if x.len() != y.len() {
        return Err(ShfcasValueError::new_err(format!(
            "{} and {} must have the same length, got {} and {}",
            names.0,
            names.1,
            x.len(),
            y.len()
        )));
    }
    match (x, y) {
        (FloatSlice::F64(a), FloatSlice::F64(b)) => Ok(Pair::F64(a, b)),
        (FloatSlice::F32(a), FloatSlice::F32(b)) => Ok(Pair::F32(a, b)),
        _ => Err(ShfcasValueError::new_err(format!(
            "{} and {} must have the same dtype",
            names.0, names.1
        ))),
    }
}

enum Pair<'a> {
    F64(&'a [f64], &'a [f64]),
    F32(&'a [f32], &'a [f32]),
}

impl Pair<'_> {
    fn len(&self) -> usize {
        match self {
            Pair::F64(a, _) => a.len(),
            Pair::F32(a, _) => a.len(),
        }
    }
}

/// Runs `work` without the interpreter, inside the engine's pool, turning panics into errors.
fn run_detached<R: Send>(py: Python<'_>, work: impl FnOnce() -> R + Send) -> PyResult<R> {
    py.detach(|| {
        let pool = pool::pool().map_err(|err| match err {
            PoolError::BadSetting(message) => ShfcasValueError::new_err(message),
            PoolError::Start(message) => PyRuntimeError::new_err(message),
        })?;
        catch_unwind(AssertUnwindSafe(|| pool.install(work))).map_err(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            PyRuntimeError::new_err(format!(
                "internal error in the shfcas_fast core (please report it): {message}"
            ))
        })
    })
}

/// (z_logprob, z_reward, pacs, group_conflict, kendall_tau, degenerate) as numpy arrays.
type ScoreArrays<'py> = (
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<bool>>,
);

/// How rows fall into prompts, for Python: a per-row array (the row order or each row's prompt),
/// sizes, first rows, and whether the rows are already contiguous.
type GroupingArrays<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    bool,
);

fn score_arrays(py: Python<'_>, s: scoring::Scores) -> ScoreArrays<'_> {
    (
        s.z_logprob.into_pyarray(py),
        s.z_reward.into_pyarray(py),
        s.pacs.into_pyarray(py),
        s.group_conflict.into_pyarray(py),
        s.kendall_tau.into_pyarray(py),
        s.degenerate.into_pyarray(py),
    )
}

/// Scores grouped items after checking the two arrays and the offsets.
fn score_grouped<'py>(
    py: Python<'py>,
    (x, y): (&FloatArray<'py>, &FloatArray<'py>),
    names: (&str, &str),
    offsets: &PyReadonlyArray1<'py, i64>,
    wanted: Wanted,
) -> PyResult<scoring::Scores> {
    let pair = same_typed(x.as_slice(names.0)?, y.as_slice(names.1)?, names)?;
    let offsets = offsets
        .as_slice()
        .map_err(|_| ShfcasValueError::new_err("offsets must be contiguous"))?;
    groups::validate_offsets(offsets, pair.len()).map_err(ShfcasValueError::new_err)?;
    run_detached(py, || match pair {
        Pair::F64(a, b) => scoring::score(a, b, offsets, wanted),
        Pair::F32(a, b) => scoring::score(a, b, offsets, wanted),
    })
}

/// Index of the first NaN or infinite value, or None.
#[pyfunction]
fn first_non_finite(py: Python<'_>, values: FloatArray<'_>) -> PyResult<Option<usize>> {
    let values = values.as_slice("values")?;
    run_detached(py, || match values {
        FloatSlice::F64(s) => checks::first_non_finite(s),
        FloatSlice::F32(s) => checks::first_non_finite(s),
    })
}

/// Signed PACS of every item.
#[pyfunction]
fn pacs<'py>(
    py: Python<'py>,
    logprobs: FloatArray<'py>,
    rewards: FloatArray<'py>,
    offsets: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let s = score_grouped(
        py,
        (&logprobs, &rewards),
        ("logprobs", "rewards"),
        &offsets,
        Wanted::PACS,
    )?;
    Ok(s.pacs.into_pyarray(py))
}

/// Every conflict measure: (z_logprob, z_reward, pacs, group_conflict, kendall_tau, degenerate).
#[pyfunction]
fn score<'py>(
    py: Python<'py>,
    logprobs: FloatArray<'py>,
    rewards: FloatArray<'py>,
    offsets: PyReadonlyArray1<'py, i64>,
) -> PyResult<ScoreArrays<'py>> {
    let s = score_grouped(
        py,
        (&logprobs, &rewards),
        ("logprobs", "rewards"),
        &offsets,
        Wanted::ALL,
    )?;
    Ok(score_arrays(py, s))
}

/// tau-b of each group.
#[pyfunction]
fn kendall_tau_grouped<'py>(
    py: Python<'py>,
    x: FloatArray<'py>,
    y: FloatArray<'py>,
    offsets: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let s = score_grouped(py, (&x, &y), ("x", "y"), &offsets, Wanted::KENDALL)?;
    Ok(s.kendall_tau.into_pyarray(py))
}

/// tau-b over all items, O(n log n).
#[pyfunction]
fn kendall_tau(py: Python<'_>, x: FloatArray<'_>, y: FloatArray<'_>) -> PyResult<f64> {
    let pair = same_typed(x.as_slice("x")?, y.as_slice("y")?, ("x", "y"))?;
    run_detached(py, || match pair {
        Pair::F64(a, b) => kendall::pair_counts_sorted(a, b).tau_b(),
        Pair::F32(a, b) => kendall::pair_counts_sorted(a, b).tau_b(),
    })
}

/// Indices of the k largest non-NaN values, best first, ties to the lower index.
#[pyfunction]
fn top_k<'py>(py: Python<'py>, scores: FloatArray<'py>, k: usize) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let scores = scores.as_slice("scores")?;
    let chosen = run_detached(py, || match scores {
        FloatSlice::F64(s) => topk::top_k(s, k),
        FloatSlice::F32(s) => topk::top_k(s, k),
    })?;
    Ok(chosen.into_pyarray(py))
}

/// The stable row order that makes equal group ids contiguous (a counting sort).
#[pyfunction]
fn stable_group_order<'py>(
    py: Python<'py>,
    ids: PyReadonlyArray1<'py, i64>,
    num_groups: usize,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let ids = ids
        .as_slice()
        .map_err(|_| ShfcasValueError::new_err("ids must be a contiguous 1-D array"))?;
    let order = run_detached(py, || groups::stable_group_order(ids, num_groups))?;
    Ok(order.map_err(ShfcasValueError::new_err)?.into_pyarray(py))
}

/// Integer prompt keys, borrowed without copying.
#[derive(FromPyObject)]
enum IntKeyArray<'py> {
    I64(PyReadonlyArray1<'py, i64>),
    I32(PyReadonlyArray1<'py, i32>),
    U64(PyReadonlyArray1<'py, u64>),
    U32(PyReadonlyArray1<'py, u32>),
}

/// Arrow offsets of a string or binary chunk.
#[derive(FromPyObject)]
enum OffsetArray<'py> {
    I32(PyReadonlyArray1<'py, i32>),
    I64(PyReadonlyArray1<'py, i64>),
}

/// Prompt keys as the Python side hands them over, borrowed without copying: an integer array,
/// fixed-width strings as `(data, width, strip_unit)`, or Arrow string chunks as `[(offsets, data)]`.
#[derive(FromPyObject)]
enum KeyArrays<'py> {
    Ints(IntKeyArray<'py>),
    Fixed((PyReadonlyArray1<'py, u8>, usize, usize)),
    Bytes(Vec<(OffsetArray<'py>, PyReadonlyArray1<'py, u8>)>),
}

impl KeyArrays<'_> {
    fn as_keys(&self) -> PyResult<keys::Keys<'_>> {
        Ok(match self {
            KeyArrays::Ints(IntKeyArray::I64(a)) => keys::Keys::I64(contiguous_slice(a, "keys")?),
            KeyArrays::Ints(IntKeyArray::I32(a)) => keys::Keys::I32(contiguous_slice(a, "keys")?),
            KeyArrays::Ints(IntKeyArray::U64(a)) => keys::Keys::U64(contiguous_slice(a, "keys")?),
            KeyArrays::Ints(IntKeyArray::U32(a)) => keys::Keys::U32(contiguous_slice(a, "keys")?),
            KeyArrays::Fixed((data, width, strip_unit)) => keys::Keys::Fixed {
                data: contiguous_slice(data, "data")?,
                width: *width,
                strip_unit: *strip_unit,
            },
            KeyArrays::Bytes(chunks) => keys::Keys::Bytes(
                chunks
                    .iter()
                    .map(|(offsets, data)| {
                        let offsets = match offsets {
                            OffsetArray::I32(o) => keys::Offsets::I32(contiguous_slice(o, "offsets")?),
                            OffsetArray::I64(o) => keys::Offsets::I64(contiguous_slice(o, "offsets")?),
                        };
                        Ok(keys::ByteChunk {
                            offsets,
                            data: contiguous_slice(data, "data")?,
                        })
                    })
                    .collect::<PyResult<Vec<_>>>()?,
            ),
        })
    }
}

fn contiguous_slice<'a, T: numpy::Element>(array: &'a PyReadonlyArray1<'_, T>, name: &str) -> PyResult<&'a [T]> {
    array
        .as_slice()
        .map_err(|_| ShfcasValueError::new_err(format!("{name} must be a contiguous 1-D array")))
}

/// Groups rows by prompt key: (order, sizes, first_rows, contiguous).
#[pyfunction]
#[pyo3(signature = (keys, hash_mask = u64::MAX))]
fn group_keys<'py>(py: Python<'py>, keys: KeyArrays<'py>, hash_mask: u64) -> PyResult<GroupingArrays<'py>> {
    let keys = keys.as_keys()?;
    let grouping = run_detached(py, || keys::group_keys(&keys, hash_mask))?.map_err(ShfcasValueError::new_err)?;
    Ok((
        grouping.order.into_pyarray(py),
        grouping.sizes.into_pyarray(py),
        grouping.first_rows.into_pyarray(py),
        grouping.contiguous,
    ))
}

/// The two hash arrays of [`hash_keys`].
type KeyHashes<'py> = (Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<u64>>);

/// Two independent 64-bit hashes of each row's key: (to group by, with `hash_mask` applied; to check).
#[pyfunction]
#[pyo3(signature = (keys, hash_mask = u64::MAX))]
fn hash_keys<'py>(py: Python<'py>, keys: KeyArrays<'py>, hash_mask: u64) -> PyResult<KeyHashes<'py>> {
    let keys = keys.as_keys()?;
    let (hashes, checks) =
        run_detached(py, || keys::hash_keys(&keys, hash_mask))?.map_err(ShfcasValueError::new_err)?;
    Ok((hashes.into_pyarray(py), checks.into_pyarray(py)))
}

/// Scores rows grouped by prompt key, rows in any order: the score arrays (item outputs in row
/// order, the ones not `wanted` empty), then (index, sizes, first_rows, contiguous).
#[pyfunction]
#[pyo3(signature = (keys, logprobs, rewards, wanted, hash_mask = u64::MAX))]
fn score_keys<'py>(
    py: Python<'py>,
    keys: KeyArrays<'py>,
    logprobs: FloatArray<'py>,
    rewards: FloatArray<'py>,
    wanted: &str,
    hash_mask: u64,
) -> PyResult<(ScoreArrays<'py>, GroupingArrays<'py>)> {
    let wanted = match wanted {
        "all" => Wanted::ALL,
        "pacs" => Wanted::PACS,
        "kendall" => Wanted::KENDALL,
        other => {
            return Err(ShfcasValueError::new_err(format!(
                "wanted must be \"all\", \"pacs\" or \"kendall\", got {other:?}"
            )))
        }
    };
    let names = ("logprobs", "rewards");
    let pair = same_typed(logprobs.as_slice(names.0)?, rewards.as_slice(names.1)?, names)?;
    let keys = keys.as_keys()?;
    let keyed = run_detached(py, || match pair {
        Pair::F64(a, b) => keyed::score_keys(&keys, a, b, wanted, hash_mask),
        Pair::F32(a, b) => keyed::score_keys(&keys, a, b, wanted, hash_mask),
    })?
    .map_err(ShfcasValueError::new_err)?;
    Ok((
        score_arrays(py, keyed.scores),
        (
            keyed.index.into_pyarray(py),
            keyed.sizes.into_pyarray(py),
            keyed.first_rows.into_pyarray(py),
            keyed.contiguous,
        ),
    ))
}

/// Scores rows that `order` brings into contiguous groups of `offsets`; item outputs come back in row order.
fn reorder_and_score<'py>(
    py: Python<'py>,
    (x, y): (&FloatArray<'py>, &FloatArray<'py>),
    names: (&str, &str),
    order: &PyReadonlyArray1<'py, i64>,
    offsets: &PyReadonlyArray1<'py, i64>,
    wanted: Wanted,
) -> PyResult<scoring::Scores> {
    let pair = same_typed(x.as_slice(names.0)?, y.as_slice(names.1)?, names)?;
    let order = contiguous_slice(order, "order")?;
    let offsets = contiguous_slice(offsets, "offsets")?;
    if order.len() != pair.len() {
        return Err(ShfcasValueError::new_err(format!(
            "the row order has {} rows but there are {} items",
            order.len(),
            pair.len()
        )));
    }
    groups::validate_offsets(offsets, pair.len()).map_err(ShfcasValueError::new_err)?;
    let scores = run_detached(py, || match pair {
        Pair::F64(a, b) => groups::score_in_order(a, b, order, offsets, wanted),
        Pair::F32(a, b) => groups::score_in_order(a, b, order, offsets, wanted),
    })?;
    scores.map_err(ShfcasValueError::new_err)
}

/// Signed PACS of every item, rows grouped by `order`; in row order.
#[pyfunction]
fn pacs_reordered<'py>(
    py: Python<'py>,
    logprobs: FloatArray<'py>,
    rewards: FloatArray<'py>,
    order: PyReadonlyArray1<'py, i64>,
    offsets: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let s = reorder_and_score(
        py,
        (&logprobs, &rewards),
        ("logprobs", "rewards"),
        &order,
        &offsets,
        Wanted::PACS,
    )?;
    Ok(s.pacs.into_pyarray(py))
}

/// Every conflict measure of rows grouped by `order`: item outputs in row order, group outputs in group order.
#[pyfunction]
fn score_reordered<'py>(
    py: Python<'py>,
    logprobs: FloatArray<'py>,
    rewards: FloatArray<'py>,
    order: PyReadonlyArray1<'py, i64>,
    offsets: PyReadonlyArray1<'py, i64>,
) -> PyResult<ScoreArrays<'py>> {
    let s = reorder_and_score(
        py,
        (&logprobs, &rewards),
        ("logprobs", "rewards"),
        &order,
        &offsets,
        Wanted::ALL,
    )?;
    Ok(score_arrays(py, s))
}

/// tau-b of each group of rows grouped by `order`.
#[pyfunction]
fn kendall_tau_reordered<'py>(
    py: Python<'py>,
    x: FloatArray<'py>,
    y: FloatArray<'py>,
    order: PyReadonlyArray1<'py, i64>,
    offsets: PyReadonlyArray1<'py, i64>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let s = reorder_and_score(py, (&x, &y), ("x", "y"), &order, &offsets, Wanted::KENDALL)?;
    Ok(s.kendall_tau.into_pyarray(py))
}

/// Worker threads of the engine's pool (`SHFCAS_NUM_THREADS`, default all cores).
#[pyfunction]
fn num_threads(py: Python<'_>) -> PyResult<usize> {
    run_detached(py, rayon::current_num_threads)
}

/// How this core was built.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = PyDict::new(py);
    info.set_item("version", env!("CARGO_PKG_VERSION"))?;
    info.set_item("profile", if cfg!(debug_assertions) { "debug" } else { "release" })?;
    info.set_item("target", format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS))?;
    info.set_item("abi3", true)?;
    info.set_item("threads_env", pool::THREADS_ENV)?;
    Ok(info)
}

/// Sets, at import, every lazily initialised global the bindings touch: numpy's C API, rust-numpy's
/// borrow flags and array-owner class, and the error type.
///
/// Each is a once-cell whose first user, a thread of the parent, can hold it mid-initialisation while
/// it waits for the interpreter; a child forked at that moment inherits the cell as taken by a thread
/// that does not exist in the child, and its first call waits forever. Set at import, no call finds
/// one unset.
fn set_lazy_globals(py: Python<'_>) {
    let owned = vec![0.0_f64].into_pyarray(py);
    drop(owned.readonly());
    py.get_type::<ShfcasValueError>();
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    set_lazy_globals(m.py());
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("Z_EPSILON", scoring::Z_EPSILON)?;
    m.add("DEGENERATE_STD", scoring::DEGENERATE_STD)?;
    m.add("DEGENERATE_RELATIVE_STD", scoring::DEGENERATE_RELATIVE_STD)?;
    m.add_function(wrap_pyfunction!(first_non_finite, m)?)?;
    m.add_function(wrap_pyfunction!(pacs, m)?)?;
    m.add_function(wrap_pyfunction!(score, m)?)?;
    m.add_function(wrap_pyfunction!(kendall_tau_grouped, m)?)?;
    m.add_function(wrap_pyfunction!(kendall_tau, m)?)?;
    m.add_function(wrap_pyfunction!(top_k, m)?)?;
    m.add_function(wrap_pyfunction!(stable_group_order, m)?)?;
    m.add_function(wrap_pyfunction!(group_keys, m)?)?;
    m.add_function(wrap_pyfunction!(score_keys, m)?)?;
    m.add_function(wrap_pyfunction!(hash_keys, m)?)?;
    m.add_function(wrap_pyfunction!(pacs_reordered, m)?)?;
    m.add_function(wrap_pyfunction!(score_reordered, m)?)?;
    m.add_function(wrap_pyfunction!(kendall_tau_reordered, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    Ok(())
}
