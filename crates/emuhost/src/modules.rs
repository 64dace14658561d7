//! Kernel modules of the emulated host's kernel: find them, read their
//! dependencies from the `.modinfo` ELF section, and order them for `insmod`.
//!
//! Debian's package ships no `modules.dep` (its postinst runs `depmod`), and
//! busybox `insmod` loads one file without resolving dependencies, so the
//! load order is computed here from each module's own `depends=` record.
//! Bookworm's cloud kernel ships plain `.ko` files; compressed ones
//! (`.ko.xz`, `.ko.zst`, `.ko.gz`) are decompressed with the matching tool,
//! since busybox `insmod` may not understand them.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Errors while indexing or reading modules.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// The modules directory could not be listed.
    #[error("Cannot list kernel modules under {dir:?}")]
    ListDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A module file could not be read.
    #[error("Cannot read kernel module {path:?}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A module file is not a 64-bit little-endian ELF object with `.modinfo`.
    #[error("Kernel module {path:?} is not a valid ELF object: {why}")]
    BadElf { path: PathBuf, why: &'static str },
    /// A module was asked for (or depended on) that the kernel does not ship.
    #[error("Kernel module {name:?} is not shipped with this kernel (needed by {needed_by})")]
    Unknown { name: String, needed_by: String },
    /// Dependencies loop (a broken module tree).
    #[error("Kernel module dependencies loop through {name:?}")]
    Cycle { name: String },
    /// Decompressing a module failed.
    #[error("Cannot decompress kernel module {path:?} with {tool}: install {tool}")]
    Decompress {
        path: PathBuf,
        tool: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One module file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Canonical name, as `lsmod` shows it (`kvm_amd`).
    pub name: String,
    pub path: PathBuf,
}

impl Module {
    /// The uncompressed object, ready for `insmod`.
    pub fn bytes(&self) -> Result<Vec<u8>, ModulesError> {
        let p = self.path.to_string_lossy();
        let tool = if p.ends_with(".ko.xz") {
            "xz"
        } else if p.ends_with(".ko.zst") {
            "zstd"
        } else if p.ends_with(".ko.gz") {
            "gzip"
        } else {
            return std::fs::read(&self.path).map_err(|source| ModulesError::Read {
                path: self.path.clone(),
                source,
            });
        };
        let out = Command::new(tool)
            .arg("-dc")
            .arg(&self.path)
            .output()
            .map_err(|source| ModulesError::Decompress {
                path: self.path.clone(),
                tool,
                source,
            })?;
        if !out.status.success() {
            return Err(ModulesError::Decompress {
                path: self.path.clone(),
                tool,
                source: io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            });
        }
        Ok(out.stdout)
    }
}

/// Canonical module name: `-` and `_` are the same to the kernel.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name_of(file_name: &str) -> Option<String> {
    for suffix in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
        if let Some(stem) = file_name.strip_suffix(suffix) {
            return Some(canonical(stem));
        }
    }
    None
}

/// All modules under a `lib/modules/<release>` directory, by canonical name.
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    modules: BTreeMap<String, Module>,
}

impl ModuleIndex {
    /// Walks `dir` recursively for module files.
    pub fn scan(dir: &Path) -> Result<Self, ModulesError> {
        let mut index = Self::default();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|source| ModulesError::ListDir {
                dir: d.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| ModulesError::ListDir {
                    dir: d.clone(),
                    source,
                })?;
                let path = entry.path();
                let ft = entry.file_type().map_err(|source| ModulesError::ListDir {
                    dir: d.clone(),
                    source,
                })?;
                if ft.is_dir() {
                    stack.push(path);
                } else if let Some(name) = module_name_of(&entry.file_name().to_string_lossy()) {
                    index.modules.insert(name.clone(), Module { name, path });
                }
            }
        }
        Ok(index)
    }

    /// How many modules were found.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// True when no module was found.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The module with this name (`kvm-amd` or `kvm_amd`).
    pub fn get(&self, name: &str) -> Option<&Module> {
        self.modules.get(&canonical(name))
    }

    /// The requested modules plus everything they depend on, each once,
    /// dependencies before their users: the order `insmod` needs.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<Module>, ModulesError> {
        let mut done = BTreeSet::new();
        let mut order = Vec::new();
        for name in wanted {
            self.visit(
                &canonical(name),
                "the caller",
                &mut Vec::new(),
                &mut done,
                &mut order,
            )?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        needed_by: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<Module>,
    ) -> Result<(), ModulesError> {
        if done.contains(name) {
            return Ok(());
        }
        if path.iter().any(|p| p == name) {
            return Err(ModulesError::Cycle {
                name: name.to_string(),
            });
        }
        let module = self
            .modules
            .get(name)
            .ok_or_else(|| ModulesError::Unknown {
                name: name.to_string(),
                needed_by: needed_by.to_string(),
            })?;
        let bytes = module.bytes()?;
        let deps = depends(&bytes).map_err(|why| ModulesError::BadElf {
            path: module.path.clone(),
            why,
        })?;
        path.push(name.to_string());
        for dep in deps {
            self.visit(&canonical(&dep), name, path, done, order)?;
        }
        path.pop();
        done.insert(name.to_string());
        order.push(module.clone());
        Ok(())
    }
}

