//! Up-front memory checks: a command estimates the bytes it will need (parameters counted from
//! the configuration, activations, data buffers) and compares them with the memory available
//! *before* it allocates anything, so an impossible size is a one-line error at once instead of
//! an abort (`memory allocation of N bytes failed`) or minutes of swapping.
//!
//! Available memory is, in order:
//! 1. `ELA_MEMORY_LIMIT` (bytes, or with a `K`/`M`/`G`/`T` binary suffix: `ELA_MEMORY_LIMIT=8G`);
//! 2. on Linux, `MemAvailable` from `/proc/meminfo` (what the kernel can give without swapping);
//! 3. elsewhere, a fixed cap of [`FALLBACK_LIMIT`] (64 GiB): generous for a workstation, and
//!    still far below the absurd sizes the check exists to catch.
//!
//! On a GPU the memory that counts is the device's: [`Estimate::check_on`] compares with what the
//! device reports ([`Backend::available_memory`]: the driver's free memory plus the allocator's
//! cached buffers) instead of the host's, and [`Estimate::check_for`] does the same for a
//! [`Device`] named on the command line before any tensor exists (`ELA_MEMORY_LIMIT`, when set,
//! still wins: it is the user's own cap).
//!
//! Estimates are deliberately *lower* bounds of the real need (the main buffers, not every
//! temporary), so a run the machine can hold is never refused; what passes may still run out
//! later, where the allocation itself is fallible or the OS decides.

use ela_core::{Backend, Error, Result};

use crate::device::Device;

/// The cap used where the available memory cannot be read (not Linux, no `/proc`).
pub const FALLBACK_LIMIT: u64 = 64 << 30;

/// Where a limit came from, for messages.
fn limit() -> (u64, &'static str) {
    if let Some(v) = std::env::var("ELA_MEMORY_LIMIT").ok().and_then(|s| parse_size(&s)) {
        return (v, "ELA_MEMORY_LIMIT");
    }
    if let Some(v) = mem_available() {
        return (v, "MemAvailable");
    }
    (FALLBACK_LIMIT, "the fallback cap")
}

/// `123`, `512K`, `8G`, `1.5T` (binary units) as bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        (i, 't' | 'T') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * mult as f64).min(u64::MAX as f64) as u64)
}

/// `MemAvailable` of `/proc/meminfo` in bytes (Linux).
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// What a command will need, item by item (saturating: an estimate that overflows `u64` is
/// "more than 16 EiB", which no machine has).
#[derive(Clone, Debug, Default)]
pub struct Estimate {
    items: Vec<(String, u64)>,
}

impl Estimate {
    /// An empty estimate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `count` elements of `bytes_each` bytes for `what`.
    pub fn add(&mut self, what: impl Into<String>, count: u64, bytes_each: u64) -> &mut Self {
        self.items.push((what.into(), count.saturating_mul(bytes_each)));
        self
    }

    /// The total in bytes.
    pub fn total(&self) -> u64 {
        self.items.iter().fold(0u64, |a, (_, b)| a.saturating_add(*b))
    }

    /// Refuse the command (`op`) when the total exceeds the memory available; the error lists
    /// the largest items so the user sees which option to lower.
    pub fn check(&self, op: &'static str) -> Result<()> {
        let (avail, source) = limit();
        self.check_against(op, avail, source)
    }

    /// [`Estimate::check`] for work on `device`: against the device's own free memory where it
    /// reports one (a GPU), else against the host's.
    pub fn check_on<B: Backend>(&self, op: &'static str, device: &B) -> Result<()> {
        match (std::env::var_os("ELA_MEMORY_LIMIT"), device.available_memory()) {
            (None, Some(free)) => self.check_against(op, free, "free GPU memory"),
            _ => self.check(op),
        }
    }

    /// [`Estimate::check_on`] for a device named by `--device`, before the command builds
    /// anything on it. A CUDA device that cannot be opened is left to the command itself, which
    /// reports why with its own error; the host's memory is checked meanwhile.
    pub fn check_for(&self, op: &'static str, device: Device) -> Result<()> {
        match device {
            Device::Cuda(n) => match ela_cuda::Cuda::new(n) {
                Ok(cuda) => self.check_on(op, &cuda),
                Err(_) => self.check(op),
            },
            Device::Cpu => self.check(op),
        }
    }

    fn check_against(&self, op: &'static str, avail: u64, source: &'static str) -> Result<()> {
        let total = self.total();
        if total <= avail {
            return Ok(());
        }
        let mut items: Vec<&(String, u64)> = self.items.iter().filter(|(_, b)| *b > 0).collect();
        items.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
        let parts: Vec<String> =
            items.iter().take(3).map(|(w, b)| format!("{w} {}", ela_core::error::human_bytes(*b))).collect();
        Err(Error::OutOfMemory {
            op,
            what: format!("this command ({})", parts.join(", ")),
            needed: total,
            available: Some(avail),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("nan"), None);
        assert_eq!(parse_size("-1G"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn an_estimate_saturates_and_names_its_largest_items() {
        let mut e = Estimate::new();
        e.add("parameters", u64::MAX, 16).add("data", 10, 1);
        assert_eq!(e.total(), u64::MAX);
        let msg = e.check("train").unwrap_err().to_string();
        assert!(msg.starts_with("train: this command (parameters more than 16 EiB, data 10 B"), "{msg}");
        assert!(Estimate::new().check("train").is_ok());
    }

    #[test]
    fn the_cpu_device_means_host_memory() {
        let mut e = Estimate::new();
        e.add("parameters", u64::MAX, 1);
        let host = e.check("train").unwrap_err().to_string();
        assert_eq!(e.check_on("train", &ela_core::Cpu).unwrap_err().to_string(), host);
        assert_eq!(e.check_for("train", Device::Cpu).unwrap_err().to_string(), host);
    }
}
