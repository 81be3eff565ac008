//! `<cpu>`: mode, model, features, topology and physical-address bits, as the Nova-style
//! `cpu_*` settings of a [`SpecInput`](crate::spec::SpecInput).

use super::{Cx, Element};

/// Reads `<cpu>`; `smp` is the `<vcpu>` count the topology must match.
pub(super) fn cpu(c: &Element, smp: Option<u32>, cx: &mut Cx) {
    let model = c.child("model");
    let Some(mode) = mode(c, model.is_some(), cx) else {
        return;
    };
    cx.spec.cpu_mode = Some(mode.to_owned());
    matching(c, cx);
    if let Some(m) = model {
        if let Some(f) = m.attr("fallback")
            && !matches!(f, "forbid" | "allow")
        {
            cx.bad_attr(m, "fallback", &format!("unknown fallback '{f}'"));
        }
        cx.spec.cpu_models = Some(vec![m.text().to_owned()]);
    }
    if let Some(t) = c.child("topology") {
        topology(t, smp, cx);
    }
    features(c, cx);
    if let Some(m) = c.child("maxphysaddr") {
        maxphysaddr(m, cx);
    }
}

/// `<cpu mode=...>`, or what a `<cpu>` without one means; `None` when the CPU cannot be read.
fn mode<'a>(c: &'a Element, has_model: bool, cx: &mut Cx) -> Option<&'a str> {
    let mode = match c.attr("mode") {
        Some(m @ ("host-passthrough" | "maximum" | "host-model" | "custom")) => m,
        Some(other) => {
            cx.bad_attr(c, "mode", &format!("unknown CPU mode '{other}'"));
            return None;
        }
        None if has_model => "custom",
        // No mode and no model: the hypervisor's default CPU (topology and features only).
        None => "none",
    };
    if mode == "custom" && !has_model {
        cx.bad(c, "mode='custom' needs a <model>");
        return None;
    }
    Some(mode)
}

/// `migratable`, `match` and `check`: how closely QEMU must give what is asked.
fn matching(c: &Element, cx: &mut Cx) {
    if let Some(m) = c.attr("migratable")
        && m != "on"
    {
        cx.bad_attr(
            c,
            "migratable",
            "qemu-direct leaves QEMU's host CPU migratable",
        );
    }
    if let Some(m) = c.attr("match")
        && !matches!(m, "exact" | "strict")
    {
        cx.bad_attr(
            c,
            "match",
            "qemu-direct runs the model exactly (match='exact')",
        );
    }
    match c.attr("check") {
        Some("none") => cx.spec.cpu_check = Some("none".into()),
        Some("partial" | "full") | None => {}
        Some(other) => cx.bad_attr(c, "check", &format!("unknown check '{other}'")),
    }
}

/// `<topology>`: qemu-direct passes `-smp N`, which QEMU lays out as one socket of N cores.
fn topology(t: &Element, smp: Option<u32>, cx: &mut Cx) {
    let get = |name: &str| t.attr(name).map(|v| v.parse::<u32>().ok());
    let (sockets, dies, clusters, cores, threads) = (
        get("sockets"),
        get("dies"),
        get("clusters"),
        get("cores"),
        get("threads"),
    );
    let one = |v: Option<Option<u32>>| matches!(v, None | Some(Some(1)));
    let fits = one(sockets)
        && one(dies)
        && one(clusters)
        && one(threads)
        && matches!((cores, smp), (Some(Some(c)), Some(n)) if c == n);
    if !fits {
        cx.bad(
            t,
            "qemu-direct passes -smp N, which QEMU lays out as 1 socket of N cores of 1 thread \
             (sockets='1' dies='1' cores='N' threads='1')",
        );
    }
}

/// `<feature policy=... name=...>`s as `+f` / `-f` flags.
fn features(c: &Element, cx: &mut Cx) {
    let mut flags = Vec::new();
    for f in c.children_named("feature") {
        let Some(name) = f.attr("name") else {
            cx.bad(f, "<feature> without a name");
            continue;
        };
        match f.attr("policy").unwrap_or("require") {
            "require" | "force" => flags.push(format!("+{name}")),
            "disable" | "forbid" => flags.push(format!("-{name}")),
            other => cx.bad_attr(
                f,
                "policy",
                &format!("policy '{other}': qemu-direct requires or disables a feature"),
            ),
        }
    }
    if !flags.is_empty() {
        cx.spec.cpu_model_extra_flags = Some(flags);
    }
}

/// `<maxphysaddr>` as `emulate:N`, `passthrough` or `passthrough:LIMIT`.
fn maxphysaddr(m: &Element, cx: &mut Cx) {
    let value = match (m.attr("mode"), m.attr("bits"), m.attr("limit")) {
        (Some("emulate"), Some(b), None) => Some(format!("emulate:{b}")),
        (Some("passthrough"), None, None) => Some("passthrough".to_owned()),
        (Some("passthrough"), None, Some(l)) => Some(format!("passthrough:{l}")),
        _ => None,
    };
    match value {
        Some(v) => cx.spec.maxphysaddr = Some(v),
        None => cx.bad(
            m,
            "maxphysaddr takes mode='emulate' bits='N' or mode='passthrough' [limit='N']",
        ),
    }
}