/// The `depends=` list of a module object (empty when it depends on nothing).
pub fn depends(elf: &[u8]) -> Result<Vec<String>, &'static str> {
    let info = crate::elf::section(elf, ".modinfo").map_err(|e| {
        if e == "section not found" {
            "no .modinfo section"
        } else {
            e
        }
    })?;
    for record in info.split(|&c| c == 0) {
        if let Some(list) = record.strip_prefix(b"depends=") {
            return Ok(String::from_utf8_lossy(list)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect());
        }
    }
    Ok(Vec::new())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 object with a `.modinfo` section holding `records`.
    pub(crate) fn fake_module(records: &[&str]) -> Vec<u8> {
        let mut modinfo = Vec::new();
        for r in records {
            modinfo.extend_from_slice(r.as_bytes());
            modinfo.push(0);
        }
        let shstrtab = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let modinfo_off = elf.len();
        elf.extend_from_slice(&modinfo);
        let shstr_off = elf.len();
        elf.extend_from_slice(&shstrtab);
        while elf.len() % 8 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        // Section 0: null; 1: .modinfo; 2: .shstrtab.
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, modinfo_off, modinfo.len()),
            (10, shstr_off, shstrtab.len()),
        ] {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        }
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    /// Writes a fake module tree; each entry is (relative file, depends).
    pub(crate) fn fake_tree(dir: &Path, mods: &[(&str, &str)]) {
        for (file, deps) in mods {
            let p = dir.join(file);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let dep = format!("depends={deps}");
            std::fs::write(&p, fake_module(&["license=GPL", &dep, "intree=Y"])).unwrap();
        }
    }

    #[test]
    fn depends_are_read_from_modinfo() {
        let m = fake_module(&["license=GPL", "depends=llc,stp", "name=bridge"]);
        assert_eq!(depends(&m).unwrap(), ["llc", "stp"]);
        assert!(depends(&fake_module(&["depends="])).unwrap().is_empty());
        assert!(depends(&fake_module(&["name=x"])).unwrap().is_empty());
    }

    #[test]
    fn non_elf_is_refused() {
        assert!(
            depends(b"not an elf at all, definitely not one, longer than 64 bytes....").is_err()
        );
        assert!(depends(b"\x7fELF").is_err());
    }

    #[test]
    fn load_order_puts_dependencies_first_once() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(
            dir.path(),
            &[
                ("kernel/virt/lib/irqbypass.ko", ""),
                ("kernel/arch/x86/kvm/kvm.ko", "irqbypass"),
                ("kernel/arch/x86/kvm/kvm-amd.ko", "kvm"),
                ("kernel/net/802/stp.ko", "llc"),
                ("kernel/net/llc/llc.ko", ""),
                ("kernel/net/bridge/bridge.ko", "llc,stp"),
            ],
        );
        let idx = ModuleIndex::scan(dir.path()).unwrap();
        assert_eq!(idx.len(), 6);
        let order: Vec<_> = idx
            .load_order(&["kvm-amd", "kvm", "bridge"])
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            order,
            ["irqbypass", "kvm", "kvm_amd", "llc", "stp", "bridge"]
        );
    }

    #[test]
    fn missing_module_names_who_needs_it() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path(), &[("kernel/a.ko", "b")]);
        let idx = ModuleIndex::scan(dir.path()).unwrap();
        let e = idx.load_order(&["a"]).unwrap_err().to_string();
        assert!(e.contains("\"b\"") && e.contains("needed by a"), "{e}");
        let e = idx.load_order(&["zz"]).unwrap_err().to_string();
        assert!(e.contains("\"zz\""), "{e}");
    }

    #[test]
    fn dependency_loops_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        fake_tree(dir.path(), &[("kernel/a.ko", "b"), ("kernel/b.ko", "a")]);
        let idx = ModuleIndex::scan(dir.path()).unwrap();
        assert!(matches!(
            idx.load_order(&["a"]),
            Err(ModulesError::Cycle { .. })
        ));
    }
}
