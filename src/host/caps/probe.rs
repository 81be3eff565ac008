//! Starting an emulator with `-machine none -qmp stdio` and picking its answers apart.

use std::{collections::BTreeSet, path::Path, process::Stdio};

use serde_json::{Value, json};
use tokio::{io::AsyncReadExt, process::Command};

use super::{Caps, CapsError, CpuFeatures, CpuModel, KvmInfo, MachineInfo, probe_timeout};
use crate::{
    profile::Accel,
    qmp::{Qmp, QmpError},
};

/// Probes one emulator under one accelerator.
pub async fn probe(binary: &Path, accel: Accel) -> Result<Caps, CapsError> {
    let mut child = Command::new(binary)
        .args([
            "-machine",
            "none",
            "-nodefaults",
            "-display",
            "none",
            "-no-user-config",
            "-accel",
            accel.as_str(),
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CapsError::Spawn {
            binary: binary.to_owned(),
            source,
        })?;
    let (Some(stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        unreachable!("all three streams were piped");
    };
    let work = async {
        let qmp = Qmp::handshake(stdout, stdin).await?;
        let caps = ask(&qmp, accel).await;
        // QEMU may exit before replying to quit; either way it is ending.
        let _ = qmp.quit().await;
        caps
    };
    let limit = probe_timeout();
    let result = tokio::time::timeout(limit, work).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    match result {
        Ok(Ok(caps)) => Ok(caps),
        Ok(Err(source)) => {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            Err(CapsError::Qmp {
                binary: binary.to_owned(),
                accel,
                stderr: last_line(&text),
                source,
            })
        }
        Err(_) => Err(CapsError::Timeout {
            binary: binary.to_owned(),
            accel,
            after: limit,
        }),
    }
}

fn last_line(text: &str) -> String {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(nothing on stderr)")
        .trim()
        .to_owned()
}

/// Whether a QEMU error means "this binary has no such command": then the answer is "unknown",
/// not a failed probe.
fn unsupported(e: &QmpError) -> bool {
    matches!(e, QmpError::Command { class, desc, .. }
        if class == "CommandNotFound" || desc.contains("not supported"))
}

async fn ask(qmp: &Qmp, accel: Accel) -> Result<Caps, QmpError> {
    let g = qmp.greeting().version;
    let version = format!("{}.{}.{}", g.major, g.minor, g.micro);
    let kvm = qmp.query_kvm().await?;
    let machines = machines(&qmp.execute("query-machines", None).await?);
    let mut cpu_models = match qmp.execute("query-cpu-definitions", None).await {
        Ok(v) => Some(cpu_definitions(&v)),
        Err(e) if unsupported(&e) => None,
        Err(e) => return Err(e),
    };
    let host_name = match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    };
    let (host_cpu, feature_names) = match expand(qmp, host_name).await? {
        Some((cpu, all)) => (Some(cpu), Some(all)),
        None => (None, None),
    };
    if host_cpu.is_some()
        && let Some(models) = cpu_models.as_mut()
    {
        // An alias (`Nehalem` for `Nehalem-v1`) expands like its target: ask for targets only,
        // all at once, so QEMU never waits on a round trip.
        let asks: Vec<_> = models
            .iter()
            .filter(|m| m.alias_of.is_none())
            .map(|m| {
                let (qmp, name) = (qmp.clone(), m.name.clone());
                tokio::spawn(async move { (expand(&qmp, &name).await, name) })
            })
            .collect();
        let mut expanded = std::collections::HashMap::new();
        for a in asks {
            // One model that will not expand (QEMU lists some it cannot instantiate on this
            // binary) must not cost the rest.
            if let Ok((Ok(Some((cpu, _))), name)) = a.await {
                expanded.insert(name, cpu);
            }
        }
        for m in models.iter_mut().filter(|m| m.alias_of.is_none()) {
            m.features = expanded.remove(&m.name);
        }
    }
    Ok(Caps {
        version,
        kvm: KvmInfo {
            enabled: kvm.enabled,
            present: kvm.present,
        },
        machines,
        cpu_models,
        host_cpu,
        feature_names,
    })
}

/// Expands a model: static where the arch supports it (only CPUID features and identity, no
/// tuning knobs), else full. Returns the enabled features and every boolean property name.
async fn expand(
    qmp: &Qmp,
    model: &str,
) -> Result<Option<(CpuFeatures, BTreeSet<String>)>, QmpError> {
    for kind in ["static", "full"] {
        let args = json!({"type": kind, "model": {"name": model}});
        match qmp.execute("query-cpu-model-expansion", Some(args)).await {
            Ok(v) => return Ok(Some(features(&v))),
            Err(e) if unsupported(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

fn features(reply: &Value) -> (CpuFeatures, BTreeSet<String>) {
    let props = reply
        .pointer("/model/props")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut enabled = BTreeSet::new();
    let mut all = BTreeSet::new();
    for (k, v) in &props {
        if let Some(on) = v.as_bool() {
            all.insert(k.clone());
            if on {
                enabled.insert(k.clone());
            }
        }
    }
    let vendor = props
        .get("vendor")
        .and_then(Value::as_str)
        .map(str::to_owned);
    (CpuFeatures { vendor, enabled }, all)
}

fn machines(reply: &Value) -> Vec<MachineInfo> {
    let mut out: Vec<MachineInfo> = reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some(MachineInfo {
                name: m.get("name")?.as_str()?.to_owned(),
                alias: m.get("alias").and_then(Value::as_str).map(str::to_owned),
                default: m
                    .get("is-default")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                deprecated: m
                    .get("deprecated")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn cpu_definitions(reply: &Value) -> Vec<CpuModel> {
    let mut out: Vec<CpuModel> = reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| {
            Some(CpuModel {
                name: d.get("name")?.as_str()?.to_owned(),
                alias_of: d.get("alias-of").and_then(Value::as_str).map(str::to_owned),
                unavailable: d
                    .get("unavailable-features")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect(),
                deprecated: d
                    .get("deprecated")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                features: None,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
