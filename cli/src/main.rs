//! `batchline`: the operator's terminal tool. Direct mode runs a job from this machine
//! through the library's own pipeline steps; stack mode reads, follows, cancels and
//! fetches the deployed pipeline's jobs. It holds no pipeline logic of its own.

mod args;
mod direct;
mod error;
mod files;
mod output;
mod run;
mod stack;
mod view;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::args::{Cli, Command};
use crate::error::CliResult;
use crate::output::Output;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let output = Output::new(cli.json, cli.no_color);
    match dispatch(cli.command, &output).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Runs the command; `Ok(false)` when the job or batch it followed failed.
async fn dispatch(command: Command, output: &Output) -> CliResult<bool> {
    match command {
        Command::Run(args) => run::run(args, output).await,
        Command::Batches(command) => direct::batches(command, output).await.map(|()| true),
        Command::Jobs(args) => stack::jobs(args, output).await,
        Command::Job(args) => stack::job(args, output).await,
        Command::Upload(args) => stack::upload(args, output).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "batchline",
                &mut std::io::stdout(),
            );
            Ok(true)
        }
    }
}
