//! The README runs as written: every command in its ```sh blocks is checked (the
//! binary's own subcommands and flags against its `--help`, `check` and `preview` run
//! for real from the repository root; scripts exist, are executable and parse; benches,
//! files and directories named exist; inline Python parses), `.ci/run` calls the
//! README's test command, the README stays a front door (under 300 lines, no dated
//! figures: those live in docs/performance.md), and every relative link in the docs
//! resolves, anchors included. The extractor is tested on a sample that drifted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Subcommands that need no running relay and write nothing: run for real.
const RUN_FOR_REAL: &[&str] = &["check", "preview"];
/// Commands that set up an environment or need a running relay: their arguments are
/// checked (files named exist), the command itself is not run.
const EXTERNAL: &[&str] = &[
    "curl",
    "read",
    ".venv/bin/pip",
    ".venv/bin/python",
    "mkdir",
    "sleep",
    "perf",
];

/// One simple command of a ```sh block: its words (quotes removed) and its line.
#[derive(Debug)]
struct Cmd {
    line: usize,
    words: Vec<String>,
}

/// The body and first line number of each ```sh block of `md`.
fn sh_blocks(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in md.lines().enumerate() {
        match &mut current {
            None if line.trim() == "```sh" => current = Some((i + 2, String::new())),
            Some(_) if line.trim() == "```" => out.extend(current.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    out
}

/// Splits shell text into words and separators (`&&`, `||`, `|`, `;`, newline),
/// honouring quotes and backslash-newline, dropping comments and heredoc bodies.
fn tokens(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let (mut line, mut word, mut in_word) = (0usize, String::new(), false);
    let mut heredoc: Option<String> = None;
    let mut chars = text.chars().peekable();
    let flush = |out: &mut Vec<(usize, String)>, word: &mut String, in_word: &mut bool, line| {
        if *in_word {
            out.push((line, std::mem::take(word)));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    line += usize::from(q == '\n');
                    word.push(q);
                }
            }
            '\\' if chars.peek() == Some(&'\n') => {
                chars.next();
                line += 1;
            }
            '#' if !in_word => {
                while chars.peek().is_some_and(|&n| n != '\n') {
                    chars.next();
                }
            }
            '\n' => {
                flush(&mut out, &mut word, &mut in_word, line);
                out.push((line, "\n".into()));
                line += 1;
                if let Some(end) = heredoc.take() {
                    for body in text.lines().skip(line) {
                        line += 1;
                        if body.trim() == end {
                            break;
                        }
                    }
                    chars = text[byte_of_line(text, line)..].chars().peekable();
                }
            }
            ' ' | '\t' => flush(&mut out, &mut word, &mut in_word, line),
            '&' | '|' | ';' | '<' | '>' => {
                flush(&mut out, &mut word, &mut in_word, line);
                let mut op = c.to_string();
                while chars.peek().is_some_and(|&n| n == c) {
                    op.push(c);
                    chars.next();
                }
                if op == "<<" {
                    let rest: String = chars.clone().take_while(|&n| n != '\n').collect();
                    let end = rest.split_whitespace().next().unwrap_or("");
                    heredoc = Some(end.trim_matches(['\'', '"']).to_string());
                }
                out.push((line, op));
            }
            _ => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut out, &mut word, &mut in_word, line);
    out
}

/// The byte offset where line `n` (0-based) of `text` starts (its length if none).
fn byte_of_line(text: &str, n: usize) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i == n {
            return offset;
        }
        offset += l.len();
    }
    text.len()
}

/// The simple commands of a block starting at README line `first`: words between
/// separators, without redirections (`> FILE`, `< FILE`, `<<'END'`).
fn commands(block: &str, first: usize) -> Vec<Cmd> {
    let mut out = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut start = first;
    let mut skip_next = false;
    for (line, tok) in tokens(block) {
        match tok.as_str() {
            "\n" | "&&" | "||" | "|" | ";" => {
                if !words.is_empty() {
                    out.push(Cmd {
                        line: start,
                        words: std::mem::take(&mut words),
                    });
                }
            }
            "<" | ">" | ">>" | "<<" => skip_next = true,
            _ if skip_next => skip_next = false,
            _ => {
                if words.is_empty() {
                    start = first + line;
                }
                words.push(tok);
            }
        }
    }
    if !words.is_empty() {
        out.push(Cmd { line: start, words });
    }
    out
}

/// Checks the README's shell commands against `repo`; one message per problem,
/// each naming the README line.
struct Checker<'a> {
    /// The Markdown file the commands come from, for messages.
    doc: &'a str,
    repo: &'a Path,
    bin: PathBuf,
    help: BTreeMap<String, String>,
    problems: Vec<String>,
}

