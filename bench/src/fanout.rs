//! A fan-out: one job per node of the fleet, queued through REST as an operator would (there is no
//! bulk endpoint: one `POST` per node, concurrently, each with its own `Idempotency-Key`), then
//! followed until the control plane has recorded every result, then checked against what the
//! agents did (every command executed exactly once, on its own node).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::{BenchError, BenchResult};
use crate::fleet::Fleet;
use crate::ledger::{RecordedJob, Verdict, verdict};
use crate::rest::{Api, Job};
use crate::stats::Summary;

/// What each node is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FanoutCommand {
    /// `POST /v1/nodes/{id}/ping`.
    Ping,
    /// `POST /v1/nodes/{id}/ops/action` `{"action": "restart"}`, confirmed (a `ServiceAction`;
    /// the simulated agents answer with a verified no-op).
    Restart,
}

impl FanoutCommand {
    pub fn name(self) -> &'static str {
        match self {
            FanoutCommand::Ping => "ping",
            FanoutCommand::Restart => "restart",
        }
    }

    /// The job kind in `GET /v1/jobs?kind=`.
    pub fn job_kind(self) -> &'static str {
        match self {
            FanoutCommand::Ping => "ping",
            FanoutCommand::Restart => "service_action",
        }
    }

    fn result_as_expected(self, job: &Job) -> bool {
        let Some(result) = &job.result else {
            return false;
        };
        match self {
            FanoutCommand::Ping => result["pong"].is_object(),
            FanoutCommand::Restart => result["action"]["verified"] == true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FanoutOptions {
    /// The fleet's label selector; it must match exactly the fleet's nodes.
    pub selector: String,
    pub command: FanoutCommand,
    /// Create requests in flight at once.
    pub concurrency: usize,
    /// How long to wait for every result.
    pub deadline: Duration,
    /// Prefix of the idempotency keys (unique per fan-out).
    pub round: String,
    /// Every command must have been delivered more than once (the agents were told to drop
    /// their streams mid-command).
    pub expect_redelivery: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutFigures {
    pub command: &'static str,
    pub nodes: usize,
    /// From the first create request until every one was answered.
    pub queue_s: f64,
    /// From the first create request until the bench saw every result recorded.
    pub all_recorded_s: f64,
    /// The control plane's own span: the first job's `created_at` to the last `completed_at`.
    pub server_span_s: f64,
    /// Each create request's round trip.
    pub create_request: Summary,
    /// Per node, the job's `created_at` to its `completed_at`.
    pub job_latency: Summary,
    pub verdict: Verdict,
    pub expect_redelivery: bool,
    #[serde(skip)]
    pub finished_at: Instant,
}

impl FanoutFigures {
    /// Fails unless every command ran exactly once (and, when expected, was delivered again).
    pub fn check(&self) -> BenchResult<()> {
        let redelivery_missing =
            self.expect_redelivery && self.verdict.redelivered != self.verdict.jobs;
        if self.verdict.is_exactly_once() && !redelivery_missing {
            return Ok(());
        }
        Err(BenchError::ExactlyOnce {
            command: self.command,
            verdict: Box::new(self.verdict.clone()),
        })
    }

    pub fn brief(&self) -> String {
        format!(
            "{} to {} nodes: queued in {:.2} s, all recorded after {:.2} s (server span {:.2} s); per node {}; create request {}; {}",
            self.command,
            self.nodes,
            self.queue_s,
            self.all_recorded_s,
            self.server_span_s,
            self.job_latency.brief(),
            self.create_request.brief(),
            self.verdict
        )
    }
}

/// Runs one fan-out over the fleet and returns its figures (check them with
/// [`FanoutFigures::check`]).
pub async fn fanout(
    api: &Api,
    fleet: &Fleet,
    options: &FanoutOptions,
) -> BenchResult<FanoutFigures> {
    let nodes = matching_nodes(api, fleet, &options.selector).await?;
    let started = Instant::now();
    let created = create_jobs(api, &nodes, options).await?;
    let queue = started.elapsed();
    let create_latencies: Vec<Duration> = created.iter().map(|c| c.2).collect();
    let ids: HashSet<Uuid> = created.iter().map(|c| c.1).collect();
    if ids.len() != nodes.len() {
        return Err(BenchError::Fleet {
            what: format!("queuing a {} on every node", options.command.name()),
            problem: format!(
                "{} requests created {} distinct jobs",
                nodes.len(),
                ids.len()
            ),
        });
    }
    let (jobs, finished_at) = wait_recorded(api, options, &ids, started).await?;
    let all_recorded = finished_at - started;

    let ledger = fleet.ledger().snapshot();
    let recorded: Vec<RecordedJob> = jobs
        .values()
        .map(|job| RecordedJob {
            job_id: job.id,
            node_id: job.node_id,
            status: job.status.clone(),
            result_as_expected: options.command.result_as_expected(job),
        })
        .collect();
    let mut verdict = verdict(&recorded, &ledger);
    // A job the API put on another node than the one it was queued for is misrouted too.
    for (node, job_id, _) in &created {
        if jobs.get(job_id).is_some_and(|j| j.node_id != *node)
            && !verdict.misrouted.contains(job_id)
        {
            verdict.misrouted.push(*job_id);
        }
    }
    let latencies: Vec<Duration> = jobs
        .values()
        .filter_map(|j| (j.completed_at? - j.created_at).to_std().ok())
        .collect();
    let first_created = jobs.values().map(|j| j.created_at).min();
    let last_completed = jobs.values().filter_map(|j| j.completed_at).max();
    let server_span = match (first_created, last_completed) {
        (Some(a), Some(b)) => (b - a).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    Ok(FanoutFigures {
        command: options.command.name(),
        nodes: nodes.len(),
        queue_s: queue.as_secs_f64(),
        all_recorded_s: all_recorded.as_secs_f64(),
        server_span_s: server_span.as_secs_f64(),
        create_request: Summary::of(&create_latencies),
        job_latency: Summary::of(&latencies),
        verdict,
        expect_redelivery: options.expect_redelivery,
        finished_at,
    })
}

/// The nodes the selector matches, which must be exactly the fleet's.
async fn matching_nodes(api: &Api, fleet: &Fleet, selector: &str) -> BenchResult<Vec<Uuid>> {
    let listed: Vec<Uuid> = api
        .nodes(selector, None)
        .await?
        .into_iter()
        .map(|n| n.id)
        .collect();
    let ours: HashSet<Uuid> = fleet.node_ids().iter().copied().collect();
    let theirs: HashSet<Uuid> = listed.iter().copied().collect();
    if ours != theirs || listed.len() != theirs.len() {
        return Err(BenchError::Fleet {
            what: format!("the nodes matching {selector:?}"),
            problem: format!(
                "the API lists {} (of which {} are not the bench's), the bench enrolled {} (of which {} are not listed)",
                listed.len(),
                theirs.difference(&ours).count(),
                ours.len(),
                ours.difference(&theirs).count()
            ),
        });
    }
    Ok(listed)
}

/// One create request per node, `concurrency` at a time: (node, job, request round trip).
async fn create_jobs(
    api: &Api,
    nodes: &[Uuid],
    options: &FanoutOptions,
) -> BenchResult<Vec<(Uuid, Uuid, Duration)>> {
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for &node in nodes {
        let api = api.clone();
        let permits = permits.clone();
        let key = format!("{}-{node}", options.round);
        let command = options.command;
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let t0 = Instant::now();
            let job = match command {
                FanoutCommand::Ping => api.ping(node, &key).await,
                FanoutCommand::Restart => api.restart_gateway(node, &key).await,
            };
            job.map(|job| (node, job, t0.elapsed()))
        });
    }
    let mut created = Vec::with_capacity(nodes.len());
    let mut first_error = None;
    let mut failed = 0usize;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(c)) => created.push(c),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("a request task failed: {e}"));
            }
        }
    }
    if let Some(example) = first_error {
        return Err(BenchError::Fleet {
            what: format!("queuing a {} on every node", options.command.name()),
            problem: format!(
                "{failed} of {} requests failed; first: {example}",
                nodes.len()
            ),
        });
    }
    Ok(created)
}

