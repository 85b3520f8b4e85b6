//! `cargo xtask vmtest [KERNEL...]`: the privileged tests in Debian's own
//! kernels under qemu. Per kernel: its package fetched with a private apt
//! configuration (the host's apt state is untouched, nothing is installed),
//! vmlinuz, config and the modules the tests need extracted, a static agent
//! and static test binaries packed with busybox into an initramfs, one boot
//! under TCG, and the results read back from the serial console.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build::{self, EBPF_OBJECT_VAR};
use crate::cmd;
use crate::setup::{self, Setup, StaticTarget};

/// The guest's CPU architecture and what building and booting for it takes.
pub struct Arch {
    /// Debian's name, as in `APT::Architectures` and package file names.
    debian: &'static str,
    /// The static target the guest binaries are built for.
    target: &'static StaticTarget,
    qemu: &'static str,
    /// The Debian package that ships `qemu`.
    qemu_package: &'static str,
    qemu_args: &'static [&'static str],
    console: &'static str,
}

impl Arch {
    /// Whether the guest runs the build host's binaries: then its tools
    /// are the host's own, otherwise they come from this architecture's .debs.
    fn is_host(&self) -> bool {
        self.target.bpf_arch == std::env::consts::ARCH
    }
}

const AMD64: Arch = Arch {
    debian: "amd64",
    target: &setup::X86_64,
    qemu: "qemu-system-x86_64",
    qemu_package: "qemu-system-x86",
    // /dev/kvm on these machines cannot run stock kernels: TCG only.
    qemu_args: &["-accel", "tcg"],
    console: "ttyS0",
};

const ARM64: Arch = Arch {
    debian: "arm64",
    target: &setup::AARCH64,
    qemu: "qemu-system-aarch64",
    qemu_package: "qemu-system-arm",
    qemu_args: &["-M", "virt", "-cpu", "cortex-a57", "-accel", "tcg"],
    console: "ttyAMA0",
};

/// One guest kernel: Debian suites whose newest `linux-image-<flavour>`
/// metapackage names the kernel package.
pub struct Kernel {
    pub name: &'static str,
    arch: &'static Arch,
    /// (URI, suite) pairs of one private sources list.
    sources: &'static [(&'static str, &'static str)],
    /// The metapackage that depends on the newest image of the suites.
    metapackage: &'static str,
    /// Tests of the guest's suites that do not run on this kernel, and why
    /// (README, "Kernels"): any other test that skips there fails the VM
    /// tier of `cargo xtask test`.
    not_here: &'static [(&'static str, &'static str)],
}

/// Hooks no collector uses, which `hitcount check` reports and every
/// Debian kernel of the guests has (../shared/TOOLCHAIN.md).
const HOOKS_IN_EVERY_GUEST: &[&str] = &["kprobes", "fentry", "BPF LSM"];

/// Needs what the guests do not carry, on every kernel: a broker.
const NEEDS_MOSQUITTO: (&str, &str) =
    ("net/listeners_are_seeded_again_when_the_network_collector_comes_back", "needs mosquitto, not in the guest");

/// Needs sock/sock_send_length and sock_recv_length, which came in 6.3.
const NEEDS_SOCK_LENGTH: [(&str, &str); 2] = [
    ("net/tcp_ipv4_connections_direction_and_exact_bytes", "per-call TCP bytes need Linux 6.3+"),
    ("net/tcp_bytes_per_call_ignore_retransmissions", "per-call TCP bytes need Linux 6.3+"),
];

const DEBIAN: &str = "http://deb.debian.org/debian";
const SECURITY: &str = "http://deb.debian.org/debian-security";

pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        arch: &AMD64,
        sources: &[(DEBIAN, "bullseye"), (SECURITY, "bullseye-security")],
        metapackage: "linux-image-amd64",
        not_here: &[NEEDS_MOSQUITTO, NEEDS_SOCK_LENGTH[0], NEEDS_SOCK_LENGTH[1]],
    },
    Kernel {
        name: "6.1",
        arch: &AMD64,
        sources: &[(DEBIAN, "bookworm"), (SECURITY, "bookworm-security")],
        metapackage: "linux-image-amd64",
        not_here: &[NEEDS_MOSQUITTO, NEEDS_SOCK_LENGTH[0], NEEDS_SOCK_LENGTH[1]],
    },
    Kernel {
        name: "6.12",
        arch: &AMD64,
        sources: &[(DEBIAN, "trixie"), (SECURITY, "trixie-security")],
        metapackage: "linux-image-amd64",
        not_here: &[NEEDS_MOSQUITTO],
    },
    Kernel {
        name: "6.12-arm64",
        arch: &ARM64,
        sources: &[(DEBIAN, "trixie"), (SECURITY, "trixie-security")],
        metapackage: "linux-image-arm64",
        not_here: &[NEEDS_MOSQUITTO],
    },
];

/// Modules the tests need (the net suite's veth pairs; nf_tables and its
/// numgen expression for the tests that drop packets), loaded with their
/// dependencies first. Debian builds them as modules; initramfs, devtmpfs,
/// the serial console, BPF and cgroup2 are built in.
const MODULES: &[&str] = &["veth", "nf_tables", "nft_numgen"];

/// How modules are resolved, kept with each kernel's extraction: one made
/// another way is made again.
const MODULE_RESOLUTION: &str = "depends= and softdep=pre:";

/// Keyring of the machine's own apt sources; it also signs the other suites.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// What a privileged suite needs that the guest lacks, or None: it runs there.
const SUITES: &[(&str, Option<&str>)] = &[
    ("process", None),
    ("net", None),
    ("acl", Some("needs mosquitto, not in the guest")),
    ("baseline", Some("needs sysctl and the host's /etc, not in the guest")),
    ("cli", Some("not yet packed for the guest")),
    ("collectors", Some("not yet packed for the guest")),
    ("container", Some("needs podman, not in the guest")),
    ("firewall", Some("needs nft and iptables, not in the guest")),
    ("hardware", Some("needs pci.ids, usb.ids and PCI devices, not in the guest")),
    ("inventory", Some("needs ss, useradd and getent, not in the guest")),
    ("login", Some("needs sshd and sshpass, not in the guest")),
    ("mqtt", Some("needs mosquitto, not in the guest")),
    ("sbom", Some("needs dpkg, rpm and python validators, not in the guest")),
];

/// Host programs the running suites call by name (iproute2's `ip`, for
/// netns and veth, which busybox's cannot make; iputils' ping), copied in
/// with the shared libraries they load; installed on the host from apt when
/// missing, as the host's privileged tier does.
const HOST_TOOLS: &[(&str, &str)] = &[("ip", "iproute2"), ("ping", "iputils-ping"), ("nft", "nftables")];

/// Packages of the guest tools of another architecture than the host's:
/// busybox (the host's is an x86_64 binary) and HOST_TOOLS' packages.
fn foreign_tool_packages() -> Vec<&'static str> {
    std::iter::once("busybox-static").chain(HOST_TOOLS.iter().map(|(_, package)| *package)).collect()
}

