//! The `cloudx` Python package's native module, `cloudx._cloudx`: the core in-process
//! ([`session::open_embedded`]) or a client of a daemon ([`session::connect_remote`]), with every
//! blocking call made with the GIL released and Ctrl-C honoured. The Python classes users see
//! are in `python/cloudx/`; they call this module.

use pyo3::prelude::*;

mod errors;
mod rt;
mod session;
mod streams;

/// The native module.
#[pymodule]
fn _cloudx(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(session::open_embedded, m)?)?;
    m.add_function(wrap_pyfunction!(session::connect_remote, m)?)?;
    m.add_class::<session::Session>()?;
    m.add_class::<streams::Reader>()?;
    m.add_class::<streams::Writer>()?;
    m.add_class::<streams::RunHandle>()?;
    Ok(())
}
