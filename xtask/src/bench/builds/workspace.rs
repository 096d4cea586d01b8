//! The generated Bazel workspace: `cc<i>` genrules compiling a small C++
//! file with g++ through many `-I` directories (each `#include` probes
//! several directories before it finds its header: failed opens), and
//! `sb<i>` genrules whose sandbox holds every file of `in/`.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::{Context as _, Result};

/// How large the generated workspace is: the options `bench`,
/// `profile-build` and `bench-flags` share.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkspaceSize {
    /// Genrules compiling a C++ file with g++.
    #[arg(long, default_value_t = 100)]
    pub build_compiles: usize,
    /// Genrules with a large sandbox (each gets every input file).
    #[arg(long, default_value_t = 200)]
    pub build_sandboxes: usize,
    /// Input files of each large-sandbox genrule.
    #[arg(long, default_value_t = 300)]
    pub build_inputs: usize,
}

/// Include directories and headers of the compile actions.
const INCLUDE_DIRS: usize = 16;
const HEADERS: usize = 48;

pub fn describe(options: &WorkspaceSize) -> String {
    format!(
        "{} g++ compile genrules (each includes {HEADERS} headers spread over {INCLUDE_DIRS} `-I` \
         directories, plus <vector> and <string>) and {} genrules with {} input files each, \
         built with `--spawn_strategy=linux-sandbox`",
        options.build_compiles, options.build_sandboxes, options.build_inputs
    )
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes the workspace into `ws`; returns the number of actions.
pub fn generate(ws: &Path, options: &WorkspaceSize) -> Result<usize> {
    write(&ws.join("WORKSPACE"), "")?;
    for h in 0..HEADERS {
        let text = format!("#pragma once\ninline int h{h}(int x) {{ return x * {h} + 1; }}\n");
        write(&ws.join(format!("inc/d{}/h{h}.h", h % INCLUDE_DIRS)), &text)?;
    }
    for i in 0..options.build_inputs {
        write(&ws.join(format!("in/i{i}.txt")), &format!("input {i}\n"))?;
    }
    let mut source = String::from("#include <string>\n#include <vector>\n");
    for h in 0..HEADERS {
        writeln!(source, "#include \"h{h}.h\"")?;
    }
    let includes: String = (0..INCLUDE_DIRS).map(|d| format!(" -Iinc/d{d}")).collect();
    let mut build = String::from(
        "filegroup(name = \"headers\", srcs = glob([\"inc/**/*.h\"]))\n\
         filegroup(name = \"inputs\", srcs = glob([\"in/*.txt\"]))\n",
    );
    for i in 0..options.build_compiles {
        let mut text = source.clone();
        let sum: String = (0..HEADERS).map(|h| format!(" + h{h}(v.size())")).collect();
        writeln!(
            text,
            "int f{i}() {{ std::vector<std::string> v(3, \"{i}\"); return 0{sum}; }}"
        )?;
        write(&ws.join(format!("src/c{i}.cc")), &text)?;
        writeln!(
            build,
            "genrule(name = \"cc{i}\", srcs = [\"src/c{i}.cc\", \":headers\"], outs = [\"c{i}.o\"], \
             cmd = \"g++ -pipe -O1 -c{includes} $(location src/c{i}.cc) -o $@\")"
        )?;
    }
    for i in 0..options.build_sandboxes {
        writeln!(
            build,
            "genrule(name = \"sb{i}\", srcs = [\":inputs\"], outs = [\"sb{i}.txt\"], \
             cmd = \"cat $(SRCS) | wc -c > $@\")"
        )?;
    }
    write(&ws.join("BUILD"), &build)?;
    Ok(options.build_compiles + options.build_sandboxes)
}
