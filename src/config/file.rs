//! Files a config names (keys, certificates): found relative to the config
//! file, read at load, an unreadable one an error at its key.

use std::path::{Path, PathBuf};

use super::decode::{Ctx, Obj, Spanned};

/// Reads `file` (the value at `key`), or records why it cannot be read.
pub(super) fn read(
    ctx: &mut Ctx<'_>,
    obj: &Obj<'_>,
    key: &str,
    file: &Spanned<String>,
    base: &Path,
) -> Option<(PathBuf, Vec<u8>)> {
    let path = resolve(base, &file.value);
    match std::fs::read(&path) {
        Ok(bytes) => Some((path, bytes)),
        Err(e) => {
            ctx.error(
                file.span.clone(),
                obj.key_path(key),
                format!("cannot read {}: {e}", path.display()),
            );
            None
        }
    }
}

/// Relative paths are relative to the config file's directory.
pub(super) fn resolve(base: &Path, file: &str) -> PathBuf {
    let p = Path::new(file);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}
