//! Metrics appended to a JSONL file, one object per line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ela_core::{Error, Result};

/// A value in a metrics record.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A number (non-finite values are written as `null`, which JSON requires).
    Num(f64),
    /// An integer.
    Int(i64),
    /// A string.
    Str(String),
}

/// Appends records to a JSONL file.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// One JSON object from `(key, value)` pairs, in order.
pub fn json_line(fields: &[(&str, Value)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Num(x) if x.is_finite() => format!("{x}"),
                Value::Num(_) => "null".to_string(),
                Value::Int(i) => i.to_string(),
                Value::Str(s) => format!("\"{}\"", escape(s)),
            };
            format!("\"{}\":{v}", escape(k))
        })
        .collect();
    format!("{{{}}}", body.join(","))
}

impl MetricsLog {
    /// Open `path` for appending (created with its parent directories if needed).
    pub fn append(path: &Path) -> Result<Self> {
        let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), msg: e.to_string() };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        Ok(MetricsLog { path: path.to_path_buf(), file })
    }

    /// Append one record and flush it. The line and its newline go out in one `write_all` of
    /// one buffer, so a kill between two writes cannot leave a record without its end.
    pub fn write(&mut self, fields: &[(&str, Value)]) -> Result<()> {
        let line = json_line(fields) + "\n";
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::Io { path: self.path.display().to_string(), msg: e.to_string() })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escaping_and_nonfinite() {
        let l =
            json_line(&[("step", Value::Int(3)), ("loss", Value::Num(f64::NAN)), ("m", Value::Str("a\"b\n".into()))]);
        assert_eq!(l, r#"{"step":3,"loss":null,"m":"a\"b\n"}"#);
    }
}
