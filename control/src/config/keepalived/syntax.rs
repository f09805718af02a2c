//! keepalived.conf's block syntax, as keepalived's own parser reads it: a
//! statement is a keyword and its arguments on one line, a `{` (on the
//! same line or the next) opens the statement's block and `}` closes it;
//! `#` and `!` start a comment anywhere outside a quoted string; `"..."`
//! is one word; `include PATTERN` splices in the files the pattern names,
//! relative to the including file's directory (a wildcard that matches
//! nothing is not an error, as in keepalived; a plain path that is missing
//! is).
//!
//! Never panics: every malformed input is a [`KeepalivedError`] with its
//! file, line and column.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::KeepalivedError;

/// How deep includes may nest (keepalived's own limit is 8): deeper is
/// taken for an include loop.
pub const MAX_INCLUDE_DEPTH: usize = 8;
/// How deep blocks may nest (keepalived's deepest is 4).
pub const MAX_BLOCK_DEPTH: usize = 16;

/// A place in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    /// The file, as named (the `--config` path, or an included path).
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
}

/// One word of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Token {
    text: String,
    line: usize,
    column: usize,
    /// A brace (never a quoted `"{"`).
    brace: Option<char>,
}

/// One statement: a keyword, its arguments and its block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The keyword.
    pub key: String,
    /// Where the keyword is.
    pub loc: Loc,
    /// Its arguments, in order.
    pub args: Vec<String>,
    /// Its block (`None`: no braces).
    pub block: Option<Vec<Node>>,
}

/// Splits text into words, dropping comments.
fn tokenize(text: &str, file: &Arc<str>) -> Result<Vec<Token>, KeepalivedError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut chars = line.chars().enumerate().peekable();
        while let Some((c0, c)) = chars.next() {
            let column = c0 + 1;
            let at = |text: String, brace| Token {
                text,
                line: i + 1,
                column,
                brace,
            };
            match c {
                '#' | '!' => break,
                c if c.is_whitespace() => {}
                '{' | '}' => out.push(at(c.to_string(), Some(c))),
                '"' => {
                    let mut s = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '"' {
                            closed = true;
                            break;
                        }
                        s.push(c);
                    }
                    if !closed {
                        return Err(KeepalivedError::Syntax {
                            file: file.clone(),
                            line: i + 1,
                            column,
                            reason: "unterminated quoted string".into(),
                        });
                    }
                    out.push(at(s, None));
                }
                c => {
                    let mut s = c.to_string();
                    while let Some(&(_, c)) = chars.peek() {
                        if c.is_whitespace() || matches!(c, '{' | '}' | '"' | '#' | '!') {
                            break;
                        }
                        s.push(c);
                        chars.next();
                    }
                    out.push(at(s, None));
                }
            }
        }
    }
    Ok(out)
}

/// The first word of a text that is not a comment, if any.
pub fn first_word(text: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.split(['#', '!']).next().unwrap_or("");
        if let Some(w) = line
            .split(|c: char| c.is_whitespace() || c == '{')
            .find(|w| !w.is_empty())
        {
            return Some(w.to_owned());
        }
    }
    None
}

/// Parses a file (and what it includes) into its statements.
///
/// # Errors
/// [`KeepalivedError::Io`], [`KeepalivedError::Syntax`] or an include error.
pub fn parse_file(path: &Path, text: &str, depth: usize) -> Result<Vec<Node>, KeepalivedError> {
    let file: Arc<str> = Arc::from(path.display().to_string());
    let tokens = tokenize(text, &file)?;
    let mut p = Parser {
        tokens,
        pos: 0,
        file,
        dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        include_depth: depth,
    };
    p.block(0, None)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    file: Arc<str>,
    dir: PathBuf,
    include_depth: usize,
}

impl Parser {
    fn loc(&self, t: &Token) -> Loc {
        Loc {
            file: self.file.clone(),
            line: t.line,
            column: t.column,
        }
    }

    fn syntax(&self, t: &Token, reason: impl Into<String>) -> KeepalivedError {
        KeepalivedError::Syntax {
            file: self.file.clone(),
            line: t.line,
            column: t.column,
            reason: reason.into(),
        }
    }

