//! Standard output that never panics: `println!` panics when the reader went away (`dmakit
//! demo | head -1`) or the disk is full (`> /dev/full`). [`Out`] records the first failure
//! instead, writes nothing after it, and [`finish`] tells `main` how to end: quietly for a
//! closed pipe, with an error naming the cause otherwise.
//!
//! Text goes through [`say!`] onto any writer (the commands write to [`Out`], or to
//! [`std::io::sink`] when `--json` replaces their text); [`json`] prints a document.

use serde::Serialize;
use std::io::{self, ErrorKind, Write};
use std::sync::Mutex;

/// The first write error on standard output, if any.
static FAILED: Mutex<Option<(ErrorKind, String)>> = Mutex::new(None);

fn failed() -> Option<(ErrorKind, String)> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn record(e: &io::Error) {
    let mut f = FAILED.lock().unwrap_or_else(|p| p.into_inner());
    if f.is_none() {
        *f = Some((e.kind(), e.to_string()));
    }
}

/// Standard output, each write flushed, failures recorded (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct Out;

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some((kind, text)) = failed() {
            return Err(io::Error::new(kind, text));
        }
        let mut o = io::stdout().lock();
        let r = o.write_all(buf).and_then(|()| o.flush());
        match r {
            Ok(()) => Ok(buf.len()),
            Err(e) => {
                record(&e);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `args` to `w` in one write: a failure is left to the writer ([`Out`] records
/// it for [`finish`], a sink never fails). Never a panic.
pub fn write(w: &mut dyn Write, args: std::fmt::Arguments<'_>) {
    let _ = w.write_all(args.to_string().as_bytes());
}

/// `writeln!` through [`write()`].
macro_rules! say {
    ($w:expr, $($t:tt)*) => {
        $crate::out::write($w, format_args!("{}\n", format_args!($($t)*)))
    };
}
pub(crate) use say;

/// `write!` through [`write()`].
macro_rules! say_part {
    ($w:expr, $($t:tt)*) => {
        $crate::out::write($w, format_args!($($t)*))
    };
}
pub(crate) use say_part;

/// Prints `value` as pretty JSON on standard output.
pub fn json<T: Serialize>(value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| format!("JSON output: {e}"))?;
    say!(&mut Out, "{text}");
    Ok(())
}

/// How the output ended: `Ok(true)` if it is whole, `Ok(false)` if the reader went away
/// (end quietly), `Err` for any other failure (a full disk).
pub fn finish() -> Result<bool, String> {
    match failed() {
        None => Ok(true),
        Some((ErrorKind::BrokenPipe, _)) => Ok(false),
        Some((_, text)) => Err(format!("writing the output: {text}")),
    }
}