/// How long one guest may run before it is killed and its missing results
/// count as failures.
const GUEST_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// How long one test may run inside the guest (busybox timeout).
const TEST_TIMEOUT_SECS: u32 = 900;

/// Where the xtask keeps downloads and guest trees.
fn cache_dir() -> PathBuf {
    cmd::target_dir().join("vmtest")
}

/// The kernels the VM tier of `cargo xtask test` (and so CI) boots.
pub const TEST_TIER_KERNELS: &[&str] = &["5.10", "6.12", "6.12-arm64"];

/// What a test that skips in a guest means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// Reported (`cargo xtask vmtest`).
    Report,
    /// A failure unless the kernel's `not_here` lists it (the test tier).
    SupportedMustRun,
}

/// `cargo xtask vmtest KERNEL...`.
pub fn run(setup: &Setup, names: &[String]) -> Result<()> {
    run_kernels(setup, &select(names)?, Strictness::Report)
}

/// The VM tier of `cargo xtask test`: TEST_TIER_KERNELS, strictly.
pub fn run_test_tier(setup: &Setup) -> Result<()> {
    run_kernels(setup, &test_tier_kernels()?, Strictness::SupportedMustRun)
}

fn test_tier_kernels() -> Result<Vec<&'static Kernel>> {
    TEST_TIER_KERNELS
        .iter()
        .map(|n| {
            KERNELS.iter().find(|k| k.name == *n).with_context(|| format!("TEST_TIER_KERNELS: unknown kernel {n}"))
        })
        .collect()
}

fn run_kernels(setup: &Setup, kernels: &[&'static Kernel], strictness: Strictness) -> Result<()> {
    // A fresh machine has neither: the guest's shell and tools are
    // busybox-static's, and Debian's modules are xz-compressed.
    if !Path::new("/bin/busybox").exists() || !is_static_busybox(Path::new("/bin/busybox"))? {
        setup::apt_install(&["busybox-static"]).context("the guest's shell and tools are busybox-static's")?;
    }
    if !cmd::on_path("xz") {
        setup::apt_install(&["xz-utils"])?;
    }
    for tool in ["dpkg-deb", "apt-get"] {
        if !cmd::on_path(tool) {
            bail!("{tool} is not on PATH: vmtest fetches Debian's kernels with apt");
        }
    }
    let mut failed = false;
    let mut lines = Vec::new();
    // One build per architecture, shared by its kernels.
    let mut built: BTreeMap<&str, GuestBinaries> = BTreeMap::new();
    for &kernel in kernels {
        let started = Instant::now();
        if !built.contains_key(kernel.arch.debian) {
            built.insert(kernel.arch.debian, build_guest_binaries(setup, kernel.arch)?);
        }
        let bins = &built[kernel.arch.debian];
        let files = fetch_kernel(kernel)?;
        let initrd = pack_initramfs(kernel, &files, bins)?;
        let prepared = started.elapsed();
        let boot = Instant::now();
        let console = boot_guest(kernel, &files, &initrd)?;
        let outcome = parse_console(&console);
        let mut summary = Summary::of(&outcome, &skipped_suites()?);
        if strictness == Strictness::SupportedMustRun {
            summary.fail_unexpected_skips(kernel);
            summary.fail_missing_hooks(&outcome);
        }
        let line = format!(
            "kernel {}: {} passed, {} failed, {} skipped",
            kernel.name,
            summary.passed,
            summary.failed,
            summary.skips.len()
        );
        println!("{line}");
        for Skip { test, why, .. } in &summary.skips {
            println!("  skipped {test}: {why}");
        }
        for (test, why) in &summary.failures {
            println!("  failed {test}: {why}");
        }
        println!(
            "kernel {} ({}): prepared in {:.0?}, guest ran {:.0?}",
            kernel.name,
            files.release,
            prepared,
            boot.elapsed()
        );
        if summary.failed > 0 || summary.passed == 0 {
            failed = true;
        }
        lines.push(line);
    }
    println!("vmtest summary:");
    for line in &lines {
        println!("{line}");
    }
    if failed {
        bail!("a test failed, or a kernel ran no test");
    }
    Ok(())
}

fn select(names: &[String]) -> Result<Vec<&'static Kernel>> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(KERNELS.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            KERNELS.iter().find(|k| k.name == n).with_context(|| {
                let known: Vec<_> = KERNELS.iter().map(|k| k.name).collect();
                format!("unknown kernel {n}; known: {} or all", known.join(", "))
            })
        })
        .collect()
}

fn is_static_busybox(path: &Path) -> Result<bool> {
    let elf = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(!build::has_interpreter(&elf)?)
}

/// A kernel's files on the host, extracted from its package.
struct KernelFiles {
    /// `uname -r` of the kernel, e.g. `6.1.0-41-amd64`.
    release: String,
    vmlinuz: PathBuf,
    config: PathBuf,
    /// Decompressed modules, dependencies before the modules that use them.
    modules: Vec<PathBuf>,
}

/// The private apt configuration of one kernel: its own sources, lists and
/// cache; an empty status file, so nothing installed on the host matters.
fn apt_config(kernel: &Kernel, dir: &Path) -> Result<PathBuf> {
    let sources = dir.join("sources.list.d");
    for sub in [sources.clone(), dir.join("lists/partial"), dir.join("cache/archives/partial")] {
        std::fs::create_dir_all(&sub).with_context(|| format!("cannot create {}", sub.display()))?;
    }
    let mut list = String::new();
    for (uri, suite) in kernel.sources {
        list.push_str(&format!("Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\nSigned-By: {KEYRING}\n\n"));
    }
    std::fs::write(sources.join("kernel.sources"), list)?;
    let status = dir.join("status");
    std::fs::write(&status, "")?;
    let config = dir.join("apt.conf");
    std::fs::write(
        &config,
        format!(
            "Dir::Etc::SourceList \"/dev/null\";\nDir::Etc::SourceParts \"{}\";\nDir::State::Lists \"{}\";\n\
             Dir::State::status \"{}\";\nDir::Cache \"{}\";\nAPT::Architecture \"{arch}\";\nAPT::Architectures {{ \"{arch}\"; }};\n\
             Acquire::Languages \"none\";\nAPT::Sandbox::User \"root\";\n",
            sources.display(),
            dir.join("lists").display(),
            status.display(),
            dir.join("cache").display(),
            arch = kernel.arch.debian
        ),
    )?;
    Ok(config)
}

fn apt(config: &Path, program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("APT_CONFIG", config).env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null());
    c
}

/// The package `metapackage` depends on (`apt-cache depends` prints
/// `  Depends: linux-image-6.1.0-41-amd64`).
fn image_package(depends: &str) -> Option<&str> {
    depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .filter(|p| p.starts_with("linux-image-"))
}