    /// The statements up to the `}` that closes the block opened by
    /// `open` (or to the end of the input at the top).
    fn block(&mut self, depth: usize, open: Option<&Token>) -> Result<Vec<Node>, KeepalivedError> {
        let mut nodes = Vec::new();
        loop {
            let Some(t) = self.tokens.get(self.pos).cloned() else {
                return match open {
                    None => Ok(nodes),
                    Some(o) => Err(self.syntax(o, "block opened here is never closed (missing })")),
                };
            };
            self.pos += 1;
            match t.brace {
                Some('}') => {
                    return match open {
                        Some(_) => Ok(nodes),
                        None => Err(self.syntax(&t, "} closes no block")),
                    }
                }
                Some(_) => return Err(self.syntax(&t, "{ opens a block without a keyword")),
                None => {}
            }
            let mut args = Vec::new();
            while let Some(a) = self.tokens.get(self.pos) {
                if a.line != t.line || a.brace.is_some() {
                    break;
                }
                args.push(a.text.clone());
                self.pos += 1;
            }
            let block = match self.tokens.get(self.pos) {
                Some(b) if b.brace == Some('{') => {
                    let b = b.clone();
                    self.pos += 1;
                    if depth + 1 > MAX_BLOCK_DEPTH {
                        return Err(
                            self.syntax(&b, format!("blocks nest deeper than {MAX_BLOCK_DEPTH}"))
                        );
                    }
                    Some(self.block(depth + 1, Some(&b))?)
                }
                _ => None,
            };
            if t.text == "include" && block.is_none() {
                nodes.extend(self.include(&t, &args)?);
                continue;
            }
            nodes.push(Node {
                key: t.text.clone(),
                loc: self.loc(&t),
                args,
                block,
            });
        }
    }

    fn include(&self, t: &Token, args: &[String]) -> Result<Vec<Node>, KeepalivedError> {
        let [pattern] = args else {
            return Err(self.syntax(t, "include takes one file name or pattern"));
        };
        if self.include_depth + 1 > MAX_INCLUDE_DEPTH {
            return Err(self.syntax(
                t,
                format!("includes nest deeper than {MAX_INCLUDE_DEPTH} (an include loop?)"),
            ));
        }
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            self.dir.join(pattern)
        };
        let files = expand(&full)
            .map_err(|reason| self.syntax(t, format!("include {pattern}: {reason}")))?;
        let mut out = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|source| KeepalivedError::Io {
                path: f.clone(),
                source,
            })?;
            out.extend(parse_file(&f, &text, self.include_depth + 1)?);
        }
        Ok(out)
    }
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The files a path names: itself when it has no wildcard, otherwise the
/// matches of its last component, sorted (wildcards only there).
fn expand(path: &Path) -> Result<Vec<PathBuf>, String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    if has_wildcard(&dir.to_string_lossy()) {
        return Err("wildcards are supported in the file name only, not in directories".into());
    }
    if !has_wildcard(&name) {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = match std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.starts_with('.') && wildcard(name.as_bytes(), n.as_bytes())
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    Ok(out)
}

/// glob(3)'s `*`, `?` and `[...]` (with `!`/`^` negation and ranges),
/// matched greedily with one backtrack point (linear in practice, never
/// exponential whatever the pattern).
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            Some(_) => {
                if let Some(next) = one(p, pi, s[si]) {
                    pi = next;
                    si += 1;
                    continue;
                }
            }
            None => {}
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// Whether the pattern element at `pi` (not `*`) matches `c`; the index
/// after the element if so.
fn one(p: &[u8], pi: usize, c: u8) -> Option<usize> {
    match p[pi] {
        b'?' => Some(pi + 1),
        b'[' => {
            let Some(close) = p
                .iter()
                .skip(pi + 2)
                .position(|&x| x == b']')
                .map(|i| i + pi + 2)
            else {
                return (c == b'[').then_some(pi + 1);
            };
            let mut set = &p[pi + 1..close];
            let negate = matches!(set.first(), Some(b'!' | b'^'));
            if negate {
                set = &set[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= (set[i]..=set[i + 2]).contains(&c);
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            (hit != negate).then_some(close + 1)
        }
        x => (x == c).then_some(pi + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_glob() {
        assert!(wildcard(b"*.conf", b"a.conf"));
        assert!(!wildcard(b"*.conf", b"a.conf~"));
        assert!(wildcard(b"vs-?.conf", b"vs-1.conf"));
        assert!(wildcard(b"vs-[0-9].conf", b"vs-7.conf"));
        assert!(!wildcard(b"vs-[!0-9].conf", b"vs-7.conf"));
        assert!(wildcard(b"[", b"["));
        assert!(wildcard(b"a*b*c", b"axxbyyc"));
        assert!(!wildcard(b"a*b*c", b"axxbyy"));
        let long = vec![b'a'; 200];
        assert!(!wildcard(
            &[b"*a".repeat(30), b"b".to_vec()].concat(),
            &long
        ));
    }

    #[test]
    fn first_word_skips_comments() {
        assert_eq!(
            first_word("! c\n# d\n  global_defs {\n").as_deref(),
            Some("global_defs")
        );
        assert_eq!(
            first_word("virtual_server{").as_deref(),
            Some("virtual_server")
        );
        assert_eq!(first_word("# only\n"), None);
    }
}
