//! A batch on a real Docker Swarm of three nodes (scripts/fleet-hosts.sh `up`, then `swarm`):
//! each node a network namespace with its own address and its own dockerd on TLS, host 1 the
//! manager. Hosts 2 and 3 start without the worker image; the tool brings it. The set is shared
//! by these tests, one at a time (and never beside the fleet tests' sets), each healing what the
//! one before broke.

use crate::fleet::{
    Hosts, Swarm, assert_all_checked, assert_recorded_once, inputs, one_at_a_time, tmp,
};
use crate::running::Running;
use crate::util::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

struct Set {
    hosts: Hosts,
    swarm: Swarm,
}

impl Set {
    /// `docker -H <manager's socket> ARGS`, its stdout.
    fn manager(&self, args: &[&str]) -> String {
        docker(&self.swarm.manager_socket, args)
    }

    /// Node `i`'s state and availability, as the manager says.
    fn node(&self, i: usize) -> String {
        self.manager(&[
            "node",
            "inspect",
            "--format",
            "{{.Status.State}} {{.Spec.Availability}}",
            &self.swarm.nodes[i],
        ])
        .trim()
        .to_string()
    }

    /// Every engine running, every node ready and active again.
    fn heal(&self) {
        self.hosts.heal();
        for i in 0..self.swarm.nodes.len() {
            self.hosts.activate(i);
        }
        wait_until("every node ready", Duration::from_secs(90), || {
            (0..self.swarm.nodes.len()).all(|i| self.node(i) == "ready active")
        });
    }

    /// The tool's services on the swarm.
    fn services(&self) -> Vec<String> {
        self.manager(&[
            "service",
            "ls",
            "--filter",
            "label=io.isc-transcode",
            "--format",
            "{{.ID}}",
        ])
        .lines()
        .map(str::to_string)
        .collect()
    }
}

