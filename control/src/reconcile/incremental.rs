//! The incremental compile: objects → specs for only the Services a change
//! touches.
//!
//! The whole compile ([`crate::config::load_objects`]) reads every object
//! on every change: seconds at 100k services for one endpoint. This cache
//! keeps what each Service compiled to ([`ServiceUnit`]) and indexes that
//! say which Services an object feeds:
//!
//! * an EndpointSlice feeds the Service its `kubernetes.io/service-name`
//!   label names (before and after the change: a relabelled slice moves);
//! * an Endpoints object feeds the Service of its own name;
//! * a Pod feeds the Services of its namespace whose selector matches its
//!   labels, old or new;
//! * a Service feeds itself, and, when what it asks of the node-port table
//!   changed, every Service whose node ports that moves.
//!
//! A store batch gives the keys it changed; [`Incremental::apply`] maps
//! them to the affected Services, recompiles just those with the same code
//! the whole compile runs per Service ([`CheckedService::compile`]),
//! checks what looks across Services (a front end claimed twice: a
//! front-end → owner map; endpoint sources without their Service; the
//! node-port table, rerun over the Services that ask it something) and
//! returns the specs that changed ([`Delta`]) for
//! [`ServiceTable::build_changed`](sluice_dataplane::service::ServiceTable::build_changed).
//! [`Incremental::config`] is the whole [`Config`] the whole compile would
//! give; `incremental_tests.rs` checks that after any sequence of batches.
//!
//! A batch that does not compile changes nothing here (the store refuses
//! it too): everything is computed before anything is written.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use hashbrown::HashMap;
use serde_json::Value;
use sluice_dataplane::service::{ServiceSpec, TableError, VipKey};

use crate::check::ServiceCheck;
use crate::config::unit::{
    self, assign_node_ports, Assigned, CheckedService, NodePortReq, ServiceUnit,
};
use crate::config::{CompileCtx, Config, ConfigError, ObjectsSummary, Waiting};
use crate::store::{Key, Kind, Objects};

/// (namespace, name).
type Name = (String, String);

/// The origin errors name.
const ORIGIN: &str = "store";

/// One Service's cached compile.
struct Entry {
    unit: ServiceUnit,
    selector: BTreeMap<String, String>,
}

/// Who claims a front end.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owner {
    Service(Name),
    Virtual(Name),
}

/// What one batch changed in the compiled specs.
#[derive(Debug, Default)]
pub struct Delta {
    /// Front ends that left.
    pub removed: Vec<VipKey>,
    /// Specs of the recompiled Services and VirtualServices (new, changed
    /// or unchanged: the table builder shares the unchanged ones).
    pub upserted: Vec<ServiceSpec>,
    /// Services or VirtualServices recompiled.
    pub recompiled: usize,
    /// Some Service's DNS record set changed (the zone must be rebuilt).
    pub dns_changed: bool,
    /// Some Service's `healthCheckNodePort` server changed.
    pub health_changed: bool,
    /// A Service or VirtualService with real-server checks was recompiled
    /// (the checks' targets follow its endpoints).
    pub checks_changed: bool,
}

impl Delta {
    /// Whether publishing this change needs the whole config: for the DNS
    /// zone, the health-check servers or the checks' targets, which are
    /// built from every Service. Most endpoint changes need none of them,
    /// and then the config (a clone of every spec) is never built.
    pub fn needs_config(&self) -> bool {
        self.dns_changed || self.health_changed || self.checks_changed
    }

    /// Notes what a Service's recompile changed besides its specs (`None`:
    /// absent before or after).
    fn note_unit(&mut self, old: Option<&ServiceUnit>, new: Option<&ServiceUnit>) {
        let dns = |u: Option<&ServiceUnit>| u.map(|u| u.dns.clone());
        let health = |u: Option<&ServiceUnit>| u.and_then(|u| u.health_check.clone());
        let checked = |u: Option<&ServiceUnit>| u.is_some_and(|u| !u.checks.is_empty());
        self.dns_changed |= dns(old) != dns(new);
        self.health_changed |= health(old) != health(new);
        self.checks_changed |= checked(old) || checked(new);
    }
}

