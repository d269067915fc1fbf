//! Where this process sits in a distributed job: rank, world size, local rank, and where the
//! rendezvous store lives — from SLURM (`srun`), from torchrun-style variables, or a single
//! process by default.
use std::collections::HashMap;
use std::fmt;

/// Port of the rendezvous store when nothing else decides it (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Under SLURM without `MASTER_PORT`, the port is `SLURM_PORT_BASE + job id % SLURM_PORT_SPAN`,
/// so concurrent jobs sharing a node are unlikely to collide and every rank of one job agrees.
/// The range 20000..29999 stays below Linux's ephemeral ports (32768+).
pub const SLURM_PORT_BASE: u16 = 20000;
/// See [`SLURM_PORT_BASE`].
pub const SLURM_PORT_SPAN: u64 = 10000;

/// What set the launch variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchSource {
    /// No launcher: one process, rank 0 of 1.
    Single,
    /// torchrun or any launcher exporting `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`,
    /// `MASTER_PORT`.
    Torchrun,
    /// An `srun` task of a SLURM job.
    Slurm {
        /// `SLURM_JOB_ID`, when set.
        job_id: Option<String>,
    },
}

/// The resolved layout of this process in the job. [`fmt::Display`] prints it for `--dry-run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Global rank, 0-based.
    pub rank: usize,
    /// Number of processes in the job.
    pub world_size: usize,
    /// Rank on this node; selects the GPU (`set_cuda_device(local_rank)`).
    pub local_rank: usize,
    /// Host of the rendezvous store (rank 0's node).
    pub master_addr: String,
    /// Port of the rendezvous store.
    pub master_port: u16,
    /// What set the variables.
    pub source: LaunchSource,
}

/// A launch variable that is missing, malformed or inconsistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// A variable does not parse.
    #[error("environment variable {var}={value:?}: expected {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should look like.
        expected: &'static str,
    },
    /// A variable needed by the others that are set is missing.
    #[error("environment variable {var} is not set, but {because}")]
    Missing {
        /// The missing variable.
        var: &'static str,
        /// Which variables imply it.
        because: &'static str,
    },
    /// The rank is not below the world size.
    #[error("rank {rank} is out of range for world size {world_size} ({rank_var}, {world_var})")]
    RankOutOfRange {
        /// The rank.
        rank: usize,
        /// The world size.
        world_size: usize,
        /// Variable that gave the rank.
        rank_var: &'static str,
        /// Variable that gave the world size.
        world_var: &'static str,
    },
}

