//! The process' log filter as the admin API reads and changes it
//! (`signet logger get|set|reset`). Logging belongs to the binary, which
//! installs a [`LogControl`]; without one the API answers Unavailable.

use std::sync::OnceLock;

/// Reads and replaces the log filter of the running process.
pub trait LogControl: Send + Sync {
    /// The filter in force.
    fn current(&self) -> String;
    /// The filter the process started with.
    fn launch(&self) -> String;
    /// Replaces the filter; an invalid one is refused with the reason and
    /// changes nothing.
    fn set(&self, filter: &str) -> Result<(), String>;
}

static CONTROL: OnceLock<Box<dyn LogControl>> = OnceLock::new();

/// Installs the process' control; the first one stays.
pub fn install(control: Box<dyn LogControl>) {
    let _ = CONTROL.set(control);
}

/// The installed control, if any.
pub fn control() -> Option<&'static dyn LogControl> {
    CONTROL.get().map(|c| c.as_ref())
}
