"""Helpers shared by scripts/bench and scripts/bench-probe (Python 3.11 standard library only).

- build(): target/release/qemu-direct (and examples) from `cargo build --release --locked`.
- Libvirt: a system libvirtd for a benchmark: one that already answers is used as is; else, as
  root with libvirt installed, virtlogd and libvirtd are started (as scripts/with-libvirtd does)
  and stopped by pid at the end. `.why` says why it is unavailable otherwise.
- write_section(): replaces a `## ...` section of a Markdown file, or appends it.
- stats()/ratio(): median and min-max.
- until_marker(), guest_files(), sample_peak(): booting the test guests, timing, memory.
- domain_xml(), virsh_until_marker(): the test guest under libvirt.
- python_qmp(), PY_RTT, RAW_RTT: the Python QMP clients of the QMP row.
- Qemu, qemus(): the QEMUs a row runs on (`--qemu system,10.0`): the system's on PATH, or one
  in a prefix (scripts/install-qemu VERSION), with the environment qemu-direct needs for it;
  split_env(): a `run --dry-run` line (`QEMU_MODULE_DIR=... qemu-system-...`) as env and argv.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 300.0
URI = "qemu:///system"
QEMU_CONF = Path("/etc/libvirt/qemu.conf")
CAPS_CACHE = Path("/var/cache/libvirt/qemu/capabilities")
LIBVIRT_PACKAGES = ("libvirt-daemon-system libvirt-daemon-system-sysv libvirt-clients "
                    "libvirt-daemon-driver-qemu")


class Qemu:
    """One QEMU under test: `system` (the emulators on PATH) or a prefix (`--qemu-prefix`)."""

    def __init__(self, prefix: Path | None):
        self.prefix = prefix
        self.version = first_line([self.emulator("x86_64"), "--version"])
        m = re.search(r"version ([0-9]+\.[0-9]+)", self.version)
        self.label = m.group(1) if m else (str(prefix) if prefix else "system")

    def emulator(self, arch: str) -> str:
        if self.prefix is None:
            return shutil.which(f"qemu-system-{arch}") or f"qemu-system-{arch}"
        for sub in ("usr/bin", "bin", "usr/local/bin"):
            p = self.prefix / sub / f"qemu-system-{arch}"
            if p.exists():
                return str(p)
        return str(self.prefix / "usr/bin" / f"qemu-system-{arch}")

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` for qemu-direct on this QEMU (QEMU_DIRECT_QEMU_PREFIX set or removed)."""
        env = dict(base)
        env.pop("QEMU_DIRECT_QEMU_PREFIX", None)
        if self.prefix is not None:
            env["QEMU_DIRECT_QEMU_PREFIX"] = str(self.prefix)
        return env

    def raw_env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` for starting this QEMU by hand: a prefix's own modules (QEMU refuses another
        build's), as qemu-direct passes them."""
        env = dict(base)
        if self.prefix is not None:
            mods = sorted(self.prefix.glob("usr/lib/*/qemu"))
            if mods:
                env["QEMU_MODULE_DIR"] = str(mods[0])
        return env

    def raw_args(self) -> list[str]:
        """`-L` for a prefix's data folders (Debian's QEMU is not relocatable), as qemu-direct
        passes them; nothing for the system QEMU."""
        if self.prefix is None:
            return []
        out: list[str] = []
        for d in ("usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"):
            if (self.prefix / d).is_dir():
                out += ["-L", str(self.prefix / d)]
        return out


def qemus(spec: str) -> list[Qemu]:
    """`system,10.0,/some/prefix`: `system` is the QEMU on PATH, a version is installed (or
    found) by scripts/install-qemu, anything else is a prefix folder."""
    out = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item == "system":
            out.append(Qemu(None))
        elif re.fullmatch(r"[0-9]+\.[0-9]+", item):
            r = subprocess.run([str(REPO / "scripts" / "install-qemu"), item],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"scripts/install-qemu {item} failed: {r.stderr.strip()}")
            out.append(Qemu(Path(r.stdout.strip().splitlines()[-1])))
        else:
            out.append(Qemu(Path(item).resolve()))
    return out


def split_env(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """Leading `NAME=value` words of a command line (as `run --dry-run` prints for a prefix) as
    an environment, and the rest."""
    env: dict[str, str] = {}
    i = 0
    while i < len(words) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[i]):
        k, v = words[i].split("=", 1)
        env[k] = v
        i += 1
    return env, words[i:]


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

    def restart_warm(self) -> float:
        """Stops our libvirtd and starts it again with its capability cache kept; returns
        the seconds until it answers: what libvirtd's start costs without any probing."""
        if not self.owned:
            raise RuntimeError("the running libvirtd is not ours to restart")
        self._stop("libvirtd")
        t0 = time.monotonic()
        self._start()
        return time.monotonic() - t0

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


class BootFailed(Exception):
    pass


def until_marker(argv: list[str], marker: bytes, env: dict[str, str] | None = None,
                 timeout: float = RUN_TIMEOUT) -> float:
    """Runs argv; returns the seconds from the start to `marker` on its stdout. Waits for the
    process to end (the test guests power off by themselves)."""
    return until_marker_up(argv, marker, env, timeout)[0]


UPTIME_RE = re.compile(rb"qd-uptime:\s*([0-9]+(?:\.[0-9]+)?)")


def until_marker_up(argv: list[str], marker: bytes, env: dict[str, str] | None = None,
                    timeout: float = RUN_TIMEOUT) -> tuple[float, float | None]:
    """As until_marker, also returning the guest's own uptime at the marker (the test
    initramfs prints `qd-uptime: SECONDS` right after it), or None."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    wall = None
    uptime = None
    tail: list[bytes] = []
    err: list[bytes] = []
    drain = threading.Thread(target=lambda: err.extend(p.stderr), daemon=True)
    drain.start()
    try:
        for line in p.stdout:
            if wall is None and marker in line:
                wall = time.monotonic() - t0
            elif wall is not None and uptime is None:
                m = UPTIME_RE.search(line)
                uptime = float(m.group(1)) if m else None
            tail = (tail + [line])[-10:]
        p.wait()
    finally:
        timer.cancel()
        if p.poll() is None:
            p.kill()
            p.wait()
    drain.join(5)
    if wall is None:
        raise BootFailed(f"no {marker.decode()!r} from {shlex.join(argv[:3])}... "
                         f"(exit {p.returncode}); console tail:\n"
                         f"{b''.join(tail).decode(errors='replace')}"
                         f"stderr:\n{b''.join(err[-10:]).decode(errors='replace')}")
    return wall, uptime


def guest_files(arch: str) -> tuple[Path, Path]:
    d = guests_dir() / arch
    k, i = d / "kernel", d / "initrd.gz"
    if not (k.is_file() and i.is_file()):
        raise FileNotFoundError(f"no {arch} test guest in {d} (run scripts/fetch-test-guests.sh)")
    return k, i


def domain_xml(name: str, kernel: Path, initrd: Path, log: Path, append: str) -> str:
    """The x86_64 test guest as a libvirt domain, close to what qemu-direct runs: q35, TCG,
    `-cpu max`, 512 MiB, 1 vCPU, direct kernel boot, serial console to a file, no extra
    devices where libvirt lets them be left out."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{append}</cmdline>
  </os>
  <cpu mode='maximum'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{shutil.which('qemu-system-x86_64') or '/usr/bin/qemu-system-x86_64'}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='{log}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def virsh_until_marker(lv: Libvirt, xml: Path, name: str, log: Path, marker: bytes,
                       timeout: float = RUN_TIMEOUT) -> float:
    if log.exists():
        log.unlink()
    t0 = time.monotonic()
    lv.virsh("create", str(xml))
    try:
        while True:
            try:
                if marker in log.read_bytes():
                    return time.monotonic() - t0
            except FileNotFoundError:
                pass
            if time.monotonic() - t0 > timeout:
                raise BootFailed(f"libvirt domain {name}: no marker within {timeout:g} s")
            time.sleep(0.005)
    finally:
        # The guest powers off by itself (on_poweroff destroy); wait for the domain to go.
        end = time.monotonic() + 60
        while lv.virsh("domstate", name, check=False).returncode == 0:
            if time.monotonic() > end:
                lv.virsh("destroy", name, check=False)
                break
            time.sleep(0.05)


def python_qmp() -> tuple[Path | None, str]:
    """A venv with qemu.qmp; returns (python, version) or (None, why)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    vdir = cache / "qemu-direct" / "bench-venv"
    py = vdir / "bin" / "python"
    check = [str(py), "-c", "import qemu.qmp, importlib.metadata as m; "
             "print(m.version('qemu.qmp'))"]
    if py.exists():
        r = subprocess.run(check, capture_output=True, text=True)
        if r.returncode == 0:
            return py, r.stdout.strip()
    try:
        venv.create(vdir, with_pip=True, clear=True)
    except Exception as e:  # noqa: BLE001 - any failure makes the row say why
        return None, f"cannot create a venv in {vdir}: {e}"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "qemu.qmp"], capture_output=True,
                       text=True, timeout=600)
    if r.returncode != 0:
        return None, f"pip install qemu.qmp failed: {r.stderr.strip()[-300:]}"
    r = subprocess.run(check, capture_output=True, text=True)
    return (py, r.stdout.strip()) if r.returncode == 0 else (None, r.stderr.strip()[-300:])


PY_RTT = r"""
import asyncio, json, sys, time
from qemu.qmp import QMPClient
async def main(sock, n):
    c = QMPClient('bench')
    await c.connect(sock)
    t = time.perf_counter()
    for _ in range(n):
        await c.execute('query-status')
    s = time.perf_counter() - t
    await c.disconnect()
    print(json.dumps({"count": n, "seconds": s, "per_second": n / s}))
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


RAW_RTT = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
r = s.makefile("rb")
r.readline()
s.sendall(b'{"execute": "qmp_capabilities"}\n')
r.readline()
n = int(sys.argv[2])
t = time.perf_counter()
for _ in range(n):
    s.sendall(b'{"execute": "query-status"}\n')
    r.readline()
sec = time.perf_counter() - t
print(json.dumps({"count": n, "seconds": sec, "per_second": n / sec}))
"""


def sample_peak(pids: list[int], seconds: float) -> dict[int, tuple[int, int]]:
    """{pid: (max VmRSS seen, VmHWM at the end)} in KiB over `seconds`."""
    peak = {p: 0 for p in pids}
    hwm = {p: 0 for p in pids}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p in pids:
            s = proc_status(p)
            peak[p] = max(peak[p], s.get("VmRSS", 0))
            hwm[p] = max(hwm[p], s.get("VmHWM", 0))
        time.sleep(0.1)
    return {p: (peak[p], hwm[p]) for p in pids}