fn docker(socket: &str, args: &[&str]) -> String {
    let o = Command::new("docker")
        .args(["-H", socket])
        .args(args)
        .output()
        .expect("docker");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The shared swarm, for one test at a time, healed.
fn shared() -> (MutexGuard<'static, ()>, MutexGuard<'static, Set>) {
    static SET: OnceLock<Mutex<Set>> = OnceLock::new();
    let one = one_at_a_time();
    require_engine();
    let set = SET
        .get_or_init(|| {
            let hosts = Hosts::up(3, 3, true);
            let swarm = hosts.swarm();
            Mutex::new(Set { hosts, swarm })
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    set.heal();
    (one, set)
}

/// A batch on the swarm, over TLS with the test's client certificate.
fn batch(set: &Set, clips: &[PathBuf], out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args(clips)
        .arg("-o")
        .arg(out)
        .args(["-p", "h264", "--swarm", &set.swarm.manager])
        .args(extra)
        .env_remove("DOCKER_HOST")
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &set.hosts.certs);
    c
}

/// The image ID host `i` holds for the worker image, empty when none.
fn image_id(set: &Set, i: usize) -> String {
    docker(
        &set.hosts.sockets[i],
        &["image", "inspect", "--format", "{{.Id}}", IMAGE],
    )
    .trim()
    .to_string()
}

/// Streams, codecs, size and duration of a media file: what two runs of the same preset on the
/// same input must agree on, wherever they ran.
fn shape(path: &Path) -> Vec<String> {
    let p = probe(path);
    let mut shape: Vec<String> = p["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .map(|s| {
            format!(
                "{} {} {}x{} {}",
                s["codec_type"], s["codec_name"], s["width"], s["height"], s["pix_fmt"]
            )
        })
        .collect();
    shape.push(format!("{:.1}", duration(&p)));
    shape
}

#[test]
fn a_batch_on_the_swarm_uses_every_node_and_brings_them_the_image() {
    let (_one, set) = shared();
    // The nodes that lack the image get it from the run itself, whatever an earlier test did.
    for i in 1..3 {
        docker(&set.hosts.sockets[i], &["image", "rm", "-f", IMAGE]);
        assert_eq!(image_id(&set, i), "", "host {} still has the image", i + 1);
    }
    let tmp = tmp();
    // The first batch starts on node 1 while the image is copied to the others, and the run
    // waits for the copies before it ends.
    let first = inputs(
        &tmp.path().join("first"),
        &samples().join("faststart.mp4"),
        10..12,
    );
    let o = run(&mut batch(
        &set,
        &first,
        &tmp.path().join("out1"),
        &["-j", "1"],
    ));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for i in 1..3 {
        assert!(
            stderr(&o).contains(&format!(
                "from {} to {}: ",
                set.hosts.hosts[0], set.hosts.hosts[i]
            )),
            "the run copied the image to host {}: {}",
            i + 1,
            stderr(&o)
        );
        assert_eq!(image_id(&set, i), image_id(&set, 0));
    }
    // Then every node does work.
    let clips = inputs(
        &tmp.path().join("in"),
        &samples().join("faststart.mp4"),
        0..6,
    );
    let out = tmp.path().join("out");
    let o = run(batch(&set, &clips, &out, &[]).args(["--json", "-j", "1"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("on 3 engines: "), "{}", stderr(&o));
    assert_all_checked(&out, &clips, 2.0);
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_recorded_once(&out, &clips, &report, &set.hosts.hosts);
    let recorded: BTreeSet<String> = outputs_column(&out, "host").into_iter().collect();
    let known: BTreeSet<String> = set.hosts.hosts.iter().cloned().collect();
    assert_eq!(recorded, known, "every node made something, and only they");
    let reported: BTreeSet<String> = report["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            f["host"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("docker ")
                .to_string()
        })
        .collect();
    assert_eq!(
        reported, recorded,
        "the report names the engines the store records"
    );
    // The same shape as a run of the same file on the default engine alone.
    let single = tmp.path().join("single");
    let o = run(bin()
        .arg(&clips[0])
        .arg("-o")
        .arg(&single)
        .args(["-p", "h264"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let name = clips[0].file_name().expect("name");
    assert_eq!(shape(&out.join(name)), shape(&single.join(name)));
    // Every worker's service is gone once the run is over.
    assert!(soon(|| set.services().is_empty()), "{:?}", set.services());
}

#[test]
fn a_node_whose_dockerd_is_killed_mid_batch_loses_no_file() {
    let (_one, set) = shared();
    let tmp = tmp();
    let long = tmp.path().join("long.mp4");
    long_clip(&long, 6);
    let clips = inputs(&tmp.path().join("in"), &long, 0..6);
    let out = tmp.path().join("out");
    let running = Running::spawn(&mut batch(&set, &clips, &out, &["--json", "-j", "1"]));
    wait_until("ffmpeg at work on node 3", Duration::from_secs(180), || {
        set.hosts.running_ffmpeg(2, &out)
    });
    set.hosts.kill(2);
    let o = running.wait(Duration::from_secs(300));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("the engine {} failed the job", set.hosts.hosts[2])),
        "{}",
        stderr(&o)
    );
    assert_all_checked(&out, &clips, 6.0);
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_recorded_once(&out, &clips, &report, &set.hosts.hosts);
    // The run removed its services, the one pinned to the dead node included.
    assert!(soon(|| set.services().is_empty()), "{:?}", set.services());
}

#[test]
fn a_drained_node_gets_no_workers() {
    let (_one, set) = shared();
    set.hosts.drain(2);
    let tmp = tmp();
    let clips = inputs(
        &tmp.path().join("in"),
        &samples().join("faststart.mp4"),
        0..6,
    );
    let out = tmp.path().join("out");
    let since = now();
    let o = run(&mut batch(&set, &clips, &out, &["--json", "-j", "1"]));
    let until = now();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "the engine {} may not take jobs now (node {}",
            set.hosts.hosts[2], set.swarm.nodes[2]
        )),
        "{}",
        stderr(&o)
    );
    assert_all_checked(&out, &clips, 2.0);
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_recorded_once(&out, &clips, &report, &set.hosts.hosts[..2]);
    // Not one container was even made on the drained node's engine during the run.
    let made = |i: usize| {
        docker(
            &set.hosts.sockets[i],
            &[
                "events",
                "--since",
                &format!("{since:.3}"),
                "--until",
                &format!("{until:.3}"),
                "--filter",
                "type=container",
                "--filter",
                "event=create",
                "--format",
                "{{.Actor.ID}}",
            ],
        )
    };
    assert_eq!(made(2).trim(), "", "containers made on the drained node");
    assert!(!made(0).trim().is_empty(), "node 1 made workers");
}

