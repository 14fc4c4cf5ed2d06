//! Where a cluster keeps its blocks: the volumes behind its keep services, and the
//! rule by which replicas are counted, as keep-balance counts them (issue 13).
//!
//! Each keepstore's `/mounts` (§5.7) names its volumes. A volume is one *device*,
//! known by its UUID, however many keepstores mount it (`AccessViaHosts`): a block on
//! it is one replica, or `Replication` of them for a bucket that keeps its own
//! copies, in each of the volume's storage classes. keep-balance tells volumes apart
//! by that UUID too (`services/keep-balance/balance.go`). Each device is indexed once
//! (`/mounts/{uuid}/blocks`), through the first keepstore that mounts it.
//!
//! Where `/mounts` cannot be read (a keepstore too old to have it), every keep
//! service counts as one device of one replica in every class, and is indexed whole
//! (`/index`); through a keepproxy the services cannot be told apart at all, and a
//! block the proxy lists counts as present (keepproxy makes the copies, §6.5).

use std::fmt;

use anyhow::{Result, bail};
use keep_client::{Error as KeepError, KeepClient, Mount};

/// A set of storage classes, as bits over [`Topology::class_names`] (at most 64).
pub type ClassSet = u64;

/// Every class, for devices whose classes are unknown.
pub const ALL_CLASSES: ClassSet = u64::MAX;

/// One device: a volume (or, by the per-service rule, a whole keep service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The volume UUID (or the service UUID).
    pub id: String,
    /// Replicas a block on it counts for.
    pub replication: u32,
    /// Its storage classes.
    pub classes: ClassSet,
    /// Whether some keepstore that mounts it writes to it (and is not read-only).
    pub writable: bool,
    /// The services (indexes) that mount it, in service order.
    pub services: Vec<u16>,
}

/// How replicas are counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// By volume, from every keepstore's `/mounts`: replicas are the summed
    /// `Replication` of the distinct volumes holding a block, per storage class.
    Mounts,
    /// One replica per keep service that lists a block, classes unknown: `/mounts`
    /// could not be read (the reason).
    PerService(String),
    /// Through a keepproxy: a block listed at all is present.
    Proxy,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Mounts => f.write_str(
                "by volume (from /mounts): the replication of each distinct volume holding a block, per storage class",
            ),
            Rule::PerService(why) => write!(
                f,
                "one replica per keep service listing a block, storage classes unknown ({why})"
            ),
            Rule::Proxy => f.write_str("through a keepproxy: a block listed at all is present"),
        }
    }
}

/// The devices of one cluster.
#[derive(Debug, Clone)]
pub struct Topology {
    /// How replicas are counted.
    pub rule: Rule,
    /// The devices.
    pub devices: Vec<Device>,
    /// Names of the class bits (bit `i` is `class_names[i]`).
    pub class_names: Vec<String>,
    /// Services whose `/mounts` could not be reached at all (connection failed):
    /// their volumes are unknown; the scan skips them and the report names them.
    pub unreachable: Vec<u16>,
}

impl Topology {
    /// Asks every keep service of `client` for its mounts, at once.
    ///
    /// # Errors
    /// A refused token (`/mounts` needs the SystemRootToken), more than 64 storage
    /// classes, or no service that answers.
    pub async fn discover(client: &KeepClient) -> Result<Topology> {
        let services = client.services();
        if client.has_proxy() {
            return Ok(Topology::per_service(client, Rule::Proxy));
        }
        let answers = futures::future::join_all(services.iter().map(|s| client.mounts(s))).await;
        let mut mounts: Vec<(u16, Vec<Mount>)> = Vec::new();
        let mut unreachable = Vec::new();
        let mut refused = None;
        for (i, (svc, answer)) in services.iter().zip(answers).enumerate() {
            let i = i as u16;
            match answer {
                Ok(m) => mounts.push((i, m)),
                Err(e @ KeepError::Connect { .. }) => {
                    unreachable.push(i);
                    refused.get_or_insert(e);
                }
                // No such route: a keepstore too old to have /mounts, or not a
                // keepstore. Count by service for the whole cluster, so that no block
                // counts twice.
                Err(KeepError::Http { status, .. }) if matches!(status, 400 | 404 | 405) => {
                    tracing::warn!(
                        "{} has no /mounts (HTTP {status}); counting one replica per keep service",
                        svc.uuid
                    );
                    let why = format!("{} has no /mounts: HTTP {status}", svc.uuid);
                    return Ok(Topology::per_service(client, Rule::PerService(why)));
                }
                // A refused token, or a service that keeps failing: as fatal as a
                // failed index, and for the same reason.
                Err(e) => bail!("{e}"),
            }
        }
        if mounts.is_empty() {
            let e = refused.map_or_else(String::new, |e| format!(": {e}"));
            bail!("no keep service could be reached{e}; check the services and the network");
        }
        let mut t = Topology {
            rule: Rule::Mounts,
            devices: Vec::new(),
            class_names: Vec::new(),
            unreachable,
        };
        for (i, list) in mounts {
            let read_only_service = services[usize::from(i)].read_only;
            for m in list {
                let classes = t.class_set(&m.storage_classes)?;
                let writable = m.allow_write && !read_only_service;
                match t.devices.iter_mut().find(|d| d.id == m.uuid) {
                    Some(d) => {
                        d.services.push(i);
                        d.writable |= writable;
                    }
                    None => t.devices.push(Device {
                        id: m.uuid,
                        replication: m.replication.max(1),
                        classes,
                        writable,
                        services: vec![i],
                    }),
                }
            }
        }
        Ok(t)
    }