/// The cache. Built by [`Incremental::build`], kept current by
/// [`Incremental::apply`].
pub struct Incremental {
    ctx: CompileCtx,
    services: BTreeMap<Name, Entry>,
    virtuals: BTreeMap<Name, (ServiceSpec, Option<ServiceCheck>)>,
    /// EndpointSlice → the Service it names.
    slice_owner: HashMap<Name, String>,
    /// Service → the names of the slices that name it.
    slices_of: HashMap<Name, BTreeSet<String>>,
    /// Endpoints objects present.
    endpoints: HashSet<Name>,
    /// Pod → its labels.
    pod_labels: HashMap<Name, BTreeMap<String, String>>,
    /// Namespace → the Services in it with a selector.
    selecting: HashMap<String, BTreeSet<String>>,
    /// The node-port requests that ask something, in Service order.
    node_reqs: BTreeMap<Name, NodePortReq>,
    /// Their answers.
    assigned: HashMap<Name, Assigned>,
    /// Front end → who claims it.
    vip_owner: HashMap<VipKey, Owner>,
    headless: usize,
}

/// A recompiled Service: its unit, selector and node-port request.
type Recompiled = (ServiceUnit, BTreeMap<String, String>, NodePortReq);

/// What [`Incremental::apply`] computed before writing anything.
struct Plan {
    /// Recompiled Services: None when gone.
    units: BTreeMap<Name, Option<Recompiled>>,
    virtuals: BTreeMap<Name, Option<(ServiceSpec, Option<ServiceCheck>)>>,
    slices: BTreeMap<Name, Option<String>>,
    pods: BTreeMap<Name, Option<BTreeMap<String, String>>>,
    endpoints: BTreeMap<Name, bool>,
    /// Per Service, the slices that stop and start naming it: grouped
    /// once per batch, so that a batch of every slice (the first build)
    /// stays linear.
    slice_moves: HashMap<Name, SliceMoves>,
    assigned: Option<HashMap<Name, Assigned>>,
}

/// The slices that leave and join one Service in a batch.
#[derive(Default)]
struct SliceMoves {
    left: Vec<String>,
    joined: Vec<String>,
}

fn name_of(k: &Key) -> Name {
    (k.namespace.clone(), k.name.clone())
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn object<'o>(objects: &'o Objects, kind: Kind, n: &Name) -> Option<&'o Value> {
    objects.get(&Key::new(kind, &n.0, &n.1)).map(|s| &*s.object)
}

impl Incremental {
    /// An empty cache for `ctx`.
    pub fn new(ctx: CompileCtx) -> Incremental {
        Incremental {
            ctx,
            services: BTreeMap::new(),
            virtuals: BTreeMap::new(),
            slice_owner: HashMap::new(),
            slices_of: HashMap::new(),
            endpoints: HashSet::new(),
            pod_labels: HashMap::new(),
            selecting: HashMap::new(),
            node_reqs: BTreeMap::new(),
            assigned: HashMap::new(),
            vip_owner: HashMap::new(),
            headless: 0,
        }
    }

    /// The cache for `objects`: every object compiled, as one batch that
    /// changed them all.
    ///
    /// # Errors
    /// As the whole compile.
    pub fn build(objects: &Objects, ctx: CompileCtx) -> Result<Incremental, ConfigError> {
        let mut inc = Incremental::new(ctx);
        let all: BTreeSet<Key> = objects.keys().cloned().collect();
        inc.apply(objects, &all)?;
        Ok(inc)
    }

    /// The context it compiles for (a change of it needs a whole compile).
    pub fn ctx(&self) -> &CompileCtx {
        &self.ctx
    }

