//! The core's errors as the Python exceptions of `cloudx._errors` (one class per kind, under
//! `cloudx.Error`).

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// `e` as the exception of its kind, with the core's code and message.
pub(crate) fn to_py(py: Python<'_>, e: &cloudx_core::Error) -> PyErr {
    let made = (|| {
        let class = py.import("cloudx._errors")?.getattr("_class_of")?.call1((e.kind().code(),))?;
        let retry_after = e.retry_after().map(|d| d.as_secs_f64());
        let instance = class.call1((e.kind().code(), e.message(), retry_after))?;
        Ok::<_, PyErr>(PyErr::from_value(instance))
    })();
    made.unwrap_or_else(|failed| {
        PyRuntimeError::new_err(format!("{} (and the exception could not be made: {failed})", e.message()))
    })
}