impl LaunchEnv {
    /// One process: rank 0 of 1 on `127.0.0.1:29500`.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".to_owned(),
            master_port: DEFAULT_MASTER_PORT,
            source: LaunchSource::Single,
        }
    }

    /// Resolves the layout from the process environment; see [`LaunchEnv::from_vars`].
    pub fn from_env() -> Result<Self, LaunchError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Resolves the layout from explicit variables (for tests and tools).
    ///
    /// Precedence:
    /// 1. torchrun-style: `RANK` and `WORLD_SIZE` set → those, with `LOCAL_RANK` (default 0),
    ///    `MASTER_ADDR` (default `127.0.0.1`) and `MASTER_PORT` (default 29500). They win over
    ///    SLURM's because a launcher started inside an allocation sets them per process.
    /// 2. SLURM: `SLURM_PROCID` set and `SLURM_STEP_ID` set (an `srun` task, not the batch
    ///    shell) → `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; master = `MASTER_ADDR` or
    ///    the first host of `SLURM_JOB_NODELIST` (or `SLURM_NODELIST`); port = `MASTER_PORT` or
    ///    derived from `SLURM_JOB_ID` ([`SLURM_PORT_BASE`]).
    /// 3. Otherwise [`LaunchEnv::single`].
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, LaunchError> {
        Self::from_lookup(|k| vars.get(k).cloned())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, LaunchError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            return Self::torchrun(&get);
        }
        if get("SLURM_PROCID").is_some() && get("SLURM_STEP_ID").is_some() {
            return Self::slurm(&get);
        }
        Ok(Self::single())
    }

    fn torchrun(get: &impl Fn(&str) -> Option<String>) -> Result<Self, LaunchError> {
        const WHY: &str = "RANK or WORLD_SIZE is set (torchrun-style launch)";
        let rank = required(get, "RANK", WHY)?;
        let world_size = required(get, "WORLD_SIZE", WHY)?;
        check_rank(rank, world_size, "RANK", "WORLD_SIZE")?;
        let local_rank = optional_usize(get, "LOCAL_RANK")?.unwrap_or(0);
        let master_addr = get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".to_owned());
        let master_port = match get("MASTER_PORT") {
            Some(v) => parse_port("MASTER_PORT", &v)?,
            None => DEFAULT_MASTER_PORT,
        };
        Ok(Self {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            source: LaunchSource::Torchrun,
        })
    }

    fn slurm(get: &impl Fn(&str) -> Option<String>) -> Result<Self, LaunchError> {
        const WHY: &str = "SLURM_PROCID is set (srun task)";
        let rank = required(get, "SLURM_PROCID", WHY)?;
        let world_size = required(get, "SLURM_NTASKS", WHY)?;
        check_rank(rank, world_size, "SLURM_PROCID", "SLURM_NTASKS")?;
        let local_rank = required(get, "SLURM_LOCALID", WHY)?;
        let job_id = get("SLURM_JOB_ID").or_else(|| get("SLURM_JOBID"));
        let master_addr = match get("MASTER_ADDR") {
            Some(addr) => addr,
            None => {
                let (var, list) = match get("SLURM_JOB_NODELIST") {
                    Some(v) => ("SLURM_JOB_NODELIST", v),
                    None => ("SLURM_NODELIST", required_str(get, "SLURM_NODELIST", WHY)?),
                };
                first_host(&list).ok_or(LaunchError::Invalid {
                    var,
                    value: list.clone(),
                    expected: "a SLURM node list such as node[01-03,07],gpu5",
                })?
            }
        };
        let master_port = match (get("MASTER_PORT"), &job_id) {
            (Some(v), _) => parse_port("MASTER_PORT", &v)?,
            (None, Some(id)) => match id.parse::<u64>() {
                Ok(n) => SLURM_PORT_BASE + u16::try_from(n % SLURM_PORT_SPAN).unwrap_or(0),
                Err(_) => {
                    return Err(LaunchError::Invalid {
                        var: "SLURM_JOB_ID",
                        value: id.clone(),
                        expected: "a numeric job id (or set MASTER_PORT)",
                    })
                }
            },
            (None, None) => DEFAULT_MASTER_PORT,
        };
        Ok(Self {
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
            source: LaunchSource::Slurm { job_id },
        })
    }

    /// Whether more than one process takes part.
    pub fn is_distributed(&self) -> bool {
        self.world_size > 1
    }

    /// Whether this is rank 0 (hosts the store, writes checkpoints and logs).
    pub fn is_master(&self) -> bool {
        self.rank == 0
    }
}

/// How many CPU cores one process (rank) of the job may use, and where the number came from.
///
/// libtorch's intra-op pool, the loader workers and rayon's pool of a rank are sized from it, so
/// that ranks sharing a node do not oversubscribe its cores. Computed by
/// [`LaunchEnv::cpu_budget`]; [`fmt::Display`] prints it for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBudget {
    /// Cores this process may use, at least 1.
    pub cores: usize,
    /// Cores the operating system lets this process run on (affinity mask, cgroup quota).
    pub available: usize,
    /// What decided `cores`.
    pub source: CpuBudgetSource,
}

/// What decided a [`CpuBudget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CpuBudgetSource {
    /// An `srun` task: `SLURM_CPUS_PER_TASK` (what `--cpus-per-task` granted).
    SlurmCpusPerTask(usize),
    /// An `srun` task without `SLURM_CPUS_PER_TASK`: the available cores shared by the job's
    /// tasks on this node (`SLURM_STEP_TASKS_PER_NODE`, `SLURM_NTASKS_PER_NODE`, or all of
    /// `SLURM_NTASKS` when neither says).
    SlurmTasksOnNode(usize),
    /// A torchrun-style launch: the available cores shared by the processes on this node
    /// (`LOCAL_WORLD_SIZE`, else `WORLD_SIZE / GROUP_WORLD_SIZE`, else all of `WORLD_SIZE`).
    LocalWorldSize(usize),
    /// One process inside a SLURM allocation: `SLURM_CPUS_ON_NODE`.
    SlurmCpusOnNode(usize),
    /// One process: every available core.
    AllAvailable,
}

