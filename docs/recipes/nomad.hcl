# A Nomad batch job that runs `qemu-direct run ... -- CMD` with the raw_exec driver on clients
# whose meta says they run aarch64 guests. Explained in docs/recipes.md; scripts/test-recipes
# parses it (python-hcl2) and checks its constraint and command.
#
# Each client advertises qemu-direct's labels as client meta, e.g. from a timer:
#   nomad node meta apply $(qemu-direct traits --format labels)
# (or the same name = "value" pairs in the client's `meta` block).
job "aarch64-guest-uname" {
  type = "batch"

  group "guest" {
    # $${...} is HCL's escape for a literal ${...}: Nomad itself resolves the meta key at
    # placement, including the / and dots in it.
    constraint {
      attribute = "$${meta.qemu-direct.io/guest.aarch64}"
      operator  = "set_contains_any"
      value     = "kvm,emulated"
    }

    # Prefer the clients that run the guest under KVM.
    affinity {
      attribute = "$${meta.qemu-direct.io/guest.aarch64}"
      value     = "kvm"
      weight    = 100
    }

    restart {
      attempts = 0
      mode     = "fail"
    }

    task "run" {
      # raw_exec runs the command as the Nomad client's user, which must be able to open
      # /dev/kvm where there is one (the kvm group); `exec` (isolated) works too where the
      # client's chroot holds /usr/bin/qemu-direct, the QEMU packages and /dev/kvm.
      driver = "raw_exec"

      config {
        command = "/usr/bin/qemu-direct"
        args = [
          "run", "--arch=aarch64",
          "--kernel=/var/lib/qemu-direct/guests/aarch64/kernel",
          "--initrd=/var/lib/qemu-direct/guests/aarch64/initrd.gz",
          "--append=qd.hold=1", "--timeout=20m",
          "--", "uname", "-m",
        ]
      }

      resources {
        cpu    = 2000
        memory = 1024
      }
    }
  }
}
