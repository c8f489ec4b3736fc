//! The failover driver on the control thread: watches the topology, walks the state machine of
//! `topology::failover` and performs each phase's I/O on the nodes (`topology::actions`), then
//! feeds the outcome back. Also keeps fenced primaries read-only and repoints stray followers;
//! a switchover's hand-over is in `switchover.rs`.

mod switchover;

use crate::config::{Config, FailoverMode};
use crate::frontend::shared::Shared;
use crate::metrics;
use crate::topology::actions::NodeLogins;
use crate::topology::failover::{self, Candidate, Event, Failovers, NoCandidate, Order, Outcome, Phase, Record, Timed};
use crate::topology::{NodeState, Role, Snapshot, Topology};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often the driver looks again without a topology change (timeouts, retries).
const TICK: Duration = Duration::from_millis(100);
/// Wait between attempts after no follower qualified or a promotion failed.
const RETRY: Duration = Duration::from_secs(1);
/// Longest wait for pg_promote(wait => true).
const PROMOTE_WAIT: Duration = Duration::from_secs(30);

/// Starts the driver; it ends when the proxy (its `Shared`) is gone.
pub fn spawn(shared: &Arc<Shared>, orders: mpsc::UnboundedReceiver<Order>, tasks: &mut crate::control::Tasks) {
    let driver = Driver {
        shared: Arc::downgrade(shared),
        topology: shared.topology.clone(),
        failovers: shared.failovers.clone(),
        logins: Arc::new(NodeLogins::default()),
        orders,
        phase: Phase::Healthy,
        record: None,
        suspect_since: Instant::now(),
        next_check: Instant::now(),
        last_seen_up: Vec::new(),
        order: None,
        target: None,
        switch_lsn: 0,
        counted: false,
        fenced_done: Vec::new(),
        repointed: Vec::new(),
        checked: Vec::new(),
        was_fenced: Vec::new(),
        waiting_logged: false,
        sync: Default::default(),
        sync_protected: false,
        rejoins: Default::default(),
        switchover: None,
        held_since: None,
        promotion_tried: false,
    };
    tasks.add(crate::control::spawn(driver.run()));
}

struct Driver {
    shared: Weak<Shared>,
    topology: Arc<Topology>,
    failovers: Arc<Failovers>,
    /// Connections as the failover login, one pool per node.
    logins: Arc<NodeLogins>,
    orders: mpsc::UnboundedReceiver<Order>,
    phase: Phase,
    /// The attempt under way (from the leader's first failure).
    record: Option<Record>,
    suspect_since: Instant,
    /// No new confirmation, election or promotion attempt before this.
    next_check: Instant,
    /// Per node: when a probe last found it up (detection time starts there).
    last_seen_up: Vec<Instant>,
    /// The operator's PROMOTE, waiting for its outcome.
    order: Option<Order>,
    /// The node being promoted, then the leader followers are pointed at.
    target: Option<usize>,
    /// The promoted node's position when frozen: the new timeline's switch point.
    switch_lsn: u64,
    /// The attempt's non-final outcome (veto, no candidate) was counted already.
    counted: bool,
    /// Per node: the incarnation last made read-only as a fenced primary.
    fenced_done: Vec<i64>,
    /// Per node: the (incarnation, epoch) it was last repointed in, so a stray is repointed once.
    repointed: Vec<(i64, u64)>,
    /// Per node: the failover login's permissions were checked.
    checked: Vec<bool>,
    /// Per node: fenced at the last look (its connections are cut when it becomes fenced).
    was_fenced: Vec<bool>,
    waiting_logged: bool,
    /// The leader's synchronous standbys and the guard elections must respect.
    sync: crate::sync_keeper::SyncKeeper,
    /// The promoted node holds every acknowledged commit: a synchronous quorum answered the
    /// freeze, or (a switchover) it replayed the old leader's last WAL position.
    sync_protected: bool,
    /// Runs of failover.rejoin_command.
    rejoins: crate::rejoin::Rejoins,
    /// The operator's SWITCHOVER, waiting for the driver's next look.
    switchover: Option<Order>,
    /// A switchover: when units that need the leader began to be held.
    held_since: Option<Instant>,
    /// pg_promote was sent in this attempt: the node may become a primary even if the call
    /// failed, so the old leader must never be unfenced.
    promotion_tried: bool,
}

