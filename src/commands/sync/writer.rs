//! The single writer thread: owns the store while the conversation tasks
//! run, appends the rows of every page they hand it with the conversation
//! state those rows advance, commits every second or so, and hands the
//! store back committed.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc;

use super::shared::Run;
use crate::checkpoint::Conversation;
use crate::error::{Error, Result};
use crate::records::HistoryBatch;
use crate::store::Store;

/// What a conversation task sends to the writer.
pub(super) enum Event {
    /// A page's new rows and the conversation state after it.
    Page {
        key: String,
        batch: HistoryBatch,
        state: Box<Conversation>,
    },
    /// The final state of a conversation (status and reason).
    Done {
        key: String,
        state: Box<Conversation>,
    },
}

/// The writer thread, running.
pub(super) type Writer = JoinHandle<Result<Store>>;

/// Starts the writer thread on `store`. Returns the channel the tasks
/// send their pages to, and the thread.
pub(super) fn spawn(store: Store, run: Arc<Run>) -> Result<(mpsc::Sender<Event>, Writer)> {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let writer = std::thread::Builder::new()
        .name("xquik-dm-writer".into())
        .spawn(move || writer_loop(store, rx, &run))
        .map_err(|e| Error::io("<writer thread>", e))?;
    Ok((tx, writer))
}

/// Waits, once every sender is dropped, for the writer to finish: the
/// store, committed, or why the writer failed.
pub(super) async fn join(writer: Writer) -> Result<Store> {
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| Error::io("<writer thread>", std::io::Error::other(e)))?
        .map_err(|_| Error::io("<writer thread>", std::io::Error::other("writer panicked")))?
}

/// The writer thread: owns the store, appends every page, commits at most
/// every `commit_interval` (and whenever 16 MiB are pending), and hands the
/// store back, committed, when the tasks are done.
fn writer_loop(mut store: Store, mut rx: mpsc::Receiver<Event>, run: &Run) -> Result<Store> {
    const COMMIT_BYTES: u64 = 16 << 20;
    let mut last_commit = Instant::now();
    let result = (|| {
        while let Some(event) = rx.blocking_recv() {
            match event {
                Event::Page { key, batch, state } => {
                    store.append_history(&batch)?;
                    run.spare_batch(batch);
                    store.set_conversation(key, *state);
                }
                Event::Done { key, state } => store.set_conversation(key, *state),
            }
            if store.uncommitted_bytes() >= COMMIT_BYTES
                || last_commit.elapsed() >= run.options.commit_interval
            {
                store.commit()?;
                last_commit = Instant::now();
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Stop the tasks; what was committed stays committed.
        run.stop_job(&e);
        rx.close();
        return Err(e);
    }
    store.commit()?;
    Ok(store)
}
