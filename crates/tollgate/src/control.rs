//! The serving process's control socket: operator commands that must see the live holds
//! (which a SQLite server keeps in its memory) are sent here by `tollgate credits …` and
//! `tollgate ledger check` run alongside the server, and answered by the server itself.
//!
//! One JSON request per connection, one JSON answer. The socket sits beside the database
//! file and only its owner may connect, as only its owner may open the database.

use crate::ops::{self, HeldCommand, Output};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tollgate_core::catalog::Catalog;
use tollgate_core::service::Accounts;

/// Longest a request or its answer may take.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
enum Answer {
    Done(Output),
    Failed(String),
}

/// Sends `cmd` to the server listening at `socket` and returns its output.
pub async fn send(socket: &Path, cmd: &HeldCommand) -> anyhow::Result<Output> {
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await.with_context(|| {
            format!(
                "a tollgate server is serving this database, and this command must run in it (it keeps the live holds), but its control socket {} cannot be reached",
                socket.display()
            )
        })?;
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(stream).read_line(&mut answer).await?;
        let answer: Answer =
            serde_json::from_str(&answer).context("the server's control socket gave no answer")?;
        match answer {
            Answer::Done(out) => Ok(out),
            Answer::Failed(e) => Err(anyhow::anyhow!(e)),
        }
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .context("the server did not answer on its control socket in time")?
}

/// A listening control socket; the socket file is removed when it is dropped.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens at `path` (a stale socket left by a crashed server is replaced: the caller holds
/// the database's serve lock) and runs each command with `accounts` and `catalog`.
pub fn listen(
    path: PathBuf,
    accounts: Accounts,
    catalog: Arc<Catalog>,
) -> anyhow::Result<ControlSocket> {
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on the control socket {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the control socket failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (accounts, catalog) = (accounts.clone(), catalog.clone());
            tokio::spawn(async move {
                if tokio::time::timeout(TIMEOUT, answer(stream, &accounts, &catalog))
                    .await
                    .is_err()
                {
                    tracing::warn!("a control-socket command timed out");
                }
            });
        }
    });
    Ok(ControlSocket { path, task })
}

async fn answer(stream: UnixStream, accounts: &Accounts, catalog: &Catalog) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await.is_err() {
        return;
    }
    let answer = match serde_json::from_str::<HeldCommand>(&line) {
        Ok(cmd) => {
            tracing::info!(?cmd, "operator command from the control socket");
            match ops::run_held(accounts, catalog, cmd).await {
                Ok(out) => Answer::Done(out),
                Err(e) => Answer::Failed(format!("{e:#}")),
            }
        }
        Err(e) => Answer::Failed(format!("not a command this server knows: {e}")),
    };
    if let Ok(mut out) = serde_json::to_vec(&answer) {
        out.push(b'\n');
        let _ = write.write_all(&out).await;
    }
}
