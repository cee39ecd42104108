"""`foliosim oracle qemu setup`: fetch and unpack what a guest boot needs into a cache.

Kernels come from Debian's `linux-image-*-amd64` packages (bookworm for 6.1, trixie-backports
for 6.18 and 7.x), fetched with `apt-get download` through a private apt configuration kept
in the cache (the machine's own apt sources are not touched) and unpacked with `dpkg -x`.
The guest userland (busybox-static, ndctl, daxctl and their libraries) comes from the host's
Debian release through the machine's apt sources, also with `apt-get download` + `dpkg -x`;
shared libraries the packages do not ship are taken from the host, found with `ldd`.
QEMU itself must be installed on the host (`apt-get install qemu-system-x86`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SUITES = ("bookworm", "trixie", "trixie-backports")
USERLAND = ("busybox-static", "ndctl", "daxctl", "libndctl6", "libdaxctl1")
DEFAULT_KERNELS = ("6.1", "6.18")
#: Modules the guest loads (with their dependencies from modules.dep), when not built in.
GUEST_MODULES = (
    "nfit",
    "libnvdimm",
    "nd_pmem",
    "dax_pmem",
    "device_dax",
    "crc32c_generic",
    "crc32c_intel",
    "ext4",
)


class SetupError(Exception):
    """Something the oracle needs is missing; the message says what and how to get it."""


def cache_dir() -> Path:
    env = os.environ.get("FOLIOSIM_QEMU_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "foliosim" / "qemu"


@dataclass
class KernelImage:
    """An unpacked kernel: its release string (uname -r), upstream version and files."""

    release: str
    version: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        boot = self.root / "boot" / f"vmlinuz-{self.release}"
        return boot if boot.is_file() else self.moddir / "vmlinuz"

    @property
    def moddir(self) -> Path:
        for base in ("usr/lib/modules", "lib/modules"):
            d = self.root / base / self.release
            if d.is_dir():
                return d
        return self.root / "lib/modules" / self.release


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise SetupError(f"'{cmd[0]}' is not installed") from None
    if proc.returncode != 0:
        raise SetupError(f"{' '.join(cmd[:3])} ... failed: {proc.stderr.strip()[-600:]}")
    return proc.stdout


class PrivateApt:
    """apt-get/apt-cache with their own sources, lists and cache under the oracle's cache."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def options(self) -> list[str]:
        r = self.root
        return [
            "-o",
            f"Dir::State={r}/state",
            "-o",
            f"Dir::Cache={r}/cache",
            "-o",
            f"Dir::Etc::SourceList={r}/sources.list",
            "-o",
            "Dir::Etc::SourceParts=/nonexistent",
            "-o",
            "Dir::Etc::Preferences=/nonexistent",
            "-o",
            "Dir::Etc::PreferencesParts=/nonexistent",
            "-o",
            "APT::Architectures=amd64",
            "-o",
            "Debug::NoLocking=1",
            "-o",
            "Acquire::Languages=none",
            "-o",
            "APT::Sandbox::User=root",
        ]

    def update(self) -> None:
        for sub in ("state/lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        lines = [f"deb [signed-by={KEYRING}] {MIRROR} {suite} main" for suite in SUITES]
        (self.root / "sources.list").write_text("\n".join(lines) + "\n")
        _run(["apt-get", *self.options(), "update", "-q"])

    def show(self, packages: list[str]) -> dict[str, dict[str, str]]:
        """Fields of the candidate version of each package that exists (one apt-cache call)."""
        out: dict[str, dict[str, str]] = {}
        if not packages:
            return out
        proc = subprocess.run(
            ["apt-cache", *self.options(), "show", "--no-all-versions", *packages],
            capture_output=True,
            text=True,
            check=False,
        )
        for record in proc.stdout.split("\n\n"):
            fields: dict[str, str] = {}
            for line in record.splitlines():
                key, sep, value = line.partition(": ")
                if sep and not line.startswith(" "):
                    fields[key] = value
            if "Package" in fields:
                out.setdefault(fields["Package"], fields)
        return out

    def kernel_packages(self) -> list[tuple[str, str]]:
        """(abi, upstream version) of every generic amd64 kernel the lists know."""
        text = _run(
            ["apt-cache", *self.options(), "search", "--names-only", r"^linux-image-[0-9].*-amd64$"]
        )
        names = [line.split(" ", 1)[0] for line in text.splitlines()]
        abis = [n[len("linux-image-") : -len("-amd64")] for n in names if not n.endswith("-dbg")]
        result: list[tuple[str, str]] = []
        info = self.show([f"linux-image-{abi}-amd64" for abi in abis])
        for abi in abis:
            fields = info.get(f"linux-image-{abi}-amd64")
            if fields is None:
                continue
            result.append((abi, fields.get("Version", "").split("-", 1)[0]))
        return result

    def download(self, packages: list[str], dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        before = set(dest.glob("*.deb"))
        _run(["apt-get", *self.options(), "download", *packages], cwd=dest)
        return sorted(set(dest.glob("*.deb")) - before)


def _vkey(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def resolve_kernel(apt: PrivateApt, spec: str) -> tuple[str, str]:
    """The newest kernel (abi, version) whose upstream version is `spec` or starts with
    `spec.` (6.1 -> 6.1.176, 6.18 -> 6.18.15, 7.3.4 -> 7.3.4) and that ships its modules."""
    matches = [
        (abi, v) for abi, v in apt.kernel_packages() if v == spec or v.startswith(spec + ".")
    ]
    if not matches:
        raise SetupError(
            f"no Debian linux-image-*-amd64 package for kernel {spec} in {', '.join(SUITES)}"
        )
    for abi, version in sorted(matches, key=lambda m: _vkey(m[1]), reverse=True):
        info = apt.show([f"linux-image-{abi}-amd64", f"linux-modules-{abi}-amd64"])
        size = int(info[f"linux-image-{abi}-amd64"].get("Size", "0"))
        if size > 10_000_000 or f"linux-modules-{abi}-amd64" in info:
            return abi, version
    raise SetupError(
        f"no kernel {spec} package in the archive ships its modules "
        f"(tried {', '.join(v for _, v in matches)})"
    )


def kernels_dir() -> Path:
    return cache_dir() / "kernels"


def installed_kernels() -> list[KernelImage]:
    out: list[KernelImage] = []
    base = kernels_dir()
    if not base.is_dir():
        return out
    for d in sorted(base.iterdir()):
        stamp = d / "VERSION"
        if stamp.is_file():
            release, version = stamp.read_text().split()
            out.append(KernelImage(release, version, d))
    return out


def find_kernel(spec: str) -> KernelImage:
    """An unpacked kernel for `spec` (6.1, 6.18, 7.3.4, or a release like 6.1.0-50-amd64)."""
    candidates = [
        k
        for k in installed_kernels()
        if k.version == spec or k.version.startswith(spec + ".") or k.release == spec
    ]
    if not candidates:
        have = ", ".join(k.version for k in installed_kernels()) or "none"
        raise SetupError(
            f"kernel {spec} is not in the cache {kernels_dir()} (have: {have}); "
            f"run `foliosim oracle qemu setup --kernel {spec}`"
        )
    return max(candidates, key=lambda k: _vkey(k.version))


def fetch_kernel(apt: PrivateApt, spec: str, log: list[str]) -> KernelImage:
    abi, version = resolve_kernel(apt, spec)
    release = f"{abi}-amd64"
    root = kernels_dir() / release
    if (root / "VERSION").is_file():
        log.append(f"kernel {version} ({release}) already unpacked in {root}")
        return KernelImage(release, version, root)
    debs_dir = cache_dir() / "debs"
    wanted = [f"linux-image-{release}"]
    info = apt.show([f"linux-image-{release}"])
    depends = info.get(f"linux-image-{release}", {}).get("Depends", "")
    wanted += [
        d
        for d in (x.strip().split(" ")[0] for x in depends.split(","))
        if d.startswith(("linux-binary-", "linux-modules-")) and abi in d
    ]
    debs = [p for p in debs_dir.glob("*.deb") if p.name.split("_")[0] in wanted]
    have = {p.name.split("_")[0] for p in debs}
    missing = [w for w in wanted if w not in have]
    if missing:
        debs += apt.download(missing, debs_dir)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        log.append(f"unpacked {deb.name} ({deb.stat().st_size / 2**20:.0f} MiB)")
    image = KernelImage(release, version, tmp)
    if not (tmp / "lib").exists() and (tmp / "usr/lib").is_dir():
        (tmp / "lib").symlink_to("usr/lib")
    if not image.vmlinuz.is_file() or not (image.moddir / "kernel").is_dir():
        raise SetupError(f"{', '.join(wanted)}: no vmlinuz or modules after unpacking")
    (tmp / "VERSION").write_text(f"{release} {version}\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    log.append(f"kernel {version} ({release}) ready in {root}")
    return KernelImage(release, version, root)


def userland_dir() -> Path:
    return cache_dir() / "userland"


def fetch_userland(log: list[str]) -> Path:
    """busybox-static, ndctl and daxctl from the host's release, unpacked."""
    root = userland_dir()
    if (root / "READY").is_file():
        log.append(f"guest userland already unpacked in {root}")
        return root
    debs_dir = cache_dir() / "debs-userland"
    debs_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["apt-get", "download", *USERLAND],
        cwd=debs_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SetupError(
            f"apt-get download {' '.join(USERLAND)} failed (run `apt-get update` "
            f"first?): {proc.stderr.strip()[-400:]}"
        )
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in sorted(debs_dir.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        log.append(f"unpacked {deb.name}")
    for tool in ("bin/busybox", "usr/bin/ndctl", "usr/bin/daxctl"):
        if not (root / tool).is_file():
            raise SetupError(f"{tool} missing after unpacking {', '.join(USERLAND)}")
    (root / "READY").write_text("ok\n")
    return root


def check_host() -> list[str]:
    """Host tools the oracle runs; a clear error naming the package for each missing one."""
    need = {
        "qemu-system-x86_64": "qemu-system-x86",
        "gcc": "gcc",
        "dpkg-deb": "dpkg",
        "apt-get": "apt",
        "ldd": "libc-bin",
        "mke2fs": "e2fsprogs",
    }
    missing = [
        f"{tool} (Debian package {pkg})"
        for tool, pkg in need.items()
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()
    ]
    if missing:
        raise SetupError(
            "missing on the host: " + ", ".join(missing) + "; install with apt-get install"
        )
    if not Path("/usr/lib/x86_64-linux-gnu/libc.a").exists():
        raise SetupError("gcc -static needs libc.a: apt-get install libc6-dev")
    return [f"host: {shutil.which('qemu-system-x86_64')}, gcc, dpkg-deb present"]


def setup(kernels: list[str]) -> list[str]:
    """Fetch and unpack everything; returns what it did, one line an item."""
    log = check_host()
    apt = PrivateApt(cache_dir() / "apt")
    apt.update()
    log.append(f"apt lists for {', '.join(SUITES)} in {apt.root}")
    fetch_userland(log)
    for spec in kernels:
        fetch_kernel(apt, spec, log)
    return log
