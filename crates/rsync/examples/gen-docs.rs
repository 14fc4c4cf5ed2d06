//! Writes the man page `keep-rsync.1` and the bash, zsh and fish completions for the
//! packages, from the same clap definitions ([`keep_rsync::cli::Cli`]) as `--help`, so
//! they cannot drift apart.
//!
//! ```sh
//! cargo run -p keep-rsync --example gen-docs -- OUT_DIR
//! ```
//!
//! writes `OUT_DIR/keep-rsync.1`, `OUT_DIR/keep-rsync.bash`, `OUT_DIR/_keep-rsync` and
//! `OUT_DIR/keep-rsync.fish`. `scripts/package` runs it. It is an example, not part of
//! the binary, so `clap_mangen` and `clap_complete` stay out of what we ship.
//!
//! The man page is clap_mangen's NAME, SYNOPSIS, DESCRIPTION and OPTIONS, followed by
//! the `after_long_help` text turned into man sections: each unindented capitalised
//! line (`EXIT STATUS`) starts a section, an indented `TAG   text` line (with its more
//! indented continuation lines) becomes a tagged paragraph, and any other text fills a
//! plain paragraph. Text before the first heading ends the DESCRIPTION.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use clap_complete::Shell;
use clap_mangen::roff::{Roff, bold, roman};
use keep_rsync::cli::Cli;

const BIN: &str = "keep-rsync";

fn main() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: gen-docs OUT_DIR");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out)?;
    write_man(&out.join(format!("{BIN}.1")))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut Cli::command(), BIN, &out)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn write_man(path: &Path) -> std::io::Result<()> {
    let cmd = Cli::command();
    let after = cmd
        .get_after_long_help()
        .map(ToString::to_string)
        .unwrap_or_default();
    let (preamble, sections) = split_sections(&after);
    let man = clap_mangen::Man::new(cmd)
        .title(BIN.to_uppercase())
        .date(man_date())
        .manual("User Commands");

    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    let mut roff = Roff::new();
    render_body(&mut roff, &preamble);
    roff.to_writer(&mut buf)?;
    man.render_options_section(&mut buf)?;
    for (heading, body) in &sections {
        let mut roff = Roff::new();
        roff.control("SH", [heading.as_str()]);
        render_body(&mut roff, body);
        roff.to_writer(&mut buf)?;
    }
    let mut roff = Roff::new();
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        roman("The migration runbook, settings and flags in "),
        bold(format!("/usr/share/doc/{BIN}/README.md")),
        roman("."),
    ]);
    roff.to_writer(&mut buf)?;
    man.render_version_section(&mut buf)?;

    std::fs::File::create(path)?.write_all(&buf)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The page's date, `YYYY-MM-DD`: `SOURCE_DATE_EPOCH` (reproducible builds;
/// `scripts/package` sets it to the last commit's time), else today. clap_mangen
/// drops an empty date from `.TH`, which shifts the footer fields, so there is always
/// one.
fn man_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A section heading: an unindented line whose words before any parenthesis are
/// capitals (`EXIT STATUS`, `SETTINGS (-src / -dst)`).
fn is_heading(line: &str) -> bool {
    let head = line.split(" (").next().unwrap_or_default();
    !line.starts_with(' ')
        && head.len() > 1
        && head.chars().all(|c| c.is_ascii_uppercase() || c == ' ')
}

/// Splits the after-help text into the text before the first heading and
/// (heading, lines) pairs.
fn split_sections(text: &str) -> (Vec<&str>, Vec<(String, Vec<&str>)>) {
    let mut preamble = Vec::new();
    let mut sections: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        if is_heading(line) {
            sections.push((line.to_owned(), Vec::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push(line);
        } else {
            preamble.push(line);
        }
    }
    (preamble, sections)
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// `  TAG   text`: an indented word, two or more spaces, then text.
fn tagged(line: &str) -> Option<(&str, &str)> {
    if indent(line) == 0 {
        return None;
    }
    let rest = line.trim_start();
    let (tag, text) = rest.split_once("  ")?;
    (!tag.contains(' ')).then(|| (tag, text.trim_start()))
}

/// Renders lines as filled paragraphs and tagged paragraphs (see the module docs).
fn render_body(roff: &mut Roff, lines: &[&str]) {
    enum Block {
        Plain(String),
        Tagged(String, String, usize),
    }
    let mut blocks: Vec<Block> = Vec::new();
    let mut new_paragraph = true;
    for &line in lines {
        if line.trim().is_empty() {
            new_paragraph = true;
            continue;
        }
        if let Some((tag, text)) = tagged(line) {
            blocks.push(Block::Tagged(tag.to_owned(), text.to_owned(), indent(line)));
        } else {
            match blocks.last_mut() {
                Some(Block::Tagged(_, text, tag_indent))
                    if !new_paragraph && indent(line) > *tag_indent =>
                {
                    text.push(' ');
                    text.push_str(line.trim());
                }
                Some(Block::Plain(text)) if !new_paragraph => {
                    text.push(' ');
                    text.push_str(line.trim());
                }
                _ => blocks.push(Block::Plain(line.trim().to_owned())),
            }
        }
        new_paragraph = false;
    }
    for block in blocks {
        match block {
            Block::Plain(text) => {
                roff.control("PP", []).text([roman(text)]);
            }
            Block::Tagged(tag, text, _) => {
                roff.control("TP", []).text([bold(tag)]).text([roman(text)]);
            }
        }
    }
}