impl Kernel {
    /// The kernel's directory name under `target/vmtest/kernels` and `guests`.
    fn cache_name(&self) -> String {
        format!("{}-{}", self.name, self.arch.debian)
    }
}

/// Where a kernel's package, apt state and extracted files are kept.
fn kernel_dir(kernel: &Kernel) -> PathBuf {
    cache_dir().join("kernels").join(kernel.cache_name())
}

/// Downloads (once) and extracts the kernel's image package.
fn fetch_kernel(kernel: &Kernel) -> Result<KernelFiles> {
    let dir = kernel_dir(kernel);
    let done = dir.join("release");
    let files = |release: String| -> Result<KernelFiles> {
        let modules = std::fs::read_to_string(dir.join("modules"))?
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| dir.join(l))
            .collect();
        Ok(KernelFiles {
            vmlinuz: dir.join("vmlinuz"),
            config: dir.join(format!("config-{release}")),
            modules,
            release,
        })
    };
    // A kernel extracted for another module list is extracted again.
    let wanted_file = dir.join("wanted-modules");
    let wanted_now = format!("{MODULE_RESOLUTION}\n{}", MODULES.join("\n"));
    let cached_for = std::fs::read_to_string(&wanted_file).unwrap_or_default();
    if let (Ok(release), true) = (std::fs::read_to_string(&done), cached_for == wanted_now) {
        eprintln!("vmtest: kernel {}: {} (cached in {})", kernel.name, release.trim(), dir.display());
        return files(release.trim().to_string());
    }
    let config = apt_config(kernel, &dir.join("apt"))?;
    eprintln!("vmtest: kernel {}: apt-get update of {:?}", kernel.name, kernel.sources);
    cmd::run(apt(&config, "apt-get").args(["update", "-q"])).context("apt-get update (private lists) failed")?;
    let depends = cmd::output(apt(&config, "apt-cache").args(["depends", kernel.metapackage]))?;
    let package = image_package(&depends)
        .with_context(|| format!("{} depends on no linux-image package: {depends}", kernel.metapackage))?
        .to_string();
    let downloads = dir.join("deb");
    std::fs::create_dir_all(&downloads)?;
    cmd::run(apt(&config, "apt-get").args(["download", "-q", &package]).current_dir(&downloads))
        .with_context(|| format!("apt-get download {package} failed"))?;
    let deb = std::fs::read_dir(&downloads)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| format!("no .deb in {}", downloads.display()))?;

    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree)?;
    extract(&deb, &tree, &["./boot/vmlinuz-*", "./boot/config-*"])?;
    let boot = tree.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("vmlinuz-"))
        .with_context(|| format!("no vmlinuz in {}", deb.display()))?;
    let release = vmlinuz.file_name().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    std::fs::copy(vmlinuz.path(), dir.join("vmlinuz"))?;
    std::fs::copy(boot.join(format!("config-{release}")), dir.join(format!("config-{release}")))?;

    // The package has no modules.dep or modules.alias (depmod writes them
    // on install): each module's own .modinfo names what must be loaded
    // before it, `depends=` for symbols and `softdep=pre:` for what its
    // init asks for by name (libcrc32c allocates the "crc32c" hash, so
    // without crc32c_generic its insmod fails with ENOENT).
    let members = module_members(&deb)?;
    let mut order: Vec<String> = Vec::new();
    let mut wanted: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
    let mut found: BTreeMap<String, (PathBuf, Vec<String>)> = BTreeMap::new();
    while !wanted.is_empty() {
        let resolved: Vec<(String, &str)> = std::mem::take(&mut wanted)
            .into_iter()
            .map(|m| {
                let member =
                    resolve_module(&members, &m).with_context(|| format!("module {m} is not in {}", deb.display()))?;
                Ok((m, member))
            })
            .collect::<Result<_>>()?;
        extract(&deb, &tree, &resolved.iter().map(|(_, member)| *member).collect::<Vec<_>>())?;
        let mut next = Vec::new();
        for (m, member) in resolved {
            let ko = decompressed(&tree.join(member))?;
            let modinfo = std::fs::read(&ko)?;
            let mut deps = module_depends(&modinfo);
            deps.extend(module_softdeps_pre(&modinfo));
            next.extend(deps.iter().filter(|d| !found.contains_key(*d)).cloned());
            found.insert(m, (ko, deps));
        }
        next.sort();
        next.dedup();
        wanted = next;
    }
    for m in MODULES {
        load_order(m, &found, &mut order);
    }
    let mut listed = String::new();
    for (i, m) in order.iter().enumerate() {
        // The file's own name: a softdep may name an alias (crc32c).
        let file = found[m].0.file_stem().expect("module file").to_string_lossy().into_owned();
        let name = format!("{i:02}-{file}.ko");
        std::fs::copy(&found[m].0, dir.join(&name))?;
        listed.push_str(&name);
        listed.push('\n');
    }
    std::fs::write(dir.join("modules"), listed)?;
    std::fs::write(&wanted_file, &wanted_now)?;
    std::fs::remove_dir_all(&tree)?;
    std::fs::write(&done, &release)?;
    eprintln!("vmtest: kernel {}: {release} from {}", kernel.name, deb.display());
    files(release)
}

/// Dependencies first, each module once.
fn load_order(m: &str, found: &BTreeMap<String, (PathBuf, Vec<String>)>, order: &mut Vec<String>) {
    if order.iter().any(|o| o == m) {
        return;
    }
    if let Some((_, deps)) = found.get(m) {
        for d in deps {
            load_order(d, found, order);
        }
    }
    order.push(m.to_string());
}

/// `dpkg-deb --fsys-tarfile DEB | tar -x PATTERNS`.
fn extract(deb: &Path, into: &Path, patterns: &[&str]) -> Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start dpkg-deb")?;
    let status = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .arg("--wildcards")
        .args(patterns)
        .stdin(dpkg.stdout.take().context("dpkg-deb stdout")?)
        .status()
        .context("cannot start tar")?;
    let dpkg_status = dpkg.wait()?;
    if !status.success() || !dpkg_status.success() {
        bail!("extracting {patterns:?} from {} failed (tar {status}, dpkg-deb {dpkg_status})", deb.display());
    }
    Ok(())
}

/// The kernel modules in a package, as archive members (`./usr/lib/modules/R/kernel/net/veth.ko.xz`).
fn module_members(deb: &Path) -> Result<Vec<String>> {
    let listing = cmd::output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    Ok(module_paths(&listing))
}

/// The `.ko`/`.ko.xz` paths of `dpkg-deb --contents` output (the path is
/// the last field; a symlink line goes on with ` -> target`).
fn module_paths(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .filter(|p| p.ends_with(".ko") || p.ends_with(".ko.xz"))
        .map(str::to_string)
        .collect()
}

