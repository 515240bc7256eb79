//! What can go wrong in a command, and the exit code it ends with.

use std::process::ExitCode;

use batchline::pipeline::PipelineError;
use batchline::storage::StoreError;

/// A command's failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or the configuration is wrong: nothing was done.
    #[error("{0}")]
    Usage(String),
    /// The job or batch ended failed (or cancelled): the command did its work.
    #[error("{0}")]
    Failed(String),
    /// A library call failed (provider, configuration).
    #[error(transparent)]
    Library(#[from] batchline::Error),
    /// A pipeline step failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The bucket or directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A local file failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// An AWS call of stack mode failed.
    #[error("{0}")]
    Aws(String),
}

impl CliError {
    /// 2 for usage and configuration errors, 1 for everything that failed on the way.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_)
            | Self::Library(batchline::Error::Config(_))
            | Self::Pipeline(PipelineError::Provider(batchline::Error::Config(_))) => {
                ExitCode::from(2)
            }
            _ => ExitCode::from(1),
        }
    }

    /// A file error that names the file.
    pub fn file(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::File {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A command's result.
pub type CliResult<T = ()> = Result<T, CliError>;
