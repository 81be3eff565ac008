"""Helpers shared by scripts/bench and scripts/bench-probe (Python 3.11 standard library only).

- build(): target/release/qemu-direct (and examples) from `cargo build --release --locked`.
- Libvirt: a system libvirtd for a benchmark: one that already answers is used as is; else, as
  root with libvirt installed, virtlogd and libvirtd are started (as scripts/with-libvirtd does)
  and stopped by pid at the end. `.why` says why it is unavailable otherwise.
- write_section(): replaces a `## ...` section of a Markdown file, or appends it.
- stats()/ratio(): median and min-max.
"""

from __future__ import annotations

import datetime
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
URI = "qemu:///system"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
CAPS_CACHE = Path("/var/cache/libvirt/qemu/capabilities")
LIBVIRT_PACKAGES = ("libvirt-daemon-system libvirt-daemon-system-sysv libvirt-clients "
                    "libvirt-daemon-driver-qemu")


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


def build(examples: tuple[str, ...] = ()) -> Path:
    """Builds the release binary (and the named examples); returns the binary."""
    cmd = ["cargo", "build", "--release", "--locked", "--quiet", "--bin", "qemu-direct"]
    for e in examples:
        cmd += ["--example", e]
    r = subprocess.run(cmd, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed (exit {r.returncode})")
    return target_dir() / "release" / "qemu-direct"


def first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0].strip() if text else "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def machine_line() -> str:
    return (f"{len(os.sched_getaffinity(0))} CPUs ({cpu_model()}), "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
            f"{platform.system()} {platform.release()}")


def now() -> str:
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}"


def stats(xs: list[float], unit: str = "s", scale: float = 1.0, digits: int = 2) -> str:
    if not xs:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return (f"{f.format(statistics.median(xs) * scale)} {unit} "
            f"({f.format(min(xs) * scale)}–{f.format(max(xs) * scale)})")


def ratio_stats(pairs: list[tuple[float, float]]) -> str:
    """Median of per-round ratios a/b, with their min-max: the spread of side-by-side pairs."""
    rs = [a / b for a, b in pairs if b > 0]
    if not rs:
        return "n/a"
    return f"{statistics.median(rs):.3f}× ({min(rs):.3f}–{max(rs):.3f})"


def median_ratio(pairs: list[tuple[float, float]]) -> float | None:
    rs = [a / b for a, b in pairs if b > 0]
    return statistics.median(rs) if rs else None


def write_section(path: Path, title: str, section: str) -> None:
    """Puts `section` (which starts with the `title` line) into `path`: the section of that
    title is replaced (up to the next `## ` heading), or the section is appended."""
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip("\n") == title), None)
    if not section.endswith("\n"):
        section += "\n"
    if start is None:
        if text and not text.endswith("\n"):
            text += "\n"
        new = text + ("\n" if text else "") + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        rest = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + rest if rest else "")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, path)


