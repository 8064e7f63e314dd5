//! Writing to stdout and stderr with errors instead of panics.
//!
//! `println!` and `eprintln!` panic when the write fails (`ela info > /dev/full`, a closed
//! stderr), which turns a full disk into a crash with a backtrace. Every line the library and
//! the CLI print goes through [`outln!`](crate::outln) or [`errln!`](crate::errln) instead: a
//! failed write becomes an [`Error::Io`] naming the stream, which the command returns like any
//! other error (one line, exit code 1).
//!
//! The progress bar ([`crate::report::progress`]) is the one exception: it redraws many times a
//! second and is cosmetic, so it ignores write errors rather than ending a run over them.

use std::io::Write;

use ela_core::{Error, Result};

/// Which standard stream a line goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Results: tables, generated text, reports.
    Stdout,
    /// Notices, warnings and errors.
    Stderr,
}

/// Write `args` and a newline to `stream`, flushed, as one locked write.
pub fn write_line(stream: Stream, args: std::fmt::Arguments<'_>) -> Result<()> {
    let line = format!("{args}\n");
    let (name, r) = match stream {
        Stream::Stdout => {
            let mut o = std::io::stdout().lock();
            ("stdout", o.write_all(line.as_bytes()).and_then(|_| o.flush()))
        }
        Stream::Stderr => {
            let mut e = std::io::stderr().lock();
            ("stderr", e.write_all(line.as_bytes()).and_then(|_| e.flush()))
        }
    };
    r.map_err(|e| Error::Io { path: name.into(), msg: format!("cannot write: {e}") })
}

/// `println!` that returns the write error (`?` inside): use in functions returning
/// `ela_core::Result`.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::console::write_line($crate::console::Stream::Stdout, format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::console::write_line($crate::console::Stream::Stdout, format_args!($($arg)*))?
    };
}

/// `eprintln!` that returns the write error (`?` inside): use in functions returning
/// `ela_core::Result`.
#[macro_export]
macro_rules! errln {
    () => {
        $crate::console::write_line($crate::console::Stream::Stderr, format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::console::write_line($crate::console::Stream::Stderr, format_args!($($arg)*))?
    };
}
