//! The command line: every command, its flags and an example for its `--help`.

use std::path::PathBuf;

use batchline::ProviderKind;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run LLM batch jobs from a terminal, and watch, cancel and fetch the deployed
/// pipeline's jobs.
#[derive(Debug, Parser)]
#[command(name = "batchline", version, propagate_version = true)]
#[command(
    after_help = "Direct mode (no AWS): run, batches.  Stack mode (the deployed pipeline): \
jobs, job, upload.\nExit codes: 0 done, 1 a job or batch failed, 2 usage or configuration error."
)]
pub struct Cli {
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Never colour the output (also: the NO_COLOR variable).
    #[arg(long, global = true)]
    pub no_color: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole job from this machine: build, submit, wait, collect into DIR.
    #[command(
        after_help = "Example:\n  batchline run invoices.jsonl --model openai/gpt-4o-mini \
--schema invoice.schema.json --out ./invoices\n\nRunning the same command again (after Ctrl-C or \
a crash) reattaches to the batches already created instead of paying for them twice."
    )]
    Run(RunArgs),
    /// The provider's batches as the reference library's verbs: list, create, results, cancel.
    #[command(subcommand)]
    Batches(BatchesCommand),
    /// The deployed pipeline's jobs, newest first.
    #[command(after_help = "Example:\n  batchline jobs --status open --stack batchline")]
    Jobs(JobsArgs),
    /// One job of the deployed pipeline: its parts, counts and cost; or an action on it.
    #[command(
        after_help = "Examples:\n  batchline job 3f2a9c… --watch\n  batchline job 3f2a9c… \
cancel\n  batchline job 3f2a9c… results --format csv -o invoices.csv"
    )]
    Job(JobArgs),
    /// Upload a file to the deployed pipeline's inbox, which starts a job.
    #[command(
        after_help = "Example:\n  batchline upload invoices.jsonl --pipeline invoices --wait"
    )]
    Upload(UploadArgs),
    /// Print a completion script for a shell.
    #[command(
        after_help = "Example:\n  batchline completions bash > ~/.local/share/bash-completion/completions/batchline"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `batchline run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The requests: JSONL or CSV, the same input formats as the pipeline's uploads.
    pub file: PathBuf,
    /// Where the job's state and results live (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// A job spec file (JSON), as for a named pipeline; the flags below complete it.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// `provider/model`, e.g. `openai/gpt-4o-mini`.
    #[arg(long)]
    pub model: Option<String>,
    /// JSON Schema file every answer must match.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// System prompt sent with every request.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Input rows sent together in one LLM request (1 to 100).
    #[arg(long)]
    pub rows_per_request: Option<usize>,
    /// Seconds between status checks.
    #[arg(long, default_value_t = 30.0)]
    pub poll_every: f64,
}

/// `batchline batches …`: one provider's batches, whoever created them.
#[derive(Debug, Subcommand)]
pub enum BatchesCommand {
    /// Every batch of the account, newest first, with state and counts.
    #[command(after_help = "Example:\n  batchline batches list --provider openai")]
    List {
        /// The provider.
        #[arg(long, value_parser = provider_kind)]
        provider: ProviderKind,
    },
    /// Create a batch from a file in the provider's own batch format, sent as it is.
    #[command(
        after_help = "Example:\n  batchline batches create --file requests.jsonl --model openai/gpt-4o-mini"
    )]
    Create {
        /// The provider-format JSONL file.
        #[arg(long)]
        file: PathBuf,
        /// `provider/model`.
        #[arg(long)]
        model: String,
    },
    /// Parse a finished batch's results into successes and errors, one JSONL line per request.
    #[command(
        after_help = "Example:\n  batchline batches results --batch-id batch_abc123 \
--provider openai --schema invoice.schema.json --output results.jsonl"
    )]
    Results {
        /// The provider's batch id.
        #[arg(long)]
        batch_id: String,
        /// The provider.
        #[arg(long, value_parser = provider_kind)]
        provider: ProviderKind,
        /// JSON Schema the answers must match (without: the answers as the model wrote them).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Where the outcomes go (`-`: standard output).
        #[arg(long)]
        output: PathBuf,
    },
    /// Cancel a batch; requests that ran keep their results.
    #[command(
        after_help = "Example:\n  batchline batches cancel --batch-id batch_abc123 --provider openai"
    )]
    Cancel {
        /// The provider's batch id.
        #[arg(long)]
        batch_id: String,
        /// The provider.
        #[arg(long, value_parser = provider_kind)]
        provider: ProviderKind,
    },
}

/// How stack mode reaches the deployed pipeline's bucket.
#[derive(Debug, Args, Clone)]
pub struct StackArgs {
    /// The pipeline's bucket.
    #[arg(long, env = "BATCHLINE_BUCKET", global = true)]
    pub bucket: Option<String>,
    /// The CloudFormation stack whose `BucketName` output names the bucket.
    #[arg(long, global = true)]
    pub stack: Option<String>,
    /// The AWS profile (as in ~/.aws/config).
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// The AWS region.
    #[arg(long, global = true)]
    pub region: Option<String>,
}

/// `batchline jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state.
    #[arg(long)]
    pub status: Option<StatusFilter>,
    /// Only jobs of this named pipeline (`default`: uploads outside a pipeline folder).
    #[arg(long)]
    pub pipeline: Option<String>,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// The job states `jobs --status` filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    /// Submitting or waiting for its batches.
    Open,
    /// Closed with every row accounted for.
    Completed,
    /// Failed as a whole.
    Failed,
    /// Closed after a cancellation.
    Cancelled,
}

