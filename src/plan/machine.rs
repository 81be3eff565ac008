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

/// Adds the profile's machine properties for nested virtualization where the spec asks for it;
/// refuses it where this accelerator has none, where this QEMU lacks them, or where the spec's
/// own machine type replaces the profile's (whose properties they are).
pub(super) fn nested_virt(cx: &mut Context, machine: &mut Machine) -> Result<(), PlanError> {
    if !cx.spec.nested_virt {
        return Ok(());
    }
    let refuse = |why: String| PlanError::NoNestedVirt {
        arch: cx.profile.arch(),
        accel: cx.accel,
        why,
    };
    let ap = cx.ap;
    if ap.nested_machine_options.is_empty() {
        let can: Vec<String> = cx
            .profile
            .accel
            .iter()
            .filter(|(_, a)| !a.nested_machine_options.is_empty())
            .map(|(accel, _)| accel.to_string())
            .collect();
        return Err(refuse(if can.is_empty() {
            "cannot have it: the profile names no machine property that gives them virtualization \
             extensions (x86 guests get them from the CPU: svm in max, svm or vmx in \
             host-passthrough)"
                .into()
        } else {
            format!(
                "cannot have it; under {} they can (--accel {})",
                can.join(", "),
                can[0]
            )
        }));
    }
    if machine.kind != ap.machine {
        return Err(refuse(format!(
            "have it from properties of the machine {}, and the spec names {}",
            ap.machine, machine.kind
        )));
    }
    let (options, left_out) = cx.gate.filter("machine option", &ap.nested_machine_options);
    if !left_out.is_empty() {
        return Err(refuse(format!(
            "cannot have it here: {}",
            left_out.join("; ")
        )));
    }
    machine.options.extend(options);
    Ok(())
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
