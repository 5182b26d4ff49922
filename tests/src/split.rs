//! The directory split into a registry and an exchange authority for the end-to-end
//! tests (docs/roles.md): each half a real `serve` process on its own data directory
//! and keys, nodes members of the authority and checking at the registry.

use crate::federation::{
    api_agent, code, field, first_p2p, init_node, medical_id_of, patients_file, start_ready,
    Federation, NodeProc, Proc, Texts,
};
use crate::{Backend, Deployment, Directory};
use iryo_node::config::NodeConfig;
use std::path::PathBuf;

/// The two halves of a directory run apart (docs/roles.md).
pub struct Split {
    pub authority: Directory,
    pub authority_config: PathBuf,
    pub registry_config: PathBuf,
    pub registry_proc: Option<Proc>,
    pub registry_addr: String,
    /// The registry's HTTPS front (insurers, its operator console); the federation's
    /// `https` is the authority's (My Portal, its console).
    pub registry_https: String,
}

/// The `[roles]` of an exchange authority that hears `registry`: its root key, which
/// signs its notices, and its service peer, which its session is authenticated by, as
/// `keys show` prints them.
pub fn authority_roles(registry: &Directory) -> String {
    let shown = registry.ok(&["keys", "show"]);
    let value = |label: &str| {
        shown
            .lines()
            .find_map(|l| l.strip_prefix(label).map(|k| k.trim().to_string()))
            .unwrap_or_else(|| panic!("no {label:?} in {shown}"))
    };
    format!(
        "[roles]\nrole = \"authority\"\nregistry_key = \"{}\"\nregistry_peer = \"{}\"\n",
        value("root key"),
        value("service peer")
    )
}

impl Federation {
    /// The directory that keeps memberships, consent and the audit log: the exchange
    /// authority when split, else the one directory.
    pub fn exchange_dir(&self) -> &Directory {
        self.split.as_ref().map_or(&self.registry, |s| &s.authority)
    }

    /// Has `serve` of that directory started with the settings `toml` from now on:
    /// split, added to the authority's configuration; else a file of its own.
    pub fn configure_directory(&mut self, toml: &str) {
        if let Some(s) = &self.split {
            let mut text = std::fs::read_to_string(&s.authority_config).expect("authority.toml");
            text.push('\n');
            text.push_str(toml);
            std::fs::write(&s.authority_config, text).expect("write authority.toml");
        } else {
            let path = self.registry.path("directory.toml");
            std::fs::write(&path, toml).expect("write directory.toml");
            self.directory_config = Some(path);
        }
    }

    /// Runs an operator command at the registry: the registry half when split, the one
    /// directory otherwise.
    pub fn at_registry(&self, args: &[&str]) -> String {
        match &self.split {
            Some(s) => {
                let config = s.registry_config.display().to_string();
                let mut with = vec!["--config", config.as_str()];
                with.extend_from_slice(args);
                self.registry.ok(&with)
            }
            None => self.registry.ok(args),
        }
    }

