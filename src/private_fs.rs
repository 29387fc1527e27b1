//! Files that hold what kubeherald watched — spool segments and their
//! checkpoints, the watch state's last known objects, log checkpoints, the
//! redaction key — are created readable by kubeherald's user only: 0600
//! files in 0700 directories (SPEC §3, "Secrets stay secret"). Only what is
//! created here gets these modes; a directory that exists already (a volume's
//! mount point) is left as its owner set it.
//!
//! Imports nothing of kubeherald.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of every file kubeherald creates for its data.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory kubeherald creates for its data.
pub const DIR_MODE: u32 = 0o700;

/// `dir` and its missing parents, created 0700.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Open options that create a file 0600.
pub fn open_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates `path` empty and 0600 when it does not exist, so that a library
/// opening it afterwards (redb creates files with the process umask) finds
/// it with the right mode.
pub fn create_file_if_missing(path: &Path) -> io::Result<()> {
    match open_options().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Creates (or truncates) `path` for writing, 0600 when created.
pub fn create(path: &Path) -> io::Result<File> {
    open_options()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}