    /// Brings the cache to `objects`, the store after a batch that changed
    /// the keys `changed`, recompiling only the Services they feed.
    ///
    /// # Errors
    /// The [`ConfigError`] the whole compile would give for `objects`
    /// (perhaps another one, when `objects` holds several faults); the
    /// cache is unchanged then.
    pub fn apply(
        &mut self,
        objects: &Objects,
        changed: &BTreeSet<Key>,
    ) -> Result<Delta, ConfigError> {
        let (lo, hi) = self.ctx.nodeport_range;
        if lo == 0 || lo > hi {
            return Err(ConfigError::Context(format!(
                "node-port range {lo}-{hi} is empty or starts at 0"
            )));
        }
        let plan = self.plan(objects, changed)?;
        Ok(self.commit(plan))
    }

    /// Computes the batch's effect without writing anything.
    fn plan(&self, objects: &Objects, changed: &BTreeSet<Key>) -> Result<Plan, ConfigError> {
        let mut affected: BTreeSet<Name> = BTreeSet::new();
        let mut plan = Plan {
            units: BTreeMap::new(),
            virtuals: BTreeMap::new(),
            slices: BTreeMap::new(),
            pods: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            slice_moves: HashMap::new(),
            assigned: None,
        };
        for k in changed {
            let n = name_of(k);
            let now = objects.get(k).map(|s| &*s.object);
            match k.kind {
                Kind::Service => {
                    affected.insert(n);
                }
                Kind::Endpoints => {
                    if let Some(o) = now {
                        unit::check_object(o, ORIGIN, &self.ctx)?;
                    }
                    plan.endpoints.insert(n.clone(), now.is_some());
                    affected.insert(n);
                }
                Kind::EndpointSlice => {
                    let owner = match now {
                        Some(o) => {
                            unit::check_object(o, ORIGIN, &self.ctx)?;
                            unit::slice_service(o).map(str::to_owned)
                        }
                        None => None,
                    };
                    if let Some(old) = self.slice_owner.get(&n) {
                        affected.insert((n.0.clone(), old.clone()));
                    }
                    if let Some(new) = &owner {
                        affected.insert((n.0.clone(), new.clone()));
                    }
                    plan.slices.insert(n, owner);
                }
                Kind::Pod => {
                    let labels = match now {
                        Some(o) => {
                            unit::check_object(o, ORIGIN, &self.ctx)?;
                            Some(unit::labels(o))
                        }
                        None => None,
                    };
                    let old = self.pod_labels.get(&n);
                    for s in self.selecting.get(&n.0).into_iter().flatten() {
                        let sel = &self.services[&(n.0.clone(), s.clone())].selector;
                        if old.is_some_and(|l| matches(sel, l))
                            || labels.as_ref().is_some_and(|l| matches(sel, l))
                        {
                            affected.insert((n.0.clone(), s.clone()));
                        }
                    }
                    plan.pods.insert(n, labels);
                }
                Kind::VirtualService => {
                    let v = match now {
                        Some(o) => Some(unit::compile_virtual(o, &Arc::from(ORIGIN))?),
                        None => None,
                    };
                    plan.virtuals.insert(n, v);
                }
            }
        }
        plan.slice_moves = self.slice_moves(&plan.slices);
        // A Service with a selector changed in this batch reads the Pods
        // after it; those of unchanged Services were handled above.
        let mut checked: BTreeMap<Name, CheckedService<'_>> = BTreeMap::new();
        for n in &affected {
            if let Some(o) = object(objects, Kind::Service, n) {
                checked.insert(n.clone(), CheckedService::check(o, ORIGIN, &self.ctx)?);
            }
        }
        plan.assigned = self.node_ports(&affected, &checked)?;
        if let Some(assigned) = &plan.assigned {
            // Services whose node ports moved are recompiled too.
            for (n, a) in assigned {
                if self.assigned.get(n) != Some(a) && !affected.contains(n) {
                    let o = object(objects, Kind::Service, n).ok_or_else(|| {
                        ConfigError::Context(format!("Service {}/{} vanished", n.0, n.1))
                    })?;
                    checked.insert(n.clone(), CheckedService::check(o, ORIGIN, &self.ctx)?);
                    affected.insert(n.clone());
                }
            }
        }
        for n in &affected {
            let Some(svc) = checked.remove(n) else {
                // Its endpoint sources, if any, wait for it (as in Kubernetes).
                plan.units.insert(n.clone(), None);
                continue;
            };
            let req = svc.node_ports();
            let assigned = if req.is_empty() {
                req.none()
            } else {
                plan.assigned
                    .as_ref()
                    .and_then(|m| m.get(n))
                    .or_else(|| self.assigned.get(n))
                    .cloned()
                    .unwrap_or_else(|| req.none())
            };
            let selector = svc.selector().clone();
            let slices: Vec<&Value> = self
                .slices_after(n, &plan)
                .iter()
                .filter_map(|s| object(objects, Kind::EndpointSlice, &(n.0.clone(), s.clone())))
                .collect();
            let pods = objects
                .range(Key::new(Kind::Pod, &n.0, "")..)
                .take_while(|(k, _)| k.kind == Kind::Pod && k.namespace == n.0)
                .map(|(_, s)| &*s.object);
            let unit = svc.compile(object(objects, Kind::Endpoints, n), slices, pods, &assigned)?;
            plan.units.insert(n.clone(), Some((unit, selector, req)));
        }
        self.check_vips(&plan)?;
        Ok(plan)
    }

