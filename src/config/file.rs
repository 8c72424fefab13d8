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
    match read_bounded(&path) {
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

/// Keys, certificates and JWKS documents are small; anything larger is a mistake.
const MAX_FILE: u64 = 1 << 20;

/// Reads a regular file of at most [`MAX_FILE`]: an admin edit naming
/// `/dev/zero` or a FIFO is refused, never read for ever or waited on.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read as _};
    // stat, not open: opening a FIFO waits for a writer.
    if !std::fs::metadata(path)?.is_file() {
        return Err(Error::new(ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(Error::new(ErrorKind::InvalidData, "larger than 1 MiB"));
    }
    Ok(bytes)
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

#[cfg(test)]
mod tests {
    #[test]
    fn devices_and_huge_files_are_refused_not_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; (super::MAX_FILE + 1) as usize]).expect("write");
        for (file, why) in [
            ("/dev/zero", "not a regular file"),
            ("big.pem", "larger than 1 MiB"),
        ] {
            let text = format!(
                "[auth.a]\ntype = \"jwt\"\nalgorithms = [\"RS256\"]\npublic_key_file = \"{file}\"\n"
            );
            let errors = crate::config::Config::parse_in(&text, "r.toml", dir.path(), &|_| None)
                .expect_err("refused");
            assert!(errors.to_string().contains(why), "{errors}");
            assert_eq!(errors.0[0].line, 4, "{errors}");
        }
    }
}