impl CpuBudget {
    /// Threads of libtorch's intra-op pool (`tch::set_num_threads`): every core of the budget.
    pub fn intra_op_threads(&self) -> usize {
        self.cores
    }

    /// Loader worker threads for a configured `data.num_workers`: at most `cores - 1` (one core
    /// stays with the training thread), at least 1 (the loader needs one), never more than asked.
    pub fn loader_workers(&self, configured: usize) -> usize {
        configured.min(self.cores.saturating_sub(1)).max(1)
    }
}

impl fmt::Display for CpuBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let available = self.available;
        let s = |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        write!(
            f,
            "{} {} for this process (",
            self.cores,
            s(self.cores, "core", "cores")
        )?;
        match self.source {
            CpuBudgetSource::SlurmCpusPerTask(n) => write!(f, "SLURM_CPUS_PER_TASK={n}")?,
            CpuBudgetSource::SlurmCpusOnNode(n) => write!(f, "SLURM_CPUS_ON_NODE={n}")?,
            CpuBudgetSource::SlurmTasksOnNode(n) => write!(
                f,
                "{available} available / {n} SLURM {} on this node",
                s(n, "task", "tasks")
            )?,
            CpuBudgetSource::LocalWorldSize(n) => write!(
                f,
                "{available} available / {n} {} on this node",
                s(n, "process", "processes")
            )?,
            CpuBudgetSource::AllAvailable => write!(f, "all {available} available")?,
        }
        if let CpuBudgetSource::SlurmCpusPerTask(n) | CpuBudgetSource::SlurmCpusOnNode(n) =
            self.source
        {
            if n > self.cores {
                write!(f, ", capped at the {available} available")?;
            }
        }
        f.write_str(")")
    }
}

