//! The report's privacy section: every erasure run (`forget`, retention,
//! `forget --undo-user`) with its counts, reason and time, and whether
//! retention is in force.
//!
//! The IDs of the people an erasure concerned (the conversations and
//! recipients it erased from, the users it forgot) are left out of the page
//! and the JSON unless asked for (`report --erased-ids`): the report is
//! shared more widely than the data, and an erasure request is itself
//! personal. For the same reason, a conversation that is still forgotten
//! shows no user ID in the conversations and sends tables.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use super::esc;
use crate::audit::Manifest;
use crate::erasure::{Erasure, ErasureKind};

/// What stands in for a forgotten user's ID when IDs are not shown.
pub const HIDDEN: &str = "(forgotten)";

/// The privacy section.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Privacy {
    /// Whether retention is in force, and since when it last ran.
    pub retention: Retention,
    /// Every erasure run, oldest first.
    pub erasures: Vec<ErasureRow>,
    /// Records erased, all runs.
    pub erased: u64,
    /// Whether the IDs of the people concerned are shown (`--erased-ids`).
    pub ids_shown: bool,
    /// Users forgotten now (later syncs skip them); not serialized: the
    /// tables use it to hide their IDs.
    #[serde(skip)]
    pub forgotten: BTreeSet<String>,
}

/// Whether retention is in force.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Retention {
    /// Whether the last sync run had a retention window.
    pub in_force: bool,
    /// That window, in days.
    pub retain_days: Option<u32>,
    /// The last sync run, whose options say so.
    pub last_sync: Option<String>,
    /// Retention runs, all time.
    pub runs: u64,
    /// When the last retention run erased (RFC 3339 UTC).
    pub last_applied_at: Option<String>,
    /// Its cut-off: records created before it are gone.
    pub last_older_than: Option<String>,
}

/// One erasure run.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureRow {
    /// Its position in the chain.
    pub seq: u64,
    /// Its run ID.
    pub run_id: String,
    /// `forget`, `retention` or `undo_forget`.
    pub kind: ErasureKind,
    /// The operator's reason (body-free, at most 200 characters).
    pub reason: String,
    /// When it erased.
    pub erased_at: String,
    /// Records erased (history and send).
    pub erased: u64,
    /// Send records among them.
    pub sends_erased: u64,
    /// Conversations and recipients it erased from.
    pub conversations: u64,
    /// Users it forgot.
    pub forgotten: u64,
    /// Users it stopped forgetting.
    pub undone: u64,
    /// Retention: the window in days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_days: Option<u32>,
    /// Retention: the cut-off instant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub older_than: Option<String>,
    /// The IDs concerned, only with `--erased-ids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<ErasedIds>,
}

/// The IDs an erasure concerned (shown only when asked).
#[derive(Debug, Clone, Serialize)]
pub struct ErasedIds {
    /// Records erased per conversation or recipient user ID.
    pub by_conversation: BTreeMap<String, u64>,
    /// Users forgotten.
    pub forgotten_users: Vec<String>,
    /// Users no longer forgotten.
    pub undone_users: Vec<String>,
}

impl Privacy {
    /// An empty section; IDs shown when `ids_shown`.
    pub fn new(ids_shown: bool) -> Privacy {
        Privacy {
            ids_shown,
            ..Privacy::default()
        }
    }

    /// Takes in the manifest of the run at `seq`, in chain order.
    pub fn add(&mut self, seq: u64, m: &Manifest) {
        if m.command == "sync" {
            let days = m.options["retain_days"].as_u64();
            self.retention.retain_days = days.and_then(|d| u32::try_from(d).ok());
            self.retention.in_force = days.is_some();
            self.retention.last_sync = Some(m.run_id.clone());
        }
        let Some(e) = &m.erasure else {
            return;
        };
        self.erased += e.erased;
        self.forgotten.extend(e.forgotten_users.iter().cloned());
        for user in &e.undone_users {
            self.forgotten.remove(user);
        }
        if e.kind == ErasureKind::Retention {
            self.retention.runs += 1;
            self.retention.last_applied_at = Some(e.erased_at.clone());
            self.retention.last_older_than = e.older_than.clone();
        }
        self.erasures.push(self.row(seq, &m.run_id, e));
    }

