//! Local files: the input a command reads, the file (or standard output) it writes.

use std::path::Path;

use batchline::request::OutputSchema;
use batchline::results::provider_schema_name;
use batchline::storage::{ObjectStore, ObjectWriter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{CliError, CliResult};

/// A file, or standard output for `-`.
pub enum Sink {
    /// A file being written.
    File(tokio::fs::File),
    /// Standard output.
    Stdout(tokio::io::Stdout),
}

impl Sink {
    /// Creates (or truncates) `path`.
    pub async fn open(path: &Path) -> CliResult<Self> {
        if path.as_os_str() == "-" {
            return Ok(Self::Stdout(tokio::io::stdout()));
        }
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|e| CliError::file(path, e))?;
        Ok(Self::File(file))
    }

    /// Appends `bytes`.
    pub async fn write(&mut self, bytes: &[u8], path: &Path) -> CliResult {
        let written = match self {
            Self::File(file) => file.write_all(bytes).await,
            Self::Stdout(out) => out.write_all(bytes).await,
        };
        written.map_err(|e| CliError::file(path, e))
    }

    /// Flushes everything to disk (or the pipe).
    pub async fn finish(&mut self, path: &Path) -> CliResult {
        let flushed = match self {
            Self::File(file) => file.sync_all().await,
            Self::Stdout(out) => out.flush().await,
        };
        flushed.map_err(|e| CliError::file(path, e))
    }
}

/// A JSON Schema file as the answer format, named after the file.
pub async fn read_schema(path: &Path) -> CliResult<OutputSchema> {
    let text = tokio::fs::read(path)
        .await
        .map_err(|e| CliError::file(path, e))?;
    let schema = serde_json::from_slice(&text)
        .map_err(|e| CliError::Usage(format!("{}: not JSON: {e}", path.display())))?;
    let stem = file_name(path);
    Ok(OutputSchema {
        name: provider_schema_name(stem.split('.').next().unwrap_or_default()),
        schema,
    })
}

/// The file's name, for tags and keys.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(|| "input".into(), |n| n.to_string_lossy().into_owned())
}

/// Copies `file` to `key` in parts (multipart where the store has it), never holding
/// the whole file.
pub async fn copy_to_store(store: &dyn ObjectStore, key: &str, file: &Path) -> CliResult {
    let mut local = tokio::fs::File::open(file)
        .await
        .map_err(|e| CliError::file(file, e))?;
    let mut writer = ObjectWriter::new(store, key);
    let mut buffer = vec![0; 8 << 20];
    loop {
        let n = local
            .read(&mut buffer)
            .await
            .map_err(|e| CliError::file(file, e))?;
        if n == 0 {
            break;
        }
        writer.write(&buffer[..n]).await?;
    }
    writer.finish().await?;
    Ok(())
}
