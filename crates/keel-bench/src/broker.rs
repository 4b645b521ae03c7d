//! The broker under test: started here with a temporary data dir, or given.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

pub struct Broker {
    bootstrap: String,
    child: Option<Child>,
    /// Holds the log dir (`data`) and the broker's stderr (`stderr.log`).
    dir: Option<tempfile::TempDir>,
}

impl Broker {
    pub fn external(bootstrap: String) -> Self {
        Self {
            bootstrap,
            child: None,
            dir: None,
        }
    }

    pub fn start(keel: &Path, overrides: &[String]) -> Result<Self> {
        // On disk, not tmpfs, so the figures include the real write path.
        let dir = tempfile::Builder::new()
            .prefix("keel-bench-")
            .tempdir_in(".")?;
        let stderr = File::create(dir.path().join("stderr.log"))?;
        let mut command = Command::new(keel);
        command
            // Plain INFO lines, whatever the caller's environment says: the
            // compaction suite reads the cleaner's figures from them.
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .arg("server")
            .args([
                "--override",
                &format!("log.dirs={}", dir.path().join("data").display()),
            ])
            .args(["--override", "listeners=PLAINTEXT://127.0.0.1:0"]);
        for o in overrides {
            command.args(["--override", o]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", keel.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("keel listening on ") else {
            let _ = child.kill();
            bail!("broker did not start: {line:?}");
        };
        Ok(Self {
            bootstrap: addr.to_string(),
            child: Some(child),
            dir: Some(dir),
        })
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The log dir of a broker started here.
    pub fn log_dir(&self) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.path().join("data"))
    }

    /// The file a broker started here writes its log lines to.
    pub fn stderr_path(&self) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.path().join("stderr.log"))
    }

    /// Current and peak resident set size, from /proc.
    pub fn rss_mib(&self) -> Option<(f64, f64)> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<f64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((kib / 1024.0 * 10.0).round() / 10.0)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