    fn row(&self, seq: u64, run_id: &str, e: &Erasure) -> ErasureRow {
        ErasureRow {
            seq,
            run_id: run_id.to_owned(),
            kind: e.kind,
            reason: e.reason.clone(),
            erased_at: e.erased_at.clone(),
            erased: e.erased,
            sends_erased: e.sends_erased,
            conversations: e.by_conversation.len() as u64,
            forgotten: e.forgotten_users.len() as u64,
            undone: e.undone_users.len() as u64,
            retain_days: e.retain_days,
            older_than: e.older_than.clone(),
            ids: self.ids_shown.then(|| ErasedIds {
                by_conversation: e.by_conversation.clone(),
                forgotten_users: e.forgotten_users.clone(),
                undone_users: e.undone_users.clone(),
            }),
        }
    }

    /// `user` as the tables may show it: hidden while forgotten, unless
    /// IDs are shown.
    pub fn shown(&self, user: &str) -> String {
        if !self.ids_shown && self.forgotten.contains(user) {
            HIDDEN.to_owned()
        } else {
            user.to_owned()
        }
    }

    /// The section as HTML.
    pub fn html(&self, h: &mut String) {
        h.push_str("<h2>Privacy: erasure and retention</h2>");
        self.html_retention(h);
        if self.erasures.is_empty() {
            h.push_str("<p class=\"note\" id=\"erasures-none\">No erasure run.</p>");
            return;
        }
        let _ = write!(
            h,
            "<p class=\"note\">{} erasure runs, {} records erased in all, newest first. {}</p>\
<table id=\"erasures\"><tr><th>#</th><th>run</th><th>kind</th><th>erased at</th><th>reason</th><th class=\"n\">records</th><th class=\"n\">sends</th><th class=\"n\">conversations</th><th class=\"n\">forgotten</th><th class=\"n\">undone</th><th>window</th>{}</tr>",
            self.erasures.len(),
            self.erased,
            if self.ids_shown {
                "The IDs of the people concerned are shown (--erased-ids)."
            } else {
                "The IDs of the people concerned are not shown (report --erased-ids shows them)."
            },
            if self.ids_shown { "<th>IDs</th>" } else { "" },
        );
        for r in self.erasures.iter().rev() {
            self.html_row(h, r);
        }
        h.push_str("</table>");
    }

    fn html_retention(&self, h: &mut String) {
        let r = &self.retention;
        let _ = match (r.in_force, r.retain_days) {
            (true, Some(days)) => write!(
                h,
                "<p id=\"retention\" data-in-force=\"true\" data-days=\"{days}\"><strong>Retention in force</strong>: records older than {days} days are erased once a day (the last sync run, <code>{run}</code>, asked for it). {runs} retention runs; the last at {at}, cut-off {cut}.</p>",
                run = esc(r.last_sync.as_deref().unwrap_or("")),
                runs = r.runs,
                at = esc(r.last_applied_at.as_deref().unwrap_or("never")),
                cut = esc(r.last_older_than.as_deref().unwrap_or("none")),
            ),
            _ => write!(
                h,
                "<p id=\"retention\" data-in-force=\"false\"><strong>Retention not in force</strong>: the last sync run had no --retain-days. {} retention runs before.</p>",
                r.runs
            ),
        };
    }

    fn html_row(&self, h: &mut String, r: &ErasureRow) {
        let kind = match r.kind {
            ErasureKind::Forget => "forget",
            ErasureKind::Retention => "retention",
            ErasureKind::UndoForget => "undo forget",
        };
        let window = r
            .retain_days
            .map(|d| format!("{d} days"))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr class=\"erasure\" data-run=\"{id}\" data-kind=\"{kind}\" data-erased=\"{n}\"><td class=\"n\">{seq}</td><td><code>{id}</code></td><td>{kind}</td><td>{at}</td><td>{why}</td><td class=\"n\">{n}</td><td class=\"n\">{sends}</td><td class=\"n\">{convs}</td><td class=\"n\">{forgot}</td><td class=\"n\">{undone}</td><td>{window}</td>",
            id = esc(&r.run_id),
            seq = r.seq,
            at = esc(&r.erased_at),
            why = esc(&r.reason),
            n = r.erased,
            sends = r.sends_erased,
            convs = r.conversations,
            forgot = r.forgotten,
            undone = r.undone,
        );
        if let Some(ids) = &r.ids {
            let users: Vec<String> = ids
                .by_conversation
                .iter()
                .map(|(user, n)| format!("{user}: {n}"))
                .chain(ids.forgotten_users.iter().map(|u| format!("forgot {u}")))
                .chain(ids.undone_users.iter().map(|u| format!("undid {u}")))
                .collect();
            let _ = write!(h, "<td class=\"ids\">{}</td>", esc(&users.join(", ")));
        }
        h.push_str("</tr>");
    }
}