#[test]
fn a_worker_has_no_network_and_gains_no_privilege() {
    let (_one, set) = shared();
    let tmp = tmp();
    let long = tmp.path().join("long.mp4");
    long_clip(&long, 6);
    let clips = inputs(&tmp.path().join("in"), &long, 0..3);
    let out = tmp.path().join("out");
    let running = Running::spawn(&mut batch(&set, &clips, &out, &["-j", "1"]));
    wait_until("ffmpeg at work on node 2", Duration::from_secs(180), || {
        set.hosts.running_ffmpeg(1, &out)
    });
    let worker = set.hosts.containers(1, &out)[0]
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let node1 = set.hosts.hosts[0].trim_start_matches("tcp://").to_string();
    let node3 = set.hosts.hosts[2].trim_start_matches("tcp://").to_string();
    // From the node itself, the other nodes' engines take a TCP connection...
    for addr in [&node1, &node3] {
        let (ip, port) = addr.split_once(':').expect("address");
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &set.hosts.netns[1],
                "timeout",
                "10",
                "bash",
            ])
            .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
            .output()
            .expect("ip netns exec");
        assert!(
            o.status.success(),
            "node 2 cannot reach {addr}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // ... but from inside its worker, not one does, and it has no interface but loopback.
    let inside = |script: &str| {
        let o = Command::new("docker")
            .args([
                "-H",
                &set.hosts.sockets[1],
                "exec",
                &worker,
                "sh",
                "-c",
                script,
            ])
            .output()
            .expect("docker exec");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    for addr in [&node1, &node3] {
        let (ok, said) = inside(&format!(
            "ffmpeg -nostdin -v error -rw_timeout 5000000 -i 'tcp://{addr}?timeout=5000000' \
             -f null - 2>&1"
        ));
        assert!(!ok, "the worker reached {addr}: {said}");
        assert!(said.contains("unreachable"), "{addr}: {said}");
    }
    let (_, devices) = inside("tail -n +3 /proc/net/dev | cut -d: -f1");
    let devices: Vec<&str> = devices.split_whitespace().collect();
    assert_eq!(devices, ["lo"], "the worker's network interfaces");
    // The lock-down of the worker's own processes (the job server, pid 1, and its ffmpeg; not
    // this exec's, which the engine starts beside them): no privilege gained through
    // set-user-id programs, no capabilities, not root. And a read-only root.
    let (_, status) = inside(
        "for p in /proc/[0-9]*; do n=$(sed -n 's/^Name:\t//p' $p/status); \
         [ $p = /proc/1 ] && n=pid1; case $n in pid1|ffmpeg|cat) \
         grep -E '^(NoNewPrivs|CapEff|CapBnd|Uid):' $p/status | tr '\n' ' '; echo $n;; esac; done",
    );
    let lines: Vec<&str> = status.lines().collect();
    assert!(lines.iter().any(|l| l.ends_with("ffmpeg")), "{status}");
    assert!(lines.iter().any(|l| l.ends_with("cat")), "{status}");
    assert!(lines.iter().any(|l| l.ends_with("pid1")), "{status}");
    for l in &lines {
        assert!(l.contains("NoNewPrivs:\t1"), "{status}");
        assert!(l.contains("CapEff:\t0000000000000000"), "{status}");
        assert!(l.contains("CapBnd:\t0000000000000000"), "{status}");
        assert!(l.contains("Uid:\t65534\t65534\t65534\t65534"), "{status}");
    }
    let (wrote, said) = inside("touch /usr/x");
    assert!(!wrote, "{said}");
    let o = running.wait(Duration::from_secs(300));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_all_checked(&out, &clips, 6.0);
}

#[test]
fn services_of_a_dead_run_are_removed_by_the_next_run_and_by_gc_and_doctor_shows_the_nodes() {
    let (_one, set) = shared();
    let tmp = tmp();
    let long = tmp.path().join("long.mp4");
    long_clip(&long, 6);
    let clips = inputs(&tmp.path().join("in"), &long, 0..3);
    // A run killed while its workers are at work leaves its services behind.
    let killed = |out: &Path| {
        let running = Running::spawn(&mut batch(&set, &clips, out, &["-j", "1"]));
        wait_until("ffmpeg at work on node 1", Duration::from_secs(180), || {
            set.hosts.running_ffmpeg(0, out)
        });
        drop(running);
        let left = set.services();
        assert!(!left.is_empty(), "the killed run left its services");
        left
    };

    // The next run removes them before it places its own workers, and says so.
    let left = killed(&tmp.path().join("out-killed"));
    let out = tmp.path().join("out-next");
    let next = run(&mut batch(&set, &clips[..1], &out, &["-j", "1"]));
    let said = format!("{}{}", stdout(&next), stderr(&next));
    assert_eq!(next.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!(
            "removed {} worker service(s) left on the swarm by runs that are gone",
            left.len()
        )),
        "{said}"
    );
    assert_all_checked(&out, &clips[..1], 6.0);
    let still = set.services();
    assert!(
        left.iter().all(|s| !still.contains(s)),
        "the dead run's services are still there: {still:?}"
    );

    // `gc --swarm` removes them too, without a run.
    let out = tmp.path().join("out");
    let left = killed(&out);
    let gc = run(bin()
        .args(["gc", "--swarm", &set.swarm.manager])
        .env_remove("DOCKER_HOST")
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", &set.hosts.certs));
    assert_eq!(gc.status.code(), Some(0), "{}", stderr(&gc));
    assert!(
        stdout(&gc).contains(&format!(
            "removed {} worker service(s) from the swarm",
            left.len()
        )),
        "{}",
        stdout(&gc)
    );
    assert!(set.services().is_empty(), "{:?}", set.services());
    assert!(
        soon(|| (0..3).all(|i| set.hosts.containers(i, &out).is_empty())),
        "containers left on the nodes"
    );

    // doctor: every node ready; then one drained, and doctor says so and exits 1.
    let doctor = |set: &Set| {
        run(bin()
            .args(["doctor", "--json", "--swarm", &set.swarm.manager])
            .env_remove("DOCKER_HOST")
            .env("DOCKER_TLS_VERIFY", "1")
            .env("DOCKER_CERT_PATH", &set.hosts.certs))
    };
    let o = doctor(&set);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let rows = report["engines"].as_array().expect("engines");
    assert_eq!(rows.len(), 3, "{report}");
    let roles: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["node"]["role"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(roles, BTreeSet::from(["manager", "worker"]), "{report}");
    for r in rows {
        assert_eq!(r["verdict"], "ready", "{r}");
        assert_eq!(r["node"]["default_bridge"], false, "{r}");
        assert!(r["node"]["free_cpus"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }
    set.hosts.drain(1);
    let o = doctor(&set);
    set.hosts.activate(1);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let report: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let drained = report["engines"]
        .as_array()
        .expect("engines")
        .iter()
        .find(|r| r["node"]["id"] == set.swarm.nodes[1].as_str())
        .expect("node 2's row")
        .clone();
    assert_eq!(drained["verdict"], "node drain", "{drained}");
}