/// The member that is module `name`. Module names treat `-` and `_` alike
/// (crc32c-intel.ko is crc32c_intel). A name that is no file is taken for a
/// crypto algorithm, which softdeps name (libcrc32c's `pre: crc32c`): its
/// portable implementation is `<name>_generic`, which registers that alias
/// (crypto/*_generic.c); without modules.alias nothing else says so.
fn resolve_module<'a>(members: &'a [String], name: &str) -> Option<&'a str> {
    let module_name = |member: &str| -> String {
        let file = member.rsplit('/').next().unwrap_or(member);
        file.trim_end_matches(".xz").trim_end_matches(".ko").replace('-', "_")
    };
    let normal = name.replace('-', "_");
    let generic = format!("{normal}_generic");
    [normal, generic].into_iter().find_map(|want| members.iter().find(|m| module_name(m) == want).map(String::as_str))
}

/// A `.ko.xz` decompressed next to itself (busybox insmod reads plain ELF).
fn decompressed(path: &Path) -> Result<PathBuf> {
    if path.extension().is_none_or(|x| x != "xz") {
        return Ok(path.to_path_buf());
    }
    cmd::run(Command::new("xz").args(["-d", "-f", "-k"]).arg(path))?;
    Ok(path.with_extension(""))
}

/// The `depends=` entry of a module's `.modinfo` section: the modules it
/// needs, comma-separated (scripts/mod/modpost.c writes it, empty when none).
fn module_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else { return Vec::new() };
    let value = &ko[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).split(',').filter(|d| !d.is_empty()).map(str::to_string).collect()
}

/// The modules a module's `softdep=` entries say load before it: the names
/// after `pre:` up to a `post:` (`softdep=pre: crc32c`, or several
/// entries, each `pre: a b post: c`; modpost writes one entry per
/// MODULE_SOFTDEP).
fn module_softdeps_pre(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0softdep=";
    let mut names = Vec::new();
    let mut rest = ko;
    while let Some(at) = rest.windows(KEY.len()).position(|w| w == KEY) {
        let value = &rest[at + KEY.len()..];
        let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
        let mut pre = false;
        for word in String::from_utf8_lossy(&value[..end]).split_whitespace() {
            match word {
                "pre:" => pre = true,
                "post:" => pre = false,
                name if pre => names.push(name.to_string()),
                _ => {}
            }
        }
        rest = &value[end..];
    }
    names
}

/// (suite, test binary) pairs.
type SuiteBinaries = Vec<(String, PathBuf)>;

/// A suite that does not run in the guest: its tests and why.
struct SkippedSuite {
    suite: String,
    tests: Vec<String>,
    why: String,
}

/// The static binaries of one architecture.
struct GuestBinaries {
    agent: PathBuf,
    /// (suite, test binary) of the suites that run in the guest.
    suites: SuiteBinaries,
    /// The tests crate's helper binaries (forker, net-peer, ...).
    helpers: Vec<PathBuf>,
}

fn build_guest_binaries(setup: &Setup, arch: &Arch) -> Result<GuestBinaries> {
    setup::ensure_static_toolchain(arch.target)?;
    let ebpf_object = build::build_ebpf_for(setup, arch.target)?;
    let agent = build::build_static_agent(&ebpf_object, arch.target)?;
    let mut cargo = cmd::cargo(None);
    cargo
        .args(["test", "--release", "-p", "tests", "--no-run", "--message-format", "json-render-diagnostics"])
        .args(["--target", arch.target.rust_target])
        .env(EBPF_OBJECT_VAR, &ebpf_object);
    build::static_env(&mut cargo, arch.target);
    for (suite, _) in SUITES.iter().filter(|(_, skip)| skip.is_none()) {
        cargo.args(["--test", suite]);
    }
    let out = cmd::output(&mut cargo).context("building the static test binaries failed")?;
    let (suites, helpers) = test_artifacts(&out)?;
    for (_, bin) in &suites {
        let elf = std::fs::read(bin)?;
        if build::has_interpreter(&elf)? {
            bail!("{} is dynamically linked; the guest has no libc", bin.display());
        }
    }
    Ok(GuestBinaries { agent, suites, helpers })
}

/// Test and binary executables of the `tests` package from cargo's JSON messages.
fn test_artifacts(json: &str) -> Result<(SuiteBinaries, Vec<PathBuf>)> {
    let (mut suites, mut helpers) = (Vec::new(), Vec::new());
    for line in json.lines().filter(|l| l.starts_with('{')) {
        let msg: serde_json::Value = serde_json::from_str(line).context("cargo printed a line that is not JSON")?;
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else { continue };
        let kind = &msg["target"]["kind"][0];
        let name = msg["target"]["name"].as_str().unwrap_or_default().to_string();
        if kind == "test" {
            suites.push((name, PathBuf::from(exe)));
        } else if kind == "bin" && msg["package_id"].as_str().is_some_and(|p| p.contains("/tests#")) {
            helpers.push(PathBuf::from(exe));
        }
    }
    if suites.is_empty() {
        bail!("cargo built no test binary");
    }
    Ok((suites, helpers))
}

/// The suites that do not run in the guest, with each one's tests (read
/// from its source: the binary is not built) and the reason.
fn skipped_suites() -> Result<Vec<SkippedSuite>> {
    let mut out = Vec::new();
    for (suite, why) in SUITES {
        let Some(why) = why else { continue };
        let path = cmd::workspace_root().join("tests/tests").join(format!("{suite}.rs"));
        let source = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        out.push(SkippedSuite { suite: suite.to_string(), tests: test_names(&source), why: why.to_string() });
    }
    Ok(out)
}

/// Names of the `#[test]` functions of a suite's source.
fn test_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut pending = false;
    for line in source.lines().map(str::trim) {
        if line == "#[test]" {
            pending = true;
        } else if pending {
            if let Some(rest) = line.strip_prefix("fn ").or_else(|| line.strip_prefix("async fn ")) {
                names.push(rest.split(['(', '<']).next().unwrap_or(rest).trim().to_string());
                pending = false;
            }
        }
    }
    names
}