/// Cores this process may run on: `sched_getaffinity` and cgroup CPU quotas, as
/// [`std::thread::available_parallelism`] reports them (1 when it cannot tell).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl LaunchEnv {
    /// The cores this process may use, from the process environment and
    /// [`available_cores`]; see [`LaunchEnv::cpu_budget`].
    pub fn cpu_budget_from_env(&self) -> Result<CpuBudget, LaunchError> {
        self.budget_from_lookup(|k| std::env::var(k).ok(), available_cores())
    }

    /// The cores this process may use, given the launch variables and the number of cores the
    /// operating system lets it run on (`available`). Never more than `available`, never 0:
    ///
    /// - `srun` task ([`LaunchSource::Slurm`]): `SLURM_CPUS_PER_TASK`; without it, `available`
    ///   divided by the tasks of this step on this node (`SLURM_STEP_TASKS_PER_NODE` at
    ///   `SLURM_NODEID`, else `SLURM_NTASKS_PER_NODE`, else `SLURM_NTASKS`: every task counted
    ///   when nothing says how they are spread).
    /// - torchrun-style ([`LaunchSource::Torchrun`]): `available` divided by the processes on
    ///   this node (`LOCAL_WORLD_SIZE`, else `WORLD_SIZE / GROUP_WORLD_SIZE` rounded up, else
    ///   `WORLD_SIZE`).
    /// - one process ([`LaunchSource::Single`]): `SLURM_CPUS_ON_NODE` inside a SLURM job (the
    ///   batch shell's share of the node), else every available core.
    pub fn cpu_budget(
        &self,
        vars: &HashMap<String, String>,
        available: usize,
    ) -> Result<CpuBudget, LaunchError> {
        self.budget_from_lookup(|k| vars.get(k).cloned(), available)
    }

    fn budget_from_lookup(
        &self,
        get: impl Fn(&str) -> Option<String>,
        available: usize,
    ) -> Result<CpuBudget, LaunchError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let available = available.max(1);
        let positive = |var: &'static str| -> Result<Option<usize>, LaunchError> {
            match optional_usize(&get, var)? {
                Some(0) => Err(LaunchError::Invalid {
                    var,
                    value: "0".to_owned(),
                    expected: "a positive integer",
                }),
                n => Ok(n),
            }
        };
        let share = |n: usize| (available / n.max(1)).max(1);
        let (cores, source) = match &self.source {
            LaunchSource::Slurm { .. } => match positive("SLURM_CPUS_PER_TASK")? {
                Some(n) => (n.min(available), CpuBudgetSource::SlurmCpusPerTask(n)),
                None => {
                    let tasks = self.slurm_tasks_on_node(&get, &positive)?;
                    (share(tasks), CpuBudgetSource::SlurmTasksOnNode(tasks))
                }
            },
            LaunchSource::Torchrun => {
                let local = match positive("LOCAL_WORLD_SIZE")? {
                    Some(n) => n,
                    None => match positive("GROUP_WORLD_SIZE")? {
                        Some(groups) => self.world_size.div_ceil(groups),
                        None => self.world_size,
                    },
                };
                let local = local.max(1);
                (share(local), CpuBudgetSource::LocalWorldSize(local))
            }
            LaunchSource::Single => match positive("SLURM_CPUS_ON_NODE")? {
                Some(n) if get("SLURM_JOB_ID").is_some() || get("SLURM_JOBID").is_some() => {
                    (n.min(available), CpuBudgetSource::SlurmCpusOnNode(n))
                }
                _ => (available, CpuBudgetSource::AllAvailable),
            },
        };
        Ok(CpuBudget {
            cores,
            available,
            source,
        })
    }

    /// Tasks of this job step on this node, as SLURM tells an `srun` task.
    fn slurm_tasks_on_node(
        &self,
        get: &impl Fn(&str) -> Option<String>,
        positive: &impl Fn(&'static str) -> Result<Option<usize>, LaunchError>,
    ) -> Result<usize, LaunchError> {
        for var in ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"] {
            if let Some(list) = get(var) {
                let node = optional_usize(get, "SLURM_NODEID")?.unwrap_or(0);
                return tasks_per_node_at(&list, node).filter(|&n| n > 0).ok_or(
                    LaunchError::Invalid {
                        var,
                        value: list,
                        expected:
                            "task counts per node such as 4(x2),3 (with SLURM_NODEID in range)",
                    },
                );
            }
        }
        if let Some(n) = positive("SLURM_NTASKS_PER_NODE")? {
            return Ok(n);
        }
        Ok(self.world_size.max(1))
    }
}

/// The entry for node `node` (0-based) of a SLURM per-node count list such as `4(x2),3`.
fn tasks_per_node_at(list: &str, node: usize) -> Option<usize> {
    let mut seen = 0usize;
    for item in list.split(',') {
        let (count, repeat) = match item.split_once("(x") {
            Some((c, r)) => (c, r.strip_suffix(')')?.parse::<usize>().ok()?),
            None => (item, 1),
        };
        let count = count.parse::<usize>().ok()?;
        seen += repeat;
        if node < seen {
            return Some(count);
        }
    }
    None
}

impl fmt::Display for LaunchEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            LaunchSource::Single => f.write_str("single process")?,
            LaunchSource::Torchrun => f.write_str("torchrun-style launch")?,
            LaunchSource::Slurm { job_id: Some(id) } => write!(f, "SLURM job {id}")?,
            LaunchSource::Slurm { job_id: None } => f.write_str("SLURM job")?,
        }
        write!(
            f,
            ": rank {} of {}, local rank {}, master {}:{}",
            self.rank, self.world_size, self.local_rank, self.master_addr, self.master_port
        )
    }
}

fn required_str(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    because: &'static str,
) -> Result<String, LaunchError> {
    get(var).ok_or(LaunchError::Missing { var, because })
}

fn required(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    because: &'static str,
) -> Result<usize, LaunchError> {
    let v = required_str(get, var, because)?;
    parse_usize(var, &v)
}

