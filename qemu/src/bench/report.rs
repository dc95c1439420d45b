//! The benchmark's figures, `report.json` (nested keys such as `stage1_ms.netboot_init`) and
//! `report.md` (the table with the targets, met or missed and by how much).

use super::stats::{median, ratio, round};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Samples of one boot variant.
#[derive(Debug, Clone, Default)]
pub struct VariantSamples {
    pub name: String,
    pub description: String,
    pub initrd_bytes: u64,
    pub boots: usize,
    pub failures: Vec<String>,
    /// `Run /init` to `stage2-probe: started`, ms.
    pub stage1_ms: Vec<f64>,
    /// `Trying to unpack rootfs` to `Freeing initrd memory`, ms.
    pub unpack_ms: Vec<f64>,
    /// Per phase of the init's timeline, ms.
    pub phase_ms: BTreeMap<String, Vec<f64>>,
    /// PID 1's user CPU time when stage 2 starts (the init's own work; 10 ms ticks).
    pub user_ms: Vec<f64>,
    /// PID 1's system CPU time plus its waited-for children's CPU time.
    pub kernel_and_children_ms: Vec<f64>,
    pub memory: Vec<MemSample>,
}

/// One boot's full read of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSample {
    /// Whether the loop device read its backing file with direct I/O.
    pub direct_io: bool,
    /// Page-cache growth over the read, KiB.
    pub growth_kib: i64,
    /// That growth beyond the bytes of the files read, KiB.
    pub overhead_kib: i64,
    /// Page cache still above the pre-read level once clean caches are dropped again, KiB.
    pub held_after_drop_kib: Option<i64>,
}

impl VariantSamples {
    pub fn stage1(&self) -> Option<f64> {
        median(&self.stage1_ms)
    }
    pub fn unpack(&self) -> Option<f64> {
        median(&self.unpack_ms)
    }
    pub fn phase(&self, name: &str) -> Option<f64> {
        median(self.phase_ms.get(name)?)
    }
}

