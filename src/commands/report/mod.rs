//! `xquik-dm report <DIR or URL>`: what the audit trail says, at a glance,
//! for the people who meet the tool only through what it leaves behind —
//! as a self-contained HTML page (`--html FILE`: inline CSS and SVG, no
//! script, nothing fetched) and as JSON (`--json`).
//!
//! It is built from the manifests, the chain and the checkpoint only, never
//! from the handoff file or the Parquet files: it is body-free by
//! construction (IDs, statuses, counts, credits, times and digests), and
//! says so on the page. It answers:
//! - is the trail intact? (the chain head, and `verify`'s result with every
//!   failing file named);
//! - what happened when? (a timeline of runs: rows written, sends, credits,
//!   pages and duration, partial and failed runs marked; by day once there
//!   are more runs than a chart can show one by one);
//! - where does each conversation stand? (messages held, newest message,
//!   the last run that touched it, its state and the recorded reason);
//! - what was sent? (IDs, status, media references — never text);
//! - what was erased, when and why, and is retention in force? (`privacy`:
//!   counts, reasons and times; the IDs of the people concerned only with
//!   `--erased-ids`).
//!
//! Large histories stay usable: tables show the most recent rows and say
//! how many more the JSON holds.

mod privacy;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

pub use privacy::{ErasedIds, ErasureRow, Privacy, Retention};

use crate::audit::{self, Manifest};
use crate::checkpoint::Checkpoint;
use crate::commands::verify;
use crate::error::Result;
use crate::storage::Location;

/// Beyond this many runs the chart shows days, not runs.
const CHART_RUNS: usize = 120;
/// Rows of each table the page shows (the JSON has all of them).
const TABLE_ROWS: usize = 200;

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `xquik-dm-report/1`.
    pub format: &'static str,
    /// Always true: built from the audit trail and checkpoint only.
    pub body_free: bool,
    /// The folder or bucket.
    pub out: Location,
    /// When the report was made (RFC 3339 UTC).
    pub generated_at: String,
    /// The chain head: SHA-256 of the last run's manifest.
    pub head: Option<String>,
    /// What `verify` found.
    pub verify: VerifySummary,
    /// Sums over all runs.
    pub totals: Totals,
    /// Every run, oldest first.
    pub runs: Vec<RunRow>,
    /// The runs by UTC day of their start.
    pub days: Vec<DayRow>,
    /// Every conversation the checkpoint tracks.
    pub conversations: Vec<ConversationRow>,
    /// Every send the checkpoint records.
    pub sends: Vec<SendRow>,
    /// Each Delta table's latest version, by table (`messages`, `sends`);
    /// a table with no log yet is left out.
    pub tables: BTreeMap<String, u64>,
    /// Erasures and retention.
    pub privacy: Privacy,
}

/// `verify`'s outcome.
#[derive(Debug, Clone, Serialize)]
pub struct VerifySummary {
    /// Whether everything verified.
    pub ok: bool,
    /// Files and segments checked.
    pub checked: u64,
    /// Each failure: the file and what is wrong.
    pub failures: Vec<verify::Failure>,
    /// Remarks.
    pub notes: Vec<String>,
}

/// Sums over all runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Runs sealed.
    pub runs: u64,
    /// Records written (history and send rows).
    pub rows: u64,
    /// DMs sent.
    pub sends: u64,
    /// Credits spent, including those of killed runs sealed later.
    pub credits: u64,
    /// History pages fetched.
    pub pages: u64,
    /// Runs that ended partial (exit 4).
    pub partial: u64,
    /// Runs that ended failed (exit 3, or another non-zero status).
    pub failed: u64,
}

