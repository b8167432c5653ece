//! `cargo xtask install [--prefix /usr/local] [--destdir DIR]`: build the release binary and
//! install it with its systemd unit, example configuration, shell completions and man page.
//!
//! ```text
//! <destdir><prefix>/sbin/slammer                                  the binary
//! <destdir>/etc/systemd/system/slammer.service                    contrib/slammer.service
//! <destdir>/etc/slammer/slammer.toml                              contrib/slammer.toml, only if absent
//! <destdir><prefix>/share/bash-completion/completions/slammer     slammer completions bash
//! <destdir><prefix>/share/zsh/site-functions/_slammer             slammer completions zsh
//! <destdir><prefix>/share/fish/vendor_completions.d/slammer.fish  slammer completions fish
//! <destdir><prefix>/share/man/man8/slammer.8                      slammer man
//! ```
//!
//! `--destdir` stages the tree somewhere else (for a package, or to look at it) without changing
//! the paths written into the unit. Every file is written to a temporary name beside it and
//! renamed into place, so a running `slammer` is replaced, never written into. An existing
//! `/etc/slammer/slammer.toml` is never touched.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{build, setup, workspace};

/// The binary's path in `contrib/slammer.service`, replaced by `<prefix>/sbin/slammer`.
const UNIT_BINARY: &str = "/usr/local/sbin/slammer";

#[derive(clap::Args)]
pub struct Args {
    /// Installation prefix: the binary goes to PREFIX/sbin, completions and the man page to
    /// PREFIX/share.
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    pub prefix: PathBuf,
    /// Stage everything under DIR instead of / (the unit still names PREFIX/sbin/slammer).
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
}

pub fn cmd(args: &Args) -> Result<()> {
    ensure!(
        args.prefix.is_absolute(),
        "--prefix must be an absolute path, got {}",
        args.prefix.display()
    );
    let destdir = args
        .destdir
        .as_deref()
        .map(std::path::absolute)
        .transpose()
        .context("cannot make --destdir absolute")?;
    setup::run()?;
    let built = build::slammer(true)?;
    let layout = Layout::new(&args.prefix, destdir.as_deref());
    install(&layout, &built)?;
    if destdir.is_none() {
        println!(
            "next: systemctl daemon-reload && systemctl enable --now slammer \
             (edit /etc/slammer/slammer.toml first; `slammer check-config` checks it)"
        );
    }
    Ok(())
}

/// Where each file goes.
struct Layout {
    prefix: PathBuf,
    destdir: Option<PathBuf>,
}

impl Layout {
    fn new(prefix: &Path, destdir: Option<&Path>) -> Self {
        Self {
            prefix: prefix.to_owned(),
            destdir: destdir.map(Path::to_owned),
        }
    }

    /// `path` (absolute, as on the installed system) under the destdir.
    fn staged(&self, path: &Path) -> PathBuf {
        match &self.destdir {
            None => path.to_owned(),
            Some(destdir) => destdir.join(
                path.components()
                    .filter(|c| !matches!(c, Component::RootDir))
                    .collect::<PathBuf>(),
            ),
        }
    }

    /// The binary as the installed system sees it (written into the unit).
    fn binary(&self) -> PathBuf {
        self.prefix.join("sbin/slammer")
    }

    fn share(&self, rel: &str) -> PathBuf {
        self.staged(&self.prefix.join("share").join(rel))
    }
}

fn install(layout: &Layout, built: &Path) -> Result<()> {
    let binary = fs::read(built).with_context(|| format!("cannot read {}", built.display()))?;
    write(&layout.staged(&layout.binary()), &binary, 0o755)?;

    let unit = unit(
        &workspace::read_contrib("slammer.service")?,
        &layout.binary(),
    )?;
    write(
        &layout.staged(Path::new("/etc/systemd/system/slammer.service")),
        unit.as_bytes(),
        0o644,
    )?;

    let config = layout.staged(Path::new("/etc/slammer/slammer.toml"));
    let example = workspace::read_contrib("slammer.toml")?;
    if write_new(&config, example.as_bytes(), 0o644)? {
        println!("installed {}", config.display());
    } else {
        println!(
            "kept      {} (it exists; the example is {})",
            config.display(),
            workspace::root().join("contrib/slammer.toml").display()
        );
    }

    for (shell, rel) in [
        ("bash", "bash-completion/completions/slammer"),
        ("zsh", "zsh/site-functions/_slammer"),
        ("fish", "fish/vendor_completions.d/slammer.fish"),
    ] {
        let script = generate(built, &["completions", shell])?;
        write(&layout.share(rel), &script, 0o644)?;
    }
    let page = generate(built, &["man"])?;
    write(&layout.share("man/man8/slammer.8"), &page, 0o644)?;
    Ok(())
}