def guests_dir() -> Path:
    if os.environ.get("QD_TEST_GUESTS"):
        return Path(os.environ["QD_TEST_GUESTS"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.environ["HOME"], ".cache")
    return Path(cache) / "qemu-direct" / "test-guests"


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, ... of a process in KiB; empty once it is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k.startswith("Vm") and v.strip().endswith("kB"):
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def pids_named(comm: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == comm:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


class Libvirt:
    """A system libvirtd for the benchmark, if one can be had. Use as a context manager."""

    def __init__(self, allow_start: bool = True, wait: float = 180.0):
        self.allow_start = allow_start
        self.wait = wait
        self.why: str | None = None
        self.owned = False
        self.state: Path | None = None
        self.pids: dict[str, int] = {}
        self.start_seconds: float | None = None
        self.version = "?"

    def virsh(self, *args: str, timeout: float = 120, check: bool = True
              ) -> subprocess.CompletedProcess:
        r = subprocess.run(["virsh", "-q", "-c", URI, *args], capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {r.stderr.strip()}")
        return r

    def answers(self) -> bool:
        try:
            return self.virsh("version", timeout=20, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def __enter__(self) -> "Libvirt":
        missing = [t for t in ("libvirtd", "virtlogd", "virsh") if not shutil.which(t)]
        if missing:
            self.why = (f"libvirt is not installed ({', '.join(missing)} missing; "
                        f"`apt-get install --no-install-recommends {LIBVIRT_PACKAGES}`)")
            return self
        if self.answers():
            self.version = self._version()
            return self
        if not self.allow_start:
            self.why = "no libvirtd answers on qemu:///system (and starting one was not allowed)"
            return self
        if os.geteuid() != 0:
            self.why = "no libvirtd answers on qemu:///system, and starting one needs root"
            return self
        self._configure()
        self.state = Path(tempfile.mkdtemp(prefix="qd-bench-libvirtd."))
        self.owned = True
        try:
            self._start()
        except RuntimeError as e:
            self.why = str(e)
        return self

    def _version(self) -> str:
        r = self.virsh("version", check=False)
        for line in r.stdout.splitlines():
            if "libvirt" in line.lower() and "running" in line.lower():
                return line.strip()
        return first_line(["libvirtd", "--version"])

    def _configure(self) -> None:
        text = QEMU_CONF.read_text() if QEMU_CONF.exists() else ""
        missing = []
        for key, line in [("user", 'user = "root"'), ("group", 'group = "root"'),
                          ("security_driver", 'security_driver = "none"')]:
            if not any(l.strip().startswith(key) and "=" in l and
                       l.split("=", 1)[0].strip() == key for l in text.splitlines()):
                missing.append(line)
        if missing:
            with QEMU_CONF.open("a") as f:
                f.write("\n# Added by qemu-direct scripts/bench: QEMU as root, "
                        "no security driver.\n" + "\n".join(missing) + "\n")

    def _start(self) -> None:
        assert self.state is not None
        env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{self.state}/libvirtd.log")
        if not pids_named("virtlogd"):
            subprocess.run(["virtlogd", "-d", "-p", str(self.state / "virtlogd.pid")], env=env,
                           check=False)
            self._read_pid("virtlogd")
        t0 = time.monotonic()
        subprocess.run(["libvirtd", "-d", "-p", str(self.state / "libvirtd.pid")], env=env,
                       check=False)
        while not self.answers():
            if time.monotonic() - t0 > self.wait:
                raise RuntimeError(f"libvirtd did not answer on {URI} within {self.wait:.0f} s")
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - t0
        self._read_pid("libvirtd")
        self.version = self._version()

    def _read_pid(self, name: str) -> None:
        assert self.state is not None
        f = self.state / f"{name}.pid"
        for _ in range(100):
            try:
                self.pids[name] = int(f.read_text().strip())
                return
            except (OSError, ValueError):
                time.sleep(0.05)

    def restart_cold(self) -> tuple[float, float]:
        """Stops our libvirtd, empties its capability cache, starts it again; returns the
        seconds until it answers (`virsh version`) and then until `virsh capabilities` (every
        emulator probed) answers, both from the start."""
        if not self.owned:
            raise RuntimeError("the running libvirtd is not ours to restart")
        self._stop("libvirtd")
        if CAPS_CACHE.is_dir():
            for f in CAPS_CACHE.glob("*.xml"):
                f.unlink()
        t0 = time.monotonic()
        self._start()
        answered = time.monotonic() - t0
        self.virsh("capabilities", timeout=600)
        return answered, time.monotonic() - t0

    def daemon_pids(self) -> dict[str, int]:
        out = dict(self.pids)
        for name in ("libvirtd", "virtlogd"):
            if name not in out:
                found = pids_named(name)
                if found:
                    out[name] = found[0]
        return out

    def _stop(self, name: str) -> None:
        pid = self.pids.pop(name, None)
        if pid is None:
            return
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass

    def __exit__(self, *exc) -> None:
        if self.owned:
            self._stop("libvirtd")
            self._stop("virtlogd")
            if self.state:
                shutil.rmtree(self.state, ignore_errors=True)