/// The guest's /init: filesystems, modules, then every test of every
/// running suite on its own (`--exact`), one result line each.
fn init_script(release: &str, modules: &[String], suites: &[(String, String)]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root HITCOUNT_BIN=/hc/hitcount\n\
         mkdir -p /proc /sys /dev /tmp /run /root\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /tmp\n\
         mount -t tmpfs tmpfs /run\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         mount -t securityfs securityfs /sys/kernel/security\n\
         echo 1 > /proc/sys/kernel/printk\n\
         hostname hcvm\n\
         /usr/bin/ip link set lo up\n",
    );
    s.push_str(&format!("echo \"HCVM-BEGIN $(uname -r) expected {release}\"\n"));
    for m in modules {
        s.push_str(&format!("insmod /lib/modules/hc/{m} || echo \"HCVM-ERROR insmod {m} failed\"\n"));
    }
    // What the agent itself says about this kernel, for the report.
    s.push_str("/hc/hitcount check 2>&1 | sed 's/^/HCVM-CHECK /'\n");
    // Per-packet TCP bytes count retransmitted segments again: a failed
    // byte count says how many there were (this namespace's RetransSegs).
    s.push_str(
        "retransmitted() {\n\
         \x20 awk '/^Tcp:/ { if (!c) { for (i = 1; i <= NF; i++) if ($i == \"RetransSegs\") c = i } else print $c }' /proc/net/snmp\n\
         }\n",
    );
    s.push_str(&format!(
        "run_suite() {{\n\
         \x20 suite=$1; bin=/hc/deps/$2\n\
         \x20 tests=$($bin --list --format terse 2>/dev/null | sed -n 's/: test$//p')\n\
         \x20 echo \"HCVM-SUITE $suite $(echo $tests | wc -w)\"\n\
         \x20 for t in $tests; do\n\
         \x20   rm -f /tmp/skip; start=$(date +%s); r0=$(retransmitted)\n\
         \x20   HITCOUNT_SKIP_LOG=/tmp/skip timeout -s KILL {TEST_TIMEOUT_SECS} $bin --exact \"$t\" --test-threads=1 >/tmp/out 2>&1\n\
         \x20   rc=$?; took=$(( $(date +%s) - start ))\n\
         \x20   if [ $rc -eq 0 ] && grep -q '^test result: ok. 1 passed' /tmp/out; then\n\
         \x20     if [ -s /tmp/skip ]; then echo \"HCVM-RESULT $suite $t skipped ${{took}}s $(head -n 1 /tmp/skip | sed 's/^[^:]*: //')\"\n\
         \x20     else echo \"HCVM-RESULT $suite $t passed ${{took}}s\"; fi\n\
         \x20   else\n\
         \x20     tail -n 200 /tmp/out | sed 's/^/HCVM-OUT /'\n\
         \x20     echo \"HCVM-RESULT $suite $t failed ${{took}}s exit $rc, $(( $(retransmitted) - r0 )) TCP segments retransmitted\"\n\
         \x20   fi\n\
         \x20 done\n\
         }}\n"
    ));
    for (suite, file) in suites {
        s.push_str(&format!("run_suite {suite} {file}\n"));
    }
    s.push_str("echo HCVM-END\nsync\npoweroff -f\n");
    s
}

/// Copies `src` to `root` + `dest`, creating directories.
fn put(root: &Path, dest: &str, src: &Path) -> Result<()> {
    let to = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(to.parent().expect("a file path"))?;
    std::fs::copy(src, &to).with_context(|| format!("cannot copy {} to {}", src.display(), to.display()))?;
    Ok(())
}

/// A host program by name and the shared libraries `ldd` says it loads,
/// as (path in the guest, file on the host).
fn host_tool_files(name: &str) -> Result<Vec<(String, PathBuf)>> {
    let path = host_tool(name).with_context(|| format!("{name} is not installed on the host"))?;
    let mut files = vec![(format!("/usr/bin/{name}"), path.clone())];
    let ldd = cmd::output(Command::new("ldd").arg(&path))?;
    for lib in ldd_paths(&ldd) {
        files.push((lib.clone(), std::fs::canonicalize(&lib)?));
    }
    Ok(files)
}

fn host_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// The tools' packages of a foreign architecture and everything they
/// depend on, downloaded (once) with the kernel's private apt configuration
/// and unpacked into one tree, which is returned.
fn foreign_tools(kernel: &Kernel) -> Result<PathBuf> {
    let dir = cache_dir().join("tools").join(kernel.arch.debian);
    let tree = dir.join("tree");
    let done = dir.join("done");
    let tool_packages = foreign_tool_packages();
    let wanted = tool_packages.join("\n");
    if std::fs::read_to_string(&done).is_ok_and(|d| d == wanted) {
        return Ok(tree);
    }
    // fetch_kernel has updated these lists.
    let config = apt_config(kernel, &kernel_dir(kernel).join("apt"))?;
    let depends = cmd::output(
        apt(&config, "apt-cache")
            .args(["depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts"])
            .args(["--no-breaks", "--no-replaces", "--no-enhances"])
            .args(&tool_packages),
    )
    .context("apt-cache depends of the guest tools failed")?;
    let packages = package_closure(&depends);
    let downloads = dir.join("debs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&downloads)?;
    eprintln!("vmtest: {} tools: downloading {} packages", kernel.arch.debian, packages.len());
    cmd::run(apt(&config, "apt-get").args(["download", "-q"]).args(&packages).current_dir(&downloads))
        .context("apt-get download of the guest tools failed")?;
    std::fs::create_dir_all(&tree)?;
    for deb in std::fs::read_dir(&downloads)? {
        let deb = deb?.path();
        if deb.extension().is_some_and(|x| x == "deb") {
            cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        }
    }
    std::fs::write(&done, wanted)?;
    Ok(tree)
}

/// The real packages of `apt-cache depends --recurse` output (its unindented
/// lines; `<name>` ones are virtual).
fn package_closure(depends: &str) -> Vec<String> {
    let mut packages: Vec<String> = depends
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('<') && !l.is_empty())
        .map(|l| l.trim().to_string())
        .collect();
    packages.sort();
    packages.dedup();
    packages
}

/// A program of an unpacked tree: the regular file (not a symlink, whose
/// absolute target would point into the host) in one of the bin directories.
fn tree_program(tree: &Path, name: &str) -> Result<PathBuf> {
    ["usr/bin", "usr/sbin", "bin", "sbin"]
        .iter()
        .map(|d| tree.join(d).join(name))
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .with_context(|| format!("no {name} in {}", tree.display()))
}

/// HOST_TOOLS from a foreign tree at /usr/bin, as the host's are, with
/// every shared library of the tree's multiarch directory (their symlinks
/// kept) and the loader at the path the binaries name (PT_INTERP).
fn put_foreign_tools(root: &Path, tree: &Path, arch: &Arch) -> Result<()> {
    for (tool, _) in HOST_TOOLS {
        put(root, &format!("/usr/bin/{tool}"), &tree_program(tree, tool)?)?;
    }
    let triplet = format!("{}-linux-gnu", arch.target.bpf_arch);
    // Trixie's packages ship merged /usr; the loader at /lib and the
    // libraries at /lib/<triplet>, on glibc's built-in search path.
    let libs = tree.join("usr/lib").join(&triplet);
    let into = root.join("lib").join(&triplet);
    std::fs::create_dir_all(&into)?;
    for entry in std::fs::read_dir(&libs).with_context(|| format!("cannot read {}", libs.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_string_lossy().contains(".so") {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, into.join(&name))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), into.join(&name))?;
        }
    }
    let loader = format!("ld-linux-{}.so.1", arch.target.bpf_arch);
    let found = ["usr/lib", "lib"]
        .iter()
        .map(|d| tree.join(d).join(&loader))
        .find(|p| p.exists())
        .map(|p| if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) { libs.join(&loader) } else { p })
        .with_context(|| format!("no {loader} in {}", tree.display()))?;
    put(root, &format!("/lib/{loader}"), &found)?;
    Ok(())
}

