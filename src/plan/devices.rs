//! The disks and network cards, on the profile's bus.

use crate::spec::net::Net;

use super::{DiskPlan, NicPlan, SeedPlan, context::Context};

/// The spec's disks in order, noting those whose writes go to an overlay.
pub(super) fn disks(cx: &mut Context) -> Vec<DiskPlan> {
    let disks = cx
        .spec
        .disks
        .iter()
        .map(|d| DiskPlan {
            disk: d.clone(),
            device: format!("virtio-blk{}", cx.profile.device_suffix),
            overlay: None,
        })
        .collect::<Vec<_>>();
    for (i, d) in disks.iter().enumerate() {
        if d.wants_overlay() {
            cx.notes.push(format!(
                "disk {}: read-only; guest writes go to an overlay in the instance directory \
                 ({}, made with qemu-img at launch, gone with the instance); \
                 persist keeps them",
                d.disk.path.display(),
                DiskPlan::overlay_name(i)
            ));
        }
        if let Some(size) = d.disk.size {
            cx.notes.push(format!(
                "disk {}: the overlay is {size} bytes ({} MiB) in size, the guest sees a disk \
                 that large (a plan not launched shows snapshot=on, of the image's size)",
                d.disk.path.display(),
                size >> 20
            ));
        }
    }
    disks
}

/// cloud-init's seed, if asked for, as a read-only disk on the profile's bus.
pub(super) fn seed(cx: &mut Context) -> Option<SeedPlan> {
    let data = cx.spec.cloud_init.clone()?;
    let login = match &data.ssh {
        Some(l) => format!(": user {} logs in with {}", l.user, l.public_key.display()),
        None => String::new(),
    };
    cx.notes.push(format!(
        "cloud-init: a NoCloud seed (FAT, label cidata) made at launch in the instance directory \
         ({}, a fresh instance-id), attached read-only{login}",
        SeedPlan::FILE
    ));
    Some(SeedPlan {
        path: SeedPlan::FILE.into(),
        device: format!("virtio-blk{}", cx.profile.device_suffix),
        data,
    })
}

/// The spec's network card, if any.
pub(super) fn nics(cx: &Context) -> Vec<NicPlan> {
    match &cx.spec.net {
        Net::None => Vec::new(),
        Net::User(user) => vec![NicPlan {
            user: user.clone(),
            device: format!("virtio-net{}", cx.profile.device_suffix),
        }],
    }
}
