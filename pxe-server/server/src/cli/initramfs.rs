//! Initramfs images, built reproducibly: a `newc` cpio (what Linux unpacks into its first root
//! file system) with every owner root, every time stamp 0, entries sorted with parents first,
//! and kernel modules taken from a `/lib/modules/<release>` tree with their dependencies in load
//! order. Used by `tugboot installer build` and `tugboot initramfs build` (docs/installer.md).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where the module load order is written: one path per line, dependencies first
/// (`while read m; do insmod "$m"; done < /etc/tugboot/modules`).
pub const MODULE_LIST: &str = "etc/tugboot/modules";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// The tree of an initramfs, by normalised path (relative, `/`-separated).
#[derive(Clone, Debug, Default)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

fn normalise(path: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        bail!("initramfs path {path:?}: must name something below the root, without `..`");
    }
    Ok(parts.join("/"))
}

impl Initramfs {
    /// An empty tree with `/dev/console` (the kernel opens it for `/init` before anything is
    /// mounted) and the usual mount points.
    #[must_use]
    pub fn new() -> Self {
        let mut i = Initramfs::default();
        for d in [
            "dev", "proc", "sys", "run", "tmp", "bin", "sbin", "etc", "usr/bin",
        ] {
            i.nodes.insert(d.to_owned(), Node::Dir);
        }
        i.nodes.insert("usr".to_owned(), Node::Dir);
        i.nodes.insert(
            "dev/console".to_owned(),
            Node::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        i
    }

    fn parents(&mut self, path: &str) {
        let mut at = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            self.nodes.entry(at.clone()).or_insert(Node::Dir);
        }
    }

    /// A file with permission bits `mode`.
    ///
    /// # Errors
    /// A path with `..` or naming the root.
    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) -> anyhow::Result<()> {
        let path = normalise(path)?;
        self.parents(&path);
        self.nodes.insert(
            path,
            Node::File {
                mode: mode & 0o7777,
                data,
            },
        );
        Ok(())
    }

    /// A file copied from the host (its permission bits kept).
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn copy(&mut self, path: &str, from: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(from).with_context(|| format!("{}", from.display()))?;
        let data =
            std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        self.file(path, meta.permissions().mode(), data)
    }

    /// A symbolic link.
    ///
    /// # Errors
    /// A bad path.
    pub fn symlink(&mut self, path: &str, target: &str) -> anyhow::Result<()> {
        let path = normalise(path)?;
        self.parents(&path);
        self.nodes.insert(path, Node::Symlink(target.to_owned()));
        Ok(())
    }

    /// Kernel modules `names` (and what they depend on) from `modules_dir`
    /// (`/lib/modules/<release>`), installed under the same path, with their load order in
    /// [`MODULE_LIST`]. Built-in modules (`modules.builtin`) are skipped. Returns the load order.
    ///
    /// # Errors
    /// No `modules.dep`, a module that is neither there nor built in, a compressed module.
    pub fn modules(&mut self, modules_dir: &Path, names: &[String]) -> anyhow::Result<Vec<String>> {
        let release = modules_dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("the modules directory must be /lib/modules/<kernel release>")?
            .to_owned();
        let dep_text = std::fs::read_to_string(modules_dir.join("modules.dep")).with_context(|| {
            format!(
                "{}/modules.dep: not a kernel module tree (run depmod, or give /lib/modules/<release>)",
                modules_dir.display()
            )
        })?;
        let builtin =
            std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
        // Soft dependencies (`softdep ext4 pre: crypto-crc32c`): modprobe loads them first;
        // without them ext4 cannot mount (it asks for crc32c). Names resolve through aliases.
        let softdep =
            std::fs::read_to_string(modules_dir.join("modules.softdep")).unwrap_or_default();
        let alias = std::fs::read_to_string(modules_dir.join("modules.alias")).unwrap_or_default();
        let deps = ModuleDeps::parse(&dep_text, &builtin).with_soft(&softdep, &alias);
        let order = deps.load_order(names)?;
        let mut list = String::new();
        for rel in &order {
            if [".xz", ".zst", ".gz"].iter().any(|s| rel.ends_with(s)) {
                bail!("module {rel} is compressed: busybox insmod loads plain .ko files only");
            }
            let target = format!("lib/modules/{release}/{rel}");
            self.copy(&target, &modules_dir.join(rel))?;
            list.push('/');
            list.push_str(&target);
            list.push('\n');
        }
        self.file(MODULE_LIST, 0o644, list.into_bytes())?;
        Ok(order)
    }

    /// The `newc` cpio archive.
    #[must_use]
    pub fn to_cpio(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // BTreeMap order puts `a` before `a/b`: parents first.
        for (ino, (path, node)) in (1u32..).zip(&self.nodes) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir => (0o040_755, &[], (0, 0)),
                Node::File { mode, data } => (0o100_000 | mode, data, (0, 0)),
                Node::Symlink(t) => (0o120_777, t.as_bytes(), (0, 0)),
                Node::CharDev { mode, major, minor } => (0o020_000 | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(node, Node::Dir) { 2 } else { 1 };
            entry(&mut out, ino, path, mode, nlink, data, rdev);
        }
        entry(&mut out, 0, "TRAILER!!!", 0, 1, &[], (0, 0));
        // The kernel reads archives in 512-byte blocks; pad like cpio(1) does.
        while !out.len().is_multiple_of(512) {
            out.push(0);
        }
        out
    }
}