fn optional_usize(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
) -> Result<Option<usize>, LaunchError> {
    get(var).map(|v| parse_usize(var, &v)).transpose()
}

fn parse_usize(var: &'static str, v: &str) -> Result<usize, LaunchError> {
    v.parse().map_err(|_| LaunchError::Invalid {
        var,
        value: v.to_owned(),
        expected: "a non-negative integer",
    })
}

fn parse_port(var: &'static str, v: &str) -> Result<u16, LaunchError> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(LaunchError::Invalid {
            var,
            value: v.to_owned(),
            expected: "a TCP port 1..65535",
        }),
    }
}

fn check_rank(
    rank: usize,
    world_size: usize,
    rank_var: &'static str,
    world_var: &'static str,
) -> Result<(), LaunchError> {
    if world_size == 0 || rank >= world_size {
        return Err(LaunchError::RankOutOfRange {
            rank,
            world_size,
            rank_var,
            world_var,
        });
    }
    Ok(())
}

/// The first host of a SLURM node list, or `None` if the list does not parse.
fn first_host(list: &str) -> Option<String> {
    expand_nodelist(list).ok()?.into_iter().next()
}

/// Expands a SLURM host list (`node[01-03,07],gpu5`, `rack[1-2]-n[1,3]`) into host names, in
/// order, keeping zero padding — what `scontrol show hostnames` prints.
pub fn expand_nodelist(list: &str) -> Result<Vec<String>, String> {
    let mut hosts = Vec::new();
    for expr in split_top_level(list)? {
        if expr.is_empty() {
            return Err(format!("empty host name in {list:?}"));
        }
        hosts.extend(expand_host(&expr)?);
    }
    if hosts.is_empty() {
        return Err("empty node list".to_owned());
    }
    Ok(hosts)
}

/// Splits at commas outside brackets.
fn split_top_level(list: &str) -> Result<Vec<String>, String> {
    let (mut parts, mut cur, mut depth) = (Vec::new(), String::new(), 0usize);
    for c in list.trim().chars() {
        match c {
            '[' => {
                if depth > 0 {
                    return Err(format!("nested '[' in {list:?}"));
                }
                depth += 1;
                cur.push(c);
            }
            ']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unmatched ']' in {list:?}"))?;
                cur.push(c);
            }
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            c if c.is_whitespace() => return Err(format!("whitespace in {list:?}")),
            c => cur.push(c),
        }
    }
    if depth != 0 {
        return Err(format!("unmatched '[' in {list:?}"));
    }
    parts.push(cur);
    Ok(parts)
}