/// Polls until none of the fleet's jobs of this kind is pending and every one of `ids` reads as
/// finished; returns them, and when the bench first saw nothing pending (the full read that
/// confirms it can take longer than the polling interval, so it is not counted).
async fn wait_recorded(
    api: &Api,
    options: &FanoutOptions,
    ids: &HashSet<Uuid>,
    started: Instant,
) -> BenchResult<(HashMap<Uuid, Job>, Instant)> {
    let kind = options.command.job_kind();
    loop {
        // Cheap first: is anything still pending? (One item per status is enough to know; read in
        // the order a job moves through them, so one moving on between reads is still seen.)
        let mut pending = false;
        for status in ["queued", "dispatched", "running"] {
            let (items, _) = api
                .jobs_page(&options.selector, Some(kind), Some(status), 1, None)
                .await?;
            if !items.is_empty() {
                pending = true;
                break;
            }
        }
        let checked_at = Instant::now();
        let mut finished = 0;
        if !pending {
            // A job can move back to queued between those reads (a stream dropped), so read
            // every job and believe only what they say.
            let jobs = read_jobs(api, options, ids).await?;
            finished = jobs.values().filter(|j| j.is_terminal()).count();
            if jobs.len() == ids.len() && finished == ids.len() {
                return Ok((jobs, checked_at));
            }
        }
        if started.elapsed() > options.deadline {
            let jobs = read_jobs(api, options, ids).await?;
            let mut by_status: HashMap<&str, usize> = HashMap::new();
            for job in jobs.values() {
                *by_status.entry(job.status.as_str()).or_default() += 1;
            }
            return Err(BenchError::Timeout {
                what: format!("every {} result to be recorded", options.command.name()),
                waited: options.deadline,
                progress: format!(
                    "{} of {} jobs found, by status {by_status:?} (finished at the last full read: {finished})",
                    jobs.len(),
                    ids.len()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The jobs with these ids, read newest first in pages until all are found (they are the newest
/// jobs on the fleet's nodes: fan-outs run one after another). Not filtered by kind: with a
/// selector, `kind=` makes the control plane's query plan scan every job once per node.
async fn read_jobs(
    api: &Api,
    options: &FanoutOptions,
    ids: &HashSet<Uuid>,
) -> BenchResult<HashMap<Uuid, Job>> {
    let mut found = HashMap::with_capacity(ids.len());
    let mut cursor: Option<String> = None;
    loop {
        let (items, next) = api
            .jobs_page(&options.selector, None, None, 500, cursor.as_deref())
            .await?;
        for job in items {
            if ids.contains(&job.id) {
                found.insert(job.id, job);
            }
        }
        match next {
            Some(next) if found.len() < ids.len() => cursor = Some(next),
            _ => return Ok(found),
        }
    }
}
