//! Class names of a YOLO dataset, from `data.yaml` or `classes.txt`.
//!
//! Not a YAML parser: just the three ways ultralytics-style files spell `names:`, found at the
//! top level of the file (no indentation):
//!
//! ```yaml
//! names: [person, bicycle, 'traffic light']   # flow list (may wrap over lines)
//!
//! names:                                      # block list
//!   - person
//!   - bicycle
//!
//! names:                                      # map from class index (0..nc, each once)
//!   0: person
//!   1: bicycle
//! ```
//!
//! plus the flow map `names: {0: person, 1: bicycle}`. Quotes (`'...'`, `"..."`) and `#` comments
//! are handled; other keys are ignored, except `nc:`, which must then equal the number of names.
//! `classes.txt` holds one name a line (blank lines ignored). Every problem is an error naming
//! the file and line.

use std::path::Path;

use ela_core::Result;

use super::io::io_err;

/// Parse class names from the text of a `data.yaml` at `path` (used in messages).
pub fn parse_yaml_names(text: &str, path: &Path) -> Result<Vec<String>> {
    let err = |line: usize, msg: String| io_err(path, format!("line {line}: {msg}"));
    let lines: Vec<(usize, String)> =
        text.lines().enumerate().map(|(i, l)| (i + 1, strip_comment(l).trim_end().to_string())).collect();
    let mut nc: Option<(usize, usize)> = None;
    let mut names: Option<Vec<String>> = None;
    let mut i = 0;
    while i < lines.len() {
        let (no, line) = (&lines[i].0, lines[i].1.as_str());
        i += 1;
        if let Some(v) = line.strip_prefix("nc:") {
            let n = v
                .trim()
                .parse::<usize>()
                .map_err(|_| err(*no, format!("`nc:` must be a count, got `{}`", v.trim())))?;
            nc = Some((n, *no));
        }
        let Some(rest) = line.strip_prefix("names:") else { continue };
        if names.is_some() {
            return Err(err(*no, "`names:` appears twice".into()));
        }
        let rest = rest.trim();
        if rest.starts_with('[') || rest.starts_with('{') {
            // A flow collection; it may continue over the following lines up to its bracket.
            let close = if rest.starts_with('[') { ']' } else { '}' };
            let mut body = rest.to_string();
            while !ends_flow(&body, close) {
                let Some((_, next)) = lines.get(i) else {
                    return Err(err(*no, format!("`names:` list is not closed with `{close}`")));
                };
                body.push(' ');
                body.push_str(next.trim());
                i += 1;
            }
            let inner = &body.trim()[1..body.trim().len() - 1];
            let items = split_flow(inner).map_err(|m| err(*no, m))?;
            names = Some(if close == ']' {
                items.iter().map(|s| unquote(s)).collect::<std::result::Result<_, _>>().map_err(|m| err(*no, m))?
            } else {
                let entries =
                    items.iter().map(|s| map_entry(s).map(|e| (*no, e))).collect::<std::result::Result<Vec<_>, _>>();
                from_map(entries.map_err(|m| err(*no, m))?).map_err(|(l, m)| err(l, m))?
            });
        } else if rest.is_empty() {
            // A block list or map: the following indented (or `- `) lines.
            let (mut list, mut map) = (Vec::new(), Vec::new());
            while let Some((lno, l)) = lines.get(i) {
                let t = l.trim();
                if t.is_empty() {
                    i += 1;
                    continue;
                }
                if !(l.starts_with(' ') || l.starts_with('\t') || t.starts_with("- ") || t == "-") {
                    break;
                }
                if let Some(item) = t.strip_prefix('-') {
                    list.push(unquote(item.trim()).map_err(|m| err(*lno, m))?);
                } else {
                    map.push((*lno, map_entry(t).map_err(|m| err(*lno, m))?));
                }
                if !list.is_empty() && !map.is_empty() {
                    return Err(err(*lno, "`names:` mixes `- name` items and `index: name` entries".into()));
                }
                i += 1;
            }
            names = Some(if map.is_empty() { list } else { from_map(map).map_err(|(l, m)| err(l, m))? });
        } else {
            return Err(err(*no, format!("`names:` must be a list or a map, got `{rest}`")));
        }
    }
    let names = names.ok_or_else(|| io_err(path, "no top-level `names:` key (the class names)"))?;
    if names.is_empty() {
        return Err(io_err(path, "`names:` is empty"));
    }
    if let Some(bad) = names.iter().position(|n| n.is_empty()) {
        return Err(io_err(path, format!("class {bad} has an empty name")));
    }
    if let Some((n, line)) = nc {
        if n != names.len() {
            return Err(err(line, format!("`nc: {n}` but `names:` lists {} classes", names.len())));
        }
    }
    Ok(names)
}

/// Class names from a `classes.txt` (one a line; blank lines ignored).
pub fn parse_classes_txt(text: &str, path: &Path) -> Result<Vec<String>> {
    let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if names.is_empty() {
        return Err(io_err(path, "no class names (expected one a line)"));
    }
    Ok(names)
}

/// Whether a quote character after `last` (the previous non-blank character, if any) opens a
/// quoted scalar: only at the start of a value, so the apostrophe of a plain `it's` does not.
fn opens_quote(last: Option<char>) -> bool {
    last.is_none_or(|c| matches!(c, ':' | '-' | '[' | '{' | ','))
}