impl Driver {
    async fn run(mut self) {
        loop {
            tokio::select! {
                _ = self.topology.changed() => {}
                _ = tokio::time::sleep(TICK) => {}
                order = self.orders.recv() => match order {
                    Some(order) => self.take_order(order),
                    None => return,
                },
            }
            let Some(shared) = self.shared.upgrade() else { return };
            let config = shared.config();
            let snapshot = self.topology.snapshot();
            let now = Instant::now();
            self.grow(snapshot.nodes.len(), now);
            self.logins.forget(|i| snapshot.removed(i));
            for (i, n) in snapshot.nodes.iter().enumerate() {
                if n.up {
                    self.last_seen_up[i] = now;
                }
            }
            self.cut_newly_fenced(&shared, &snapshot);
            if self.phase == Phase::Healthy {
                let logins = self.logins.clone();
                self.sync.keep(&logins, &config, &snapshot, &self.topology).await;
            }
            if config.failover.mode == FailoverMode::Off {
                if let Some(order) = self.switchover.take() {
                    let _ = order.reply.send(Err("failover.mode = off: pgcausal does not promote nodes".into()));
                }
                continue; // promotions made by others are followed by the election alone
            }
            self.check_permissions(&config, &snapshot).await;
            let snapshot = match self.switchover.take() {
                Some(order) => {
                    self.switch_over(&shared, &config, &snapshot, order).await;
                    self.topology.snapshot()
                }
                None => snapshot,
            };
            self.step(&shared, &config, &snapshot, Instant::now()).await;
            if self.phase == Phase::Healthy {
                self.keep_fenced_read_only(&config, &snapshot).await;
                self.repoint_strays(&config, &snapshot).await;
                self.rejoins.step(&config, &snapshot);
            }
        }
    }

    /// Per-node memory for nodes a reload added (node slots only ever grow).
    fn grow(&mut self, nodes: usize, now: Instant) {
        self.last_seen_up.resize(nodes, now);
        self.fenced_done.resize(nodes, 0);
        self.repointed.resize(nodes, (0, 0));
        self.checked.resize(nodes, false);
        self.was_fenced.resize(nodes, false);
    }

    /// Moves the machine by `event`, publishing the phase (SHOW NODES, /ready/writes).
    fn transition(&mut self, event: Event) {
        let Some(next) = self.phase.on(event) else {
            tracing::error!(phase = self.phase.name(), ?event, "failover event ignored: not valid in this phase");
            return;
        };
        if next != self.phase {
            tracing::info!(from = self.phase.name(), to = next.name(), ?event, "failover phase");
        }
        self.phase = next;
        self.topology.decide(|_, phase| *phase = next);
    }

    async fn step(&mut self, shared: &Shared, config: &Config, snapshot: &Snapshot, now: Instant) {
        let Some(leader) = snapshot.intent.leader else { return };
        let leader_up = snapshot.nodes[leader].up && snapshot.nodes[leader].role == Role::Primary;
        match self.phase {
            Phase::Healthy if !leader_up && snapshot.leader.is_none() => self.suspect(config, snapshot, leader, now),
            Phase::Healthy => {}
            Phase::Suspect if leader_up => self.leader_answered(leader, now),
            Phase::Suspect => {
                if now.duration_since(self.suspect_since) >= config.failover.timeout && now >= self.next_check {
                    self.confirm(shared, config, snapshot, leader).await;
                }
            }
            Phase::Confirmed if leader_up && self.target.is_none() && self.order.is_none() && !self.promotion_tried => {
                // Back before anything was promoted: it stays leader; followers frozen by a
                // failed election are pointed back at it.
                self.topology.decide(|intent, _| {
                    if let Some(f) = intent.fenced.get_mut(leader) {
                        *f = false;
                    }
                });
                self.target = Some(leader);
                self.transition(Event::LeaderAnswered);
            }
            Phase::Confirmed => {
                let ordered = self.order.is_some() || config.failover.mode == FailoverMode::Auto;
                if !ordered {
                    if !self.waiting_logged {
                        tracing::warn!(leader = %self.topology.name(leader), "leader confirmed dead; failover.mode = manual: waiting for PROMOTE [node] on the admin console");
                        self.waiting_logged = true;
                    }
                } else if now >= self.next_check {
                    self.transition(Event::PromoteOrdered);
                }
            }
            Phase::Freezing => self.freeze_and_elect(config, snapshot, leader, now).await,
            Phase::Promoting => self.promote(shared, config, snapshot, leader, now).await,
            Phase::Repointing => self.repoint(config, snapshot).await,
            Phase::Draining => {} // the hand-over runs in `switch_over`, start to end
        }
    }

