//! The `cloudx` Python package's native module, `cloudx._cloudx`.

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _cloudx(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