/// One run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    /// Its position in the chain (1 for the first run).
    pub seq: u64,
    /// Its ID.
    pub run_id: String,
    /// `sync`, `send` or `compact`.
    pub command: String,
    /// Start (RFC 3339 UTC).
    pub started_at: String,
    /// Seconds it took.
    pub duration_s: f64,
    /// Exit status.
    pub exit_code: u8,
    /// `ok`, `partial` or `failed`.
    pub status: &'static str,
    /// Records written.
    pub rows: u64,
    /// DMs sent.
    pub sends: u64,
    /// Credits spent (its own and those of killed runs it sealed).
    pub credits: u64,
    /// History pages fetched.
    pub pages: u64,
    /// The fingerprint of the SSH key that signed its manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Its SSH signature: `unsigned`; `verified` against the allowed
    /// signers; `intact` (present and matching its chain entry, no allowed
    /// signers given); or `failed`.
    pub signature: &'static str,
}

/// The runs of one day.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DayRow {
    /// `YYYY-MM-DD`.
    pub date: String,
    /// Runs started that day.
    pub runs: u64,
    /// Records written.
    pub rows: u64,
    /// DMs sent.
    pub sends: u64,
    /// Credits spent.
    pub credits: u64,
    /// Pages fetched.
    pub pages: u64,
    /// Seconds of run time.
    pub duration_s: f64,
    /// Partial runs.
    pub partial: u64,
    /// Failed runs.
    pub failed: u64,
}

/// One conversation.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationRow {
    /// The connected account.
    pub account: String,
    /// The other participant.
    pub user_id: String,
    /// Messages written for it, all runs.
    pub messages: u64,
    /// The newest message ID held.
    pub newest_message_id: Option<String>,
    /// That message's time, from its ID (an X ID carries its creation
    /// time), RFC 3339 UTC.
    pub newest_message_at: Option<String>,
    /// The last run whose manifest reports it.
    pub last_run: Option<String>,
    /// How that run left it.
    pub status: Option<String>,
    /// Why it stopped (a stop reason or an error code).
    pub reason: Option<String>,
}

/// One send.
#[derive(Debug, Clone, Serialize)]
pub struct SendRow {
    /// The sender account.
    pub account: String,
    /// The recipient's ID.
    pub recipient_user_id: String,
    /// Where it stands.
    pub status: String,
    /// The DM's ID, once sent.
    pub message_id: Option<String>,
    /// The media ID it carried.
    pub media_id: Option<String>,
    /// The media's public URL, when the API gave one.
    pub media_url: Option<String>,
    /// When it was sent.
    pub sent_at: Option<String>,
    /// The error code it failed with.
    pub error: Option<String>,
}

