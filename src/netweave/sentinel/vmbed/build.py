"""Build the VM bed's kernel and initramfs from Debian packages, cached by package version.

The bed boots Debian's 6.1 kernel (BPF LSM, BTF) under qemu. Nothing is installed on the
host: packages are fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into a
root that becomes an uncompressed cpio initramfs. A second build with the same package
versions reuses the cache and takes well under a second.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from netweave.sentinel.vmbed.guest_init import INIT_SCRIPT

DEFAULT_CACHE = Path(os.environ.get("NETWEAVE_VMBED_CACHE", "/var/cache/netweave-vmbed"))

#: Packages whose dependency closure makes the guest's root file system.
GUEST_PACKAGES = (
    "busybox-static",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3-pytest",
    "libbpf1",
    "libelf1",
    "zlib1g",
    "libzstd1",
    "bpftool",
    "libstdc++6",  # compiled wheels of the host's virtualenv (numpy) need it
)

#: Dependencies the guest never needs (install tooling, perl), left out of the closure.
EXCLUDED_PACKAGES = frozenset(
    {
        "dpkg",
        "install-info",
        "perl",
        "perl-base",
        "perl-modules-5.36",
        "libperl5.36",
        "libgdbm-compat4",
        "tar",
        "mailcap",
        "mime-support",
        "readline-common",
        "debconf",
        "tzdata",
    }
)

#: Kernel modules the bed needs, by name; their dependencies are found from `.modinfo`.
GUEST_MODULES = ("virtio_pci", "9pnet_virtio", "9p")

#: Bump when the layout of the built image changes, so old caches are not reused.
BUILD_FORMAT = 3

_KERNEL_PACKAGE = re.compile(r"^linux-image-(6\.1\.0-\d+-amd64)$")


class VmBedError(Exception):
    """The bed could not be built; the message names the step and the input that failed."""


@dataclass(frozen=True, slots=True)
class BedImage:
    """A built bed: the kernel to boot and the initramfs holding the guest's root."""

    kernel_release: str
    vmlinux: Path
    initramfs: Path
    key: str


Log = Callable[[str], None]


def build_bed(cache_dir: Path = DEFAULT_CACHE, log: Log | None = None) -> BedImage:
    """Return the bed image for the current package versions, building it when not cached.

    Raises VmBedError when apt cannot provide a package or an artefact is malformed.
    """
    say = log or (lambda _msg: None)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; others then find it cached
        try:
            return _build_locked(cache_dir, say)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(cache_dir: Path, say: Log) -> BedImage:
    try:
        kernel_pkg, packages, versions = _plan()
    except VmBedError as first:
        say(f"vmbed: {first}; running apt-get update once and retrying")
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600, check=False)
        kernel_pkg, packages, versions = _plan()
    release = _KERNEL_PACKAGE.match(kernel_pkg)
    assert release is not None  # pick_kernel_package only returns matching names
    key_material = json.dumps(
        {"format": BUILD_FORMAT, "versions": versions, "init": INIT_SCRIPT, "mods": GUEST_MODULES},
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:16]
    out = cache_dir / key
    image = BedImage(release.group(1), out / "vmlinux", out / "initramfs.cpio", key)
    if (out / "done").exists():
        say(f"vmbed: cached image {out}")
        _prune(cache_dir, keep=out)
        return image
    say(f"vmbed: building image {out} (kernel {kernel_pkg} {versions[kernel_pkg]})")
    debs = download(packages, versions, cache_dir / "debs")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="build-") as tmp:
        work = Path(tmp)
        kernel_root = work / "kernel"
        _dpkg_extract(debs[kernel_pkg], kernel_root)
        bzimage = kernel_root / "boot" / f"vmlinuz-{image.kernel_release}"
        (out / "vmlinux.tmp").write_bytes(extract_vmlinux(bzimage.read_bytes(), bzimage))
        root = work / "root"
        for pkg in packages:
            if pkg != kernel_pkg:
                _dpkg_extract(debs[pkg], root)
        _install_modules(kernel_root, root, image.kernel_release)
        _finish_root(root)
        _write_cpio(root, out / "initramfs.cpio.tmp")
    (out / "vmlinux.tmp").replace(image.vmlinux)
    (out / "initramfs.cpio.tmp").replace(image.initramfs)
    (out / "manifest.json").write_text(json.dumps({"kernel": kernel_pkg, "versions": versions}))
    (out / "done").write_text("ok\n")
    _prune(cache_dir, keep=out)
    return image


