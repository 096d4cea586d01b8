//! `cargo xtask lint`: lists every function longer than the project's limit
//! (~80 lines, signature to closing brace) in the workspace's `*.rs` files,
//! and fails when there is one.
//!
//! A small lexer rather than a parser crate: it only has to tell code from
//! comments, strings and char literals, find `fn NAME` and match braces.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// The project's limit (developers' guide: functions under ~80 lines).
pub const MAX_LINES: usize = 80;

impl Default for Options {
    fn default() -> Self {
        Options {
            max_lines: MAX_LINES,
        }
    }
}

#[derive(clap::Args)]
pub struct Options {
    /// Longest function allowed, in lines.
    #[arg(long, default_value_t = MAX_LINES)]
    max_lines: usize,
}

/// One function and where it is.
#[derive(Debug, PartialEq, Eq)]
struct Function {
    name: String,
    /// 1-based line of the `fn` keyword.
    start: usize,
    /// Lines from the `fn` keyword to the closing brace, both included.
    lines: usize,
}

pub fn run(options: Options) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a workspace")
        .to_path_buf();
    let mut files = Vec::new();
    collect_rust_files(&root, &mut files)?;
    files.sort();
    let mut long = Vec::new();
    for file in &files {
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for f in functions(&text) {
            if f.lines > options.max_lines {
                let path = file.strip_prefix(&root).unwrap_or(file);
                long.push(format!(
                    "{}:{}: {} ({} lines)",
                    path.display(),
                    f.start,
                    f.name,
                    f.lines
                ));
            }
        }
    }
    for line in &long {
        println!("{line}");
    }
    println!(
        "lint: {} function(s) over {} lines in {} file(s)",
        long.len(),
        options.max_lines,
        files.len()
    );
    if !long.is_empty() {
        bail!("functions over {} lines: split them", options.max_lines);
    }
    Ok(())
}

/// Every `*.rs` below `dir`, skipping build output and hidden directories.
fn collect_rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect_rust_files(&path, out)?;
            }
        } else if kind.is_file() && name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The functions with a body in `source`, in the order their bodies end.
fn functions(source: &str) -> Vec<Function> {
    Scanner::new(source).run()
}

/// A function whose `fn NAME` was seen; `open` once its body's `{` was.
struct Pending {
    name: String,
    start: usize,
    /// Bracket depth (`(`, `[`) since the name: a `;` inside is part of a type.
    nesting: usize,
    /// Brace depth just outside the body, once the body has opened.
    open: Option<usize>,
}

struct Scanner {
    chars: Vec<char>,
    at: usize,
    line: usize,
    braces: usize,
    pending: Vec<Pending>,
    done: Vec<Function>,
}

impl Scanner {
    fn new(source: &str) -> Scanner {
        Scanner {
            chars: source.chars().collect(),
            at: 0,
            line: 1,
            braces: 0,
            pending: Vec::new(),
            done: Vec::new(),
        }
    }

    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    /// Moves one character on, counting lines.
    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn run(mut self) -> Vec<Function> {
        while let Some(c) = self.peek(0) {
            match c {
                '/' if self.peek(1) == Some('/') => self.skip_line_comment(),
                '/' if self.peek(1) == Some('*') => self.skip_block_comment(),
                '"' => {
                    self.bump();
                    self.skip_string();
                }
                '\'' => self.skip_char_or_lifetime(),
                c if c == '_' || c.is_alphabetic() => self.word(),
                _ => {
                    self.bump();
                    self.punct(c);
                }
            }
        }
        self.done
    }

    fn skip_line_comment(&mut self) {
        while let Some(c) = self.peek(0) {
            if c == '\n' {
                return;
            }
            self.bump();
        }
    }