/// Everything measured in one run.
#[derive(Debug, Clone, Default)]
pub struct Measurements {
    pub kernel_release: String,
    pub accel: String,
    pub fixture_paths: usize,
    pub image_bytes: u64,
    /// Bytes the stage-2 read of every store file returned.
    pub store_bytes_read: Option<u64>,
    pub binary_bytes: u64,
    pub compression: String,
    /// The main variant (netboot-init as configured by default, prebuilt registration).
    pub init: VariantSamples,
    /// netboot-init running the image's nix-store --load-db (the shell's registration step).
    pub init_load_db: VariantSamples,
    /// netboot-init with loop direct I/O the other way round from its default.
    pub init_other_dio: VariantSamples,
    /// netboot-init, the whole initrd as one compressed archive.
    pub init_single: VariantSamples,
    /// netboot-init loading modules one by one, when the init has a switch for it.
    pub init_sequential: Option<VariantSamples>,
    pub shell: VariantSamples,
    pub registration_paths: usize,
    pub registration_load_db_ms: Vec<f64>,
    pub registration_prebuilt_ms: Vec<f64>,
    pub build_split_ms: Vec<f64>,
    pub build_single_ms: Vec<f64>,
    pub initrd_split_bytes: u64,
    pub initrd_single_bytes: u64,
    pub notes: Vec<String>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Measurements {
    fn all_init_variants(&self) -> Vec<&VariantSamples> {
        let mut v = vec![
            &self.init,
            &self.init_load_db,
            &self.init_other_dio,
            &self.init_single,
        ];
        v.extend(self.init_sequential.iter());
        v
    }

    /// Medians (MiB) of page-cache growth, overhead beyond the file contents, and what stays
    /// after dropping caches, over the boots with direct I/O `on`.
    pub fn memory_mb(&self, on: bool) -> (Option<f64>, Option<f64>, Option<f64>) {
        let (mut growth, mut over, mut held) = (Vec::new(), Vec::new(), Vec::new());
        for v in self.all_init_variants() {
            for m in v.memory.iter().filter(|m| m.direct_io == on) {
                growth.push(m.growth_kib as f64 / 1024.0);
                over.push(m.overhead_kib as f64 / 1024.0);
                held.extend(m.held_after_drop_kib.map(|h| h as f64 / 1024.0));
            }
        }
        (median(&growth), median(&over), median(&held))
    }

    pub fn unpack_split(&self) -> Option<f64> {
        let mut all = self.init.unpack_ms.clone();
        all.extend(&self.init_load_db.unpack_ms);
        all.extend(&self.init_other_dio.unpack_ms);
        median(&all)
    }

    /// Share of stage 1 the init spends in user space (its own code rather than the kernel's).
    pub fn init_own_share(&self) -> Option<f64> {
        ratio(median(&self.init.user_ms), self.init.stage1())
    }

    pub fn targets(&self) -> Vec<Target> {
        let image_mb = self.image_bytes as f64 / MIB;
        vec![
            Target {
                what: "stage 1: shell time / netboot-init time",
                value: ratio(self.shell.stage1(), self.init.stage1()),
                goal: 10.0,
                kind: Kind::AtLeast,
                unit: "x",
            },
            Target {
                what: "init's own (user-space) time, share of its stage 1",
                value: self.init_own_share().map(|s| s * 100.0),
                goal: 5.0,
                kind: Kind::AtMost,
                unit: "%",
            },
            Target {
                what: "registration: load-db time / prebuilt time",
                value: ratio(
                    median(&self.registration_load_db_ms),
                    median(&self.registration_prebuilt_ms),
                ),
                goal: 20.0,
                kind: Kind::AtLeast,
                unit: "x",
            },
            Target {
                what: "initrd unpack: single archive / split layout",
                value: ratio(self.init_single.unpack(), self.unpack_split()),
                goal: 1.1,
                kind: Kind::AtLeast,
                unit: "x",
            },
            Target {
                what: "initrd build: single archive / split layout",
                value: ratio(median(&self.build_single_ms), median(&self.build_split_ms)),
                goal: 10.0,
                kind: Kind::AtLeast,
                unit: "x",
            },
            Target {
                what: "RAM overhead with loop direct I/O, share of the image size",
                value: self
                    .memory_mb(true)
                    .1
                    .map(|o| o.max(0.0) / image_mb * 100.0)
                    .filter(|_| image_mb > 0.0),
                goal: 10.0,
                kind: Kind::AtMost,
                unit: "%",
            },
        ]
    }

    pub fn to_json(&self) -> Value {
        let r = |x: Option<f64>| x.map(|x| round(x, 3));
        let m = |v: &[f64]| r(median(v));
        let (dio_growth, dio_over, dio_held) = self.memory_mb(true);
        let (buf_growth, buf_over, buf_held) = self.memory_mb(false);
        let mut phases = Map::new();
        for name in self.init.phase_ms.keys() {
            phases.insert(name.clone(), json!(r(self.init.phase(name))));
        }
        let mut variants = Map::new();
        let mut all: Vec<&VariantSamples> = self.all_init_variants();
        all.push(&self.shell);
        for v in all {
            variants.insert(
                v.name.clone(),
                json!({
                    "description": v.description,
                    "initrd_bytes": v.initrd_bytes,
                    "boots": v.boots,
                    "failures": v.failures,
                    "stage1_ms": { "median": m(&v.stage1_ms), "samples": v.stage1_ms },
                    "unpack_ms": { "median": m(&v.unpack_ms), "samples": v.unpack_ms },
                    "user_ms": { "median": m(&v.user_ms), "samples": v.user_ms },
                    "kernel_and_children_ms": { "median": m(&v.kernel_and_children_ms) },
                    "phase_ms": v.phase_ms.keys().map(|k| (k.clone(), json!(r(v.phase(k))))).collect::<Map<_, _>>(),
                    "memory": v.memory.iter().map(|m| json!({"direct_io": m.direct_io, "cache_growth_kib": m.growth_kib, "overhead_kib": m.overhead_kib, "held_after_drop_kib": m.held_after_drop_kib})).collect::<Vec<_>>(),
                }),
            );
        }
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| json!({"what": t.what, "value": r(t.value), "goal": t.goal, "kind": t.kind.word(), "unit": t.unit, "met": t.met(), "verdict": t.verdict()}))
            .collect();
        json!({
            "kernel": self.kernel_release,
            "accel": self.accel,
            "boots_per_variant": self.init.boots,
            "fixture_paths": self.fixture_paths,
            "image_bytes": self.image_bytes,
            "store_bytes_read": self.store_bytes_read,
            "compression": self.compression,
            "stage1_ms": {
                "netboot_init": r(self.init.stage1()),
                "netboot_init_load_db": r(self.init_load_db.stage1()),
                "shell": r(self.shell.stage1()),
            },
            "ratio": {
                "stage1_shell_over_init": r(ratio(self.shell.stage1(), self.init.stage1())),
                "stage1_shell_over_init_load_db": r(ratio(self.shell.stage1(), self.init_load_db.stage1())),
                "registration_load_db_over_prebuilt": r(ratio(median(&self.registration_load_db_ms), median(&self.registration_prebuilt_ms))),
                "unpack_single_over_split": r(ratio(self.init_single.unpack(), self.unpack_split())),
                "build_single_over_split": r(ratio(median(&self.build_single_ms), median(&self.build_split_ms))),
                "init_own_share_of_stage1": r(self.init_own_share()),
            },
            "phases_ms": phases,
            "modules_ms": {
                "parallel": r(self.init.phase("modules")),
                "sequential": r(self.init_sequential.as_ref().and_then(|v| v.phase("modules"))),
            },
            "init_user_ms": m(&self.init.user_ms),
            "registration_paths": self.registration_paths,
            "registration_ms": {
                "load_db": m(&self.registration_load_db_ms),
                "prebuilt": m(&self.registration_prebuilt_ms),
                "load_db_samples": self.registration_load_db_ms,
                "prebuilt_samples": self.registration_prebuilt_ms,
            },
            "unpack_ms": { "split": r(self.unpack_split()), "single": r(self.init_single.unpack()) },
            "build_ms": {
                "split": m(&self.build_split_ms),
                "single": m(&self.build_single_ms),
                "split_samples": self.build_split_ms,
                "single_samples": self.build_single_ms,
            },
            "initrd_bytes": { "split": self.initrd_split_bytes, "single": self.initrd_single_bytes },
            "mem_overhead_mb": { "direct_io": r(dio_over), "buffered": r(buf_over) },
            "mem_cache_growth_mb": { "direct_io": r(dio_growth), "buffered": r(buf_growth) },
            "mem_held_after_drop_mb": { "direct_io": r(dio_held), "buffered": r(buf_held) },
            "binary_bytes": self.binary_bytes,
            "variants": variants,
            "targets": targets,
            "notes": self.notes,
        })
    }