    /// Groups the batch's slice changes by the Service they leave and the
    /// one they join.
    fn slice_moves(&self, slices: &BTreeMap<Name, Option<String>>) -> HashMap<Name, SliceMoves> {
        let mut moves: HashMap<Name, SliceMoves> = HashMap::new();
        for (s, owner) in slices {
            if let Some(old) = self.slice_owner.get(s) {
                let m = moves.entry((s.0.clone(), old.clone())).or_default();
                m.left.push(s.1.clone());
            }
            if let Some(new) = owner {
                let m = moves.entry((s.0.clone(), new.clone())).or_default();
                m.joined.push(s.1.clone());
            }
        }
        moves
    }

    /// The slices naming Service `n` after the batch.
    fn slices_after(&self, n: &Name, plan: &Plan) -> BTreeSet<String> {
        let mut out = self.slices_of.get(n).cloned().unwrap_or_default();
        if let Some(m) = plan.slice_moves.get(n) {
            for s in &m.left {
                out.remove(s);
            }
            out.extend(m.joined.iter().cloned());
        }
        out
    }

    /// The node-port answers after the batch, when a request changed
    /// (None: every answer stays).
    fn node_ports(
        &self,
        affected: &BTreeSet<Name>,
        checked: &BTreeMap<Name, CheckedService<'_>>,
    ) -> Result<Option<HashMap<Name, Assigned>>, ConfigError> {
        let mut next: BTreeMap<&Name, NodePortReq> = BTreeMap::new();
        let mut moved = false;
        for n in affected {
            let new = checked
                .get(n)
                .map(CheckedService::node_ports)
                .filter(|r| !r.is_empty());
            moved |= new.as_ref() != self.node_reqs.get(n);
            if let Some(r) = new {
                next.insert(n, r);
            }
        }
        if !moved {
            return Ok(None);
        }
        for (n, r) in &self.node_reqs {
            if !affected.contains(n) {
                next.insert(n, r.clone());
            }
        }
        let answers =
            assign_node_ports(&Arc::from(ORIGIN), self.ctx.nodeport_range, next.values())?;
        Ok(Some(
            next.keys().map(|n| (*n).clone()).zip(answers).collect(),
        ))
    }