/// Absolute library paths in `ldd` output (`libc.so.6 => /lib/... (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`).
fn ldd_paths(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=>").map_or(l, |(_, p)| p.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_string())
        })
        .collect()
}

fn pack_initramfs(kernel: &Kernel, files: &KernelFiles, bins: &GuestBinaries) -> Result<PathBuf> {
    let dir = cache_dir().join("guests").join(kernel.cache_name());
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin"))?;
    // Another architecture's busybox, tools and libraries come from its .debs.
    let foreign = if kernel.arch.is_host() { None } else { Some(foreign_tools(kernel)?) };
    let busybox = match &foreign {
        Some(tree) => tree_program(tree, "busybox")?,
        None => PathBuf::from("/bin/busybox"),
    };
    put(&root, "/bin/busybox", &busybox)?;
    // The host's busybox lists the applets: the same upstream tool, a
    // different Debian release at most.
    let applets = cmd::output(Command::new("/bin/busybox").arg("--list-full"))?;
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "bin/busybox") {
        let link = root.join(applet);
        std::fs::create_dir_all(link.parent().expect("applet path"))?;
        // A host tool of the same name is copied in instead.
        if HOST_TOOLS.iter().any(|(t, _)| applet.ends_with(&format!("/{t}"))) {
            continue;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link)?;
    }
    match &foreign {
        Some(tree) => put_foreign_tools(&root, tree, kernel.arch)?,
        None => {
            for (tool, package) in HOST_TOOLS {
                if host_tool(tool).is_none() {
                    setup::apt_install(&[package])?;
                }
                for (dest, src) in host_tool_files(tool)? {
                    put(&root, &dest, &src)?;
                }
            }
        }
    }
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n::1 localhost\n")?;
    // iproute2 keeps named network namespaces in /var/run/netns.
    std::fs::create_dir_all(root.join("var"))?;
    std::os::unix::fs::symlink("/run", root.join("var/run"))?;
    put(&root, &format!("/boot/config-{}", files.release), &files.config)?;
    let mut modules = Vec::new();
    for m in &files.modules {
        let name = m.file_name().expect("module file").to_string_lossy().into_owned();
        put(&root, &format!("/lib/modules/hc/{name}"), m)?;
        modules.push(name);
    }
    put(&root, "/hc/hitcount", &bins.agent)?;
    for helper in &bins.helpers {
        put(&root, &format!("/hc/{}", helper.file_name().expect("file").to_string_lossy()), helper)?;
    }
    // Under cargo's own file name (net-0123abcd): tests check that the
    // command line the agent reports is theirs.
    let mut suites = Vec::new();
    for (suite, bin) in &bins.suites {
        let file = bin.file_name().expect("file").to_string_lossy().into_owned();
        put(&root, &format!("/hc/deps/{file}"), bin)?;
        suites.push((suite.clone(), file));
    }
    let init = root.join("init");
    std::fs::write(&init, init_script(&files.release, &modules, &suites))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;

    // `find . | busybox cpio -o -H newc`, in the tree (the host has no cpio).
    let list = cmd::output(Command::new("/bin/busybox").args(["find", "."]).current_dir(&root))?;
    let initrd = dir.join("initrd.cpio");
    let out = std::fs::File::create(&initrd)?;
    let mut cpio = Command::new("/bin/busybox")
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start busybox cpio")?;
    cpio.stdin.take().context("cpio stdin")?.write_all(list.as_bytes())?;
    let status = cpio.wait()?;
    if !status.success() {
        bail!("busybox cpio failed with {status}");
    }
    eprintln!("vmtest: initramfs {} ({} MB)", initrd.display(), std::fs::metadata(&initrd)?.len() >> 20);
    Ok(initrd)
}

/// Boots the kernel and returns its console output; live progress goes to
/// stderr, the whole console to a log next to the initramfs.
fn boot_guest(kernel: &Kernel, files: &KernelFiles, initrd: &Path) -> Result<String> {
    let arch = kernel.arch;
    if !cmd::on_path(arch.qemu) {
        setup::apt_install(&[arch.qemu_package]).context("qemu is needed to boot the guest kernels")?;
    }
    let log_path = initrd.with_file_name("console.log");
    let mut qemu = Command::new(arch.qemu);
    qemu.args(arch.qemu_args)
        .args(["-m", "1024", "-smp", "2", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(&files.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", &format!("console={} quiet panic=-1", arch.console)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("vmtest: kernel {}: booting ({})", kernel.name, cmd::describe(&qemu));
    let mut child = qemu.spawn().with_context(|| format!("cannot start {}", arch.qemu))?;
    let pid = child.id();
    // A watchdog: a hung guest must not hang the run.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(GUEST_TIMEOUT).is_err() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            true
        } else {
            false
        }
    });
    let mut log = std::fs::File::create(&log_path)?;
    let mut console = String::new();
    let stdout = child.stdout.take().context("qemu stdout")?;
    for line in BufReader::new(stdout).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).trim_end_matches('\r').to_string();
        writeln!(log, "{line}")?;
        if ["HCVM-RESULT", "HCVM-SUITE", "HCVM-ERROR", "HCVM-CHECK"].iter().any(|p| line.starts_with(p)) {
            eprintln!("vmtest: {}: {line}", kernel.name);
        }
        console.push_str(&line);
        console.push('\n');
    }
    let status = child.wait()?;
    let _ = done_tx.send(());
    if watchdog.join().unwrap_or(false) {
        console.push_str(&format!("HCVM-TIMEOUT guest killed after {GUEST_TIMEOUT:?}\n"));
    }
    eprintln!("vmtest: kernel {}: qemu exited with {status}; console in {}", kernel.name, log_path.display());
    Ok(console)
}

/// What the guest printed.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    /// (suite/test, result, rest of the line).
    results: Vec<(String, String, String)>,
    /// Tests each suite listed.
    listed: BTreeMap<String, usize>,
    ended: bool,
    /// Output of failed tests, by suite/test.
    output: BTreeMap<String, Vec<String>>,
    errors: Vec<String>,
    /// What `hitcount check` printed, one line each.
    checks: Vec<String>,
}

fn parse_console(console: &str) -> Outcome {
    let mut o = Outcome::default();
    let mut pending: Vec<String> = Vec::new();
    for line in console.lines() {
        // Kernel messages can share a line with the guest's output.
        let Some(at) = line.find("HCVM-") else { continue };
        let line = &line[at..];
        let mut words = line.splitn(5, ' ');
        match words.next() {
            Some("HCVM-OUT") => pending.push(line.strip_prefix("HCVM-OUT ").unwrap_or("").to_string()),
            Some("HCVM-SUITE") => {
                if let (Some(suite), Some(Ok(n))) = (words.next(), words.next().map(str::parse)) {
                    o.listed.insert(suite.to_string(), n);
                }
            }
            Some("HCVM-RESULT") => {
                let (suite, test, result) = (words.next(), words.next(), words.next());
                if let (Some(suite), Some(test), Some(result)) = (suite, test, result) {
                    let name = format!("{suite}/{test}");
                    let rest: Vec<&str> = words.collect();
                    if result == "failed" {
                        o.output.insert(name.clone(), std::mem::take(&mut pending));
                    }
                    pending.clear();
                    o.results.push((name, result.to_string(), rest.join(" ")));
                }
            }
            Some("HCVM-END") => o.ended = true,
            Some("HCVM-CHECK") => o.checks.push(line.strip_prefix("HCVM-CHECK ").unwrap_or("").to_string()),
            Some("HCVM-ERROR") | Some("HCVM-TIMEOUT") => o.errors.push(line.to_string()),
            _ => {}
        }
    }
    o
}

