"""The guest: an initramfs (busybox, ndctl, mke2fs, the kernel's DAX modules, the test
program) and one QEMU boot with an emulated, file-backed NVDIMM."""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from foliosim.oracle_qemu.cprog import Plan
from foliosim.oracle_qemu.setup import GUEST_MODULES, KernelImage, SetupError, cache_dir

NVDIMM_SIZE = 14 << 30
LABEL_SIZE = 128 << 10
SZ_16M = 16 << 20


# ---------------------------------------------------------------- cpio (newc) writer


class Cpio:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ino = 1000

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        self.ino += 1
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        blob = header + name.encode() + b"\0"
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        self.parts.append(blob)

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def bytes(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        out = b"".join(self.parts)
        return out + b"\0" * (-len(out) % 512)


# ---------------------------------------------------------------- base image per kernel


def _libs(binary: Path, extra_dirs: list[Path]) -> list[Path]:
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(str(d) for d in extra_dirs))
    out = subprocess.run(
        ["ldd", str(binary)], capture_output=True, text=True, env=env, check=False
    ).stdout
    libs: list[Path] = []
    for line in out.splitlines():
        if "not found" in line:
            raise SetupError(
                f"{binary.name}: shared library {line.split()[0]} not found; install it on the host"
            )
        parts = line.split()
        for part in parts:
            if part.startswith("/"):
                libs.append(Path(part))
                break
    return libs


def _module_order(moddir: Path) -> list[Path]:
    """Module files to insmod, dependencies first, from each module's `depends=` modinfo
    (Debian's packages ship no modules.dep; depmod runs at install). Modules that are not
    files are built in."""
    files = {p.name.split(".ko")[0].replace("-", "_"): p for p in moddir.rglob("*.ko*")}
    order: list[Path] = []

    def visit(name: str) -> None:
        path = files.get(name.replace("-", "_"))
        if path is None or path in order:
            return
        m = re.search(rb"depends=([^\x00]*)\x00", _module_bytes(path))
        for dep in filter(None, (m.group(1).decode() if m else "").split(",")):
            visit(dep)
        order.append(path)

    for want in GUEST_MODULES:
        visit(want)
    return order


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    return data


def base_image(kernel: KernelImage, userland: Path) -> Path:
    """The cached initramfs part shared by every boot of a kernel."""
    tag = hashlib.sha256(" ".join(GUEST_MODULES).encode()).hexdigest()[:8]
    out = cache_dir() / "initramfs" / f"base-{kernel.release}-{tag}.cpio"
    if out.exists():
        return out
    c = Cpio()
    for d in (
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "lib",
        "lib64",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "mnt",
        "lib/modules",
        "lib/x86_64-linux-gnu",
    ):
        c.dir(d)
    c.file("bin/busybox", (userland / "bin/busybox").read_bytes())
    c.symlink("bin/sh", "busybox")
    lib_dirs = [userland / "usr/lib/x86_64-linux-gnu", userland / "lib/x86_64-linux-gnu"]
    binaries = [userland / "usr/bin/ndctl", userland / "usr/bin/daxctl", Path("/usr/sbin/mke2fs")]
    seen: set[str] = set()
    for b in binaries:
        c.file(f"usr/bin/{b.name}", b.read_bytes())
        for lib in _libs(b, lib_dirs):
            if lib.name in seen:
                continue
            seen.add(lib.name)
            target = "lib64" if lib.name.startswith("ld-linux") else "lib/x86_64-linux-gnu"
            c.file(f"{target}/{lib.name}", lib.resolve().read_bytes())
    if Path("/etc/mke2fs.conf").exists():
        c.file("etc/mke2fs.conf", Path("/etc/mke2fs.conf").read_bytes(), 0o644)
    order = _module_order(kernel.moddir)
    names = []
    for path in order:
        name = path.name.split(".ko")[0] + ".ko"
        c.file(f"lib/modules/{name}", _module_bytes(path), 0o644)
        names.append(name)
    c.file("etc/modules.order", ("\n".join(names) + "\n").encode(), 0o644)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(c.bytes())
    tmp.rename(out)
    return out