impl Checker<'_> {
    fn problem(&mut self, line: usize, msg: String) {
        self.problems.push(format!("{}:{line}: {msg}", self.doc));
    }

    fn exists(&mut self, line: usize, path: &str, what: &str) -> bool {
        let ok = self.repo.join(path).exists();
        if !ok {
            self.problem(line, format!("{what} `{path}` does not exist"));
        }
        ok
    }

    fn check(&mut self, cmd: &Cmd) {
        let w: Vec<&str> = cmd.words.iter().map(String::as_str).collect();
        // Leading `NAME=value` words set the environment.
        let env = w.iter().take_while(|a| is_assignment(a)).count();
        match &w[env..] {
            ["cargo", "run", rest @ ..] => match rest.iter().position(|&a| a == "--") {
                Some(i) => self.binary(cmd.line, &rest[i + 1..]),
                None => self.problem(cmd.line, "`cargo run` without `--` runs nothing".into()),
            },
            ["postback-relay", rest @ ..] => self.binary(cmd.line, rest),
            ["cargo", "bench", "--bench", name, ..] => self.bench(cmd.line, name),
            ["cargo", "test", "--test", name, ..] => {
                self.exists(cmd.line, &format!("tests/{name}.rs"), "the test file");
            }
            ["cargo", "test", "--lib", ..] => {}
            ["cargo", "build", rest @ ..] => self.build(cmd.line, rest),
            [program, args @ ..] if program.contains("/examples/") => {
                self.example(cmd.line, program, args)
            }
            ["cargo", "install", "--path", dir] => {
                self.exists(cmd.line, &format!("{dir}/Cargo.toml"), "the crate");
            }
            ["docker", "build", .., dir] => {
                self.exists(cmd.line, &format!("{dir}/Dockerfile"), "the Dockerfile");
            }
            ["python3", "-m", "venv", _] => {}
            ["python3", "-c", code] => self.python(cmd.line, code),
            [script, ..] if script.starts_with("scripts/") || script.starts_with(".ci/") => {
                self.script(cmd.line, script)
            }
            [program, args @ ..] if EXTERNAL.contains(program) => {
                for a in args.iter().filter_map(|a| a.strip_prefix('@')) {
                    self.exists(cmd.line, a, "the file");
                }
            }
            _ => self.problem(
                cmd.line,
                format!(
                    "`{}`: a command tests/readme.rs does not know; teach it what to check",
                    cmd.words.join(" ")
                ),
            ),
        }
    }

    fn script(&mut self, line: usize, script: &str) {
        if !self.exists(line, script, "the script") {
            return;
        }
        let path = self.repo.join(script);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode());
        if mode.map_or(true, |m| m & 0o111 == 0) {
            self.problem(line, format!("`{script}` is not executable"));
        }
        let parsed = Command::new("bash").arg("-n").arg(&path).output();
        if !parsed.is_ok_and(|o| o.status.success()) {
            self.problem(line, format!("`bash -n {script}` fails"));
        }
    }

    /// `cargo build`: the `--bin` and `--example` it names exist.
    fn build(&mut self, line: usize, args: &[&str]) {
        for pair in args.windows(2) {
            match pair {
                ["--bin", name] if *name != env!("CARGO_PKG_NAME") => {
                    self.problem(line, format!("no binary `{name}` in this crate"));
                }
                ["--example", name] => {
                    self.exists(line, &format!("examples/{name}"), "the example");
                }
                _ => {}
            }
        }
    }

    /// A built example run as `target/.../examples/NAME SUBCOMMAND ARGS`: the example
    /// exists, and each `--flag` is a field of the subcommand's arguments in its
    /// `main.rs` (`run` -> `struct RunArgs { flag: ... }`).
    fn example(&mut self, line: usize, program: &str, args: &[&str]) {
        let name = program.rsplit('/').next().unwrap_or(program);
        let main = format!("examples/{name}/main.rs");
        if !self.exists(line, &main, "the example") {
            return;
        }
        let source = std::fs::read_to_string(self.repo.join(&main)).unwrap_or_default();
        let sub = args.first().copied().unwrap_or("");
        let mut title = sub.chars();
        let strukt = match title.next() {
            Some(c) => format!("struct {}{}Args {{", c.to_uppercase(), title.as_str()),
            None => String::new(),
        };
        let Some(start) = source.find(&strukt).filter(|_| !sub.is_empty()) else {
            return self.problem(line, format!("`{name}` has no subcommand `{sub}`"));
        };
        let body = &source[start..];
        let source = &body[..body.find("\n}").unwrap_or(body.len())];
        for a in args.iter().filter(|a| a.starts_with("--")) {
            let field = a.trim_start_matches("--").replace('-', "_");
            if !source.contains(&format!(" {field}: ")) {
                self.problem(line, format!("`{name}` has no flag `{a}`"));
            }
        }
    }

    fn bench(&mut self, line: usize, name: &str) {
        let manifest = std::fs::read_to_string(self.repo.join("Cargo.toml")).unwrap_or_default();
        if !manifest.contains(&format!("[[bench]]\nname = \"{name}\"")) {
            self.problem(line, format!("no [[bench]] `{name}` in Cargo.toml"));
        }
        self.exists(line, &format!("benches/{name}.rs"), "the bench");
    }

    fn python(&mut self, line: usize, code: &str) {
        let parse = "import ast, sys; ast.parse(sys.argv[1])";
        match Command::new("python3").args(["-c", parse, code]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr).into_owned();
                self.problem(line, format!("its inline Python does not parse: {err}"));
            }
            Err(e) => self.problem(line, format!("cannot run python3 to parse it: {e}")),
        }
    }

    /// `postback-relay ARGS`: the subcommand exists, every flag is in its `--help`,
    /// files named exist, and `check` / `preview` succeed from the repository root.
    fn binary(&mut self, line: usize, args: &[&str]) {
        let mut args: Vec<&str> = args.to_vec();
        if let Some(i) = args.iter().position(|&a| a == "--log-format") {
            args.drain(i..(i + 2).min(args.len()));
        }
        let depth = match args.first() {
            Some(&"dlq") => 2,
            Some(a) if a.starts_with('-') => 0,
            _ => 1,
        };
        let sub = args[..depth.min(args.len())].join(" ");
        let Some(help) = self.help_of(&sub) else {
            return self.problem(line, format!("`postback-relay {sub}` is not a command"));
        };
        for (i, a) in args.iter().enumerate().skip(depth) {
            let flag = a.split('=').next().unwrap_or(a);
            if flag.starts_with("--") && flag != "--help" && !names_flag(&help, flag) {
                self.problem(line, format!("`postback-relay {sub}` has no flag `{flag}`"));
            }
            let value_of = i.checked_sub(1).map(|p| args[p]);
            let path_flag = matches!(value_of, Some("--config" | "--events" | "--rules"));
            let positional = !a.starts_with('-') && !value_of.is_some_and(|v| v.starts_with("--"));
            if path_flag || (positional && a.contains(['/', '.'])) {
                self.exists(line, a, "the file or directory");
            }
        }
        if RUN_FOR_REAL.contains(&sub.as_str()) {
            self.run(line, &args);
        }
    }

    fn run(&mut self, line: usize, args: &[&str]) {
        let out = Command::new(&self.bin)
            .args(args)
            .current_dir(self.repo)
            .output()
            .expect("the binary runs");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let msg = format!(
                "`postback-relay {}` exits {}: {err}",
                args.join(" "),
                out.status
            );
            self.problem(line, msg);
        }
    }

    /// `postback-relay SUB --help`, or `None` when there is no such subcommand.
    fn help_of(&mut self, sub: &str) -> Option<String> {
        if let Some(h) = self.help.get(sub) {
            return Some(h.clone());
        }
        let out = Command::new(&self.bin)
            .args(sub.split_whitespace())
            .arg("--help")
            .output()
            .expect("the binary runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // `dlq` alone answers with its own help: a missing second word is a problem.
        let incomplete = sub == "dlq";
        let ok = out.status.success() && !incomplete;
        ok.then(|| {
            self.help.insert(sub.to_string(), text.clone());
            text
        })
    }
}