/// Builds the report of `location`; the IDs of the people erasures
/// concerned are in it only when `erased_ids`.
pub fn build(location: &Location, trust: &verify::Trust, erased_ids: bool) -> Result<Report> {
    location.require_existing("DIR")?;
    let shared = crate::shard::open(location)?;
    let storage = shared.as_ref();
    if location.as_dir().is_none() {
        storage.prepare()?;
    }
    let verified = verify::check_trusted(&shared, trust, None, None);
    let (chain, _) = audit::read_chain(storage)?;
    let mut runs = Vec::with_capacity(chain.len());
    let mut last_touch: BTreeMap<String, String> = BTreeMap::new();
    let mut privacy = Privacy::new(erased_ids);
    for entry in &chain {
        // A manifest that cannot be read is among verify's failures; the
        // timeline shows the runs that can.
        let Ok((manifest, _)) = audit::read_manifest(storage, &entry.manifest) else {
            continue;
        };
        for c in manifest.conversations.as_array().into_iter().flatten() {
            if let (Some(account), Some(user)) = (c["account"].as_str(), c["user"].as_str()) {
                last_touch.insert(format!("{account}/{user}"), manifest.run_id.clone());
            }
        }
        privacy.add(entry.seq, &manifest);
        let mut row = run_row(entry.seq, &manifest);
        row.signature = signature_state(&manifest, trust, &verified.failures);
        runs.push(row);
    }
    let checkpoint = Checkpoint::load(storage).unwrap_or_else(|_| Checkpoint::empty());
    let conversations = checkpoint
        .conversations
        .iter()
        .map(|(key, c)| {
            let newest = c.written.as_ref().map(|b| b.newest.clone());
            ConversationRow {
                account: c.account.clone(),
                user_id: privacy.shown(&c.user_id),
                messages: c.messages_written,
                newest_message_at: newest.as_deref().and_then(snowflake_time),
                newest_message_id: newest,
                last_run: last_touch.get(key).cloned(),
                status: c.status.clone(),
                reason: c.reason.clone(),
            }
        })
        .collect();
    let sends = checkpoint
        .sends
        .values()
        .map(|s| SendRow {
            account: s.account.clone(),
            recipient_user_id: privacy.shown(&s.recipient_user_id),
            status: s.status.clone(),
            message_id: s.message_id.clone(),
            media_id: s.media_id.clone(),
            media_url: s.media_url.clone(),
            sent_at: s.sent_at.clone(),
            error: s.error.clone(),
        })
        .collect();
    let mut totals = Totals::default();
    let mut days: BTreeMap<String, DayRow> = BTreeMap::new();
    for r in &runs {
        totals.runs += 1;
        totals.rows += r.rows;
        totals.sends += r.sends;
        totals.credits += r.credits;
        totals.pages += r.pages;
        totals.partial += u64::from(r.status == "partial");
        totals.failed += u64::from(r.status == "failed");
        let date = r.started_at.get(..10).unwrap_or_default().to_owned();
        let day = days.entry(date.clone()).or_insert_with(|| DayRow {
            date,
            ..DayRow::default()
        });
        day.runs += 1;
        day.rows += r.rows;
        day.sends += r.sends;
        day.credits += r.credits;
        day.pages += r.pages;
        day.duration_s += r.duration_s;
        day.partial += u64::from(r.status == "partial");
        day.failed += u64::from(r.status == "failed");
    }
    Ok(Report {
        format: "xquik-dm-report/1",
        body_free: true,
        out: location.clone(),
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        head: chain.last().map(|e| e.sha256.clone()),
        verify: VerifySummary {
            ok: verified.ok(),
            checked: verified.checked,
            failures: verified.failures,
            notes: verified.notes,
        },
        totals,
        runs,
        days: days.into_values().collect(),
        conversations,
        sends,
        tables: table_versions(&shared)?,
        privacy,
    })
}

/// The latest version of each Delta table that has a log.
fn table_versions(storage: &crate::storage::Storage) -> Result<BTreeMap<String, u64>> {
    let mut versions = BTreeMap::new();
    for kind in crate::delta::TableKind::ALL {
        let table = crate::delta::Table::new(storage.clone(), kind);
        if let Some(version) = table.latest_version()? {
            versions.insert(kind.name().to_owned(), version);
        }
    }
    Ok(versions)
}

fn run_row(seq: u64, m: &Manifest) -> RunRow {
    let time = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    let duration_s = match (time(&m.started_at), time(&m.finished_at)) {
        (Some(a), Some(b)) => (b - a).num_milliseconds().max(0) as f64 / 1e3,
        _ => 0.0,
    };
    let recovered: u64 = m.recovered.iter().flat_map(|r| r.credits.values()).sum();
    RunRow {
        seq,
        run_id: m.run_id.clone(),
        command: m.command.clone(),
        started_at: m.started_at.clone(),
        duration_s,
        exit_code: m.exit_code,
        status: match m.exit_code {
            0 => "ok",
            4 => "partial",
            _ => "failed",
        },
        // An erasure run's rows file lists the records it erased, not
        // records written.
        rows: if m.erasure.is_some() {
            0
        } else {
            m.audit_rows.rows
        },
        sends: m.counts["sent"].as_u64().unwrap_or(0),
        credits: m.credits.values().sum::<u64>() + recovered,
        pages: m.counts["pages"].as_u64().unwrap_or(0),
        signer: m.signer.as_ref().map(|s| s.fingerprint.clone()),
        signature: "unsigned",
    }
}