    fn suspect(&mut self, config: &Config, snapshot: &Snapshot, leader: usize, now: Instant) {
        let id = self.failovers.next_id();
        let name = config.nodes[leader].name.clone();
        let record = Record::new(id, name.clone(), snapshot.intent.timeline, self.last_seen_up[leader], now);
        let detect = record.phases[Timed::Detect as usize].unwrap_or_default();
        metrics::histogram(metrics::FAILOVER_PHASE_SECONDS, Timed::Detect.label(), detect);
        tracing::warn!(leader = %name, detect_ms = detect.as_millis() as u64, timeout = %humantime::format_duration(config.failover.timeout), "leader suspect: it fails its probes");
        self.failovers.upsert(&record);
        self.record = Some(record);
        self.suspect_since = now;
        self.next_check = now;
        self.counted = false;
        self.waiting_logged = false;
        self.target = None;
        self.promotion_tried = false;
        self.transition(Event::LeaderFailed);
    }

    fn leader_answered(&mut self, leader: usize, now: Instant) {
        let name = self.topology.name(leader).to_string();
        if let Some(mut record) = self.record.take() {
            if record.outcome == Outcome::Vetoed {
                // Kept: an operator should see that pgcausal was cut off.
                record.end(Outcome::Vetoed, record.reason.clone(), now);
                metrics::failover(Outcome::Vetoed);
                self.failovers.upsert(&record);
            } else {
                self.failovers.forget(record.id); // one late probe is not a failover attempt
            }
        }
        tracing::info!(leader = %name, "leader answers again; no failover");
        self.transition(Event::LeaderAnswered);
    }

    /// Confirms the leader dead from the followers' side too: none still hears from it.
    async fn confirm(&mut self, shared: &Shared, config: &Config, snapshot: &Snapshot, leader: usize) {
        let (logins, topology) = (&*self.logins.clone(), &*self.topology.clone());
        let standbys: Vec<usize> = standbys(snapshot).filter(|&i| i != leader).collect();
        let reads = standbys.iter().map(|&i| async move {
            let session = logins.open(config, i).await?;
            session.receiver(i, topology).await
        });
        let receivers: Vec<_> =
            futures_util::future::join_all(reads).await.into_iter().filter_map(Result::ok).collect();
        let now_after = Instant::now();
        let record = self.record.as_mut().expect("a record while suspect");
        if let Some(witness) = failover::veto(&receivers, leader, config.failover.timeout) {
            let (leader, witness) = (self.topology.name(leader).to_string(), self.topology.name(witness).to_string());
            if !self.counted {
                tracing::warn!(%leader, %witness, "failover vetoed: a follower still receives WAL from the leader, so pgcausal is the one cut off");
                metrics::counter(metrics::FAILOVER_VETOES);
                record.outcome = Outcome::Vetoed;
                record.reason = format!("vetoed: {witness} still receives WAL from {leader}");
                self.failovers.upsert(record);
                self.counted = true;
            }
            self.next_check = now_after + config.failover.timeout / 4;
            self.transition(Event::Vetoed);
            return;
        }
        let took = record.phase_done(Timed::Confirm, now_after);
        record.outcome = Outcome::Running;
        record.reason.clear();
        self.counted = false;
        self.failovers.upsert(record);
        let name = self.topology.name(leader).to_string();
        let asked = standbys.len();
        tracing::warn!(leader = %name, followers_asked = asked, followers_answered = receivers.len(), confirm_ms = took.as_millis() as u64, "leader confirmed dead: fenced, no unit is routed to it");
        // Fence first, then route: the old leader is never elected again until it rejoins.
        self.topology.decide(|intent, _| {
            if let Some(f) = intent.fenced.get_mut(leader) {
                *f = true;
            }
        });
        self.cut_newly_fenced(shared, &self.topology.snapshot());
        self.transition(Event::Confirmed);
    }