    pub fn to_markdown(&self) -> String {
        let f = |x: Option<f64>, digits: usize| {
            x.map_or("n/a".to_string(), |x| format!("{x:.digits$}"))
        };
        let ms = |x: Option<f64>| f(x, 1);
        let mut s = String::new();
        s.push_str(&format!(
            "Kernel {} under QEMU ({}), fixture of {} store paths (store image {:.1} MiB), {} boots per variant, medians.\n\n",
            self.kernel_release,
            self.accel,
            self.fixture_paths,
            self.image_bytes as f64 / MIB,
            self.init.boots
        ));
        s.push_str("| measure | netboot-init | baseline | ratio |\n|---|---:|---:|---:|\n");
        let row = |s: &mut String, what: &str, a: Option<f64>, b: Option<f64>, unit: &str| {
            s.push_str(&format!(
                "| {what} | {} {unit} | {} {unit} | {} |\n",
                ms(a),
                ms(b),
                ratio(b, a).map_or("n/a".into(), |r| format!("{r:.1}x"))
            ));
        };
        row(
            &mut s,
            "stage 1, prebuilt registration (baseline: shell stage 1)",
            self.init.stage1(),
            self.shell.stage1(),
            "ms",
        );
        row(
            &mut s,
            "stage 1, load-db registration (baseline: shell stage 1)",
            self.init_load_db.stage1(),
            self.shell.stage1(),
            "ms",
        );
        row(
            &mut s,
            &format!(
                "registration of {} paths, prebuilt (baseline: load-db), host",
                self.registration_paths
            ),
            median(&self.registration_prebuilt_ms),
            median(&self.registration_load_db_ms),
            "ms",
        );
        row(
            &mut s,
            "kernel initrd unpack, split layout (baseline: one archive)",
            self.unpack_split(),
            self.init_single.unpack(),
            "ms",
        );
        row(
            &mut s,
            "initrd build, split layout (baseline: one archive)",
            median(&self.build_split_ms),
            median(&self.build_single_ms),
            "ms",
        );
        s.push_str(&format!(
            "| initrd size, split layout (baseline: one archive, {}) | {:.1} MiB | {:.1} MiB | {} |\n",
            self.compression,
            self.initrd_split_bytes as f64 / MIB,
            self.initrd_single_bytes as f64 / MIB,
            ratio(Some(self.initrd_single_bytes as f64), Some(self.initrd_split_bytes as f64)).map_or("n/a".into(), |r| format!("{r:.2}x"))
        ));
        let (dg, dover, dheld) = self.memory_mb(true);
        let (bg, bover, bheld) = self.memory_mb(false);
        s.push_str(&format!(
            "| RAM held beyond file contents after reading the whole store, loop direct I/O (baseline: buffered) | {} MiB | {} MiB | |\n",
            f(dover, 1),
            f(bover, 1)
        ));
        s.push_str(&format!(
            "| page cache growth over that read, direct I/O (baseline: buffered) | {} MiB | {} MiB | |\n",
            f(dg, 1),
            f(bg, 1)
        ));
        s.push_str(&format!(
            "| page cache still held after dropping clean caches, direct I/O (baseline: buffered) | {} MiB | {} MiB | |\n",
            f(dheld, 1),
            f(bheld, 1)
        ));
        s.push_str(&format!(
            "| netboot-init binary (static, stripped) | {:.0} KiB | | |\n\n",
            self.binary_bytes as f64 / 1024.0
        ));

        s.push_str(
            "netboot-init phases (prebuilt registration):\n\n| phase | median ms |\n|---|---:|\n",
        );
        for name in self.init.phase_ms.keys() {
            s.push_str(&format!("| {name} | {} |\n", f(self.init.phase(name), 2)));
        }
        if let Some(seq) = &self.init_sequential {
            s.push_str(&format!(
                "| modules, one by one | {} |\n",
                f(seq.phase("modules"), 2)
            ));
        }
        s.push_str(&format!(
            "| user-space CPU of PID 1 during stage 1 | {} |\n\n",
            f(median(&self.init.user_ms), 1)
        ));

        s.push_str("Targets:\n\n| target | goal | measured | verdict |\n|---|---:|---:|---|\n");
        for t in self.targets() {
            s.push_str(&format!(
                "| {} | {} {}{} | {} | {} |\n",
                t.what,
                t.kind.sign(),
                t.goal,
                t.unit,
                t.value
                    .map_or("n/a".into(), |v| format!("{v:.2}{}", t.unit)),
                t.verdict()
            ));
        }
        let failures: Vec<String> = self
            .all_init_variants()
            .into_iter()
            .chain(std::iter::once(&self.shell))
            .flat_map(|v| v.failures.iter().map(move |f| format!("{}: {f}", v.name)))
            .collect();
        if !failures.is_empty() || !self.notes.is_empty() {
            s.push_str("\nNotes:\n\n");
            for n in self.notes.iter().chain(failures.iter()) {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    AtLeast,
    AtMost,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::AtLeast => "at least",
            Kind::AtMost => "at most",
        }
    }
    fn sign(self) -> &'static str {
        match self {
            Kind::AtLeast => ">=",
            Kind::AtMost => "<=",
        }
    }
}