/// Whether a `--help` text lists `flag` (followed by a space, `=`, `<` or a line end).
fn names_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let next = help[i + flag.len()..].chars().next();
        next.is_none_or(|c| !(c.is_alphanumeric() || c == '-'))
    })
}

/// Whether a shell word is an environment assignment (`NAME=value`).
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(n, _)| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}

/// Every problem with the shell commands of `readme` and its set-up section
/// (run against the repository at `repo`, whose `.ci/run` is `ci`).
fn readme_problems(readme: &str, repo: &Path, ci: &str) -> Vec<String> {
    let mut problems = command_problems("README.md", readme, repo);
    problems.extend(setup_problems(readme, ci));
    problems
}

/// Every problem with the commands of the ```sh blocks of `md` (the file `doc`).
fn command_problems(doc: &str, md: &str, repo: &Path) -> Vec<String> {
    let mut checker = Checker {
        doc,
        repo,
        bin: PathBuf::from(env!("CARGO_BIN_EXE_postback-relay")),
        help: BTreeMap::new(),
        problems: Vec::new(),
    };
    for (first, block) in sh_blocks(md) {
        for cmd in commands(&block, first) {
            checker.check(&cmd);
        }
    }
    checker.problems
}

/// The set-up section gives two commands, one block each: the relay, then the tests;
/// `.ci/run` runs the test command as written.
fn setup_problems(readme: &str, ci: &str) -> Vec<String> {
    let readme = format!("\n{readme}");
    let Some(start) = readme.find("\n## Set-up: two commands\n") else {
        return vec!["README.md: no section \"## Set-up: two commands\"".into()];
    };
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    let blocks = sh_blocks(&section[..end]);
    let mut problems = Vec::new();
    match blocks.as_slice() {
        [(_, serve), (_, test), ..] => {
            if !serve.contains("-- serve") {
                problems.push(format!(
                    "README.md set-up: the first command `{}` does not run the relay",
                    serve.trim()
                ));
            }
            if !ci.lines().any(|l| l.trim() == test.trim()) {
                problems.push(format!(
                    "README.md set-up: .ci/run does not run the test command `{}`",
                    test.trim()
                ));
            }
        }
        _ => problems.push("README.md set-up: not two ```sh blocks (relay, tests)".into()),
    }
    problems
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside fenced code).
fn anchors(md: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in md.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// Every relative link `](target)` of the Markdown file `file` (outside fenced code)
/// that does not resolve: a missing file, or a missing heading for `#anchor`.
fn broken_links(file: &Path, md: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in md.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        for piece in line.split("](").skip(1) {
            let Some(target) = piece.split(')').next() else {
                continue;
            };
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let place = format!("{}:{}: link `{target}`", file.display(), i + 1);
            let resolved = file.parent().expect("a file in a directory").join(path);
            let text = match path {
                "" => Ok(md.to_string()),
                _ => std::fs::read_to_string(&resolved),
            };
            match text {
                _ if !resolved.exists() => out.push(format!("{place}: no such file")),
                Ok(text) if !anchor.is_empty() && !anchors(&text).contains(anchor) => {
                    out.push(format!("{place}: no heading with that anchor"))
                }
                _ => {}
            }
        }
    }
    out
}

