//! The accelerator, and the options it runs with.

use crate::{
    host::HostFacts,
    profile::gate::{self, ProfileOption},
    profile::{Accel, MachineProfile},
    spec::AccelRequest,
};

use super::{PlanError, context::Context};

/// KVM where asked for or where it runs this guest, else TCG; with why, in one line.
pub(super) fn choose(
    req: AccelRequest,
    guest: &MachineProfile,
    host: &HostFacts,
) -> Result<(Accel, String), PlanError> {
    let verdict = host.kvm_verdict(guest);
    Ok(match (req, verdict) {
        (AccelRequest::Tcg, _) => (Accel::Tcg, "TCG: asked for with --accel tcg".into()),
        (AccelRequest::Auto | AccelRequest::Kvm, Ok(())) => (
            Accel::Kvm,
            format!(
                "KVM: {} is usable and {} guests are native to this {} host",
                host.kvm_device.display(),
                guest.name,
                host.arch_name()
            ),
        ),
        (AccelRequest::Auto, Err(why)) => (Accel::Tcg, format!("TCG: KVM not used because {why}")),
        (AccelRequest::Kvm, Err(why)) if why.forceable() => (
            Accel::Kvm,
            format!("KVM: forced with --accel kvm although {why}"),
        ),
        (AccelRequest::Kvm, Err(why)) => return Err(PlanError::KvmUnusable(why)),
    })
}

/// The accelerator's options: the profile's that pass their gates, and `--tb-size`, which
/// replaces the profile's and is refused where the installed QEMU cannot take it.
pub(super) fn options(cx: &mut Context) -> Result<Vec<String>, PlanError> {
    let (ap, accel) = (cx.ap, cx.accel);
    let explicit = match (cx.spec.tb_size, accel) {
        (Some(mib), Accel::Tcg) => Some(format!("tb-size={mib}")),
        (Some(_), Accel::Kvm) => {
            cx.notes.push(
                "--tb-size ignored: it sizes TCG's translation cache, and this guest runs under KVM"
                    .into(),
            );
            None
        }
        (None, _) => None,
    };
    let from_profile: Vec<ProfileOption> = ap
        .accel_options
        .iter()
        .filter(|o| explicit.as_deref().is_none_or(|e| gate::key(e) != o.key()))
        .cloned()
        .collect();
    let (mut options, left_out) = cx
        .gate
        .filter(&format!("-accel {accel} option"), &from_profile);
    cx.notes.extend(left_out);
    if let Some(opt) = explicit {
        cx.gate
            .check_explicit(&opt, &ap.accel_options)
            .map_err(|why| PlanError::QemuCannot {
                what: format!("--tb-size (-accel {accel},{opt})"),
                why,
            })?;
        options.push(opt);
    }
    Ok(options)
}