/// One of issue 9's targets against what was measured.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: &'static str,
    pub value: Option<f64>,
    pub goal: f64,
    pub kind: Kind,
    pub unit: &'static str,
}

impl Target {
    pub fn met(&self) -> Option<bool> {
        let v = self.value?;
        Some(match self.kind {
            Kind::AtLeast => v >= self.goal,
            Kind::AtMost => v <= self.goal,
        })
    }

    /// `met`, `missed: 7.20x, 28% short of 10x`, `missed: 7.5%, 2.5 points over 5%`.
    pub fn verdict(&self) -> String {
        let Some(v) = self.value else {
            return "not measured".into();
        };
        let u = self.unit;
        match (self.met(), self.kind) {
            (Some(true), Kind::AtLeast) => {
                format!("met ({:.0}% above the goal)", (v / self.goal - 1.0) * 100.0)
            }
            (Some(true), Kind::AtMost) => "met".into(),
            (_, Kind::AtLeast) if u == "x" => format!(
                "missed: {v:.2}x, {:.0}% short of {}x",
                (1.0 - v / self.goal) * 100.0,
                self.goal
            ),
            (_, Kind::AtLeast) => format!("missed by {:.2}{u}", self.goal - v),
            (_, Kind::AtMost) if u == "%" => {
                format!(
                    "missed: {v:.1}%, {:.1} points over {}%",
                    v - self.goal,
                    self.goal
                )
            }
            (_, Kind::AtMost) => format!("missed by {:.2}{u}", v - self.goal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(name: &str, stage1: &[f64], unpack: &[f64]) -> VariantSamples {
        VariantSamples {
            name: name.into(),
            boots: stage1.len(),
            stage1_ms: stage1.to_vec(),
            unpack_ms: unpack.to_vec(),
            ..Default::default()
        }
    }

    fn sample() -> Measurements {
        let mut init = variant("netboot-init", &[50.0, 40.0, 60.0, 45.0, 55.0], &[100.0; 5]);
        init.phase_ms
            .insert("mounts".into(), vec![10.0, 12.0, 11.0]);
        init.user_ms = vec![10.0, 0.0, 0.0, 10.0, 0.0];
        let mem = |direct_io, growth_kib, overhead_kib| MemSample {
            direct_io,
            growth_kib,
            overhead_kib,
            held_after_drop_kib: Some(100),
        };
        init.memory = vec![
            mem(false, 30 * 1024, 3 * 1024),
            mem(false, 30 * 1024, 5 * 1024),
            mem(false, 31 * 1024, 4 * 1024),
        ];
        let mut other = variant("netboot-init-direct-io", &[50.0], &[102.0]);
        other.memory = vec![mem(true, 28 * 1024, 1024)];
        Measurements {
            kernel_release: "6.12.95+deb12-amd64".into(),
            accel: "tcg".into(),
            fixture_paths: 330,
            image_bytes: 40 * 1024 * 1024,
            binary_bytes: 900_000,
            compression: "zstd -19".into(),
            init,
            init_load_db: variant("netboot-init-load-db", &[900.0], &[100.0]),
            init_other_dio: other,
            init_single: variant("netboot-init-single", &[50.0], &[300.0, 310.0]),
            init_sequential: None,
            shell: variant("shell", &[1000.0, 1200.0, 1100.0], &[100.0]),
            registration_paths: 1001,
            registration_load_db_ms: vec![2000.0, 2100.0],
            registration_prebuilt_ms: vec![50.0, 60.0],
            build_split_ms: vec![500.0],
            build_single_ms: vec![20000.0],
            initrd_split_bytes: 45 << 20,
            initrd_single_bytes: 44 << 20,
            ..Default::default()
        }
    }

    #[test]
    fn json_has_the_issue_keys() {
        let j = sample().to_json();
        let get = |path: &str| {
            path.split('.')
                .try_fold(&j, |v, k| v.get(k))
                .unwrap_or_else(|| panic!("no {path} in {j:#}"))
                .clone()
        };
        assert_eq!(get("stage1_ms.netboot_init"), json!(50.0));
        assert_eq!(get("stage1_ms.shell"), json!(1100.0));
        assert_eq!(get("ratio.stage1_shell_over_init"), json!(22.0));
        assert_eq!(get("registration_ms.load_db"), json!(2050.0));
        assert_eq!(get("registration_ms.prebuilt"), json!(55.0));
        assert_eq!(get("unpack_ms.split"), json!(100.0));
        assert_eq!(get("unpack_ms.single"), json!(305.0));
        assert_eq!(get("build_ms.split"), json!(500.0));
        assert_eq!(get("build_ms.single"), json!(20000.0));
        assert_eq!(get("mem_overhead_mb.direct_io"), json!(1.0));
        assert_eq!(get("mem_overhead_mb.buffered"), json!(4.0));
        assert_eq!(get("binary_bytes"), json!(900_000));
        assert_eq!(get("phases_ms.mounts"), json!(11.0));
        assert_eq!(get("ratio.init_own_share_of_stage1"), json!(0.0));
    }

    #[test]
    fn verdicts() {
        let t = |value: f64, goal: f64, kind: Kind, unit: &'static str| Target {
            what: "x",
            value: Some(value),
            goal,
            kind,
            unit,
        };
        assert_eq!(
            t(22.0, 10.0, Kind::AtLeast, "x").verdict(),
            "met (120% above the goal)"
        );
        assert_eq!(
            t(7.2, 10.0, Kind::AtLeast, "x").verdict(),
            "missed: 7.20x, 28% short of 10x"
        );
        assert_eq!(
            t(7.5, 5.0, Kind::AtMost, "%").verdict(),
            "missed: 7.5%, 2.5 points over 5%"
        );
        assert_eq!(t(2.5, 5.0, Kind::AtMost, "%").verdict(), "met");
        let none = Target {
            value: None,
            ..t(1.0, 1.0, Kind::AtLeast, "x")
        };
        assert_eq!(none.verdict(), "not measured");
        assert_eq!(none.met(), None);
    }

    #[test]
    fn markdown_table() {
        let md = sample().to_markdown();
        assert!(md.contains("| stage 1, prebuilt registration (baseline: shell stage 1) | 50.0 ms | 1100.0 ms | 22.0x |"), "{md}");
        assert!(md.contains("| initrd build, split layout (baseline: one archive) | 500.0 ms | 20000.0 ms | 40.0x |"), "{md}");
        assert!(md.contains("| stage 1: shell time / netboot-init time | >= 10x | 22.00x | met (120% above the goal) |"), "{md}");
        assert!(md.contains("| RAM overhead with loop direct I/O, share of the image size | <= 10% | 2.50% | met |"), "{md}");
        assert!(md.contains("| mounts | 11.00 |"), "{md}");
    }
}