    async fn freeze_and_elect(&mut self, config: &Config, snapshot: &Snapshot, leader: usize, now: Instant) {
        let logins = &*self.logins.clone();
        let frozen = standbys(snapshot).filter(|&i| i != leader && !snapshot.fenced(i)).map(|i| async move {
            let session = logins.open(config, i).await?;
            session.freeze().await.map(|position| (i, position))
        });
        let mut candidates = Vec::new();
        for result in futures_util::future::join_all(frozen).await {
            match result {
                Ok((i, position)) => {
                    metrics::action("freeze", true);
                    let (node, timeline) = (&config.nodes[i], snapshot.nodes[i].timeline);
                    let (name, priority) = (node.name.clone(), node.priority);
                    candidates.push(Candidate { node: i, name, priority, timeline, position });
                }
                Err(e) => {
                    metrics::action("freeze", false);
                    tracing::warn!(error = %e, "could not freeze a follower; it is not a candidate");
                }
            }
        }
        let timeline = snapshot.intent.timeline;
        let chosen = self.order.as_ref().and_then(Order::node);
        let force = self.order.as_ref().is_some_and(Order::force);
        let elected = failover::elect(&candidates, timeline, chosen).and_then(|c| {
            let best = failover::elect(&candidates, timeline, None).ok();
            let ahead = best.and_then(|b| candidates.iter().find(|x| x.node == b)).map_or(0, |b| b.position);
            let mine = candidates.iter().find(|x| x.node == c).map_or(0, |x| x.position);
            match (chosen, force) {
                (Some(_), false) if ahead > mine => {
                    Err(NoCandidate::Behind(config.nodes[c].name.clone(), ahead - mine))
                }
                (_, false) => self.holds_every_acknowledged_commit(&candidates, timeline, c).map(|()| c),
                _ => Ok(c),
            }
        });
        let record = self.record.as_mut().expect("a record while freezing");
        match elected {
            Ok(node) => {
                let took = record.phase_done(Timed::Freeze, Instant::now());
                let position = candidates.iter().find(|c| c.node == node).map_or(0, |c| c.position);
                self.switch_lsn = position;
                self.sync_protected = !force && self.sync.guard.protects();
                self.target = Some(node);
                let list: Vec<String> = candidates
                    .iter()
                    .map(|c| format!("{}@{}", c.name, crate::consistency::format_lsn(c.position)))
                    .collect();
                tracing::warn!(elected = %config.nodes[node].name, candidates = %list.join(","), freeze_ms = took.as_millis() as u64, "followers frozen; promoting the most advanced");
                self.failovers.upsert(record);
                self.transition(Event::Elected);
            }
            Err(why) => {
                if !self.counted {
                    tracing::error!(reason = %why, "no follower can be promoted; retrying");
                    metrics::failover(Outcome::NoCandidate);
                    self.counted = true;
                }
                record.outcome = Outcome::NoCandidate;
                record.reason = why.to_string();
                self.failovers.upsert(record);
                if let Some(order) = self.order.take() {
                    let _ = order.reply.send(Err(why.to_string()));
                }
                self.next_check = now + RETRY;
                self.transition(Event::NoCandidate);
            }
        }
    }

    /// With synchronous replication: promoting `elected` loses no acknowledged commit only if a
    /// quorum of every synchronous set in force answered the freeze, and no answering follower
    /// (a priority-0 one) is ahead of it.
    fn holds_every_acknowledged_commit(
        &self,
        candidates: &[Candidate],
        timeline: u32,
        elected: usize,
    ) -> Result<(), NoCandidate> {
        let on_timeline: Vec<&Candidate> =
            candidates.iter().filter(|c| timeline == 0 || c.timeline == timeline).collect();
        let reached: Vec<String> = on_timeline.iter().map(|c| c.name.clone()).collect();
        self.sync.guard.promotable(&reached).map_err(NoCandidate::Unsafe)?;
        let mine = on_timeline.iter().find(|c| c.node == elected).map_or(0, |c| c.position);
        match on_timeline.iter().max_by_key(|c| c.position) {
            Some(top) if top.position > mine && self.sync.guard.protects() => {
                Err(NoCandidate::Unsafe(format!(
                    "{} (priority {}) is {} bytes ahead of every follower that may be promoted; PROMOTE <node> FORCE accepts losing them",
                    top.name,
                    top.priority,
                    top.position - mine
                )))
            }
            _ => Ok(()),
        }
    }

