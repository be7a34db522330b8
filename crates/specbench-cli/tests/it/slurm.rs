//! A study as a job array on a real single-node Slurm cluster (Debian's `slurm-wlm` and
//! `munge`), which the test starts itself in a temp folder: munged, slurmctld and slurmd on
//! 127.0.0.1, run as the current user, stopped when the test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use specbench_test::{Reply, StubServer, synthetic_reply};

use crate::support::{TestContext, finish};

/// The cluster's daemons; killed on drop, whatever the test's outcome.
struct Cluster {
    conf: PathBuf,
    daemons: Vec<Child>,
}

impl Drop for Cluster {
    /// `scontrol shutdown`, then SIGTERM to each daemon (slurmctld stops its script helper on
    /// the way), SIGKILL after 10 s.
    fn drop(&mut self) {
        let _ = self.command("scontrol").arg("shutdown").output();
        for daemon in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(daemon.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command.output()?;
    anyhow::ensure!(out.status.success(), "{command:?}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Cluster {
    /// Starts the three daemons under `dir` and waits until the node is idle.
    fn start(dir: &Path) -> anyhow::Result<Cluster> {
        for tool in ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sinfo"] {
            anyhow::ensure!(
                which(tool),
                "{tool} is missing: install slurm-wlm and munge (scripts/test does)"
            );
        }
        let munge = dir.join("munge");
        let log = dir.join("log");
        for sub in [&munge, &log, &dir.join("state"), &dir.join("spool")] {
            std::fs::create_dir_all(sub)?;
        }
        let key = munge.join("munge.key");
        output(Command::new("mungekey").arg("-c").arg("-k").arg(&key).arg("-f"))?;
        let socket = munge.join("munge.socket");
        let mut cluster = Cluster {
            conf: dir.join("slurm.conf"),
            daemons: Vec::new(),
        };
        cluster.daemons.push(
            Command::new("munged")
                .arg("-F")
                .arg("--force")
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--pid-file={}", munge.join("munged.pid").display()))
                .arg(format!("--seed-file={}", munge.join("seed").display()))
                .arg(format!("--log-file={}", log.join("munged.log").display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let host = output(Command::new("hostname").arg("-s"))?;
        let user = output(Command::new("id").arg("-un"))?;
        let d = dir.display();
        let conf = format!(
            "ClusterName=specbench\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser={user}\nSlurmdUser={user}\n\
             AuthType=auth/munge\nAuthInfo=socket={}\nCredType=cred/munge\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
             SlurmctldPort={}\nSlurmdPort={}\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSchedulerType=sched/builtin\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_CPU\nReturnToService=2\nMpiDefault=none\n\
             JobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN\n\
             PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
            socket.display(),
            free_port()?,
            free_port()?
        );
        std::fs::write(&cluster.conf, conf)?;
        // munged makes its socket at once; the controller needs it to start.
        let started = Instant::now();
        while !socket.exists() {
            anyhow::ensure!(started.elapsed() < Duration::from_secs(20), "munged did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        for daemon in [&["slurmctld", "-D", "-c"][..], &["slurmd", "-D"][..]] {
            cluster.daemons.push(
                Command::new(daemon[0])
                    .args(&daemon[1..])
                    .env("SLURM_CONF", &cluster.conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let started = Instant::now();
        loop {
            let state = cluster.command("sinfo").args(["-h", "-o", "%T"]).output()?;
            if String::from_utf8_lossy(&state.stdout).trim() == "idle" {
                return Ok(cluster);
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the Slurm node never became idle: {state:?}; logs in {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", &self.conf);
        command
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file())
}

#[test]
fn a_slurm_job_array_of_a_study_merged_equals_one_process() -> anyhow::Result<()> {
    let ctx = TestContext::with_pack("minimal")?;
    let cluster = Cluster::start(&ctx.dir.path().join("slurm"))?;
    let server = StubServer::start(|request| Reply::Content(synthetic_reply(request)))?;
    let file = ctx.dir.path().join("study.yaml");
    // Two models × vanilla and zero_think, judged once, results in `result`.
    std::fs::write(
        &file,
        crate::study::study_text(&server.base_url(), crate::study::TWO_METHODS),
    )?;
    let single = ctx.run(&["study", "run", &file.to_string_lossy(), "--results", "single"])?;
    assert_eq!(single.code, Some(0), "{single:?}");

    // `study submit` writes the batch script and submits it; with --wait it merges the shares
    // into the study's results folder when every task is done.
    let submitted = finish(
        ctx.specbench()
            .args([
                "study",
                "submit",
                &file.to_string_lossy(),
                "--slurm",
                "--array-size",
                "3",
            ])
            .args(["--cpus-per-task", "1", "--wait"])
            .env("SLURM_CONF", &cluster.conf),
    )?;
    let logs: String = (1..=3)
        .filter_map(|task| std::fs::read_to_string(ctx.dir.path().join(format!("result.shards/task-{task}.log"))).ok())
        .collect();
    assert_eq!(submitted.code, Some(0), "{submitted:?}\n{logs}");
    assert!(submitted.stdout.contains("3 array tasks"), "{}", submitted.stdout);
    let script = std::fs::read_to_string(ctx.dir.path().join("result.shards/study.sbatch"))?;
    assert!(
        script.contains("#SBATCH --array=1-3") && script.contains("--shard auto"),
        "{script}"
    );
    let one = ctx
        .dir
        .path()
        .join("result.shards/shard1/model-a/Garden/vanilla/generate.json");
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(one)?)?;
    assert_eq!(entries.len(), 1, "task 1 of 3 over 3 items: the first");

    // Merging again (as `study merge` does after a submit without --wait) changes nothing.
    let merged = finish(ctx.specbench().args(["study", "merge", &file.to_string_lossy()]))?;
    assert_eq!(merged.code, Some(0), "{merged:?}");
    assert!(merged.stdout.contains("Leaderboard"), "{}", merged.stdout);
    crate::study::assert_same_study_files(&ctx, "single", "result", &logs)?;
    drop(cluster);
    Ok(())
}