def _plan() -> tuple[str, list[str], dict[str, str]]:
    """The kernel package, every guest package and the versions apt would download."""
    kernel_pkg = pick_kernel_package()
    packages = sorted({*resolve_closure(GUEST_PACKAGES), kernel_pkg})
    return kernel_pkg, packages, candidate_versions(packages)


def pick_kernel_package() -> str:
    """Name the Debian 6.1 kernel package apt offers (``linux-image-6.1.0-N-amd64``).

    ``NETWEAVE_VMBED_KERNEL`` overrides the choice. Raises VmBedError when apt has none.
    """
    forced = os.environ.get("NETWEAVE_VMBED_KERNEL")
    if forced:
        if not _KERNEL_PACKAGE.match(forced):
            raise VmBedError(f"NETWEAVE_VMBED_KERNEL={forced!r}: not linux-image-6.1.0-N-amd64")
        return forced
    meta = _apt_cache("depends", "linux-image-amd64", check=False)
    for line in meta.splitlines():
        name = line.strip().removeprefix("Depends:").strip()
        if _KERNEL_PACKAGE.match(name):
            return name
    names = _apt_cache("pkgnames", "linux-image-6.1.0-", check=False).split()
    found = sorted(
        (n for n in names if _KERNEL_PACKAGE.match(n)),
        key=lambda n: int(n.split("-")[3]),
    )
    if not found:
        raise VmBedError(
            "no linux-image-6.1.0-N-amd64 package in this host's apt sources "
            "(Debian 12 has it; run apt-get update)"
        )
    return found[-1]


def resolve_closure(roots: Iterable[str]) -> list[str]:
    """Return the real packages the roots depend on (recursively), without the excluded ones."""
    out = _apt_cache(
        "depends",
        "--recurse",
        "--no-recommends",
        "--no-suggests",
        "--no-conflicts",
        "--no-breaks",
        "--no-replaces",
        "--no-enhances",
        *roots,
    )
    names = {
        line.strip()
        for line in out.splitlines()
        if line and not line.startswith((" ", "<")) and ":" not in line
    }
    return sorted(names - EXCLUDED_PACKAGES)


def candidate_versions(packages: Iterable[str]) -> dict[str, str]:
    """Map each package to the version apt would download (its candidate)."""
    wanted = list(packages)
    out = _apt_cache("policy", *wanted)
    versions: dict[str, str] = {}
    current = ""
    for line in out.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
        elif line.strip().startswith("Candidate:") and current:
            versions[current] = line.split(":", 1)[1].strip()
    missing = [p for p in wanted if versions.get(p) in (None, "(none)")]
    if missing:
        raise VmBedError(f"apt has no candidate for {', '.join(missing)} (run apt-get update)")
    return versions


