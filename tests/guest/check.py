#!/usr/bin/env python3
"""Boots a test guest of scripts/fetch-test-guests.sh with raw QEMU (TCG) and checks it by hand:
the guest agent (guest-sync-delimited, guest-exec with captured output, guest-exec-status,
guest-file-open/write/read/close) and shared folders (qd.mount= over virtiofs or 9p); or times
boots to the marker.

  tests/guest/check.py [--dir DIR] agent ARCH...            agent checks
  tests/guest/check.py [--dir DIR] mount {9p,virtiofs} ARCH... shared folder (+ agent) checks
  tests/guest/check.py [--dir DIR] [--dir2 DIR2] time [--rounds N] [--agent-port] ARCH...
        boot-to-marker times (DIR and DIR2 interleaved, e.g. before/after a change)

A developer's tool, not part of the test suite: needs QEMU (and /usr/lib/qemu/virtiofsd for
virtiofs). Prints one line per check; exits non-zero if one failed.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# arch -> (binary, machine/cpu argv, console, bus suffix of virtio devices)
ARCHES = {
    "x86_64": ("qemu-system-x86_64", ["-machine", "q35", "-cpu", "max"], "ttyS0", "pci"),
    "aarch64": ("qemu-system-aarch64", ["-machine", "virt", "-cpu", "max,pauth-impdef=on"],
                "ttyAMA0", "pci"),
    "ppc64le": ("qemu-system-ppc64",
                ["-machine", "pseries,x-vof=on,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,"
                 "cap-ccf-assist=off", "-cpu", "power9"], "hvc0", "pci"),
    "s390x": ("qemu-system-s390x", ["-machine", "s390-ccw-virtio", "-cpu", "qemu"], "ttysclp0",
              "ccw"),
    "mipsel": ("qemu-system-mipsel", ["-machine", "malta", "-cpu", "24Kf"], "ttyS0", "pci"),
}


def guests_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ["HOME"], ".cache")
    return Path(cache) / "qemu-direct" / "test-guests"


class Guest:
    """A QEMU process whose console (stdout) is collected line by line."""

    def __init__(self, arch: str, d: Path, append: str = "", extra: list[str] | None = None,
                 mem: str = "512M"):
        binary, mach, console, _ = ARCHES[arch]
        self.argv = [binary, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                     "-accel", "tcg", *mach, "-m", mem, "-serial", "stdio",
                     "-kernel", str(d / arch / "kernel"), "-initrd", str(d / arch / "initrd.gz"),
                     "-append", f"console={console} panic=-1 {append}".strip(), *(extra or [])]
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self.cond:
                self.lines.append((time.monotonic() - self.t0, line))
                self.cond.notify_all()
        with self.cond:
            self.lines.append((time.monotonic() - self.t0, "<EOF>"))
            self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 120) -> tuple[float, str]:
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        i = 0
        with self.cond:
            while True:
                while i < len(self.lines):
                    t, line = self.lines[i]
                    i += 1
                    if rx.search(line):
                        return t, line
                    if line == "<EOF>":
                        raise RuntimeError(f"QEMU ended before {pattern!r}:\n{self.tail()}")
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {pattern!r} in {timeout} s:\n{self.tail()}")
                self.cond.wait(left)

    def tail(self, n: int = 25) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class Agent:
    """A client of qemu-ga on a chardev socket that QEMU listens on."""

    def __init__(self, path: str, timeout: float = 60):
        end = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
        self.buf = b""

    def _line(self, timeout: float) -> bytes | None:
        self.s.settimeout(timeout)
        while b"\n" not in self.buf:
            try:
                chunk = self.s.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise EOFError("agent socket closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def sync(self, timeout: float = 60) -> float:
        """guest-sync-delimited with fresh ids until the agent answers; returns the seconds."""
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < timeout:
            n += 1
            sid = 1000 + n
            self.s.sendall(json.dumps({"execute": "guest-sync-delimited",
                                       "arguments": {"id": sid}}).encode() + b"\n")
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                line = self._line(max(0.01, end - time.monotonic()))
                if line is None:
                    break
                line = line.lstrip(b"\xff").strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("return") == sid:
                    return time.monotonic() - t0
        raise TimeoutError("the agent did not answer guest-sync-delimited")

    def cmd(self, execute: str, timeout: float = 30, **args) -> object:
        m = {"execute": execute}
        if args:
            m["arguments"] = args
        self.s.sendall(json.dumps(m).encode() + b"\n")
        while True:
            line = self._line(timeout)
            if line is None:
                raise TimeoutError(f"no answer to {execute}")
            line = line.lstrip(b"\xff").strip()
            if not line:
                continue
            msg = json.loads(line)
            if "error" in msg:
                raise RuntimeError(f"{execute}: {msg['error']}")
            return msg["return"]

    def exec(self, argv: list[str], timeout: float = 30) -> dict:
        pid = self.cmd("guest-exec", path=argv[0], arg=argv[1:], **{"capture-output": True})["pid"]
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.cmd("guest-exec-status", pid=pid)
            if st["exited"]:
                for k in ("out-data", "err-data"):
                    if k in st:
                        st[k] = base64.b64decode(st[k]).decode(errors="replace")
                return st
            time.sleep(0.1)
        raise TimeoutError(f"guest-exec {argv} did not exit")


def agent_devices(arch: str, sock: str) -> list[str]:
    bus = ARCHES[arch][3]
    return ["-device", f"virtio-serial-{bus}", "-chardev",
            f"socket,id=qga0,path={sock},server=on,wait=off",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0"]


def check_agent(arch: str, d: Path, ag: Agent, g: Guest, results: list) -> None:
    def ok(name, cond, detail=""):
        results.append((arch, name, bool(cond), detail))
        print(f"{arch}: {name}: {'ok' if cond else 'FAILED'} {detail}".rstrip(), flush=True)

    t = ag.sync()
    ok("guest-sync-delimited", True, f"({t:.2f} s after connect)")
    info = ag.cmd("guest-info")
    ok("guest-info", info.get("version"), f"version {info.get('version')}")
    st = ag.exec(["/bin/sh", "-c", "echo out-$(uname -m); echo err-line >&2; exit 3"])
    ok("guest-exec + status (capture-output)",
       st.get("exitcode") == 3 and st.get("out-data", "").startswith("out-")
       and "err-line" in st.get("err-data", ""),
       f"exitcode={st.get('exitcode')} out={st.get('out-data', '').strip()!r} "
       f"err={st.get('err-data', '').strip()!r}")
    payload = os.urandom(100_000)
    h = ag.cmd("guest-file-open", path="/tmp/qd-agent-test", mode="w")
    w = ag.cmd("guest-file-write", handle=h, **{"buf-b64": base64.b64encode(payload).decode()})
    ag.cmd("guest-file-close", handle=h)
    h = ag.cmd("guest-file-open", path="/tmp/qd-agent-test", mode="r")
    got = b""
    while True:
        r = ag.cmd("guest-file-read", handle=h, count=65536)
        got += base64.b64decode(r["buf-b64"])
        if r["eof"] or not r["count"]:
            break
    ag.cmd("guest-file-close", handle=h)
    ok("guest-file-open/write/read/close", got == payload and w["count"] == len(payload),
       f"{len(payload)} bytes round trip")


def run_agent(args) -> list:
    results = []
    for arch in args.arch:
        with tempfile.TemporaryDirectory(prefix="qd-check.") as tmp:
            sock = f"{tmp}/qga.sock"
            g = Guest(arch, args.dir, "qd.hold=1", agent_devices(arch, sock))
            try:
                tm, _ = g.wait_for(r"GUEST-READY")
                _, aline = g.wait_for(r"qd-agent:|qd-heartbeat 1", 30)
                print(f"{arch}: marker at {tm:.2f} s; {aline}", flush=True)
                ag = Agent(sock)
                t0 = time.monotonic()
                ag.sync()
                print(f"{arch}: agent answered {time.monotonic() - g.t0 - tm:.2f} s after the "
                      f"marker ({time.monotonic() - t0:.2f} s of syncing)", flush=True)
                check_agent(arch, args.dir, ag, g, results)
            except Exception as e:  # noqa: BLE001 - report and go on with the next arch
                results.append((arch, "agent", False, str(e)))
                print(f"{arch}: FAILED: {e}\n{g.tail()}", flush=True)
            finally:
                g.stop()
    return results


def run_mount(args) -> list:
    results = []
    for arch in args.arch:
        bus = ARCHES[arch][3]
        with tempfile.TemporaryDirectory(prefix="qd-check.") as tmp:
            share = Path(tmp) / "share"
            share.mkdir()
            (share / "from-host.txt").write_text(f"hello from the host ({args.fs})\n")
            sock = f"{tmp}/qga.sock"
            extra = agent_devices(arch, sock)
            vfsd = None
            mem = "512M"
            if args.fs == "9p":
                extra += ["-fsdev", f"local,id=fs0,path={share},security_model=none",
                          "-device", f"virtio-9p-{bus},fsdev=fs0,mount_tag=hostshare"]
            else:
                vsock = f"{tmp}/vfs.sock"
                vfsd = subprocess.Popen(["/usr/lib/qemu/virtiofsd", f"--socket-path={vsock}",
                                         "-o", f"source={share}", "-o", "cache=none"],
                                        stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/vfsd.log", "w"))
                for _ in range(100):
                    if os.path.exists(vsock):
                        break
                    time.sleep(0.05)
                extra += ["-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
                          "-machine", "memory-backend=mem", "-chardev", f"socket,id=vfs,path={vsock}",
                          "-device", f"vhost-user-fs-{bus},chardev=vfs,tag=hostshare"]
            g = Guest(arch, args.dir, "qd.hold=1 qd.mount=hostshare:/mnt/host", extra, mem)
            name = f"mount {args.fs}"
            try:
                _, line = g.wait_for(r"qd-mounted:|qd-error:")
                good = line.strip() == f"qd-mounted: hostshare /mnt/host {args.fs}"
                print(f"{arch}: {line}", flush=True)
                g.wait_for(r"GUEST-READY")
                detail = line
                if good:
                    ag = Agent(sock)
                    ag.sync()
                    st = ag.exec(["/bin/sh", "-c", "cat /mnt/host/from-host.txt && "
                                  "echo from-guest > /mnt/host/from-guest.txt && sync"])
                    back = (share / "from-guest.txt").read_text() if (
                        share / "from-guest.txt").exists() else ""
                    good = (st.get("exitcode") == 0 and "hello from the host" in
                            st.get("out-data", "") and back == "from-guest\n")
                    detail = (f"guest read {st.get('out-data', '').strip()!r}, host read "
                              f"{back.strip()!r}")
                    if not good:
                        ls = ag.exec(["/bin/ls", "-l", "/mnt/host"])
                        detail += (f"; exit {st.get('exitcode')}: {st.get('err-data', '').strip()!r}"
                                   f"; ls -l: exit {ls.get('exitcode')} "
                                   f"{(ls.get('out-data', '') + ls.get('err-data', '')).strip()!r}")
                results.append((arch, name, good, detail))
                print(f"{arch}: {name}: {'ok' if good else 'FAILED'} {detail}", flush=True)
            except Exception as e:  # noqa: BLE001
                results.append((arch, name, False, str(e)))
                print(f"{arch}: {name}: FAILED: {e}\n{g.tail()}", flush=True)
            finally:
                g.stop()
                if vfsd:
                    vfsd.terminate()
                    vfsd.wait()
                    log = Path(f"{tmp}/vfsd.log").read_text().strip()
                    if log and not all(r[2] for r in results if r[0] == arch):
                        print(f"virtiofsd: {log[-2000:]}")
    return results


def run_time(args) -> list:
    """Boot to the marker, DIR and DIR2 interleaved: wall time from starting QEMU to the
    marker line, the guest's qd-uptime, and the CPU time (user + sys, all threads) of the
    whole QEMU run (boot, marker, poweroff), which depends least on what else the host runs.
    --agent-port attaches the virtio-serial agent port; --append adds kernel arguments;
    --icount runs the guest with -icount shift=0,sleep=off (then uptime is deterministic)."""
    dirs = [args.dir] + ([args.dir2] if args.dir2 else [])
    for arch in args.arch:
        rows = {str(d): ([], [], []) for d in dirs}
        for _ in range(args.rounds):
            for d in dirs:
                with tempfile.TemporaryDirectory(prefix="qd-check.") as tmp:
                    extra = agent_devices(arch, f"{tmp}/qga.sock") if args.agent_port else []
                    if args.icount:
                        # the guest's clock counts instructions (1 ns each): its uptime at the
                        # marker no longer depends on what else the host runs
                        extra += ["-icount", "shift=0,sleep=off"]
                    g = Guest(arch, d, args.append, extra, "512M")
                    killer = threading.Timer(180, g.p.kill)
                    killer.start()
                    try:
                        t, _ = g.wait_for(r"GUEST-READY", 170)
                        _, up = g.wait_for(r"qd-uptime:")
                        _, status, ru = os.wait4(g.p.pid, 0)
                        g.p.returncode = os.waitstatus_to_exitcode(status)
                        rows[str(d)][0].append(t)
                        rows[str(d)][1].append(float(up.split()[-1]))
                        rows[str(d)][2].append(ru.ru_utime + ru.ru_stime)
                    finally:
                        killer.cancel()
                        g.stop()
        for d in dirs:
            size = (d / arch / "initrd.gz").stat().st_size
            cols = " ".join(f"{name} {statistics.median(xs):.2f} [{min(xs):.2f}-{max(xs):.2f}]"
                            for name, xs in zip(("wall", "uptime", "cpu"), rows[str(d)]))
            print(f"{arch} {d} initrd={size} {cols} s n={len(rows[str(d)][0])} "
                  f"load={os.getloadavg()[0]:.1f}", flush=True)
    return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=guests_dir())
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("agent")
    a.add_argument("arch", nargs="+", choices=list(ARCHES))
    m = sub.add_parser("mount")
    m.add_argument("fs", choices=["9p", "virtiofs"])
    m.add_argument("arch", nargs="+", choices=list(ARCHES))
    t = sub.add_parser("time")
    t.add_argument("--dir2", type=Path)
    t.add_argument("--rounds", type=int, default=5)
    t.add_argument("--agent-port", action="store_true")
    t.add_argument("--append", default="")
    t.add_argument("--icount", action="store_true")
    t.add_argument("arch", nargs="+", choices=list(ARCHES))
    args = ap.parse_args()
    if args.what == "mount" and args.fs == "virtiofs" and not shutil.which("/usr/lib/qemu/virtiofsd"):
        print("no /usr/lib/qemu/virtiofsd", file=sys.stderr)
        return 2
    results = {"agent": run_agent, "mount": run_mount, "time": run_time}[args.what](args)
    failed = [r for r in results if not r[2]]
    if results:
        print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