/// The Markdown files of the repository that readers follow links in.
fn markdown_files() -> Vec<PathBuf> {
    let repo = Path::new(REPO);
    let mut files: Vec<PathBuf> = [
        "README.md",
        "README-RULES.md",
        "CONTRIBUTING.md",
        "ARCHITECTURE.md",
        "CHANGELOG.md",
        "benches/README.md",
    ]
    .iter()
    .map(|f| repo.join(f))
    .collect();
    for entry in std::fs::read_dir(repo.join("docs")).expect("docs/") {
        let path = entry.expect("docs/ entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files
}

fn read(path: &str) -> String {
    let p = Path::new(REPO).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_readme_command_runs_as_written() {
    let problems = readme_problems(&read("README.md"), Path::new(REPO), &read(".ci/run"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_contributing_command_runs_as_written() {
    let problems = command_problems("CONTRIBUTING.md", &read("CONTRIBUTING.md"), Path::new(REPO));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_readme_is_a_front_door() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    assert!(
        lines < 300,
        "README.md has {lines} lines; move long sections to docs/"
    );
    // A date like 2026-11-25 marks a measurement: those live in docs/performance.md.
    let dated = readme.lines().enumerate().find(|(_, l)| {
        l.as_bytes().windows(10).any(|w| {
            w.iter().enumerate().all(|(i, b)| match i {
                4 | 7 => *b == b'-',
                _ => b.is_ascii_digit(),
            })
        })
    });
    assert!(
        dated.is_none(),
        "README.md:{}: a dated figure; it belongs in docs/performance.md",
        dated.map_or(0, |d| d.0 + 1)
    );
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        broken.extend(broken_links(&file, &text));
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// A README that drifted from the code: each kind of drift is reported, with its line.
#[test]
fn a_drifted_readme_is_caught() {
    let sample = "# x\n\n## Set-up: two commands\n\n```sh\ncargo run --release -- serve\n```\n\n```sh\nscripts/test.sh\n```\n\n## Try it\n\n```sh\ncargo run --release -- chek\ncargo run --release -- check --evnts examples\ncargo run --release -- preview examples/nothing.json\nscripts/nope.sh\ncargo bench --bench nope\nfrobnicate --now \\\n  --really\ncargo run -- dlq\ncargo run -- check --config nowhere.toml\nX_1=2 cargo test --test nope\n```\n";
    let ci = "#!/usr/bin/env bash\ncargo test\n";
    let problems = readme_problems(sample, Path::new(REPO), ci);
    let expect = [
        "README.md:16: `postback-relay chek` is not a command",
        "README.md:17: `postback-relay check` has no flag `--evnts`",
        "README.md:17: `postback-relay check --evnts examples` exits",
        "README.md:18: the file or directory `examples/nothing.json` does not exist",
        "README.md:18: `postback-relay preview examples/nothing.json` exits",
        "README.md:19: the script `scripts/nope.sh` does not exist",
        "README.md:20: no [[bench]] `nope` in Cargo.toml",
        "README.md:20: the bench `benches/nope.rs` does not exist",
        "README.md:21: `frobnicate --now --really`: a command tests/readme.rs does not know",
        "README.md:23: `postback-relay dlq` is not a command",
        "README.md:24: the file or directory `nowhere.toml` does not exist",
        "README.md:24: `postback-relay check --config nowhere.toml` exits",
        "README.md:25: the test file `tests/nope.rs` does not exist",
        "README.md set-up: .ci/run does not run the test command `scripts/test.sh`",
    ];
    for e in expect {
        assert!(
            problems.iter().any(|p| p.starts_with(e)),
            "missing: {e}\ngot:\n{}",
            problems.join("\n")
        );
    }
    assert_eq!(problems.len(), expect.len(), "{}", problems.join("\n"));
    // And the good parts of it are not reported.
    let good = "## Set-up: two commands\n\n```sh\ncargo run -- serve\n```\n\n```sh\nscripts/test.sh\n```\n";
    assert_eq!(
        readme_problems(good, Path::new(REPO), "scripts/test.sh\n"),
        Vec::<String>::new()
    );
}

/// The tokenizer keeps quoted text whole, joins continued lines, drops comments,
/// heredoc bodies and redirections.
#[test]
fn commands_are_split_as_a_shell_would() {
    let block =
        "a 'b c' \"d\" # note\nx \\\n  y > /tmp/o && z <<'END'\nnot a command\nEND\nlast @f\n";
    let got: Vec<(usize, String)> = commands(block, 10)
        .into_iter()
        .map(|c| (c.line, c.words.join("|")))
        .collect();
    let want = [(10, "a|b c|d"), (11, "x|y"), (12, "z"), (15, "last|@f")];
    let want: Vec<(usize, String)> = want.iter().map(|(l, w)| (*l, w.to_string())).collect();
    assert_eq!(got, want);
}

#[test]
fn a_broken_link_is_caught() {
    let file = Path::new(REPO).join("README.md");
    let md = "# Top\n[ok](docs/redis.md) [gone](docs/nothing.md) [here](#top) [nope](#nowhere)\n```\n[in code](x.md)\n```\n[anchor](docs/redis.md#no-such-heading)\n";
    let broken = broken_links(&file, md);
    assert_eq!(broken.len(), 3, "{broken:?}");
    assert!(
        broken[0].ends_with("link `docs/nothing.md`: no such file"),
        "{broken:?}"
    );
    assert!(
        broken[1].ends_with("link `#nowhere`: no heading with that anchor"),
        "{broken:?}"
    );
    assert!(
        broken[2].contains("docs/redis.md#no-such-heading"),
        "{broken:?}"
    );
}

/// The README's list of commands is the binary's: each one named has a `--help`,
/// and every subcommand of `postback-relay --help` is named.
#[test]
fn the_readme_names_every_command_and_only_those() {
    let readme = read("README.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with("| Commands:"))
        .expect("README.md: a table row starting `| Commands:`");
    let cell = row.split('|').nth(1).unwrap_or_default();
    let named: BTreeSet<String> = cell
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    let bin = env!("CARGO_BIN_EXE_postback-relay");
    for name in &named {
        let out = Command::new(bin)
            .args(name.split_whitespace())
            .arg("--help")
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "README.md names `{name}`: `postback-relay {name} --help` fails"
        );
    }
    let help = Command::new(bin).arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let commands = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section")
        .split("\n\n")
        .next()
        .unwrap_or_default();
    for line in commands.lines() {
        let Some(name) = line.split_whitespace().next().filter(|n| *n != "help") else {
            continue;
        };
        assert!(
            named
                .iter()
                .any(|n| n.split_whitespace().next() == Some(name)),
            "`postback-relay {name}` is not named in README.md's Commands row"
        );
    }
}