    /// Refuses a front end claimed twice after the batch.
    fn check_vips(&self, plan: &Plan) -> Result<(), ConfigError> {
        let mut leaving: HashSet<VipKey> = HashSet::new();
        for n in plan.units.keys() {
            if let Some(e) = self.services.get(n) {
                leaving.extend(e.unit.specs.iter().map(|s| s.vip));
            }
        }
        for n in plan.virtuals.keys() {
            if let Some((s, _)) = self.virtuals.get(n) {
                leaving.insert(s.vip);
            }
        }
        let mut fresh: HashMap<VipKey, &str> = HashMap::new();
        let new_specs = plan
            .units
            .values()
            .flatten()
            .flat_map(|(u, _, _)| &u.specs)
            .chain(plan.virtuals.values().flatten().map(|(s, _)| s));
        for s in new_specs {
            let first = match fresh.insert(s.vip, &s.name) {
                Some(first) => Some(first.to_owned()),
                None if !leaving.contains(&s.vip) => self
                    .vip_owner
                    .get(&s.vip)
                    .map(|o| self.spec_name(o, &s.vip)),
                None => None,
            };
            if let Some(first) = first {
                return Err(ConfigError::Table(TableError::DuplicateVip {
                    vip: s.vip,
                    first,
                    second: s.name.clone(),
                }));
            }
        }
        Ok(())
    }

    /// The name of the spec `o` has on front end `vip`.
    fn spec_name(&self, o: &Owner, vip: &VipKey) -> String {
        match o {
            Owner::Service(n) => self
                .services
                .get(n)
                .and_then(|e| e.unit.specs.iter().find(|s| s.vip == *vip))
                .map(|s| s.name.clone()),
            Owner::Virtual(n) => self.virtuals.get(n).map(|(s, _)| s.name.clone()),
        }
        .unwrap_or_default()
    }

    /// Writes a plan; returns the specs that changed.
    fn commit(&mut self, plan: Plan) -> Delta {
        let mut delta = Delta {
            recompiled: plan.units.len() + plan.virtuals.len(),
            ..Delta::default()
        };
        let mut left: HashSet<VipKey> = HashSet::new();
        let mut olds: HashMap<Name, Entry> = HashMap::new();
        // Every old front end out first, then the new ones in: two
        // Services may swap front ends in one batch.
        for n in plan.units.keys() {
            if let Some(old) = self.services.remove(n) {
                for s in &old.unit.specs {
                    self.vip_owner.remove(&s.vip);
                    left.insert(s.vip);
                }
                self.headless -= usize::from(old.unit.headless);
                if let Some(set) = self.selecting.get_mut(&n.0) {
                    set.remove(&n.1);
                }
                olds.insert(n.clone(), old);
            }
            self.node_reqs.remove(n);
        }
        for n in plan.virtuals.keys() {
            if let Some((old, check)) = self.virtuals.remove(n) {
                self.vip_owner.remove(&old.vip);
                left.insert(old.vip);
                delta.checks_changed |= check.is_some();
            }
        }
        for (n, new) in plan.units {
            let old = olds.get(&n).map(|e| &e.unit);
            let Some((unit, selector, req)) = new else {
                delta.note_unit(old, None);
                continue;
            };
            delta.note_unit(old, Some(&unit));
            for s in &unit.specs {
                self.vip_owner.insert(s.vip, Owner::Service(n.clone()));
                delta.upserted.push(s.clone());
            }
            self.headless += usize::from(unit.headless);
            if !selector.is_empty() {
                self.selecting
                    .entry(n.0.clone())
                    .or_default()
                    .insert(n.1.clone());
            }
            if !req.is_empty() {
                self.node_reqs.insert(n.clone(), req);
            }
            self.services.insert(n, Entry { unit, selector });
        }
        for (n, new) in plan.virtuals {
            if let Some((spec, check)) = new {
                delta.checks_changed |= check.is_some();
                self.vip_owner.insert(spec.vip, Owner::Virtual(n.clone()));
                delta.upserted.push(spec.clone());
                self.virtuals.insert(n, (spec, check));
            }
        }
        if let Some(a) = plan.assigned {
            self.assigned = a;
        }
        for (n, owner) in plan.slices {
            if let Some(old) = self.slice_owner.remove(&n) {
                let k = (n.0.clone(), old);
                if let Some(set) = self.slices_of.get_mut(&k) {
                    set.remove(&n.1);
                    if set.is_empty() {
                        self.slices_of.remove(&k);
                    }
                }
            }
            if let Some(o) = owner {
                self.slices_of
                    .entry((n.0.clone(), o.clone()))
                    .or_default()
                    .insert(n.1.clone());
                self.slice_owner.insert(n, o);
            }
        }
        for (n, labels) in plan.pods {
            match labels {
                Some(l) => self.pod_labels.insert(n, l),
                None => self.pod_labels.remove(&n),
            };
        }
        for (n, present) in plan.endpoints {
            if present {
                self.endpoints.insert(n);
            } else {
                self.endpoints.remove(&n);
            }
        }
        let upserted: HashSet<VipKey> = delta.upserted.iter().map(|s| s.vip).collect();
        delta.removed = left.into_iter().filter(|v| !upserted.contains(v)).collect();
        delta
    }

