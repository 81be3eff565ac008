//! The machine type and its properties.

use super::{Machine, PlanError, context::Context};

/// The spec's machine type, bare, where it names one other than the profile's; else the
/// profile's, with the properties that pass their gates (and those for a direct kernel boot).
pub(super) fn machine(cx: &mut Context) -> Machine {
    let ap = cx.ap;
    match &cx.spec.machine {
        Some(m) if *m != ap.machine => {
            cx.notes.push(format!(
                "machine {m} chosen by the spec; the profile's {} properties are not applied",
                ap.machine
            ));
            Machine {
                kind: m.clone(),
                options: Vec::new(),
            }
        }
        _ => {
            let (mut options, left_out) = cx.gate.filter("machine option", &ap.machine_options);
            cx.notes.extend(left_out);
            if cx.spec.kernel.is_some() {
                let (kernel_options, left_out) =
                    cx.gate.filter("machine option", &ap.kernel_machine_options);
                options.extend(kernel_options);
                cx.notes.extend(left_out);
            }
            Machine {
                kind: ap.machine.clone(),
                options,
            }
        }
    }
}

/// Refuses a spec's machine type the emulator does not list, where its capabilities are known.
pub(super) fn check_known(cx: &Context) -> Result<(), PlanError> {
    if let (Some(m), Some(caps)) = (&cx.spec.machine, cx.host.caps(&cx.binary_key, cx.accel))
        && !caps.machines.is_empty()
        && caps.machine(m).is_none()
    {
        let names = caps
            .machines
            .iter()
            .flat_map(|i| std::iter::once(i.name.as_str()).chain(i.alias.as_deref()));
        return Err(PlanError::UnknownMachine {
            machine: m.clone(),
            binary: cx.profile.binary.clone(),
            nearest: crate::cpu::nearest(m, names),
        });
    }
    Ok(())
}