/// The unit with its `ExecStart=` pointing at `binary`.
fn unit(template: &str, binary: &Path) -> Result<String> {
    let exec = format!("ExecStart={UNIT_BINARY} ");
    ensure!(
        template.lines().filter(|l| l.starts_with(&exec)).count() == 1,
        "contrib/slammer.service has no single `{exec}...` line to adjust"
    );
    let binary = binary.to_str().context("the prefix is not UTF-8")?;
    ensure!(
        !binary.contains(char::is_whitespace),
        "the prefix {binary:?} contains whitespace, which ExecStart= would split"
    );
    Ok(template
        .lines()
        .map(|line| match line.strip_prefix(&exec) {
            Some(rest) => format!("ExecStart={binary} {rest}\n"),
            None => format!("{line}\n"),
        })
        .collect())
}

/// What `slammer ARGS...` prints on stdout.
fn generate(built: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let mut cmd = Command::new(built);
    cmd.args(args);
    let line = workspace::describe(&cmd);
    let output = cmd
        .output()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !output.status.success() || output.stdout.is_empty() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// Writes `path` (mode `mode`) through a temporary file renamed over it; prints the path.
fn write(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let parent = create_parent(path)?;
    let name = path.file_name().context("no file name")?.to_string_lossy();
    let tmp = parent.join(format!(".{name}.xtask-install"));
    let result = (|| -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        // The mode of a file that already existed, and whatever the umask took away.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}{}", path.display(), hint()));
    }
    println!("installed {}", path.display());
    Ok(())
}

/// Creates `path` with `contents` unless something is there already; returns whether it did.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<bool> {
    create_parent(path)?;
    let mut file = match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot create {}{}", path.display(), hint()));
        }
    };
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(true)
}

fn create_parent(path: &Path) -> Result<&Path> {
    let parent = path.parent().context("no parent directory")?;
    fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}{}", parent.display(), hint()))?;
    Ok(parent)
}

/// What to do about a failed write, when it may be for want of root.
fn hint() -> &'static str {
    if workspace::is_root() {
        ""
    } else {
        " (not root: run `sudo -E cargo xtask install`, or stage with --destdir DIR)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_points_at_the_prefix() {
        let template = "[Service]\nExecStart=/usr/local/sbin/slammer run\nExecReload=/bin/kill -HUP $MAINPID\n";
        let adjusted = unit(template, Path::new("/usr/sbin/slammer")).unwrap();
        assert_eq!(
            adjusted,
            "[Service]\nExecStart=/usr/sbin/slammer run\nExecReload=/bin/kill -HUP $MAINPID\n"
        );
        assert!(unit("[Service]\n", Path::new("/usr/sbin/slammer")).is_err());
        assert!(unit(template, Path::new("/opt/my dir/sbin/slammer")).is_err());
    }

    #[test]
    fn the_real_unit_can_be_adjusted() {
        let template = workspace::read_contrib("slammer.service").unwrap();
        let adjusted = unit(&template, Path::new("/opt/slammer/sbin/slammer")).unwrap();
        assert!(
            adjusted.contains("\nExecStart=/opt/slammer/sbin/slammer run\n"),
            "{adjusted}"
        );
    }

    #[test]
    fn staging_keeps_the_absolute_layout() {
        let layout = Layout::new(Path::new("/usr/local"), Some(Path::new("/tmp/stage")));
        assert_eq!(
            layout.staged(&layout.binary()),
            Path::new("/tmp/stage/usr/local/sbin/slammer")
        );
        assert_eq!(
            layout.share("man/man8/slammer.8"),
            Path::new("/tmp/stage/usr/local/share/man/man8/slammer.8")
        );
        let live = Layout::new(Path::new("/usr"), None);
        assert_eq!(
            live.staged(Path::new("/etc/slammer/slammer.toml")),
            Path::new("/etc/slammer/slammer.toml")
        );
    }
}