    /// The topology of a side whose indexes are not read (`--from-list` source).
    pub fn unread() -> Topology {
        Topology {
            rule: Rule::PerService("not read".into()),
            devices: Vec::new(),
            class_names: Vec::new(),
            unreachable: Vec::new(),
        }
    }

    /// Every service a device of one replica in every class.
    fn per_service(client: &KeepClient, rule: Rule) -> Topology {
        let devices = client
            .services()
            .iter()
            .enumerate()
            .map(|(i, s)| Device {
                id: s.uuid.clone(),
                replication: 1,
                classes: ALL_CLASSES,
                writable: !s.read_only,
                services: vec![i as u16],
            })
            .collect();
        Topology {
            rule,
            devices,
            class_names: Vec::new(),
            unreachable: Vec::new(),
        }
    }

    /// The bits of `names`, adding new names.
    ///
    /// # Errors
    /// More than 64 distinct classes.
    pub fn class_set(&mut self, names: &[String]) -> Result<ClassSet> {
        let mut set = 0;
        for n in names {
            let bit = match self.class_names.iter().position(|c| c == n) {
                Some(b) => b,
                None => {
                    if self.class_names.len() == 64 {
                        bail!("more than 64 storage classes: keep-rsync counts at most 64");
                    }
                    self.class_names.push(n.clone());
                    self.class_names.len() - 1
                }
            };
            set |= 1 << bit;
        }
        Ok(set)
    }

    /// Whether `/mounts` told the devices apart (else each service is one device).
    pub fn by_volume(&self) -> bool {
        self.rule == Rule::Mounts
    }

    /// Replicas the writable devices can hold in class `class` (all of them when
    /// `class` is `None`).
    pub fn writable_replication(&self, class: Option<ClassSet>) -> u64 {
        self.devices
            .iter()
            .filter(|d| d.writable && class.is_none_or(|c| d.classes & c != 0))
            .map(|d| u64::from(d.replication))
            .sum()
    }

    /// Replicas the writable devices can still take in every class of `classes` (all
    /// classes when 0), leaving out devices reachable only through `full` services:
    /// the smallest over the classes.
    pub fn room_without(&self, full: &[usize], classes: ClassSet) -> u64 {
        let open = |d: &Device| d.services.iter().any(|&s| !full.contains(&usize::from(s)));
        let room = |class: Option<ClassSet>| -> u64 {
            self.devices
                .iter()
                .filter(|d| d.writable && open(d) && class.is_none_or(|c| d.classes & c != 0))
                .map(|d| u64::from(d.replication))
                .sum()
        };
        if classes == 0 {
            return room(None);
        }
        (0..64)
            .map(|b| 1u64 << b)
            .filter(|bit| classes & bit != 0)
            .map(|bit| room(Some(bit)))
            .min()
            .unwrap_or(0)
    }

    /// For each service, the replicas one PUT is expected to store there, for a block
    /// wanted in `classes`: the largest replication among its writable volumes in
    /// those classes (a keepstore writes one volume per class asked for, §5.5, and a
    /// high guess only makes the writer wait, never over-replicate).
    pub fn expected_per_service(&self, services: usize, classes: ClassSet) -> Vec<usize> {
        let mut e = vec![1usize; services];
        if self.rule != Rule::Mounts {
            return e;
        }
        for d in &self.devices {
            if d.writable && d.classes & classes != 0 {
                for &s in &d.services {
                    let x = &mut e[usize::from(s)];
                    *x = (*x).max(d.replication as usize);
                }
            }
        }
        e
    }

    /// For each of `services` services, the others that mount one of its writable
    /// volumes; `None` when no writable volume is shared (the common case).
    pub fn sharing(&self, services: usize) -> Option<Vec<Vec<usize>>> {
        let mut out = vec![Vec::new(); services];
        let mut any = false;
        for d in self
            .devices
            .iter()
            .filter(|d| d.writable && d.services.len() > 1)
        {
            any = true;
            for &a in &d.services {
                for &b in &d.services {
                    let (a, b) = (usize::from(a), usize::from(b));
                    if a != b && !out[a].contains(&b) {
                        out[a].push(b);
                    }
                }
            }
        }
        any.then_some(out)
    }

    /// The services that mount any of `devices`: a block on them is not sent there.
    pub fn services_of(&self, devices: &[u16]) -> Vec<usize> {
        let mut v: Vec<usize> = devices
            .iter()
            .flat_map(|&d| self.devices[usize::from(d)].services.iter())
            .map(|&s| usize::from(s))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The names of the classes in `set`.
    pub fn names(&self, set: ClassSet) -> Vec<String> {
        self.class_names
            .iter()
            .enumerate()
            .filter(|(i, _)| set & (1 << i) != 0)
            .map(|(_, n)| n.clone())
            .collect()
    }
}