/// Expands one host expression with any number of bracket groups (cartesian product, left
/// group varying slowest, as Slurm does).
fn expand_host(expr: &str) -> Result<Vec<String>, String> {
    let Some(open) = expr.find('[') else {
        return Ok(vec![expr.to_owned()]);
    };
    let close = expr[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or_else(|| format!("unmatched '[' in {expr:?}"))?;
    let (prefix, body, rest) = (&expr[..open], &expr[open + 1..close], &expr[close + 1..]);
    let tails = expand_host(rest)?;
    let mut out = Vec::new();
    for item in body.split(',') {
        for n in expand_range(item).map_err(|e| format!("{e} in {expr:?}"))? {
            for tail in &tails {
                out.push(format!("{prefix}{n}{tail}"));
            }
        }
    }
    Ok(out)
}

/// `07` → ["07"]; `01-03` → ["01","02","03"] (width of the first bound kept).
fn expand_range(item: &str) -> Result<Vec<String>, String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match item.split_once('-') {
        None if digits(item) => Ok(vec![item.to_owned()]),
        Some((lo, hi)) if digits(lo) && digits(hi) => {
            let (a, b): (u64, u64) = (
                lo.parse().map_err(|_| format!("bad number {lo:?}"))?,
                hi.parse().map_err(|_| format!("bad number {hi:?}"))?,
            );
            if a > b {
                return Err(format!("descending range {item:?}"));
            }
            if b - a > 100_000 {
                return Err(format!("range {item:?} too large"));
            }
            let width = lo.len();
            Ok((a..=b).map(|n| format!("{n:0width$}")).collect())
        }
        _ => Err(format!("bad range {item:?}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn nothing_set_is_a_single_process() {
        let env = LaunchEnv::from_vars(&vars(&[("HOME", "/root")])).unwrap();
        assert_eq!(env, LaunchEnv::single());
        assert!(!env.is_distributed());
        assert!(env.is_master());
    }

    #[test]
    fn torchrun_variables() {
        let env = LaunchEnv::from_vars(&vars(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.1.2.3"),
            ("MASTER_PORT", "29411"),
        ]))
        .unwrap();
        assert_eq!(env.rank, 5);
        assert_eq!(env.world_size, 8);
        assert_eq!(env.local_rank, 1);
        assert_eq!(env.master_addr, "10.1.2.3");
        assert_eq!(env.master_port, 29411);
        assert_eq!(env.source, LaunchSource::Torchrun);
        assert!(env.is_distributed());
        assert!(!env.is_master());
        assert_eq!(
            env.to_string(),
            "torchrun-style launch: rank 5 of 8, local rank 1, master 10.1.2.3:29411"
        );
    }

    #[test]
    fn torchrun_defaults_and_precedence_over_slurm() {
        let env = LaunchEnv::from_vars(&vars(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_NTASKS", "4"),
        ]))
        .unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank), (0, 2, 0));
        assert_eq!(
            (env.master_addr.as_str(), env.master_port),
            ("127.0.0.1", 29500)
        );
    }

    #[test]
    fn slurm_task_variables() {
        let env = LaunchEnv::from_vars(&vars(&[
            ("SLURM_PROCID", "6"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_JOB_ID", "123456"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
        ]))
        .unwrap();
        assert_eq!((env.rank, env.world_size, env.local_rank), (6, 8, 2));
        assert_eq!(env.master_addr, "gpu07");
        // 20000 + 123456 % 10000
        assert_eq!(env.master_port, 23456);
        assert_eq!(
            env.source,
            LaunchSource::Slurm {
                job_id: Some("123456".into())
            }
        );
        assert_eq!(
            env.to_string(),
            "SLURM job 123456: rank 6 of 8, local rank 2, master gpu07:23456"
        );
    }

    #[test]
    fn slurm_master_overrides() {
        let env = LaunchEnv::from_vars(&vars(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_JOB_ID", "77"),
            ("SLURM_JOB_NODELIST", "a[1-2]"),
            ("MASTER_ADDR", "headnode"),
            ("MASTER_PORT", "31000"),
        ]))
        .unwrap();
        assert_eq!(
            (env.master_addr.as_str(), env.master_port),
            ("headnode", 31000)
        );
    }

    #[test]
    fn slurm_batch_shell_without_step_is_single() {
        // The batch script itself (no srun) must not wait for peers that never come.
        let env = LaunchEnv::from_vars(&vars(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_JOB_ID", "5"),
        ]))
        .unwrap();
        assert_eq!(env, LaunchEnv::single());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = LaunchEnv::from_vars(&vars(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert_eq!(
            err,
            LaunchError::Invalid {
                var: "RANK",
                value: "x".into(),
                expected: "a non-negative integer"
            }
        );
        assert!(err.to_string().contains("RANK=\"x\""), "{err}");
        let err = LaunchEnv::from_vars(&vars(&[("RANK", "2"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(matches!(
            err,
            LaunchError::RankOutOfRange {
                rank: 2,
                world_size: 2,
                ..
            }
        ));
        let err = LaunchEnv::from_vars(&vars(&[("WORLD_SIZE", "2")])).unwrap_err();
        assert!(
            matches!(err, LaunchError::Missing { var: "RANK", .. }),
            "{err}"
        );
        let err = LaunchEnv::from_vars(&vars(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_PORT", "70000"),
        ]))
        .unwrap_err();
        assert!(
            matches!(
                err,
                LaunchError::Invalid {
                    var: "MASTER_PORT",
                    ..
                }
            ),
            "{err}"
        );
        let err = LaunchEnv::from_vars(&vars(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_NODELIST", "node[01-"),
        ]))
        .unwrap_err();
        assert!(
            matches!(
                err,
                LaunchError::Invalid {
                    var: "SLURM_JOB_NODELIST",
                    ..
                }
            ),
            "{err}"
        );
    }

    fn budget(pairs: &[(&str, &str)], available: usize) -> Result<CpuBudget, LaunchError> {
        let vars = vars(pairs);
        LaunchEnv::from_vars(&vars)?.cpu_budget(&vars, available)
    }

    const SRUN_TASK: [(&str, &str); 5] = [
        ("SLURM_PROCID", "1"),
        ("SLURM_NTASKS", "8"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_STEP_ID", "0"),
        ("SLURM_JOB_NODELIST", "gpu[1-2]"),
    ];

    #[test]
    fn slurm_task_gets_its_cpus_per_task_never_more_than_available() {
        let with = |cpus: &str, available| {
            let mut v = SRUN_TASK.to_vec();
            v.push(("SLURM_CPUS_PER_TASK", cpus));
            budget(&v, available).unwrap()
        };
        let b = with("9", 64);
        assert_eq!(
            (b.cores, b.source),
            (9, CpuBudgetSource::SlurmCpusPerTask(9))
        );
        assert_eq!((b.intra_op_threads(), b.loader_workers(8)), (9, 8));
        assert_eq!(
            b.to_string(),
            "9 cores for this process (SLURM_CPUS_PER_TASK=9)"
        );
        // The harness advertises 8 CPUs on 2 real cores: the affinity mask wins.
        let b = with("8", 2);
        assert_eq!(b.cores, 2);
        assert_eq!(
            b.to_string(),
            "2 cores for this process (SLURM_CPUS_PER_TASK=8, capped at the 2 available)"
        );
        let b = with("1", 2);
        assert_eq!((b.intra_op_threads(), b.loader_workers(2)), (1, 1));
        let err = budget(
            &[SRUN_TASK.as_slice(), &[("SLURM_CPUS_PER_TASK", "0")]].concat(),
            4,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                LaunchError::Invalid {
                    var: "SLURM_CPUS_PER_TASK",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn slurm_task_without_cpus_per_task_shares_the_node_with_its_step() {
        // 2 tasks on the first node, 1 on the second; this task is on the first.
        let mut v = SRUN_TASK.to_vec();
        v.extend([("SLURM_STEP_TASKS_PER_NODE", "2,1"), ("SLURM_NODEID", "0")]);
        let b = budget(&v, 16).unwrap();
        assert_eq!(
            (b.cores, b.source),
            (8, CpuBudgetSource::SlurmTasksOnNode(2))
        );
        assert_eq!(
            b.to_string(),
            "8 cores for this process (16 available / 2 SLURM tasks on this node)"
        );
        v.retain(|(k, _)| *k != "SLURM_NODEID");
        v.push(("SLURM_NODEID", "1"));
        assert_eq!(budget(&v, 16).unwrap().cores, 16);
        // 4(x2): 4 tasks on each of two nodes.
        let mut v = SRUN_TASK.to_vec();
        v.extend([
            ("SLURM_STEP_TASKS_PER_NODE", "4(x2)"),
            ("SLURM_NODEID", "1"),
        ]);
        assert_eq!(budget(&v, 16).unwrap().cores, 4);
        v.retain(|(k, _)| *k != "SLURM_NODEID");
        v.push(("SLURM_NODEID", "2"));
        assert!(matches!(
            budget(&v, 16).unwrap_err(),
            LaunchError::Invalid {
                var: "SLURM_STEP_TASKS_PER_NODE",
                ..
            }
        ));
        let mut v = SRUN_TASK.to_vec();
        v.push(("SLURM_NTASKS_PER_NODE", "4"));
        assert_eq!(budget(&v, 16).unwrap().cores, 4);
        // Nothing says how the 8 tasks are spread: count them all on this node.
        let b = budget(&SRUN_TASK, 16).unwrap();
        assert_eq!(
            (b.cores, b.source),
            (2, CpuBudgetSource::SlurmTasksOnNode(8))
        );
        // More tasks than cores: still one core each, never zero.
        assert_eq!(budget(&SRUN_TASK, 2).unwrap().cores, 1);
    }

    #[test]
    fn torchrun_ranks_share_the_available_cores() {
        let base = [
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
        ];
        // The case: 2 ranks on a 2-core machine get one core each.
        let b = budget(&base, 2).unwrap();
        assert_eq!((b.cores, b.source), (1, CpuBudgetSource::LocalWorldSize(2)));
        assert_eq!((b.intra_op_threads(), b.loader_workers(2)), (1, 1));
        assert_eq!(
            b.to_string(),
            "1 core for this process (2 available / 2 processes on this node)"
        );
        let b = budget(&[&base[..], &[("LOCAL_WORLD_SIZE", "1")]].concat(), 2).unwrap();
        assert_eq!(b.cores, 2);
        // 8 ranks on 2 nodes (torchrun --nnodes 2): 4 per node.
        let v = [
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("GROUP_WORLD_SIZE", "2"),
        ];
        assert_eq!(budget(&v, 32).unwrap().cores, 8);
        let v = [
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_WORLD_SIZE", "4"),
        ];
        assert_eq!(budget(&v, 32).unwrap().cores, 8);
        let v = [
            ("RANK", "0"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_WORLD_SIZE", "x"),
        ];
        assert!(matches!(
            budget(&v, 32).unwrap_err(),
            LaunchError::Invalid {
                var: "LOCAL_WORLD_SIZE",
                ..
            }
        ));
    }

    #[test]
    fn single_process_takes_every_available_core() {
        let b = budget(&[], 6).unwrap();
        assert_eq!((b.cores, b.source), (6, CpuBudgetSource::AllAvailable));
        assert_eq!(b.to_string(), "6 cores for this process (all 6 available)");
        assert_eq!(b.loader_workers(2), 2);
        assert_eq!(
            b.loader_workers(8),
            5,
            "one core stays with the training thread"
        );
        assert_eq!(b.loader_workers(0), 1, "the loader needs a worker");
        // A batch shell (no srun) gets the allocation's share of the node.
        let v = [
            ("SLURM_JOB_ID", "7"),
            ("SLURM_PROCID", "0"),
            ("SLURM_CPUS_ON_NODE", "3"),
        ];
        let b = budget(&v, 64).unwrap();
        assert_eq!(
            (b.cores, b.source),
            (3, CpuBudgetSource::SlurmCpusOnNode(3))
        );
        // An unknown available count (0) still gives one core.
        assert_eq!(budget(&[], 0).unwrap().cores, 1);
    }

    #[test]
    fn per_node_counts_parse_like_slurm() {
        assert_eq!(tasks_per_node_at("4", 0), Some(4));
        assert_eq!(tasks_per_node_at("4(x2),3", 1), Some(4));
        assert_eq!(tasks_per_node_at("4(x2),3", 2), Some(3));
        assert_eq!(tasks_per_node_at("4(x2),3", 3), None);
        assert_eq!(tasks_per_node_at("4(x2", 0), None);
        assert_eq!(tasks_per_node_at("a", 0), None);
    }

    #[test]
    fn nodelists_expand_like_scontrol() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(expand_nodelist("node5").unwrap(), s(&["node5"]));
        assert_eq!(
            expand_nodelist("node[01-03,07],gpu5").unwrap(),
            s(&["node01", "node02", "node03", "node07", "gpu5"])
        );
        assert_eq!(
            expand_nodelist("a[9-11]").unwrap(),
            s(&["a9", "a10", "a11"])
        );
        assert_eq!(
            expand_nodelist("rack[1-2]-n[1,3]").unwrap(),
            s(&["rack1-n1", "rack1-n3", "rack2-n1", "rack2-n3"])
        );
        assert_eq!(
            expand_nodelist("x[098-100].ib").unwrap(),
            s(&["x098.ib", "x099.ib", "x100.ib"])
        );
        for bad in ["", "n[1-", "n]1", "n[3-1]", "n[a-b]", "a,,b", "n[1[2]]"] {
            assert!(expand_nodelist(bad).is_err(), "{bad:?} should not parse");
        }
    }
}