def download(packages: Iterable[str], versions: dict[str, str], debs: Path) -> dict[str, Path]:
    """Fetch each package's .deb into ``debs`` (once per version) and return their paths."""
    debs.mkdir(parents=True, exist_ok=True)
    wanted = list(packages)

    def cached(pkg: str) -> Path | None:
        hits = sorted(debs.glob(f"{pkg}_{versions[pkg].replace(':', '%3a')}_*.deb"))
        return hits[0] if hits else None

    todo = [f"{pkg}={versions[pkg]}" for pkg in wanted if cached(pkg) is None]
    if todo:
        proc = subprocess.run(
            ["apt-get", "download", "-q", *todo],
            cwd=debs,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise VmBedError(f"apt-get download {' '.join(todo)} failed: {proc.stderr.strip()}")
    paths: dict[str, Path] = {}
    for pkg in wanted:
        deb = cached(pkg)
        if deb is None:
            raise VmBedError(f"apt-get download left no .deb for {pkg} {versions[pkg]} in {debs}")
        paths[pkg] = deb
    return paths


def extract_vmlinux(bzimage: bytes, origin: Path) -> bytes:
    """Return the uncompressed ELF kernel inside a bzImage (xz or zstd payload).

    Same idea as the kernel's scripts/extract-vmlinux: find the compressor's magic and
    decompress from there; a direct ELF kernel boots faster under qemu than the bzImage.
    """
    at = bzimage.find(b"\xfd7zXZ\x00")
    if at >= 0:
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        try:
            elf = decompressor.decompress(bzimage[at:])
        except lzma.LZMAError as exc:
            raise VmBedError(f"{origin}: xz payload at byte {at} is corrupt: {exc}") from exc
    else:
        at = bzimage.find(b"\x28\xb5\x2f\xfd")
        if at < 0:
            raise VmBedError(f"{origin}: no xz or zstd payload found in the bzImage")
        proc = subprocess.run(
            ["zstd", "-d", "-c", "-q"], input=bzimage[at:], capture_output=True, check=False
        )
        elf = proc.stdout
    if not elf.startswith(b"\x7fELF"):
        raise VmBedError(f"{origin}: payload at byte {at} did not decompress to an ELF kernel")
    return elf


def module_dependencies(ko: Path) -> list[str]:
    """Read the ``depends=`` entry of a kernel module's .modinfo section."""
    for field in ko.read_bytes().split(b"\x00"):
        if field.startswith(b"depends="):
            value = field.removeprefix(b"depends=").decode()
            return [name for name in value.split(",") if name]
    return []


def _install_modules(kernel_root: Path, root: Path, release: str) -> None:
    """Copy the wanted modules and their dependencies, writing their load order."""
    tree = kernel_root / "lib" / "modules" / release / "kernel"
    by_name = {ko.name.removesuffix(".ko").replace("-", "_"): ko for ko in tree.rglob("*.ko")}
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in order:
            return
        if key in chain:
            raise VmBedError(f"module dependency cycle: {' -> '.join((*chain, key))}")
        if key not in by_name:
            raise VmBedError(f"module {key} is not in the {release} kernel package")
        for dep in module_dependencies(by_name[key]):
            visit(dep, (*chain, key))
        order.append(key)

    for wanted in GUEST_MODULES:
        visit(wanted, ())
    dest = root / "lib" / "modules" / release
    dest.mkdir(parents=True, exist_ok=True)
    for name in order:
        shutil.copy2(by_name[name], dest / by_name[name].name)
    (root / "etc" / "vmbed").mkdir(parents=True, exist_ok=True)
    lines = [f"/lib/modules/{release}/{by_name[n].name}" for n in order]
    (root / "etc" / "vmbed" / "modules").write_text("\n".join(lines) + "\n")


def _finish_root(root: Path) -> None:
    """Make the unpacked packages bootable: /init, busybox applets, ld.so cache, bytecode."""
    for sub in ("proc", "sys", "dev", "tmp", "run", "share", "sbin", "bin", "usr/bin"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    busybox = root / "bin" / "busybox"
    if not busybox.exists():
        raise VmBedError(f"{busybox}: busybox-static did not unpack its binary")
    applets = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        link = root / applet
        names = {link.name}
        present = any(
            (root / d / n).exists() for d in ("bin", "sbin", "usr/bin", "usr/sbin") for n in names
        )
        if not present and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for name in ("python3", "python"):
        link = root / "usr" / "bin" / name
        if not link.exists():
            link.symlink_to("python3.11")
    init = root / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    console = root / "dev" / "console"
    if not console.exists():
        os.mknod(console, 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    (root / "etc" / "ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    subprocess.run(["ldconfig", "-r", str(root)], check=True, capture_output=True)
    # dpkg -x runs no maintainer scripts: compile the bytecode once, as the guest's own
    # interpreter, so no boot recompiles the standard library.
    proc = subprocess.run(
        [
            "chroot",
            str(root),
            "/usr/bin/python3.11",
            "-m",
            "compileall",
            "-q",
            "-j1",
            "/usr/lib/python3.11",
            "/usr/lib/python3/dist-packages",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode not in (0, 1):  # 1: a few test-suite files in the stdlib do not compile
        raise VmBedError(f"byte-compiling the guest's Python failed: {proc.stderr[-2000:]}")


def _write_cpio(root: Path, dest: Path) -> None:
    """Pack ``root`` as an uncompressed newc cpio archive (boots faster than a compressed one)."""
    names = subprocess.run(
        ["find", ".", "-mindepth", "1"], cwd=root, capture_output=True, check=True
    ).stdout
    with dest.open("wb") as out:
        subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc"],
            cwd=root,
            input=names,
            stdout=out,
            check=True,
        )


def _prune(cache_dir: Path, keep: Path, spare: int = 1) -> None:
    """Remove images of older package versions (~150 MB each), sparing the newest ``spare``
    others (another checkout of the project may be about to boot one)."""
    (keep / "done").touch()
    images = sorted(
        (d for d in cache_dir.iterdir() if d != keep and (d / "done").exists()),
        key=lambda d: (d / "done").stat().st_mtime,
        reverse=True,
    )
    for old in images[spare:]:
        shutil.rmtree(old, ignore_errors=True)


def _dpkg_extract(deb: Path, root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["dpkg", "-x", str(deb), str(root)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise VmBedError(f"dpkg -x {deb} failed: {proc.stderr.strip()}")


def _apt_cache(*args: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["apt-cache", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise VmBedError(f"apt-cache {' '.join(args[:3])} failed: {proc.stderr.strip()}")
    return proc.stdout
