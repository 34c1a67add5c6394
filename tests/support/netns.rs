//! Network namespaces for partition tests: one namespace per router replica, each linked by a
//! veth pair to a bridge in a hub namespace, and one veth from the hub to the test process, whose
//! address the sample pods and the clients use. Everything is on a /24 of its own.
//!
//! Faults: a host's link down (both directions cut), or an nftables rule in the host's namespace
//! that drops what it sends (one direction cut), or what it sends to one other host.
//!
//! Needs root and `ip`/`nft` (iproute2, nftables); [`Network::create`] says why it could not
//! and the test then skips. Every namespace is removed when the [`Network`] is dropped (a
//! failing test included); leftovers of a process that died are swept at the first creation,
//! recognised by the name prefix and a process id that no longer runs.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// Prefix of every namespace these tests create: `sgt-{pid}-{n}-...`.
pub const PREFIX: &str = "sgt-";

static SWEEP: Once = Once::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A host: a namespace with one address on the network.
pub struct Host {
    /// The namespace's name.
    pub ns: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its veth's name on the hub side.
    hub_link: String,
}

/// The network: the hub, the hosts, and the test process's own link.
pub struct Network {
    hub: String,
    /// The test process's address on the network (pods listen here, clients connect from here).
    pub root_ip: Ipv4Addr,
    root_link: String,
    /// The hosts, in creation order.
    pub hosts: Vec<Host>,
}

/// Runs `ip`/`nft`/`ip netns exec` and says what failed.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    ))
}

/// A /24 for a network, `10.213.x.0`, that no address of the test's namespace is on (other test
/// processes may have networks of their own), starting from one derived from the process.
fn free_subnet(pid: u32, n: u32) -> u8 {
    let used = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let first = pid.wrapping_mul(7).wrapping_add(n.wrapping_mul(13)) % 240;
    (0..240)
        .map(|k| ((first + k) % 240 + 10) as u8)
        .find(|x| !used.contains(&format!("10.213.{x}.")))
        .unwrap_or(10)
}

/// Removes the namespaces of test processes that no longer run.
fn sweep_leftovers() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("removing network namespace {name}, left by process {pid} that no longer runs");
        let _ = run("ip", &["netns", "delete", name]);
    }
}

impl Network {
    /// A hub and `hosts` namespaces; `Err` says why it could not be made (not root, no
    /// iproute2, no namespaces in this sandbox).
    pub fn create(hosts: usize) -> Result<Network, String> {
        SWEEP.call_once(sweep_leftovers);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let base = format!("{PREFIX}{pid}-{n}");
        let subnet = free_subnet(pid, n);
        let mut network = Network {
            hub: format!("{base}-hub"),
            root_ip: Ipv4Addr::new(10, 213, subnet, 1),
            root_link: format!("sgt{}r{n}", pid % 100_000),
            hosts: Vec::new(),
        };
        network.build(&base, subnet, hosts)?;
        Ok(network)
    }

    fn build(&mut self, base: &str, subnet: u8, hosts: usize) -> Result<(), String> {
        let hub = self.hub.clone();
        run("ip", &["netns", "add", &hub])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        let root_link = self.root_link.clone();
        run(
            "ip",
            &[
                "link", "add", &root_link, "type", "veth", "peer", "name", "up0", "netns", &hub,
            ],
        )?;
        self.attach(&hub, "up0")?;
        let cidr = format!("{}/24", self.root_ip);
        run("ip", &["addr", "add", &cidr, "dev", &root_link])?;
        run("ip", &["link", "set", &root_link, "up"])?;
        for i in 0..hosts {
            let ns = format!("{base}-h{i}");
            let ip = Ipv4Addr::new(10, 213, subnet, 10 + i as u8);
            let hub_link = format!("h{i}");
            run("ip", &["netns", "add", &ns])?;
            // Registered before it is complete, so Drop removes it whatever fails next.
            self.hosts.push(Host {
                ns: ns.clone(),
                ip,
                hub_link: hub_link.clone(),
            });
            run(
                "ip",
                &[
                    "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &hub_link,
                    "netns", &hub,
                ],
            )?;
            self.attach(&hub, &hub_link)?;
            run(
                "ip",
                &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn attach(&self, hub: &str, link: &str) -> Result<(), String> {
        run("ip", &["-n", hub, "link", "set", link, "master", "br0"])?;
        run("ip", &["-n", hub, "link", "set", link, "up"])
    }

    /// Cuts host `i` off in both directions (its link down at the hub).
    pub fn cut(&self, i: usize) {
        let host = &self.hosts[i];
        run(
            "ip",
            &["-n", &self.hub, "link", "set", &host.hub_link, "down"],
        )
        .unwrap();
    }

    /// Brings host `i`'s link back.
    pub fn heal(&self, i: usize) {
        let host = &self.hosts[i];
        run(
            "ip",
            &["-n", &self.hub, "link", "set", &host.hub_link, "up"],
        )
        .unwrap();
    }

    /// Drops every packet host `i` sends (to `to` only, when given); it still receives.
    pub fn drop_sent(&self, i: usize, to: Option<Ipv4Addr>) {
        let ns = &self.hosts[i].ns;
        let nft = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns, "nft"];
            all.extend_from_slice(args);
            run("ip", &all).unwrap();
        };
        nft(&["add", "table", "inet", "sgtcut"]);
        nft(&[
            "add",
            "chain",
            "inet",
            "sgtcut",
            "out",
            "{ type filter hook output priority 0 ; policy accept ; }",
        ]);
        let to = to.map(|ip| ip.to_string());
        match &to {
            Some(ip) => nft(&[
                "add", "rule", "inet", "sgtcut", "out", "ip", "daddr", ip, "drop",
            ]),
            None => nft(&[
                "add", "rule", "inet", "sgtcut", "out", "oifname", "eth0", "drop",
            ]),
        }
    }

    /// Removes host `i`'s drop rules.
    pub fn stop_dropping(&self, i: usize) {
        let ns = &self.hosts[i].ns;
        run(
            "ip",
            &[
                "netns", "exec", ns, "nft", "delete", "table", "inet", "sgtcut",
            ],
        )
        .unwrap();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = run("ip", &["netns", "delete", &host.ns]);
        }
        // The hub's veths go with it, and with them their ends in the test's namespace.
        let _ = run("ip", &["netns", "delete", &self.hub]);
        let _ = run("ip", &["link", "delete", &self.root_link]);
    }
}

/// A network of `hosts` namespaces, or `None` with the reason printed: the test skips.
pub fn network_or_skip(test: &str, hosts: usize) -> Option<Network> {
    match Network::create(hosts) {
        Ok(network) => Some(network),
        Err(reason) => {
            eprintln!(
                "SKIPPED {test}: it needs network namespaces (root, iproute2, nftables; `.ci/run` \
                 has them): {reason}"
            );
            None
        }
    }
}
