//! One QEMU boot: TCG by default (`NETBOOT_QEMU_KVM=1` opts into KVM), the serial console on a
//! socket chardev whose log file the harness reads, a timeout, and a watcher callback that sees the
//! console text as it grows and may type into the console.

use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the VM gets its kernel.
#[derive(Debug, Clone)]
pub enum Boot {
    /// `-kernel/-initrd/-append`.
    Direct {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
    /// The NIC's iPXE ROM over user-mode networking with QEMU's TFTP server on `dir`.
    Ipxe { dir: PathBuf, bootfile: String },
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub boot: Boot,
    /// Serial console log.
    pub log: PathBuf,
    pub timeout: Duration,
    /// Let the VM reset on reboot (otherwise `-no-reboot`: a reboot ends QEMU).
    pub allow_reboot: bool,
    pub memory_mb: u32,
    /// Extra QEMU arguments (drives, devices).
    pub extra: Vec<String>,
}

impl VmSpec {
    pub fn direct(kernel: PathBuf, initrd: PathBuf, append: String, log: PathBuf) -> VmSpec {
        VmSpec {
            boot: Boot::Direct {
                kernel,
                initrd,
                append,
            },
            log,
            timeout: Duration::from_secs(120),
            allow_reboot: false,
            memory_mb: 1024,
            extra: Vec::new(),
        }
    }
}

/// What the watcher decides after looking at the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Stop the VM now (kill QEMU).
    Stop,
}

/// Lets a watcher type into the serial console.
pub struct Console {
    socket: Option<UnixStream>,
    path: PathBuf,
}

impl Console {
    pub fn send(&mut self, text: &str) -> Result<()> {
        if self.socket.is_none() {
            self.socket = Some(
                UnixStream::connect(&self.path)
                    .with_context(|| format!("connecting {}", self.path.display()))?,
            );
        }
        let s = self.socket.as_mut().context("no console socket")?;
        s.write_all(text.as_bytes())?;
        s.flush()?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub console: String,
    /// QEMU exited by itself (power off, or reboot under `-no-reboot`).
    pub exited: bool,
    pub timed_out: bool,
    pub elapsed: Duration,
}

pub fn kvm_requested() -> bool {
    std::env::var("NETBOOT_QEMU_KVM").is_ok_and(|v| v == "1")
}

fn command(spec: &VmSpec, socket: &std::path::Path) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
    ]);
    if kvm_requested() {
        c.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        c.args(["-accel", "tcg", "-cpu", "max"]);
    }
    c.args(["-m", &spec.memory_mb.to_string(), "-smp", "1"]);
    c.arg("-chardev").arg(format!(
        "socket,id=s0,path={},server=on,wait=off,logfile={},logappend=off",
        socket.display(),
        spec.log.display()
    ));
    c.args(["-serial", "chardev:s0"]);
    if !spec.allow_reboot {
        c.arg("-no-reboot");
    }
    match &spec.boot {
        Boot::Direct {
            kernel,
            initrd,
            append,
        } => {
            c.arg("-kernel")
                .arg(kernel)
                .arg("-initrd")
                .arg(initrd)
                .arg("-append")
                .arg(append);
        }
        Boot::Ipxe { dir, bootfile } => {
            c.arg("-netdev")
                .arg(format!(
                    "user,id=n0,tftp={},bootfile={bootfile}",
                    dir.display()
                ))
                .args(["-device", "virtio-net-pci,netdev=n0", "-boot", "n"]);
        }
    }
    c.args(&spec.extra);
    c.stdin(Stdio::null()).stdout(Stdio::null());
    c
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Boots; `watch` sees the whole console text every 100 ms until it says stop, QEMU exits, or
/// the timeout passes.
pub fn run(spec: &VmSpec, mut watch: impl FnMut(&str, &mut Console) -> Step) -> Result<Outcome> {
    let socket = spec.log.with_extension("sock");
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&spec.log);
    if let Some(p) = spec.log.parent() {
        std::fs::create_dir_all(p)?;
    }
    let start = Instant::now();
    // A file, not a pipe: nobody reads QEMU's stderr while it runs, and a full pipe would stall it.
    let stderr_path = spec.log.with_extension("qemu-stderr");
    let stderr = std::fs::File::create(&stderr_path)
        .with_context(|| format!("creating {}", stderr_path.display()))?;
    let mut child = command(spec, &socket)
        .stderr(stderr)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let mut console = Console {
        socket: None,
        path: socket.clone(),
    };
    let (mut exited, mut timed_out) = (false, false);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let text =
            String::from_utf8_lossy(&std::fs::read(&spec.log).unwrap_or_default()).into_owned();
        if let Some(status) = child.try_wait()? {
            exited = true;
            if !status.success() && text.is_empty() {
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                anyhow::bail!("qemu exited with {status}: {}", err.trim());
            }
            break;
        }
        if watch(&text, &mut console) == Step::Stop {
            kill(&mut child);
            break;
        }
        if start.elapsed() > spec.timeout {
            timed_out = true;
            kill(&mut child);
            break;
        }
    }
    let _ = std::fs::remove_file(&socket);
    let console =
        String::from_utf8_lossy(&std::fs::read(&spec.log).unwrap_or_default()).into_owned();
    Ok(Outcome {
        console,
        exited,
        timed_out,
        elapsed: start.elapsed(),
    })
}