    /// The whole config, as the whole compile gives it: per Service in key
    /// order its specs, then the VirtualServices'.
    pub fn config(&self) -> Config {
        let mut cfg = Config {
            services: Vec::with_capacity(self.vip_owner.len()),
            dns: Vec::with_capacity(self.services.len()),
            health_checks: Vec::new(),
            checks: BTreeMap::new(),
            objects: self.summary(),
            waiting: self.waiting(),
        };
        for e in self.services.values() {
            cfg.services.extend(e.unit.specs.iter().cloned());
            cfg.dns.push(e.unit.dns.clone());
            cfg.health_checks.extend(e.unit.health_check.clone());
            cfg.checks.extend(e.unit.checks.iter().cloned());
        }
        for (spec, check) in self.virtuals.values() {
            if let Some(c) = check {
                cfg.checks.insert(spec.name.clone(), c.clone());
            }
            cfg.services.push(spec.clone());
        }
        cfg
    }

    /// How many endpoint sources wait for their Service (without listing
    /// them: a log line's count).
    fn waiting_count(&self) -> usize {
        let absent =
            |ns: &str, svc: &str| !self.services.contains_key(&(ns.to_owned(), svc.to_owned()));
        let endpoints = self.endpoints.iter().filter(|n| absent(&n.0, &n.1)).count();
        let slices = self
            .slice_owner
            .iter()
            .filter(|(s, o)| absent(&s.0, o))
            .count();
        endpoints + slices
    }

    /// The Endpoints, then the EndpointSlices, whose Service is absent, each
    /// in key order (as the whole compile lists them).
    pub fn waiting(&self) -> Vec<Waiting> {
        let absent = |svc: &Name| !self.services.contains_key(svc);
        let mut endpoints: Vec<&Name> = self.endpoints.iter().filter(|n| absent(n)).collect();
        endpoints.sort();
        let mut slices: Vec<(&Name, &String)> = self
            .slice_owner
            .iter()
            .filter(|(s, owner)| absent(&(s.0.clone(), (*owner).clone())))
            .collect();
        slices.sort();
        let name = |n: &Name| format!("{}/{}", n.0, n.1);
        let endpoints = endpoints.into_iter().map(|n| Waiting {
            kind: "Endpoints",
            object: name(n),
            service: name(n),
            line: 0,
        });
        let slices = slices.into_iter().map(|(s, owner)| Waiting {
            kind: "EndpointSlice",
            object: name(s),
            service: format!("{}/{owner}", s.0),
            line: 0,
        });
        endpoints.chain(slices).collect()
    }

    /// The counts of the objects compiled.
    pub fn summary(&self) -> ObjectsSummary {
        ObjectsSummary {
            services: self.services.len(),
            headless: self.headless,
            endpoints: self.endpoints.len(),
            endpoint_slices: self.slice_owner.len(),
            pods: self.pod_labels.len(),
            waiting: self.waiting_count(),
        }
    }

    /// Front ends compiled (Services' and VirtualServices').
    pub fn len(&self) -> usize {
        self.vip_owner.len()
    }

    /// Whether no front end is compiled.
    pub fn is_empty(&self) -> bool {
        self.vip_owner.is_empty()
    }
}