fn entry(
    out: &mut Vec<u8>,
    ino: u32,
    name: &str,
    mode: u32,
    nlink: u32,
    data: &[u8],
    rdev: (u32, u32),
) {
    let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let namesize = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// `modules.dep`, by module name (`-` and `_` are the same, as for modprobe).
struct ModuleDeps {
    /// name → (path, dependency paths as listed).
    by_name: HashMap<String, (String, Vec<String>)>,
    /// path → dependency paths.
    by_path: HashMap<String, Vec<String>>,
    builtin: BTreeSet<String>,
    /// name → module names to load before it (soft `pre:` dependencies, aliases resolved to
    /// the modules of this tree that provide them).
    soft_pre: HashMap<String, Vec<String>>,
}

fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

impl ModuleDeps {
    fn parse(dep: &str, builtin: &str) -> Self {
        let mut by_name = HashMap::new();
        let mut by_path = HashMap::new();
        for line in dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let deps: Vec<String> = deps.split_whitespace().map(str::to_owned).collect();
            by_name.insert(module_name(path), (path.to_owned(), deps.clone()));
            by_path.insert(path.to_owned(), deps);
        }
        let builtin = builtin.lines().map(module_name).collect();
        ModuleDeps {
            by_name,
            by_path,
            builtin,
            soft_pre: HashMap::new(),
        }
    }

    /// Adds `modules.softdep`'s `pre:` lists; a name that is no module of this tree is looked
    /// up among the exact (wildcard-free) aliases of `modules.alias`, every provider taken
    /// (`crypto-crc32c` → `crc32c_generic` and `crc32c_intel`; the one the CPU cannot run
    /// fails to load, harmlessly). Names that resolve to nothing are skipped, as modprobe does.
    fn with_soft(mut self, softdep: &str, alias: &str) -> Self {
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        for line in alias.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(name), Some(module)) = (w.next(), w.next(), w.next())
                && !name.contains(['*', '?', '['])
            {
                aliases
                    .entry(name.replace('-', "_"))
                    .or_default()
                    .push(module.replace('-', "_"));
            }
        }
        for line in softdep.lines() {
            let mut w = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (w.next(), w.next()) else {
                continue;
            };
            let mut pre = Vec::new();
            let mut in_pre = false;
            for word in w {
                match word {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    name if in_pre => {
                        let key = name.replace('-', "_");
                        if self.by_name.contains_key(&key) || self.builtin.contains(&key) {
                            pre.push(key);
                        } else {
                            for m in aliases.get(&key).into_iter().flatten() {
                                if self.by_name.contains_key(m) && !pre.contains(m) {
                                    pre.push(m.clone());
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !pre.is_empty() {
                self.soft_pre.insert(module.replace('-', "_"), pre);
            }
        }
        self
    }

    /// Paths to load, each after everything it depends on; built-ins left out.
    fn load_order(&self, names: &[String]) -> anyhow::Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            let key = name.replace('-', "_");
            if self.builtin.contains(&key) {
                continue;
            }
            let (path, _) = self.by_name.get(&key).with_context(|| {
                format!("kernel module {name:?} is neither in modules.dep nor built in")
            })?;
            self.visit(path, &mut seen, &mut order, 0)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        path: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if depth > 64 {
            bail!("modules.dep: dependency cycle through {path}");
        }
        if !seen.insert(path.to_owned()) {
            return Ok(());
        }
        for soft in self.soft_pre.get(&module_name(path)).into_iter().flatten() {
            if let Some((p, _)) = self.by_name.get(soft) {
                self.visit(p, seen, order, depth + 1)?;
            }
        }
        // modprobe loads the listed dependencies from the last to the first.
        for dep in self.by_path.get(path).into_iter().flatten().rev() {
            self.visit(dep, seen, order, depth + 1)?;
        }
        order.push(path.to_owned());
        Ok(())
    }
}

/// `SRC:DST` of `--file`.
///
/// # Errors
/// No colon.
pub fn parse_file_arg(arg: &str) -> anyhow::Result<(PathBuf, String)> {
    let (src, dst) = arg
        .split_once(':')
        .with_context(|| format!("--file {arg:?}: expected SOURCE:PATH_IN_THE_INITRAMFS"))?;
    Ok((PathBuf::from(src), dst.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
kernel/fs/jbd2/jbd2.ko:\nkernel/fs/mbcache.ko:\nkernel/lib/crc16.ko:\n\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko\n\
kernel/drivers/virtio/virtio_ring.ko:\n";

    #[test]
    fn modules_come_after_their_dependencies_and_built_ins_are_skipped() {
        let d = ModuleDeps::parse(DEP, "kernel/drivers/virtio/virtio.ko\n");
        let order = d
            .load_order(&[
                "ext4".into(),
                "virtio-blk".into(),
                "virtio".into(),
                "jbd2".into(),
            ])
            .unwrap();
        assert_eq!(
            order,
            [
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/block/virtio_blk.ko",
            ]
        );
        let err = d.load_order(&["nope".into()]).unwrap_err().to_string();
        assert!(
            err.contains("\"nope\" is neither in modules.dep nor built in"),
            "{err}"
        );
    }

    /// Debian's ext4 mounts only with crc32c loaded first: a soft dependency through an alias.
    #[test]
    fn soft_dependencies_come_first_through_their_aliases() {
        let dep = format!(
            "{DEP}kernel/crypto/crc32c_generic.ko:\nkernel/arch/x86/crypto/crc32c-intel.ko:\n"
        );
        let d = ModuleDeps::parse(&dep, "").with_soft(
            "# comment\nsoftdep ext4 pre: crypto-crc32c\nsoftdep jbd2 pre: crypto-crc32c post: nope\n\
             softdep virtio_blk pre: missing-alias\n",
            "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\n\
             alias pci:v*d* virtio_blk\n",
        );
        let order = d.load_order(&["ext4".into(), "virtio_blk".into()]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/arch/x86/crypto/crc32c-intel.ko",
                "kernel/crypto/crc32c_generic.ko",
                "kernel/fs/jbd2/jbd2.ko",
                "kernel/fs/mbcache.ko",
                "kernel/lib/crc16.ko",
                "kernel/fs/ext4/ext4.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/block/virtio_blk.ko",
            ]
        );
    }

    #[test]
    fn cpio_is_newc_sorted_parents_first_and_the_same_every_time() {
        let mut i = Initramfs::new();
        i.file("/usr/bin/tool", 0o755, b"#!x".to_vec()).unwrap();
        i.symlink("bin/sh", "busybox").unwrap();
        i.file("etc/a/b/c.conf", 0o644, b"x".to_vec()).unwrap();
        assert!(i.file("../etc/x", 0o644, vec![]).is_err());
        let a = i.to_cpio();
        assert_eq!(a, i.clone().to_cpio());
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() % 512, 0);
        let text = String::from_utf8_lossy(&a);
        let pos = |n: &str| {
            text.find(&format!("{n}\0"))
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert!(pos("etc") < pos("etc/a") && pos("etc/a/b") < pos("etc/a/b/c.conf"));
        assert!(pos("usr/bin/tool") < pos("TRAILER!!!"));
    }

    /// GNU cpio reads what we write, with modes, links and contents intact.
    #[test]
    fn gnu_cpio_lists_and_extracts_it() {
        let mut i = Initramfs::new();
        i.file("usr/bin/tool", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .unwrap();
        i.symlink("bin/sh", "busybox").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("i.cpio");
        std::fs::write(&archive, i.to_cpio()).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -itv < {}", archive.display()))
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            listing.contains("-rwxr-xr-x") && listing.contains("usr/bin/tool"),
            "{listing}"
        );
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
        assert!(
            listing.contains("crw-------") && listing.contains("dev/console"),
            "{listing}"
        );
    }
}
