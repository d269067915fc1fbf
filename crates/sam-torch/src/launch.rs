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