    /// Waits until the exchange authority has applied every notice the registry queued:
    /// at once when the directory is not split.
    pub fn until_told(&self) {
        let Some(s) = &self.split else {
            return;
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let json = |text: String| -> serde_json::Value {
            serde_json::from_str(&text).expect("status is JSON")
        };
        loop {
            // Nothing waits to be applied, and every visit the registry recorded
            // (checks still in its intake included) is the authority's too.
            let status = json(self.at_registry(&["status"]));
            let config = s.authority_config.display().to_string();
            let authority = json(s.authority.ok(&["--config", &config, "status"]));
            if status["notices_waiting"] == 0 && status["service_uses"] == authority["service_uses"]
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the registry's notices did not reach the authority: {status} {authority}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// The registry's HTTPS front: the registry half's when split, the one directory's
    /// otherwise.
    pub fn registry_https(&self) -> &str {
        self.split
            .as_ref()
            .map_or(&self.https, |s| &s.registry_https)
    }

    /// Kills the registry of a split directory (SIGKILL) and starts it again on the
    /// same address.
    pub fn restart_registry(&mut self) {
        let s = self.split.as_mut().expect("a split directory");
        if let Some(mut p) = s.registry_proc.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
        let listen = s
            .registry_addr
            .rsplit_once("/p2p/")
            .map(|(a, _)| a.to_string())
            .expect("the registry's address");
        let cmd = self.registry.command(&[
            "--config",
            &s.registry_config.display().to_string(),
            "serve",
            "--listen",
            &listen,
            "--https",
            &s.registry_https,
        ]);
        let (p, _) = start_ready(cmd, "iryo-directory serve (registry)");
        s.registry_proc = Some(p);
    }

    /// A federation deployed as `deployment`; nodes refresh memberships every
    /// `refresh` seconds.
    pub fn deploy(deployment: Deployment, nodes: usize, patients: u64, refresh: u64) -> Self {
        Self::deploy_with(deployment, nodes, patients, refresh, &Texts::PLAIN)
    }

    /// As `deploy`, with names and addresses from `texts`.
    pub fn deploy_with(
        deployment: Deployment,
        nodes: usize,
        patients: u64,
        refresh: u64,
        texts: &Texts,
    ) -> Self {
        match deployment {
            Deployment::Whole(backend) => {
                Self::start_with_on(backend, nodes, patients, refresh, texts)
            }
            Deployment::Split(backend) => {
                let mut fed = Self::start_split_with(backend, nodes, patients, texts);
                for node in &mut fed.nodes {
                    let mut cfg = NodeConfig::load(&node.config_path()).expect("node.toml");
                    if cfg.directory.refresh_seconds != refresh {
                        cfg.directory.refresh_seconds = refresh;
                        std::fs::write(node.config_path(), cfg.commented()).expect("node.toml");
                        node.stop();
                        node.start();
                    }
                }
                fed
            }
        }
    }

    /// A federation whose directory runs as a registry and an exchange authority
    /// apart, each with its own data directory, store (`backend`) and keys: nodes are
    /// members of the authority and send their eligibility checks to the registry.
    pub fn start_split(backend: Backend, nodes: usize, patients: u64) -> Self {
        Self::start_split_with(backend, nodes, patients, &Texts::PLAIN)
    }

    /// As `start_split`, with names and addresses from `texts`.
    pub fn start_split_with(backend: Backend, nodes: usize, patients: u64, texts: &Texts) -> Self {
        let registry = Directory::on(backend);
        let authority = Directory::on(backend);
        registry.ok(&["init", "--role", "registry"]);
        authority.ok(&["init", "--role", "authority"]);
        // Each half has its own CA for its own HTTPS front.
        registry.ok(&["ca", "init"]);
        authority.ok(&["ca", "init"]);
        let authority_config = authority.path("authority.toml");
        std::fs::write(&authority_config, authority_roles(&registry))
            .expect("write authority.toml");
        let serve = |dir: &Directory, config: &PathBuf| {
            let cmd = dir.command(&[
                "--config",
                &config.display().to_string(),
                "serve",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--https",
                "127.0.0.1:0",
            ]);
            let (p, line) = start_ready(cmd, "iryo-directory serve (split)");
            let addr = first_p2p(&line);
            let https = field(&line, "https").to_string();
            (p, addr, field(&line, "agency_key").to_string(), https)
        };
        let (authority_proc, authority_addr, authority_key, authority_https) =
            serve(&authority, &authority_config);
        let registry_config = registry.path("registry.toml");
        std::fs::write(
            &registry_config,
            format!(
                "[roles]\nrole = \"registry\"\nauthority = \"{authority_addr}\"\ntell_every_seconds = 1\nmembers_refresh_seconds = 2\n"
            ),
        )
        .expect("write registry.toml");
        let file = patients_file(&registry, patients, texts);
        let rc = registry_config.display().to_string();
        registry.ok(&["--config", &rc, "enroll", &file.display().to_string()]);
        let (registry_proc, registry_addr, _, registry_https) = serve(&registry, &registry_config);
        let patients = (0..patients).map(|i| medical_id_of(&registry, i)).collect();
        let agent = api_agent();
        let ac = authority_config.display().to_string();
        let mut node_procs = Vec::new();
        for n in 0..nodes {
            let c = code(n as u32);
            let dir = init_node(
                &registry,
                n as u32,
                &format!("{}{n}", texts.institution),
                &[
                    "--directory",
                    &authority_addr,
                    "--registry",
                    &registry_addr,
                    "--agency-key",
                    &authority_key,
                ],
            );
            authority.ok(&[
                "--config",
                &ac,
                "institution",
                "add",
                &dir.join("registration.json").display().to_string(),
            ]);
            let mut cfg = NodeConfig::load(&dir.join("node.toml")).expect("node.toml");
            cfg.outbox.interval_ms = 100;
            std::fs::write(dir.join("node.toml"), cfg.commented()).expect("write node.toml");
            let mut node = NodeProc {
                code: c,
                dir,
                api: String::new(),
                token: cfg.api.token.clone(),
                proc_: None,
                agent: agent.clone(),
            };
            node.start();
            node_procs.push(node);
        }
        // From now on the authority keeps its port, so nodes and the registry find it
        // after a restart.
        let listen = authority_addr
            .rsplit_once("/p2p/")
            .map(|(a, _)| a.to_string())
            .expect("the authority's address");
        Federation {
            registry,
            directory: Some(authority_proc),
            directory_addr: authority_addr,
            agency_key: authority_key,
            https: authority_https,
            nodes: node_procs,
            patients,
            listen,
            directory_config: None,
            split: Some(Split {
                authority,
                authority_config,
                registry_config,
                registry_proc: Some(registry_proc),
                registry_addr,
                registry_https,
            }),
        }
    }
}
