//! Standard output that never panics: `println!` panics when the reader went away (`dmakit
//! demo | head -1`) or the disk is full (`> /dev/full`). [`Out`] records the first failure
//! instead, writes nothing after it, and [`finish`] tells `main` how to end: quietly for a
//! closed pipe, with an error naming the cause otherwise.

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

/// `println!` onto [`Out`]: a failure is recorded for [`finish`], never a panic.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!($crate::out::Out, $($t)*);
    }};
}
pub(crate) use say;

/// `print!` onto [`Out`].
macro_rules! say_part {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!($crate::out::Out, $($t)*);
    }};
}
pub(crate) use say_part;

/// How the output ended: `Ok(true)` if it is whole, `Ok(false)` if the reader went away
/// (end quietly), `Err` for any other failure (a full disk).
pub fn finish() -> Result<bool, String> {
    match failed() {
        None => Ok(true),
        Some((ErrorKind::BrokenPipe, _)) => Ok(false),
        Some((_, text)) => Err(format!("writing the output: {text}")),
    }
}