    async fn promote(&mut self, shared: &Shared, config: &Config, snapshot: &Snapshot, old: usize, now: Instant) {
        let logins = &*self.logins.clone();
        let node = self.target.expect("a target while promoting");
        let session = logins.open(config, node).await;
        let promoted = match session {
            Ok(session) => {
                self.promotion_tried = true;
                session.promote(PROMOTE_WAIT).await
            }
            Err(e) => Err(e),
        };
        let record = self.record.as_mut().expect("a record while promoting");
        let timeline = match promoted {
            Ok(timeline) => timeline,
            Err(e) => {
                metrics::action("promote", false);
                tracing::error!(error = %e, "promotion failed; electing again");
                record.reason = e.to_string();
                self.failovers.upsert(record);
                if let Some(order) = self.order.take() {
                    let _ = order.reply.send(Err(e.to_string()));
                }
                self.target = None;
                self.next_check = now + RETRY;
                self.transition(Event::PromoteFailed);
                return;
            }
        };
        metrics::action("promote", true);
        let took = record.phase_done(Timed::Promote, Instant::now());
        let name = config.nodes[node].name.clone();
        record.new_leader = Some(name.clone());
        record.new_timeline = Some(timeline);
        // What the old leader had flushed past the switch point is lost to the new timeline.
        let old_position = snapshot.nodes[old].lsn.max(shared.positions.nodes[old].sample().lsn);
        let lost = old_position.saturating_sub(self.switch_lsn);
        record.lost_wal_bytes = Some(lost);
        // A quorum of the synchronous standbys answered and the most advanced was promoted:
        // every acknowledged commit is on it, whatever the position samples could tell.
        let at_risk = if self.sync_protected {
            0
        } else {
            shared.positions.nodes[old].acks.at_risk(self.switch_lsn, crate::consistency::acks::total())
        };
        record.acked_at_risk = Some(at_risk);
        metrics::counter_by(metrics::LOST_WAL_BYTES, lost);
        metrics::counter_by(metrics::ACKED_AT_RISK, at_risk);
        let switch = crate::consistency::format_lsn(self.switch_lsn);
        if lost > 0 {
            tracing::error!(old_leader = %record.old_leader, new_leader = %name, lost_wal_bytes = lost, acked_commits_at_risk = at_risk, %switch, "the old leader had flushed WAL the new leader lacks: it is lost, and acknowledged write units may be among it");
        } else if at_risk > 0 {
            tracing::warn!(old_leader = %record.old_leader, new_leader = %name, acked_commits_at_risk = at_risk, %switch, "acknowledged write units after the old leader's last position sample at or below the switch point: they may be lost (an upper bound; no flushed WAL past the switch point was seen)");
        }
        tracing::warn!(new_leader = %name, timeline, promote_ms = took.as_millis() as u64, "promoted");
        // Elect it now rather than at its next probe: writes resume at once.
        let current = &snapshot.nodes[node];
        let state = NodeState {
            up: true,
            role: Role::Primary,
            timeline,
            lsn: self.switch_lsn,
            incarnation: current.incarnation,
            ..NodeState::default()
        };
        self.topology.update(node, state);
        let record = self.record.as_mut().expect("a record while promoting");
        let mut done = format!("{name} promoted on timeline {timeline}");
        if let Some(since) = self.held_since.take() {
            let held = since.elapsed();
            record.writes_held = Some(held);
            ::metrics::histogram!(metrics::SWITCHOVER_WRITES_HELD).record(held.as_secs_f64());
            tracing::warn!(old_leader = %record.old_leader, new_leader = %name, writes_held_ms = held.as_millis() as u64, "switched over: held units go to the new leader");
            done = format!(
                "switched over from {} to {name} on timeline {timeline}; writes held {} ms",
                record.old_leader,
                held.as_millis()
            );
        }
        self.failovers.upsert(record);
        if let Some(order) = self.order.take() {
            let _ = order.reply.send(Ok(done));
        }
        self.transition(Event::Promoted);
    }