/// The line without a `#` comment (a `#` at the start or after whitespace, outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut quote, mut last, mut prev_space) = (None, None, true);
    for (i, ch) in line.char_indices() {
        match (quote, ch) {
            (None, '\'' | '"') if opens_quote(last) => quote = Some(ch),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev_space => return &line[..i],
            _ => {}
        }
        prev_space = ch.is_whitespace();
        if !prev_space {
            last = Some(ch);
        }
    }
    line
}

/// Whether a flow collection's text is complete (its closing bracket, outside quotes, ends it).
fn ends_flow(body: &str, close: char) -> bool {
    let t = body.trim_end();
    t.len() > 1 && t.ends_with(close) && split_flow(&t[1..t.len() - 1]).is_ok()
}

/// Split a flow collection's inside at top-level commas, respecting quotes.
fn split_flow(inner: &str) -> std::result::Result<Vec<String>, String> {
    let (mut items, mut cur, mut quote, mut last) = (Vec::new(), String::new(), None, None);
    for ch in inner.chars() {
        match (quote, ch) {
            (None, '\'' | '"') if opens_quote(last) => quote = Some(ch),
            (Some(q), c) if c == q => quote = None,
            (None, ',') => {
                items.push(std::mem::take(&mut cur));
                last = Some(',');
                continue;
            }
            _ => {}
        }
        cur.push(ch);
        if !ch.is_whitespace() {
            last = Some(ch);
        }
    }
    if quote.is_some() {
        return Err("unterminated quote in `names:`".into());
    }
    items.push(cur);
    // A trailing comma (`[a, b,]`) leaves one empty item: allowed.
    if items.last().is_some_and(|s| s.trim().is_empty()) && items.len() > 1 {
        items.pop();
    }
    Ok(items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
}

/// A scalar without its quotes (`'it''s'` and `"a \"b\""` escapes included).
fn unquote(s: &str) -> std::result::Result<String, String> {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('\'') && s.ends_with('\'') {
        return Ok(s[1..s.len() - 1].replace("''", "'"));
    }
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        return Ok(s[1..s.len() - 1].replace("\\\"", "\"").replace("\\\\", "\\"));
    }
    if s.starts_with(['\'', '"']) {
        return Err(format!("unterminated quote in `{s}`"));
    }
    Ok(s.to_string())
}

/// `index: name` of a map form.
fn map_entry(s: &str) -> std::result::Result<(usize, String), String> {
    let (k, v) = s.split_once(':').ok_or_else(|| format!("expected `index: name`, got `{s}`"))?;
    let k = k.trim().parse::<usize>().map_err(|_| format!("class index must be a number, got `{}`", k.trim()))?;
    Ok((k, unquote(v)?))
}

/// Names from `(line, (index, name))` entries whose indices must be exactly `0..n`.
fn from_map(entries: Vec<(usize, (usize, String))>) -> std::result::Result<Vec<String>, (usize, String)> {
    let n = entries.len();
    let mut names: Vec<Option<String>> = vec![None; n];
    for (line, (k, v)) in entries {
        if k >= n {
            return Err((line, format!("class index {k} is out of range: {n} names must use indices 0..{n}")));
        }
        if names[k].is_some() {
            return Err((line, format!("class index {k} appears twice")));
        }
        names[k] = Some(v);
    }
    Ok(names.into_iter().map(|n| n.unwrap_or_default()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Vec<String>> {
        parse_yaml_names(t, Path::new("data.yaml"))
    }

    #[test]
    fn the_three_forms() {
        let want = vec!["person".to_string(), "traffic light".into(), "it's".into()];
        assert_eq!(parse("path: x\nnames: [person, traffic light, 'it''s']  # c\n").unwrap(), want);
        assert_eq!(parse("names: [person,\n  traffic light,\n  \"it's\"]\nnc: 3\n").unwrap(), want);
        assert_eq!(parse("names:\n  - person\n  - traffic light # c\n  - \"it's\"\ntrain: a\n").unwrap(), want);
        assert_eq!(parse("names:\n- person\n- traffic light\n- it's\n").unwrap(), want);
        assert_eq!(parse("names:\n  1: traffic light\n  0: person\n  2: it's\n").unwrap(), want);
        assert_eq!(parse("names: {0: person, 1: 'traffic light', 2: it's}").unwrap(), want);
        assert_eq!(parse("names: ['a#b', c]").unwrap(), vec!["a#b".to_string(), "c".into()]);
    }

    #[test]
    fn errors_name_the_line() {
        let msg = |t: &str| parse(t).unwrap_err().to_string();
        assert!(msg("nc: 2\nnames: [a]\n").contains("data.yaml: line 1:"));
        assert!(msg("names:\n  0: a\n  0: b\n").contains("line 3:"));
        assert!(msg("names:\n  0: a\n  5: b\n").contains("line 3:"));
        assert!(msg("names: [a, b\n").contains("line 1:"));
        assert!(msg("names: person\n").contains("line 1:"));
        assert!(msg("train: x\n").contains("no top-level `names:`"));
        assert!(msg("names:\n  - a\n  1: b\n").contains("line 3:"));
    }
}