/// What `verify` found of the SSH signature of `m`'s run (see
/// [`RunRow::signature`]).
fn signature_state(
    m: &Manifest,
    trust: &verify::Trust,
    failures: &[verify::Failure],
) -> &'static str {
    let sig = audit::signature_key(&m.run_id);
    match (m.signer.is_some(), trust.signers.is_some()) {
        (false, _) => "unsigned",
        _ if failures.iter().any(|f| f.path == sig) => "failed",
        (true, true) => "verified",
        (true, false) => "intact",
    }
}

/// The creation time an X ID (a snowflake) carries: milliseconds since the
/// Twitter epoch in its upper bits.
fn snowflake_time(id: &str) -> Option<String> {
    let id: u64 = id.parse().ok()?;
    let ms = (id >> 22) + 1_288_834_974_657;
    let at = chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)?;
    Some(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// HTML-escapes text.
pub(crate) fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#1a202c;padding:0 16px}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px}\
.ok{background:#e6ffed;border:1px solid #2f855a;padding:8px 12px}.bad{background:#fff5f5;border:1px solid #c53030;padding:8px 12px}\
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #e2e8f0;padding:3px 6px;text-align:left}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}tr.s-partial td{background:#fffbea}tr.s-failed td{background:#fff5f5}\
dl.totals{display:grid;grid-template-columns:repeat(7,auto);gap:4px 18px}dl.totals dt{color:#4a5568;font-size:12px}dl.totals dd{margin:0;font-size:18px}\
.note{color:#4a5568;font-size:12px}code{font-size:12px}";

impl Report {
    /// The report as one self-contained HTML page.
    pub fn html(&self) -> String {
        let mut h = String::with_capacity(64 * 1024);
        let _ = write!(
            h,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>xquik-dm report: {out}</title><style>{STYLE}</style></head><body>\
        <h1>xquik-dm report</h1><p class=\"note\">{out} &middot; generated {gen} &middot; built from the audit manifests, the chain and the checkpoint only: \
        <strong>this page contains no message text</strong> (IDs, statuses, counts, credits and digests).</p>",
            out = esc(&self.out.to_string()),
            gen = esc(&self.generated_at),
        );
        self.html_verify(&mut h);
        self.html_totals(&mut h);
        self.html_chart(&mut h);
        self.html_runs(&mut h);
        self.html_conversations(&mut h);
        self.html_sends(&mut h);
        self.privacy.html(&mut h);
        h.push_str("</body></html>\n");
        h
    }

    fn html_verify(&self, h: &mut String) {
        let head = self.head.as_deref().unwrap_or("none");
        if self.verify.ok {
            let _ = write!(
                h,
                "<div id=\"verify\" class=\"ok\" data-ok=\"true\"><strong>Verified</strong>: {} files and segments checked. Chain head <code id=\"head\">{}</code></div>",
                self.verify.checked,
                esc(head)
            );
        } else {
            let _ = write!(
                h,
                "<div id=\"verify\" class=\"bad\" data-ok=\"false\"><strong>Verification failed</strong> ({} problems). Chain head <code id=\"head\">{}</code><ul>",
                self.verify.failures.len(),
                esc(head)
            );
            for f in &self.verify.failures {
                let _ = write!(
                    h,
                    "<li class=\"failure\" data-path=\"{p}\"><code>{p}</code>: {r}</li>",
                    p = esc(&f.path),
                    r = esc(&f.reason)
                );
            }
            h.push_str("</ul></div>");
        }
        if !self.tables.is_empty() {
            h.push_str("<p id=\"tables\">Delta tables:");
            for (name, version) in &self.tables {
                let _ = write!(
                    h,
                    " <code>parquet/{n}</code> at version <span class=\"table-version\" data-table=\"{n}\">{version}</span>",
                    n = esc(name)
                );
            }
            h.push_str("</p>");
        }
        if !self.verify.notes.is_empty() {
            h.push_str("<ul class=\"note\">");
            for n in self.verify.notes.iter().take(20) {
                let _ = write!(h, "<li>{}</li>", esc(n));
            }
            h.push_str("</ul>");
        }
    }

    fn html_totals(&self, h: &mut String) {
        let t = &self.totals;
        h.push_str("<h2>Totals</h2><dl class=\"totals\">");
        for (id, label, value) in [
            ("runs", "runs", t.runs),
            ("rows", "rows written", t.rows),
            ("sends", "DMs sent", t.sends),
            ("credits", "credits", t.credits),
            ("pages", "pages fetched", t.pages),
            ("partial", "partial runs", t.partial),
            ("failed", "failed runs", t.failed),
        ] {
            let _ = write!(
                h,
                "<div><dt>{label}</dt><dd id=\"total-{id}\" data-value=\"{value}\">{value}</dd></div>"
            );
        }
        h.push_str("</dl>");
    }

    /// Three bar charts sharing one axis (rows, credits, duration), one bar
    /// per run — or per day past [`CHART_RUNS`] runs — coloured by outcome.
    fn html_chart(&self, h: &mut String) {
        struct Bar {
            label: String,
            values: [f64; 3],
            status: &'static str,
        }
        let by_day = self.runs.len() > CHART_RUNS;
        let bars: Vec<Bar> = if by_day {
            self.days
                .iter()
                .map(|d| Bar {
                    label: d.date.clone(),
                    values: [d.rows as f64, d.credits as f64, d.duration_s],
                    status: if d.failed > 0 {
                        "failed"
                    } else if d.partial > 0 {
                        "partial"
                    } else {
                        "ok"
                    },
                })
                .collect()
        } else {
            self.runs
                .iter()
                .map(|r| Bar {
                    label: r.run_id.clone(),
                    values: [r.rows as f64, r.credits as f64, r.duration_s],
                    status: r.status,
                })
                .collect()
        };
        let _ = write!(
            h,
            "<h2>Timeline</h2><p class=\"note\">One bar per {} ({} in all); green: exit 0, amber: partial (exit 4), red: failed. Hover a bar for its figures.</p>",
            if by_day { "day" } else { "run" },
            bars.len()
        );
        let (width, height, gap) = (1160.0_f64, 90.0_f64, 26.0_f64);
        let names = ["rows written", "credits", "seconds"];
        let total_height = 3.0 * (height + gap) + 10.0;
        let _ = write!(
            h,
            "<svg id=\"chart\" data-bars=\"{}\" data-by=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{total_height}\" viewBox=\"0 0 {width} {total_height}\" role=\"img\" aria-label=\"runs over time\">",
            bars.len(),
            if by_day { "day" } else { "run" }
        );
        let step = width / bars.len().max(1) as f64;
        for (series, name) in names.iter().enumerate() {
            let top = series as f64 * (height + gap) + 16.0;
            let max = bars
                .iter()
                .map(|b| b.values[series])
                .fold(0.0_f64, f64::max)
                .max(1e-9);
            let _ = write!(
                h,
                "<text x=\"0\" y=\"{}\" font-size=\"12\" fill=\"#4a5568\">{name} (max {})</text><line x1=\"0\" x2=\"{width}\" y1=\"{}\" y2=\"{}\" stroke=\"#cbd5e0\"/>",
                top - 4.0,
                number(max),
                top + height,
                top + height
            );
            for (i, b) in bars.iter().enumerate() {
                let v = b.values[series];
                let bar_height = (v / max * height).max(if v > 0.0 { 1.0 } else { 0.0 });
                let fill = match b.status {
                    "ok" => "#38a169",
                    "partial" => "#d69e2e",
                    _ => "#e53e3e",
                };
                let _ = write!(
                    h,
                    "<rect x=\"{:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"{fill}\"><title>{}: {} {name}</title></rect>",
                    i as f64 * step,
                    top + height - bar_height,
                    (step * 0.8).max(0.5),
                    bar_height,
                    esc(&b.label),
                    number(v)
                );
            }
        }
        h.push_str("</svg>");
    }

    fn html_runs(&self, h: &mut String) {
        let shown = self.runs.len().min(TABLE_ROWS);
        let _ = write!(
            h,
            "<h2>Runs</h2><p class=\"note\">The last {shown} of {} runs, newest first{}.</p>\
<table id=\"runs\"><tr><th>#</th><th>run</th><th>command</th><th>started</th><th class=\"n\">seconds</th><th class=\"n\">exit</th><th class=\"n\">rows</th><th class=\"n\">sends</th><th class=\"n\">credits</th><th class=\"n\">pages</th><th>signature</th></tr>",
            self.runs.len(),
            if shown < self.runs.len() {
                "; the JSON report (--json) lists every run"
            } else {
                ""
            }
        );
        for r in self.runs.iter().rev().take(TABLE_ROWS) {
            let _ = write!(
                h,
                "<tr class=\"run s-{st}\" data-run=\"{id}\" data-rows=\"{rows}\" data-sends=\"{sends}\" data-credits=\"{credits}\" data-pages=\"{pages}\" data-exit=\"{exit}\">\
<td class=\"n\">{seq}</td><td><code>{id}</code></td><td>{cmd}</td><td>{start}</td><td class=\"n\">{dur:.2}</td><td class=\"n\">{exit}</td><td class=\"n\">{rows}</td><td class=\"n\">{sends}</td><td class=\"n\">{credits}</td><td class=\"n\">{pages}</td><td class=\"sig-{sig}\" title=\"{signer}\">{sig}</td></tr>",
                st = r.status,
                id = esc(&r.run_id),
                rows = r.rows,
                sends = r.sends,
                credits = r.credits,
                pages = r.pages,
                exit = r.exit_code,
                seq = r.seq,
                cmd = esc(&r.command),
                start = esc(&r.started_at),
                dur = r.duration_s,
                sig = r.signature,
                signer = esc(r.signer.as_deref().unwrap_or("")),
            );
        }
        h.push_str("</table>");
    }

    fn html_conversations(&self, h: &mut String) {
        let shown = self.conversations.len().min(TABLE_ROWS * 5);
        let _ = write!(
            h,
            "<h2>Conversations</h2><p class=\"note\">{shown} of {} conversations. The newest message's time comes from its ID.</p>\
<table id=\"conversations\"><tr><th>account</th><th>user</th><th class=\"n\">messages</th><th>newest message</th><th>last run</th><th>state</th><th>reason</th></tr>",
            self.conversations.len()
        );
        for c in self.conversations.iter().take(shown) {
            let _ = write!(
                h,
                "<tr class=\"conversation\" data-key=\"{a}/{u}\" data-messages=\"{m}\"><td>{a}</td><td>{u}</td><td class=\"n\">{m}</td><td>{at}</td><td><code>{run}</code></td><td>{st}</td><td>{why}</td></tr>",
                a = esc(&c.account),
                u = esc(&c.user_id),
                m = c.messages,
                at = esc(c.newest_message_at.as_deref().unwrap_or("")),
                run = esc(c.last_run.as_deref().unwrap_or("")),
                st = esc(c.status.as_deref().unwrap_or("")),
                why = esc(c.reason.as_deref().unwrap_or("")),
            );
        }
        h.push_str("</table>");
    }

    fn html_sends(&self, h: &mut String) {
        if self.sends.is_empty() {
            return;
        }
        let shown = self.sends.len().min(TABLE_ROWS * 5);
        let _ = write!(
            h,
            "<h2>Sends</h2><p class=\"note\">{shown} of {} sends: IDs, status and media references (never the text).</p>\
<table id=\"sends\"><tr><th>account</th><th>recipient</th><th>status</th><th>message</th><th>media</th><th>sent</th><th>error</th></tr>",
            self.sends.len()
        );
        for s in self.sends.iter().take(shown) {
            let _ = write!(
                h,
                "<tr class=\"send\" data-message=\"{m}\" data-status=\"{st}\"><td>{a}</td><td>{r}</td><td>{st}</td><td><code>{m}</code></td><td><code>{media}</code></td><td>{at}</td><td>{err}</td></tr>",
                a = esc(&s.account),
                r = esc(&s.recipient_user_id),
                st = esc(&s.status),
                m = esc(s.message_id.as_deref().unwrap_or("")),
                media = esc(&[s.media_id.as_deref(), s.media_url.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ")),
                at = esc(s.sent_at.as_deref().unwrap_or("")),
                err = esc(s.error.as_deref().unwrap_or("")),
            );
        }
        h.push_str("</table>");
    }

    /// Exit status: 0 when the trail verified, 5 when it did not (the
    /// report is written either way).
    pub fn exit_code(&self) -> u8 {
        if self.verify.ok { 0 } else { 5 }
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// What `report` printed or wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    /// The report.
    pub report: Report,
    /// Where the HTML page went, if it was asked for.
    pub html: Option<std::path::PathBuf>,
}

impl std::fmt::Display for Written {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.report;
        writeln!(
            f,
            "report of {}: {} runs, {} rows, {} sends, {} credits, {} pages; {} partial, {} failed",
            r.out,
            r.totals.runs,
            r.totals.rows,
            r.totals.sends,
            r.totals.credits,
            r.totals.pages,
            r.totals.partial,
            r.totals.failed
        )?;
        match r.verify.ok {
            true => writeln!(
                f,
                "  verified; chain head {}",
                r.head.as_deref().unwrap_or("none")
            )?,
            false => {
                writeln!(f, "  VERIFICATION FAILED:")?;
                for failure in &r.verify.failures {
                    writeln!(f, "    {}: {}", failure.path, failure.reason)?;
                }
            }
        }
        if !r.tables.is_empty() {
            let tables: Vec<String> = r
                .tables
                .iter()
                .map(|(name, version)| format!("{name} at version {version}"))
                .collect();
            writeln!(f, "  Delta tables: {}", tables.join(", "))?;
        }
        let signed = r.runs.iter().filter(|run| run.signer.is_some()).count();
        if signed > 0 {
            let count = |state| r.runs.iter().filter(|run| run.signature == state).count();
            writeln!(
                f,
                "  SSH signatures: {signed} of {} runs signed; {} verified, {} failed",
                r.runs.len(),
                count("verified"),
                count("failed")
            )?;
        }
        let p = &r.privacy;
        match p.retention.retain_days.filter(|_| p.retention.in_force) {
            Some(days) => writeln!(
                f,
                "  retention in force: {days} days; {} retention runs, the last at {}",
                p.retention.runs,
                p.retention.last_applied_at.as_deref().unwrap_or("never")
            )?,
            None => writeln!(f, "  retention not in force")?,
        }
        if !p.erasures.is_empty() {
            writeln!(
                f,
                "  erasures: {} runs, {} records erased",
                p.erasures.len(),
                p.erased
            )?;
        }
        if let Some(path) = &self.html {
            writeln!(f, "  HTML page: {}", path.display())?;
        }
        Ok(())
    }
}

/// `xquik-dm report`: builds the report, writes the page if asked.
/// SSH signatures are checked with `trust`; the IDs of the people erasures
/// concerned are shown only when `erased_ids`.
pub fn run(
    location: &Location,
    html: Option<&std::path::Path>,
    trust: &verify::Trust,
    erased_ids: bool,
) -> Result<Written> {
    let report = build(location, trust, erased_ids)?;
    if let Some(path) = html {
        std::fs::write(path, report.html()).map_err(|e| crate::error::Error::io(path, e))?;
    }
    Ok(Written {
        report,
        html: html.map(|p| p.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_x_id_carries_its_time() {
        // 1900000000000000001 >> 22 = 452995300292 ms after the X epoch
        // (2010-11-04T01:42:54.657Z).
        assert_eq!(
            snowflake_time("1900000000000000001").as_deref(),
            Some("2025-03-13T01:44:34Z")
        );
        assert_eq!(snowflake_time("x"), None);
    }

    #[test]
    fn html_escapes_what_it_shows() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