# ---------------------------------------------------------------- per-boot part

INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in $(cat /etc/modules.order); do insmod /lib/modules/$m 2>&1 | grep -v 'File exists'; done
echo "@@BOOT $(uname -r) $(cat /proc/uptime)"
i=0
while [ ! -e /sys/bus/nd/devices/region0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ndctl disable-region all >/dev/null 2>&1
ndctl init-labels -f all >/dev/null 2>&1
ndctl enable-region all >/dev/null 2>&1
r=/sys/bus/nd/devices/region0
echo "@@REGION $(cat $r/size 2>/dev/null) $(grep -o pdpe1gb /proc/cpuinfo | head -1)"
mkns() {
  out=$(ndctl create-namespace -r region0 "$@" 2>&1)
  echo "$out" | grep -o "\"$NSKEY\":\"[^\"]*\"" | cut -d'"' -f4
  echo "$out" | grep -q "\"$NSKEY\"" ||
    echo "@@SETUPFAIL ndctl create-namespace $*: $(echo $out | tr '\n' ' ')" >&2
}
. /scenarios.sh
echo "@@DMESG"
dmesg
echo "@@DONE $(cat /proc/uptime)"
poweroff -f
"""


def _ns_size(size: int, align: int) -> int:
    pad = max(align, SZ_16M)
    return -(-(size + pad) // pad) * pad


def scenario_script(plan: Plan) -> str:
    lines = [
        f"# scenario {plan.number}: {plan.path}",
        f"echo @@PREP s={plan.number}",
        "ndctl destroy-namespace -f all >/dev/null 2>&1",
        f"echo {plan.thp} > /sys/kernel/mm/transparent_hugepage/enabled",
        "args=",
    ]
    for dev in plan.devices:
        if dev.kind == "devdax":
            size = _ns_size(dev.size, dev.align)
            lines += [
                "NSKEY=chardev",
                f"d=$(mkns -m devdax -M mem -a {dev.align} -s {size})",
                f'args="$args {dev.index}=/dev/$d"',
            ]
        elif dev.kind == "fsdax":
            mnt = f"/mnt/{dev.name}"
            lines += [
                "NSKEY=blockdev",
                f"d=$(mkns -m fsdax -M mem -s {_ns_size(dev.size, 2 << 20)})",
                # e2fsprogs' mke2fs, not busybox's applet; stripe hints for 2M extents
                "mk=$(/usr/bin/mke2fs -q -F -t ext4 -b 4096 "
                "-E stride=512,stripe_width=512 /dev/$d 2>&1)",
                f"mkdir -p {mnt}",
                f"mount -t ext4 -o dax /dev/$d {mnt} || "
                'echo "@@SETUPFAIL mount -o dax /dev/$d: $mk '
                "$(dmesg | grep -i -E 'ext4|dax|pmem|nd_' | tail -4)\" >&2",
                f'args="$args {dev.index}={mnt}"',
            ]
        elif dev.kind == "pagecache":
            mnt = f"/mnt/{dev.name}"
            lines += [
                "NSKEY=blockdev",
                f"d=$(mkns -m fsdax -M mem -s {_ns_size(dev.size, 2 << 20)})",
                "mk=$(/usr/bin/mke2fs -q -F -t ext4 -b 4096 /dev/$d 2>&1)",
                f"mkdir -p {mnt}",
                # no -o dax: the block device's page cache, as on an ordinary disk
                f'mount -t ext4 /dev/$d {mnt} || echo "@@SETUPFAIL mount /dev/$d: $mk" >&2',
                f'args="$args {dev.index}={mnt}"',
            ]
        elif dev.kind == "shmem":
            mnt = f"/mnt/{dev.name}"
            lines += [
                f"mkdir -p {mnt}",
                f"mount -t tmpfs -o huge={dev.huge},size=8g tmpfs {mnt}",
                f'args="$args {dev.index}={mnt}"',
            ]
    lines += [
        f"/usr/bin/foliosim-guest {plan.number} $args",
        "sync",
        "for m in /mnt/*; do umount $m 2>/dev/null; done",
    ]
    return "\n".join(lines) + "\n"


def boot_image(plans: list[Plan], program: Path) -> bytes:
    c = Cpio()
    c.file("init", INIT.encode())
    c.file("usr/bin/foliosim-guest", program.read_bytes())
    c.file("scenarios.sh", "".join(scenario_script(p) for p in plans).encode())
    return c.bytes()


# ---------------------------------------------------------------- QEMU


@dataclass
class BootResult:
    console: str
    seconds: float
    accel: str
    command: list[str]
    failed_accels: list[str]


# A guest under KVM boots and runs its plans in seconds; one without its boot marker after
# KVM_BOOT_TIMEOUT is taken as a KVM that opens but does not run (seen here: /dev/kvm present
# and openable, the guest hung with no console output and 2 s of CPU in 5 minutes), and this
# process uses TCG for the rest of its boots.
KVM_BOOT_TIMEOUT = 60.0
_kvm_failed = False


def kvm_usable() -> bool:
    if os.environ.get("FOLIOSIM_QEMU_NO_KVM") or _kvm_failed:
        return False
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def boot(
    kernel: KernelImage, userland: Path, plans: list[Plan], program: Path, timeout: float = 900.0
) -> BootResult:
    global _kvm_failed
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise SetupError("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    base = base_image(kernel, userland)
    with tempfile.TemporaryDirectory(prefix="foliosim-qemu-") as tmp:
        work = Path(tmp)
        initrd = work / "initrd.cpio"
        with initrd.open("wb") as f:
            f.write(base.read_bytes())
            f.write(boot_image(plans, program))
        img = work / "nvdimm.img"
        with img.open("wb") as f:
            f.truncate(NVDIMM_SIZE + LABEL_SIZE)
        accels = (["kvm"] if kvm_usable() else []) + ["tcg"]
        failed: list[str] = []
        for accel in accels:
            cmd = [
                qemu,
                "-machine",
                "pc,nvdimm=on",
                "-accel",
                accel,
                "-cpu",
                "max" if accel == "tcg" else "host",
                "-m",
                f"2G,slots=2,maxmem={(NVDIMM_SIZE >> 30) + 4}G",
                "-smp",
                "1",
                "-nographic",
                "-no-reboot",
                "-kernel",
                str(kernel.vmlinuz),
                "-initrd",
                str(initrd),
                "-append",
                "console=ttyS0 panic=-1 loglevel=1 nokaslr",
                "-object",
                f"memory-backend-file,id=mem1,share=on,mem-path={img},"
                f"size={NVDIMM_SIZE + LABEL_SIZE}",
                "-device",
                f"nvdimm,id=nv1,memdev=mem1,label-size={LABEL_SIZE}",
            ]
            start = time.monotonic()
            limit = min(timeout, KVM_BOOT_TIMEOUT) if accel == "kvm" else timeout
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, timeout=limit, check=False, stdin=subprocess.DEVNULL
                )
                console = proc.stdout.decode(errors="replace")
                console += proc.stderr.decode(errors="replace")
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout or b""
                console = out.decode(errors="replace") if isinstance(out, bytes) else out
                console += f"\n@@TIMEOUT after {limit:.0f}s\n"
            seconds = time.monotonic() - start
            if "@@BOOT" in console:
                break
            if accel == "kvm":
                _kvm_failed = True
            failed.append(f"{accel}: {console.strip()[-200:]}")
        return BootResult(console.replace("\r", ""), seconds, accel, cmd, failed)
