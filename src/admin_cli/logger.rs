//! `signet logger`: the server's log filter, read and changed while it runs.

use clap::Subcommand;
use serde_json::json;
use signet_wire::admin::*;

use super::{AdminOpts, client, status};

#[derive(Debug, Subcommand)]
pub enum LoggerCmd {
    /// Show the filter in force and the one the server started with.
    Get,
    /// Replace the filter (tracing EnvFilter syntax: `debug`,
    /// `info,signet_server=debug`) until the next change or restart.
    Set {
        /// The new filter.
        filter: String,
    },
    /// Go back to the filter the server started with.
    Reset,
}

pub async fn logger(cmd: LoggerCmd, opts: AdminOpts) -> anyhow::Result<()> {
    let mut c = client(&opts).await?;
    let logger = match cmd {
        LoggerCmd::Get => c.get_logger(GetLoggerRequest {}).await,
        LoggerCmd::Set { filter } => c.set_logger(SetLoggerRequest { filter }).await,
        LoggerCmd::Reset => {
            c.set_logger(SetLoggerRequest {
                filter: String::new(),
            })
            .await
        }
    }
    .map_err(status)?
    .into_inner();
    opts.output.print(
        json!({ "filter": logger.filter, "launch_filter": logger.launch_filter }),
        format_args!(
            "Log filter    : {}\nAt launch     : {}",
            logger.filter, logger.launch_filter
        ),
    );
    Ok(())
}