/// Counts for one kernel, every missing result a failure.
#[derive(Debug, PartialEq)]
struct Summary {
    passed: usize,
    failed: usize,
    /// Every test without a result of its own: their count is `skips.len()`.
    skips: Vec<Skip>,
    failures: Vec<(String, String)>,
}

/// A test without a result of its own.
#[derive(Debug, PartialEq)]
struct Skip {
    test: String,
    why: String,
    /// It ran in the guest and skipped itself (rather than belonging to a
    /// suite the guest cannot run).
    by_itself: bool,
}

impl Summary {
    fn of(o: &Outcome, skipped_suites: &[SkippedSuite]) -> Summary {
        let mut s = Summary { passed: 0, failed: 0, skips: Vec::new(), failures: Vec::new() };
        for (name, result, rest) in &o.results {
            match result.as_str() {
                "passed" => s.passed += 1,
                "skipped" => {
                    // "12s reason": the time is not part of the reason.
                    let why = rest.split_once(' ').map_or(rest.as_str(), |(_, w)| w);
                    s.skips.push(Skip { test: name.clone(), why: why.to_string(), by_itself: true });
                }
                _ => {
                    s.failed += 1;
                    // The panic line and the two after it (an assertion's left and right).
                    let panic = o.output.get(name).and_then(|lines| {
                        let at = lines.iter().rposition(|l| l.contains("panicked"))?;
                        Some(lines[at..].iter().take(3).map(|l| l.trim()).collect::<Vec<_>>().join(" | "))
                    });
                    let why = match panic {
                        Some(panic) => format!("{panic} ({rest})"),
                        None => rest.clone(),
                    };
                    s.failures.push((name.clone(), why));
                }
            }
        }
        for (suite, n) in &o.listed {
            let got = o.results.iter().filter(|(name, _, _)| name.starts_with(&format!("{suite}/"))).count();
            if got < *n {
                s.failed += n - got;
                s.failures.push((format!("{suite}/*"), format!("{} of {n} tests have no result", n - got)));
            }
        }
        if !o.ended {
            s.failed += 1;
            let why = if o.errors.is_empty() { "no HCVM-END".to_string() } else { o.errors.join("; ") };
            s.failures.push(("guest".to_string(), format!("did not finish: {why}")));
        } else {
            for e in &o.errors {
                s.failed += 1;
                s.failures.push(("guest".to_string(), e.clone()));
            }
        }
        for skipped in skipped_suites {
            for t in &skipped.tests {
                s.skips.push(Skip {
                    test: format!("{}/{t}", skipped.suite),
                    why: skipped.why.clone(),
                    by_itself: false,
                });
            }
        }
        s
    }

    /// A test that skipped itself where the README says it runs is a failure.
    fn fail_unexpected_skips(&mut self, kernel: &Kernel) {
        let (unexpected, kept) = std::mem::take(&mut self.skips)
            .into_iter()
            .partition(|s| s.by_itself && !kernel.not_here.iter().any(|(t, _)| *t == s.test));
        self.skips = kept;
        for Skip { test, why, .. } in unexpected {
            self.failed += 1;
            self.failures.push((test, format!("skipped ({why}), but it is supported on {}", kernel.name)));
        }
    }

