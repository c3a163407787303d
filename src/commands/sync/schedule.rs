//! Scheduling: which conversations run when. One task per conversation;
//! each account runs as many at a time as keep its requests at its pace
//! (the rate limit) at the latency its answers come back with, up to
//! `--concurrency`; progress is shown while they run.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};

use super::report::ConversationReport;
use super::scan::sync_conversation;
use super::shared::Run;
use super::targets::Resolved;
use super::writer::Event;
use crate::error::Error;

/// Most conversations paged at the same time in all: a bound on memory.
/// Each account gets an equal share of it when many accounts have work
/// (64 accounts: 64 each, about what the pace needs at 100 ms); at 1,024,
/// 16 accounts already lacked tasks, and the accounts first in order took
/// them all while the others waited (issue 23's bench).
const MAX_TASKS: usize = 4096;

/// Runs every resolved conversation to its end and adds their reports to
/// `reports` (which holds those of the targets that could not start).
/// `tx` is dropped once all have ended, which lets the writer finish.
pub(super) async fn run_conversations(
    run: &Arc<Run>,
    resolved: Vec<Resolved>,
    reports: &mut Vec<ConversationReport>,
    tx: mpsc::Sender<Event>,
    started: Instant,
) {
    run.total
        .store((resolved.len() + reports.len()) as u64, Ordering::SeqCst);
    run.done.store(reports.len() as u64, Ordering::SeqCst);
    let progress = run
        .options
        .progress
        .then(|| spawn_progress(run.clone(), started));
    Lanes::new(resolved).run(run, &tx, reports).await;
    drop(tx);
    if let Some((task, bar)) = progress {
        task.abort();
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    }
}

/// The conversations of a run by account: those waiting, and those
/// running.
struct Lanes {
    /// Conversations not started yet, by account, in order.
    waiting: BTreeMap<String, VecDeque<Resolved>>,
    /// Conversations running, by account.
    running: HashMap<String, usize>,
    tasks: JoinSet<ConversationReport>,
}

impl Lanes {
    /// Every conversation waiting, none running.
    fn new(resolved: Vec<Resolved>) -> Lanes {
        let mut waiting: BTreeMap<String, VecDeque<Resolved>> = BTreeMap::new();
        for item in resolved {
            waiting
                .entry(item.0.as_str().to_owned())
                .or_default()
                .push_back(item);
        }
        Lanes {
            waiting,
            running: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// The scheduling loop: starts what each account's pace allows, and
    /// takes each conversation's report as it ends, until none is left.
    async fn run(
        mut self,
        run: &Arc<Run>,
        tx: &mpsc::Sender<Event>,
        reports: &mut Vec<ConversationReport>,
    ) {
        // Each account runs as many conversations as its pace needs at the
        // latency seen so far (re-read as answers come in), up to the cap; a
        // task exists only while its conversation runs, so memory does not grow
        // with the number of conversations waiting.
        let cap = run.options.concurrency.max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            self.start(run, tx, cap);
            if self.tasks.is_empty() && self.waiting.is_empty() {
                break;
            }
            let joined = tokio::select! {
                joined = self.tasks.join_next() => joined,
                // The pace may allow more now (latency learned, a 429 past).
                _ = tick.tick(), if !self.waiting.is_empty() => continue,
            };
            let Some(joined) = joined else {
                continue;
            };
            self.ended(run, joined, reports);
        }
    }

    /// Starts, for each account, as many waiting conversations as its pace
    /// allows, up to `cap` per account and an equal share of [`MAX_TASKS`].
    fn start(&mut self, run: &Arc<Run>, tx: &mpsc::Sender<Event>, cap: usize) {
        let with_work = self
            .running
            .iter()
            .filter(|(account, busy)| **busy > 0 && !self.waiting.contains_key(*account))
            .count()
            + self.waiting.len();
        let share = (MAX_TASKS / with_work.max(1)).max(1);
        for (account, queue) in self.waiting.iter_mut() {
            let busy = self.running.entry(account.clone()).or_default();
            let mut target = run.client.pacer().in_flight(account, cap);
            // The last conversations start together: a history is paged one
            // page after another, so ones started late would finish late,
            // with the lane idle meanwhile.
            if queue.len() + *busy <= 2 * target {
                target = cap;
            }
            let target = target.min(share);
            while *busy < target && self.tasks.len() < MAX_TASKS {
                let Some((account, user_id, state)) = queue.pop_front() else {
                    break;
                };
                *busy += 1;
                let (run, tx) = (run.clone(), tx.clone());
                self.tasks.spawn(async move {
                    sync_conversation(&run, account, user_id, state, tx).await
                });
            }
        }
        self.waiting.retain(|_, queue| !queue.is_empty());
    }

    /// Takes the report of a conversation that ended; a task that did not
    /// end with one stops the job.
    fn ended(
        &mut self,
        run: &Run,
        joined: Result<ConversationReport, JoinError>,
        reports: &mut Vec<ConversationReport>,
    ) {
        match joined {
            Ok(report) => {
                if let Some(busy) = self.running.get_mut(report.account.as_str()) {
                    *busy = busy.saturating_sub(1);
                }
                reports.push(report);
            }
            Err(e) => run.stop_job(&Error::io("<conversation task>", std::io::Error::other(e))),
        }
        run.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Progress while a run goes on: a live line on a terminal, a log line every
/// few seconds otherwise (what a scheduler's log keeps). Counts only.
fn spawn_progress(
    run: Arc<Run>,
    started: Instant,
) -> (tokio::task::JoinHandle<()>, Option<indicatif::ProgressBar>) {
    use std::io::IsTerminal;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        bar
    });
    let line = bar.clone();
    let task = tokio::spawn(async move {
        let period = if line.is_some() { 200 } else { 5_000 };
        let mut tick = tokio::time::interval(Duration::from_millis(period));
        tick.tick().await;
        loop {
            tick.tick().await;
            let fetched = run.fetched.load(Ordering::Relaxed);
            let rate = (fetched as f64 / started.elapsed().as_secs_f64().max(0.001)) as u64;
            let (done, total) = (
                run.done.load(Ordering::Relaxed),
                run.total.load(Ordering::Relaxed),
            );
            let new = run.new_messages.load(Ordering::Relaxed);
            let retries = run.retries.load(Ordering::Relaxed);
            match &line {
                Some(bar) => bar.set_message(format!(
                    "{done}/{total} conversations · {fetched} messages ({new} new) · {rate}/s · {retries} retries"
                )),
                None => tracing::info!(
                    conversations_done = done,
                    conversations = total,
                    pages = run.pages.load(Ordering::Relaxed),
                    messages = fetched,
                    new,
                    rate_per_s = rate,
                    retries,
                    "syncing"
                ),
            }
        }
    });
    (task, bar)
}
