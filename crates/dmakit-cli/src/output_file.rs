//! A file a command writes at its end (an SVG, a JSON report), opened at its start: a
//! path that cannot be written fails before minutes of benchmarks or a large allocation,
//! not after.

use crate::exit::Failure;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

/// A file opened for writing but not yet written. An existing file is left as it was
/// until [`write`](Self::write); a file this created is removed again if it is dropped
/// unwritten (the run failed).
#[derive(Debug)]
pub struct OutputFile {
    path: PathBuf,
    file: Option<File>,
    created: bool,
}

impl OutputFile {
    /// Opens `path` for writing (creating its directory first with `make_dir`); `what`
    /// names the option in errors (`--svg`).
    pub fn open(path: &Path, what: &str, make_dir: bool) -> Result<OutputFile, Failure> {
        let failure = |e: io::Error, doing: &str| {
            Failure::usage(format!("{what} {}: cannot {doing}: {e}", path.display()))
        };
        if make_dir {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| failure(e, "create its directory"))?;
            }
        }
        let created = !path.exists();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| failure(e, "open it for writing"))?;
        Ok(OutputFile {
            path: path.to_path_buf(),
            file: Some(file),
            created,
        })
    }

    /// Where it goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's contents with `text`.
    pub fn write(mut self, text: &str) -> Result<(), Failure> {
        let Some(mut f) = self.file.take() else {
            return Ok(());
        };
        // Only a regular file is emptied first (a device such as /dev/null has no length).
        let regular = f.metadata().is_ok_and(|m| m.is_file());
        let r = if regular {
            f.set_len(0).and_then(|()| f.rewind())
        } else {
            Ok(())
        }
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| f.flush());
        r.map_err(|e| Failure::failed(format!("writing {}: {e}", self.path.display())))
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if self.file.take().is_some() && self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_left_unwritten_is_removed_and_a_bad_path_fails_at_once() {
        let dir = std::env::temp_dir().join(format!("dmakit-out-{}", std::process::id()));
        let p = dir.join("sub/pic.svg");
        let f = OutputFile::open(&p, "--svg", true).unwrap();
        assert!(p.exists());
        drop(f);
        assert!(!p.exists(), "an unwritten new file is removed");
        OutputFile::open(&p, "--svg", true)
            .unwrap()
            .write("<svg/>")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "<svg/>");
        drop(OutputFile::open(&p, "--svg", false).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "<svg/>", "kept");
        let e = OutputFile::open(&dir.join("none/x.svg"), "--svg", false).unwrap_err();
        assert!(
            e.message.contains("--svg") && e.message.contains("none"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