    /// Every guest kernel has kprobes, fentry and BPF LSM (Debian builds
    /// them in), unlike the development machine: `hitcount check` must find
    /// each there, so its probes are tested where the answer is yes.
    fn fail_missing_hooks(&mut self, o: &Outcome) {
        for hook in HOOKS_IN_EVERY_GUEST {
            let label = format!("{hook} (not needed)");
            let line = o.checks.iter().find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(&label)));
            match line {
                Some(l) if l[6 + label.len()..].trim_start().starts_with("available:") => {}
                Some(l) => {
                    self.failed += 1;
                    self.failures.push(("check".to_string(), format!("{hook}: {}", l[6 + label.len()..].trim())));
                }
                None => {
                    self.failed += 1;
                    self.failures.push(("check".to_string(), format!("{hook}: hitcount check printed no line")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_must_report_every_hook_available() {
        let console = "HCVM-CHECK ok    kprobes (not needed)               available: kprobe on vfs_read created\n\
                       HCVM-CHECK ok    fentry (not needed)                unavailable: the kernel refused the program\n\
                       HCVM-END\n";
        let o = parse_console(console);
        let mut s = Summary::of(&o, &[]);
        s.fail_missing_hooks(&o);
        assert_eq!(s.failed, 2, "{:?}", s.failures);
        assert_eq!(
            s.failures[0],
            ("check".to_string(), "fentry: unavailable: the kernel refused the program".to_string())
        );
        assert_eq!(s.failures[1], ("check".to_string(), "BPF LSM: hitcount check printed no line".to_string()));
    }

    #[test]
    fn reads_module_dependencies_from_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=udp_tunnel,ip6_udp_tunnel\0retpoline=Y\0";
        assert_eq!(module_depends(ko), ["udp_tunnel", "ip6_udp_tunnel"]);
        assert!(module_depends(b"\0license=GPL\0depends=\0vermagic=6.1\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn reads_softdeps_that_load_first() {
        assert_eq!(module_softdeps_pre(b"\x7fELF\0softdep=pre: crc32c\0depends=\0"), ["crc32c"]);
        let two = b"\0softdep=pre: a b post: c\0license=GPL\0softdep=post: d pre: e\0";
        assert_eq!(module_softdeps_pre(two), ["a", "b", "e"]);
        assert!(module_softdeps_pre(b"\0softdep=post: x\0").is_empty());
        assert!(module_softdeps_pre(b"no modinfo").is_empty());
    }

    #[test]
    fn resolves_modules_by_name_and_crypto_aliases() {
        let listing = "\
-rw-r--r-- root/root      5460 2026-11-20 17:06 ./usr/lib/modules/6.12/kernel/arch/x86/crypto/crc32c-intel.ko.xz
-rw-r--r-- root/root      2332 2026-11-20 17:06 ./usr/lib/modules/6.12/kernel/crypto/crc32c_generic.ko.xz
-rw-r--r-- root/root      2080 2026-11-20 17:06 ./usr/lib/modules/6.12/kernel/lib/libcrc32c.ko.xz
drwxr-xr-x root/root         0 2026-11-20 17:06 ./usr/lib/modules/6.12/kernel/net/
-rw-r--r-- root/root      6581 2026-11-20 17:06 ./usr/lib/modules/6.12/modules.builtin
lrwxrwxrwx root/root         0 2026-11-20 17:06 ./lib/modules/6.12/x.ko -> y.ko
";
        let members = module_paths(listing);
        assert_eq!(members.len(), 3, "{members:?}");
        assert_eq!(resolve_module(&members, "libcrc32c"), Some("./usr/lib/modules/6.12/kernel/lib/libcrc32c.ko.xz"));
        assert_eq!(resolve_module(&members, "crc32c_intel"), Some(members[0].as_str()));
        assert_eq!(
            resolve_module(&members, "crc32c"),
            Some("./usr/lib/modules/6.12/kernel/crypto/crc32c_generic.ko.xz")
        );
        assert_eq!(resolve_module(&members, "veth"), None);
    }

    #[test]
    fn loads_dependencies_first_and_once() {
        let mut found = BTreeMap::new();
        found.insert("a".to_string(), (PathBuf::new(), vec!["b".to_string(), "c".to_string()]));
        found.insert("b".to_string(), (PathBuf::new(), vec!["c".to_string()]));
        found.insert("c".to_string(), (PathBuf::new(), vec![]));
        let mut order = Vec::new();
        load_order("a", &found, &mut order);
        load_order("c", &found, &mut order);
        assert_eq!(order, ["c", "b", "a"]);
    }

    #[test]
    fn finds_the_image_package_and_the_libraries() {
        let depends = "linux-image-amd64\n  Depends: linux-image-6.1.0-41-amd64\n";
        assert_eq!(image_package(depends), Some("linux-image-6.1.0-41-amd64"));
        assert_eq!(image_package("linux-image-amd64\n"), None);
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x7f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(ldd_paths(ldd), ["/lib/x86_64-linux-gnu/libbpf.so.1", "/lib64/ld-linux-x86-64.so.2"]);
    }

    #[test]
    fn keeps_the_real_packages_of_a_dependency_closure() {
        let depends = "iproute2\n  Depends: libc6\n  PreDepends: <debconf-2.0>\nlibc6\n  Depends: libgcc-s1\n\
                       <debconf-2.0>\nlibgcc-s1\nlibc6\n";
        assert_eq!(package_closure(depends), ["iproute2", "libc6", "libgcc-s1"]);
    }

    #[test]
    fn lists_the_tests_of_a_suite_source() {
        let src = "#[test]\nfn one() {}\n\n#[test]\n#[ignore]\nfn two_words() -> Result<()> {}\nfn helper() {}\n";
        assert_eq!(test_names(src), ["one", "two_words"]);
    }

    #[test]
    fn counts_results_and_every_missing_one_as_failed() {
        let console = "[    1.0] boot\nHCVM-BEGIN 6.1.0-41-amd64 expected 6.1.0-41-amd64\n\
                       HCVM-SUITE process 3\nHCVM-RESULT process a passed 4s\n\
                       HCVM-OUT thread 'b' panicked at tests/process.rs:1: left 39 right 40\n\
                       HCVM-RESULT process b failed 9s exit 101\n\
                       [  12.5] veth: HCVM-RESULT process c skipped 0s no such tracepoint: sock_send_length\n\
                       HCVM-END\n";
        let o = parse_console(console);
        assert!(o.ended);
        let skipped =
            [SkippedSuite { suite: "login".to_string(), tests: vec!["x".to_string()], why: "needs sshd".to_string() }];
        let s = Summary::of(&o, &skipped);
        assert_eq!((s.passed, s.failed, s.skips.len()), (1, 1, 2));
        assert_eq!(
            s.skips[0],
            Skip {
                test: "process/c".to_string(),
                why: "no such tracepoint: sock_send_length".to_string(),
                by_itself: true
            }
        );
        assert!(!s.skips[1].by_itself, "login/x: a suite the guest cannot run");
        assert!(s.failures[0].1.contains("left 39 right 40"), "{:?}", s.failures);

        // A guest that died after one result: the two missing ones and the end fail.
        let o = parse_console("HCVM-SUITE net 3\nHCVM-RESULT net a passed 1s\nKernel panic\n");
        let s = Summary::of(&o, &[]);
        assert_eq!((s.passed, s.failed, s.skips.len()), (1, 3, 0));
    }

    #[test]
    fn the_test_tier_fails_a_skip_the_kernel_does_not_list() {
        let console = "HCVM-SUITE net 3
HCVM-RESULT net tcp_ipv4_connections_direction_and_exact_bytes skipped 0s \
                       per-call TCP bytes need Linux 6.3+
HCVM-RESULT net icmp skipped 0s ping is not installed
\
                       HCVM-RESULT net a passed 1s
HCVM-END
";
        let o = parse_console(console);
        let suites =
            [SkippedSuite { suite: "login".to_string(), tests: vec!["x".to_string()], why: "sshd".to_string() }];
        let v6_1 = KERNELS.iter().find(|k| k.name == "6.1").unwrap();
        let mut s = Summary::of(&o, &suites);
        assert_eq!((s.passed, s.failed, s.skips.len()), (1, 0, 3));
        s.fail_unexpected_skips(v6_1);
        // The per-call test is listed for 6.1, a missing ping is not; a suite the guest lacks stays a skip.
        assert_eq!((s.passed, s.failed, s.skips.len()), (1, 1, 2));
        assert_eq!(s.failures[0].0, "net/icmp");
        assert!(s.failures[0].1.contains("supported on 6.1"), "{:?}", s.failures);
        let v6_12 = KERNELS.iter().find(|k| k.name == "6.12").unwrap();
        let mut s = Summary::of(&o, &suites);
        s.fail_unexpected_skips(v6_12);
        assert_eq!((s.passed, s.failed, s.skips.len()), (1, 2, 1));
    }

    #[test]
    fn test_tier_kernels_are_known() {
        assert_eq!(test_tier_kernels().unwrap().len(), TEST_TIER_KERNELS.len());
    }

    #[test]
    fn init_runs_every_test_alone_and_powers_off() {
        let suites = [("process".to_string(), "process-0123abcd".to_string())];
        let init = init_script("6.1.0-41-amd64", &["00-veth.ko".to_string()], &suites);
        assert!(init.contains("insmod /lib/modules/hc/00-veth.ko"));
        assert!(init.contains("mount -t bpf bpf /sys/fs/bpf"));
        assert!(init.contains("run_suite process process-0123abcd\n"));
        assert!(init.contains("--exact \"$t\""));
        assert!(init.trim_end().ends_with("poweroff -f"));
    }

    #[test]
    fn every_suite_file_is_in_the_table() {
        let dir = cmd::workspace_root().join("tests/tests");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().trim_end_matches(".rs").to_string();
            assert!(SUITES.iter().any(|(s, _)| *s == name), "tests/tests/{name}.rs is not in vmtest::SUITES");
        }
    }
}
