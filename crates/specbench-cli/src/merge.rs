//! `specbench merge`: joins the result folders of a run split with `--shard K/N`
//! (`specbench::run::merge` does the work; this maps its errors and runs the rebuild).

use std::sync::Arc;

use specbench::protocol::Protocol;
use specbench::run::merge::{self, MergeError};

use crate::args::MergeArgs;
use crate::commands::{ExitStatus, Resume, UsageError, execute_locked};

pub async fn merge(args: MergeArgs) -> anyhow::Result<ExitStatus> {
    for shard in &args.shards {
        if !shard.is_dir() {
            anyhow::bail!(UsageError(MergeError::NoShard(shard.clone()).to_string()));
        }
    }
    let pack_dir = crate::commands::resolve_pack(args.data.as_deref())?;
    let pack = Arc::new(crate::commands::load_pack(&pack_dir)?);
    let protocol = Arc::new(Protocol::for_pack(pack.protocol_dir.as_deref()).map_err(|e| UsageError(e.to_string()))?);
    let prepared = match merge::prepare(&args.shards, &args.into, pack, protocol) {
        Ok(prepared) => prepared,
        // A file that could not be read or written keeps its own error (a full disk stops
        // with exit code 3, as for runs).
        Err(MergeError::Store(error)) => return Err(error.into()),
        Err(error) if error.is_bad_input() => return Err(UsageError(error.to_string()).into()),
        Err(error) => return Err(error.into()),
    };
    tracing::info!(
        folders = prepared.runners.len(),
        units = prepared.units,
        "joined the shards' journals"
    );
    let status = execute_locked(prepared.runners, Resume::Quiet).await;
    drop(prepared.locks);
    status
}