    /// Points every other follower at the target and waits (bounded) until each streams from it.
    async fn repoint(&mut self, config: &Config, snapshot: &Snapshot) {
        let logins = &*self.logins.clone();
        let target = self.target.expect("a target while repointing");
        let timeline =
            snapshot.nodes[target].timeline.max(self.record.as_ref().and_then(|r| r.new_timeline).unwrap_or(0));
        let others: Vec<usize> = standbys(snapshot).filter(|&i| i != target && !snapshot.fenced(i)).collect();
        let deadline = Instant::now() + config.failover.repoint_timeout;
        let jobs = others.iter().map(|&i| async move {
            let session = logins.open(config, i).await?;
            session.repoint(config, &config.nodes[target]).await?;
            while !session.streams_on(timeline).await? {
                if Instant::now() >= deadline {
                    return Ok((i, false));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, crate::topology::actions::ActionError>((i, true))
        });
        let mut stragglers = Vec::new();
        for result in futures_util::future::join_all(jobs).await {
            match result {
                Ok((i, true)) => {
                    metrics::action("repoint", true);
                    self.repointed[i] = (snapshot.nodes[i].incarnation, snapshot.intent.epoch);
                }
                Ok((i, false)) => {
                    metrics::action("repoint", false);
                    stragglers.push(config.nodes[i].name.clone());
                }
                Err(e) => {
                    metrics::action("repoint", false);
                    tracing::warn!(error = %e, "could not repoint a follower");
                    stragglers.push(e.node.clone());
                }
            }
        }
        let after = Instant::now();
        let mut record = self.record.take().expect("a record while repointing");
        let took = record.phase_done(Timed::Repoint, after);
        let reason = match stragglers.is_empty() {
            true => String::new(),
            false => format!("needs rejoin (not streaming from the new leader): {}", stragglers.join(",")),
        };
        if !stragglers.is_empty() {
            tracing::error!(nodes = %stragglers.join(","), "followers not streaming from the new leader: they stay out of rotation and need a rejoin");
        }
        let outcome = match (record.kind, record.new_leader.is_some()) {
            (failover::Kind::Switchover, _) => Outcome::SwitchedOver,
            (_, true) => Outcome::Promoted,
            (_, false) => Outcome::Recovered,
        };
        record.end(outcome, reason, after);
        metrics::failover(outcome);
        let total = record.total.unwrap_or_default();
        tracing::warn!(
            result = outcome.label(),
            repoint_ms = took.as_millis() as u64,
            total_ms = total.as_millis() as u64,
            "failover over"
        );
        self.failovers.upsert(&record);
        self.target = None;
        self.transition(Event::Repointed);
    }

    /// An up primary that is fenced is made read-only (once per incarnation) and its client
    /// backends ended: it must not take writes even from clients that bypass pgcausal.
    async fn keep_fenced_read_only(&mut self, config: &Config, snapshot: &Snapshot) {
        let logins = &*self.logins.clone();
        for (i, n) in snapshot.nodes.iter().enumerate() {
            if !(n.up && n.role == Role::Primary && snapshot.fenced(i)) || self.fenced_done[i] == n.incarnation {
                continue;
            }
            let node = &config.nodes[i].name;
            let fenced = async {
                let session = logins.open(config, i).await?;
                session.fence().await
            };
            match fenced.await {
                Ok(ended) => {
                    metrics::action("fence", true);
                    self.fenced_done[i] = n.incarnation;
                    tracing::error!(%node, timeline = n.timeline, client_backends_ended = ended, "a fenced old leader is up as a primary: made read-only; it must rejoin as a follower of the leader");
                }
                Err(e) => {
                    metrics::action("fence", false);
                    tracing::error!(%node, error = %e, "could not make a fenced primary read-only; it is still never routed to");
                    self.fenced_done[i] = n.incarnation; // retried at its next incarnation, not every tick
                }
            }
        }
    }

    /// A follower that came back after a failover still pointing elsewhere is pointed at the
    /// leader, once per incarnation and epoch (a node whose history forked will not stream and
    /// stays out of rotation).
    async fn repoint_strays(&mut self, config: &Config, snapshot: &Snapshot) {
        let logins = &*self.logins.clone();
        let Some(leader) = snapshot.leader else { return };
        for (i, n) in snapshot.nodes.iter().enumerate() {
            let stray = matches!(snapshot.idle.get(i), Some(Some(crate::topology::Idle::Forked)));
            let key = (n.incarnation, snapshot.intent.epoch);
            if !stray || snapshot.fenced(i) || self.repointed[i] == key {
                continue;
            }
            self.repointed[i] = key;
            let repointed = async {
                let session = logins.open(config, i).await?;
                session.repoint(config, &config.nodes[leader]).await
            };
            let node = &config.nodes[i].name;
            match repointed.await {
                Ok(()) => {
                    metrics::action("repoint", true);
                    tracing::warn!(%node, leader = %config.nodes[leader].name, "a follower of another primary or timeline was pointed at the leader");
                }
                Err(e) => {
                    metrics::action("repoint", false);
                    tracing::warn!(%node, error = %e, "could not point a stray follower at the leader");
                }
            }
        }
    }

    /// A node fenced since the last look (confirmed dead, or a primary beside the leader) loses
    /// every server connection at once: a unit in flight on it gets class 08, never an
    /// acknowledgement from a node that must not write.
    fn cut_newly_fenced(&mut self, shared: &Shared, snapshot: &Snapshot) {
        for i in 0..self.was_fenced.len() {
            let fenced = snapshot.fenced(i);
            if fenced && !self.was_fenced[i] {
                shared
                    .pools
                    .abort_node(i, "it was fenced (a failover replaced it as leader, or it is a second primary)");
            }
            self.was_fenced[i] = fenced;
        }
    }

    /// Checks once per node, at its first answer, that the failover login may do its work.
    async fn check_permissions(&mut self, config: &Config, snapshot: &Snapshot) {
        let logins = &*self.logins.clone();
        for (i, n) in snapshot.nodes.iter().enumerate() {
            if self.checked[i] || !n.up {
                continue;
            }
            self.checked[i] = true;
            let node = &config.nodes[i].name;
            let user = config.failover_login().0;
            let checked = async {
                let session = logins.open(config, i).await?;
                Ok::<_, crate::topology::actions::ActionError>((
                    session.missing_permissions().await?,
                    session.wal_sender_timeout().await?,
                ))
            };
            let checked = checked.await.map(|(missing, sender_timeout)| {
                let vouches = !sender_timeout.is_zero() && sender_timeout <= config.failover.timeout;
                if !vouches {
                    let (sender, failover) = (humantime::format_duration(sender_timeout), humantime::format_duration(config.failover.timeout));
                    tracing::warn!(%node, wal_sender_timeout = %sender, failover_timeout = %failover, "wal_sender_timeout is above failover.timeout: an idle leader pings its followers too rarely for them to vouch for it, so a pgcausal cut off from a healthy leader may fail over; set wal_sender_timeout <= failover.timeout");
                }
                missing
            });
            match checked {
                Ok(missing) if missing.is_empty() => {
                    tracing::debug!(%node, %user, "failover login may promote, repoint and fence")
                }
                Ok(missing) => {
                    tracing::error!(%node, %user, missing = %missing.join("; "), "the failover login lacks permissions a failover needs (see the README's grants)")
                }
                Err(e) => tracing::error!(%node, %user, error = %e, "could not check the failover login's permissions"),
            }
        }
    }

    /// PROMOTE from the admin console, taken only once the leader is confirmed dead; SWITCHOVER,
    /// only while all is healthy.
    fn take_order(&mut self, order: Order) {
        let refuse = |order: Order, why: &str| {
            let _ = order.reply.send(Err(why.to_string()));
        };
        if let failover::Request::Switchover { .. } = order.request {
            return match self.phase {
                Phase::Healthy if self.switchover.is_none() => self.switchover = Some(order),
                Phase::Healthy => refuse(order, "a switchover is already under way"),
                phase => {
                    refuse(order, &format!("a failover is under way (phase {}): see SHOW FAILOVERS", phase.name()))
                }
            };
        }
        match self.phase {
            Phase::Confirmed if self.order.is_none() => {
                self.next_check = Instant::now();
                self.order = Some(order);
            }
            Phase::Healthy => refuse(order, "the leader is up: nothing to fail over (a planned switchover is SWITCHOVER, not PROMOTE)"),
            Phase::Suspect => refuse(order, "the leader is suspect but not confirmed dead yet (failover.timeout, and no follower may still receive from it)"),
            _ => refuse(order, "a failover is already under way"),
        }
    }
}

/// Up standbys, in config order.
fn standbys(snapshot: &Snapshot) -> impl Iterator<Item = usize> + '_ {
    (0..snapshot.nodes.len()).filter(|&i| snapshot.nodes[i].up && snapshot.nodes[i].role == Role::Standby)
}
