//! A bare reverse proxy (nginx) in tollgate's place, as a yardstick: what one more HTTP hop
//! costs on this machine, so that tollgate's added latency can be told apart from it.

use crate::procs::{free_port, Proc};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// nginx serving a forwarding-only configuration; stopped with SIGTERM when dropped.
pub struct Nginx {
    pub proc: Proc,
    pub addr: SocketAddr,
    /// `nginx/1.22.1`, as `nginx -v` says.
    pub version: String,
}

/// The nginx binary: on PATH, else Debian's /usr/sbin (not on every PATH).
pub fn find() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// The configuration: as many workers as cores (as tollgate has threads), keep-alive
/// connections to the mock, no buffering of requests or replies (each upstream read is
/// written to the client at once, as tollgate forwards events), TCP_NODELAY, no access log,
/// no compression. Everything nginx writes stays in `dir`.
pub fn config(listen: SocketAddr, mock: SocketAddr, dir: &Path, root: bool) -> String {
    let d = dir.display();
    format!(
        "daemon off;\n\
         {user}worker_processes auto;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 gzip off;\n\
         \x20 tcp_nodelay on;\n\
         \x20 keepalive_requests 1000000;\n\
         \x20 client_body_temp_path {d}/client_body;\n\
         \x20 proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi;\n\
         \x20 scgi_temp_path {d}/scgi;\n\
         \x20 upstream mock {{ server {mock}; keepalive 256; keepalive_requests 1000000; }}\n\
         \x20 server {{\n\
         \x20   listen {listen};\n\
         \x20   location / {{\n\
         \x20     proxy_pass http://mock;\n\
         \x20     proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n\
         \x20     proxy_buffering off;\n\
         \x20     proxy_request_buffering off;\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n",
        // Run as root, nginx would hand its workers to `nobody`, who cannot use `dir`.
        user = if root { "user root;\n" } else { "" },
    )
}

impl Nginx {
    /// Starts nginx in front of `mock`, with its files in `dir`; `None` when there is no
    /// nginx on this machine.
    pub fn start(dir: &Path, mock: SocketAddr) -> anyhow::Result<Option<Self>> {
        let Some(bin) = find() else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir)?;
        let addr = free_port()?;
        let root = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(addr, mock, dir, root))?;
        let version = Command::new(&bin)
            .arg("-v")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stderr)
                    .trim()
                    .trim_start_matches("nginx version: ")
                    .to_owned()
            })
            .unwrap_or_default();
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut proc = Proc::new("nginx", child);
        // The mock answers any path: any status shows nginx is forwarding.
        proc.wait_ready(
            addr,
            "/v1/models",
            |_| true,
            Duration::from_secs(10),
            &dir.join("error.log"),
        )?;
        Ok(Some(Self {
            proc,
            addr,
            version,
        }))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would leave them serving).
        let _ = self.proc.stop(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_forwards_to_the_mock_unbuffered() {
        let listen: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let mock: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let c = config(listen, mock, Path::new("/tmp/x"), false);
        assert!(c.contains("listen 127.0.0.1:9001;"), "{c}");
        assert!(c.contains("server 127.0.0.1:9002; keepalive"), "{c}");
        for directive in [
            "proxy_buffering off;",
            "proxy_request_buffering off;",
            "tcp_nodelay on;",
            "gzip off;",
            "proxy_http_version 1.1;",
            "pid /tmp/x/nginx.pid;",
        ] {
            assert!(c.contains(directive), "{directive} missing:\n{c}");
        }
        assert!(!c.contains("user root;"));
        assert!(config(listen, mock, Path::new("/tmp/x"), true).contains("user root;\n"));
    }
}