/// `batchline job ID [action]`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = false,
    subcommand_negates_reqs = false
)]
pub struct JobArgs {
    /// The job's id.
    pub id: String,
    /// Refresh until the job ends.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch or `cancel --wait`.
    #[arg(long, default_value_t = 10.0, global = true)]
    pub every: f64,
    #[command(subcommand)]
    pub action: Option<JobAction>,
    #[command(flatten)]
    pub stack: StackArgs,
}

/// What to do with one job.
#[derive(Debug, Subcommand)]
pub enum JobAction {
    /// Cancel every open part at its provider and finish the job with what came back.
    Cancel {
        /// Follow the job until it is closed.
        #[arg(long)]
        wait: bool,
    },
    /// One file with the whole job's successes (or errors), streamed.
    Results {
        /// The file's format.
        #[arg(long, value_enum, default_value_t = ResultsFormat::Jsonl)]
        format: ResultsFormat,
        /// The error records instead of the successes.
        #[arg(long)]
        errors: bool,
        /// Where to write (`-`: standard output).
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
}

/// The format of `job ID results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResultsFormat {
    /// The pipeline's own JSON lines.
    Jsonl,
    /// One column per answer field (nested values as JSON).
    Csv,
}

/// `batchline upload`.
#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The requests file.
    pub file: PathBuf,
    /// The named pipeline whose spec applies (`inbox/<name>/`).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Follow the job until it ends.
    #[arg(long)]
    pub wait: bool,
    /// Seconds between refreshes with --wait.
    #[arg(long, default_value_t = 10.0)]
    pub every: f64,
    #[command(flatten)]
    pub stack: StackArgs,
}

fn provider_kind(raw: &str) -> Result<ProviderKind, String> {
    raw.parse()
        .map_err(|e: batchline::model::InvalidModel| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn a_job_takes_an_action_after_its_id() {
        let cli = Cli::try_parse_from(["batchline", "job", "j1", "cancel", "--bucket", "b"])
            .expect("parses");
        let Command::Job(job) = cli.command else {
            panic!("not a job command");
        };
        assert_eq!(job.id, "j1");
        assert!(matches!(
            job.action,
            Some(JobAction::Cancel { wait: false })
        ));
    }
}