    /// Block comments nest in Rust.
    fn skip_block_comment(&mut self) {
        let mut depth = 0;
        while let Some(c) = self.bump() {
            if c == '/' && self.peek(0) == Some('*') {
                self.bump();
                depth += 1;
            } else if c == '*' && self.peek(0) == Some('/') {
                self.bump();
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
        }
    }

    /// After the opening quote of a (byte, C) string.
    fn skip_string(&mut self) {
        while let Some(c) = self.bump() {
            match c {
                '\\' => {
                    self.bump();
                }
                '"' => return,
                _ => {}
            }
        }
    }

    /// After `r`: `#`* `"` … `"` `#`*.
    fn skip_raw_string(&mut self) {
        let mut hashes = 0;
        while self.peek(0) == Some('#') {
            self.bump();
            hashes += 1;
        }
        self.bump(); // the opening quote
        while let Some(c) = self.bump() {
            if c == '"' && (0..hashes).all(|i| self.peek(i) == Some('#')) {
                for _ in 0..hashes {
                    self.bump();
                }
                return;
            }
        }
    }

    /// `'x'`, `'\n'`, `'\u{1F600}'` are chars; `'a` (no closing quote after
    /// one character) is a lifetime or label.
    fn skip_char_or_lifetime(&mut self) {
        self.bump();
        if self.peek(0) == Some('\\') {
            self.bump();
            self.bump(); // the escaped character, which may be a quote
            while let Some(c) = self.bump() {
                if c == '\'' {
                    return;
                }
            }
        } else if self.peek(1) == Some('\'') {
            self.bump();
            self.bump();
        }
    }

    /// An identifier or keyword, including the prefixes of raw strings
    /// (`r"…"`, `br#"…"#`), byte strings and raw identifiers (`r#fn`).
    fn word(&mut self) {
        let mut word = String::new();
        while let Some(c) = self.peek(0).filter(|c| *c == '_' || c.is_alphanumeric()) {
            word.push(c);
            self.bump();
        }
        let next = self.peek(0);
        match (word.as_str(), next) {
            ("r" | "br" | "cr", Some('"')) => self.skip_raw_string(),
            ("r" | "br" | "cr", Some('#')) if matches!(self.peek(1), Some('#' | '"')) => {
                self.skip_raw_string()
            }
            ("r", Some('#')) => {
                // A raw identifier: its name is a plain word.
                self.bump();
                while self
                    .peek(0)
                    .is_some_and(|c| c == '_' || c.is_alphanumeric())
                {
                    self.bump();
                }
            }
            ("b" | "c", Some('"')) => {
                self.bump();
                self.skip_string();
            }
            ("b", Some('\'')) => self.skip_char_or_lifetime(),
            ("fn", _) => self.fn_keyword(),
            _ => {}
        }
    }

    /// `fn NAME` starts a function; `fn(` is a function pointer type.
    fn fn_keyword(&mut self) {
        let start = self.line;
        while self.peek(0).is_some_and(char::is_whitespace) {
            self.bump();
        }
        let mut name = String::new();
        while let Some(c) = self.peek(0).filter(|c| *c == '_' || c.is_alphanumeric()) {
            name.push(c);
            self.bump();
        }
        if !name.is_empty() {
            self.pending.push(Pending {
                name,
                start,
                nesting: 0,
                open: None,
            });
        }
    }

    fn punct(&mut self, c: char) {
        let waiting = self.pending.last_mut().filter(|p| p.open.is_none());
        match (c, waiting) {
            ('(' | '[', Some(p)) => p.nesting += 1,
            (')' | ']', Some(p)) => p.nesting = p.nesting.saturating_sub(1),
            // A declaration without a body (trait method, extern fn).
            (';', Some(p)) if p.nesting == 0 => {
                self.pending.pop();
            }
            ('{', Some(p)) if p.nesting == 0 => {
                p.open = Some(self.braces);
                self.braces += 1;
            }
            ('{', _) => self.braces += 1,
            ('}', _) => {
                self.braces = self.braces.saturating_sub(1);
                let closes = self.pending.last().and_then(|p| p.open) == Some(self.braces);
                if closes {
                    let p = self.pending.pop().expect("checked above");
                    self.done.push(Function {
                        name: p.name,
                        start: p.start,
                        lines: self.line - p.start + 1,
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(source: &str) -> Vec<(String, usize, usize)> {
        functions(source)
            .into_iter()
            .map(|f| (f.name, f.start, f.lines))
            .collect()
    }

    #[test]
    fn measures_functions_from_fn_to_closing_brace() {
        let source = "fn one() {}\n\npub fn three(\n    a: u8,\n) -> u8 {\n    a\n}\n";
        assert_eq!(
            lengths(source),
            vec![("one".into(), 1, 1), ("three".into(), 3, 5)]
        );
    }

    #[test]
    fn braces_in_strings_comments_and_chars_do_not_count() {
        let source = r####"fn f() {
    let a = "}";
    let b = r#"}"}"#;
    let c = '}';
    let d = b'{';
    // }
    /* } /* nested } */ } */
    let e: &'static str = "\"}";
    let q = ['\\', '\'', '\u{7d}'];
}
fn g() {}
"####;
        assert_eq!(
            lengths(source),
            vec![("f".into(), 1, 10), ("g".into(), 11, 1)]
        );
    }

    #[test]
    fn nested_functions_declarations_and_pointer_types() {
        let source = "trait T {\n    fn decl(&self, x: [u8; 4]);\n}\nfn outer(f: fn(u8) -> u8) {\n    fn inner() {\n    }\n    let _ = |x: u8| { x };\n}\n";
        assert_eq!(
            lengths(source),
            vec![("inner".into(), 5, 2), ("outer".into(), 4, 5)]
        );
    }
}
