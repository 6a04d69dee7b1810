"""Container images without a registry: local stand-ins, and offline bundles.

Stand-ins (``bundles/standins/recipe.toml``) are built from one Debian rootfs made by
``debootstrap --variant=minbase`` through this host's own apt mirror, imported once as a base
image, with one thin layer per component. The rootfs and the built images are cached as tar
files, so only the first build pays for debootstrap.

An offline bundle is one tar: ``manifest.json`` (what is inside, with sha256s), ``images.tar``
(``docker save`` of every component image), ``model_repository/`` and ``wheels/`` (confmeet and
its dependencies). ``load_bundle`` checks every checksum before it loads anything.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import glob
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import docker
import docker.errors
import requests


def _bundles_dir() -> Path:
    """``bundles/`` of the source tree, else where a wheel's data files put it."""
    for candidate in (Path(__file__).resolve().parents[2] / "bundles", Path(sys.prefix) / "share/confmeet/bundles"):
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[2] / "bundles"


BUNDLES_DIR = _bundles_dir()
STANDINS_DIR = BUNDLES_DIR / "standins"
STANDIN_REPOSITORY = "confmeet-standin"
BUNDLE_FORMAT = 1
CHUNK = 1024 * 1024
DEBIAN_SITE_PACKAGES = "/usr/local/lib/python3.11/dist-packages"

Log = Callable[[str], None]


class ImageError(Exception):
    """An image cannot be built, saved or loaded; the message says why and what to do."""


def _quiet(message: str) -> None:
    return None


# ---------------------------------------------------------------------- the stand-in recipe
@dataclass(frozen=True)
class ImageRecipe:
    component: str
    files: dict[str, str] = field(default_factory=dict)
    programs: list[str] = field(default_factory=list)
    python: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    user: str = ""
    # distribution → {file or directory inside it: path in the image} (e.g. the tritonserver binary)
    dist_files: dict[str, dict[str, str]] = field(default_factory=dict)
    # this host's files or directories (a Debian package's, beside its program) → path in the image
    host_files: dict[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"{STANDIN_REPOSITORY}/{self.component}:bookworm"


@dataclass(frozen=True)
class StandinRecipe:
    suite: str
    variant: str
    packages: list[str]
    prune: list[str]
    images: dict[str, ImageRecipe]
    directory: Path

    @classmethod
    def load(cls, directory: Path = STANDINS_DIR) -> StandinRecipe:
        path = directory / "recipe.toml"
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ImageError(f"cannot read the stand-in recipe {path}: {exc}") from None
        rootfs = data["rootfs"]
        images = {name: ImageRecipe(component=name, **spec) for name, spec in data["images"].items()}
        return cls(suite=rootfs["suite"], variant=rootfs["variant"], packages=rootfs["packages"],
                   prune=rootfs["prune"], images=images, directory=directory)

    def rootfs_key(self) -> str:
        text = json.dumps([self.suite, self.variant, sorted(self.packages), self.prune])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def images_key(self) -> str:
        """Changes whenever anything that goes into the stand-ins does."""
        digest = hashlib.sha256(self.rootfs_key().encode())
        for path in sorted(self.directory.rglob("*")):
            if path.is_file():
                digest.update(path.name.encode() + path.read_bytes())
        for recipe in self.images.values():
            for name in recipe.python:
                for dist in _distribution_closure(name):
                    digest.update(f"{dist.metadata['Name']}=={dist.version}".encode())
            for program in recipe.programs:
                found = _program(program)
                digest.update(f"{program}:{found.stat().st_size}".encode())
            for name in recipe.dist_files:
                dist = _distribution(name)
                digest.update(f"{dist.metadata['Name']}=={dist.version}".encode())
            for source in recipe.host_files:
                for path in sorted([_host_file(source), *_host_file(source).rglob("*")]):
                    digest.update(f"{path}:{path.stat().st_size if path.is_file() else 0}".encode())
        return digest.hexdigest()[:16]


def _program(name: str) -> Path:
    path = Path(sys.executable).parent / name
    if path.is_file():
        return path
    found = shutil.which(name)
    if found is None:
        raise ImageError(f"{name} is missing: install the test extras (pip install -e '.[test]')")
    return Path(found)


def _host_file(path: str) -> Path:
    if not Path(path).exists():
        raise ImageError(f"{path} is missing: install the Debian package that has it (make system-packages)")
    return Path(path)


def _distribution(name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise ImageError(f"the Python package {name} is not installed here: "
                         "install the test extras (pip install -e '.[test]')") from None


def _distribution_closure(name: str) -> list[metadata.Distribution]:
    """A distribution and everything it requires (no extras), as installed here."""
    seen: dict[str, metadata.Distribution] = {}
    pending = [name]
    while pending:
        wanted = pending.pop()
        try:
            dist = metadata.distribution(wanted)
        except metadata.PackageNotFoundError:
            raise ImageError(f"the Python package {wanted} is not installed here: "
                             "install the test extras (pip install -e '.[test]')") from None
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen[key] = dist
        for requirement in dist.requires or []:
            if "extra ==" not in requirement:
                pending.append(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])
    return [seen[key] for key in sorted(seen)]


# ---------------------------------------------------------------------- the Debian rootfs
def apt_mirror(suite: str, apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses for ``suite`` (CONFMEET_APT_MIRROR overrides it)."""
    if os.environ.get("CONFMEET_APT_MIRROR"):
        return os.environ["CONFMEET_APT_MIRROR"]
    entries: list[tuple[str, list[str]]] = []  # (URI, suites)
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields = dict(re.findall(r"^([\w-]+):\s*(.*)$", stanza, re.MULTILINE))
                if "deb" in fields.get("Types", "").split() and fields.get("Enabled", "yes") != "no":
                    for uri in fields.get("URIs", "").split():
                        entries.append((uri, fields.get("Suites", "").split()))
    for uri, suites in entries:
        if suite in suites and "security" not in uri:
            return uri
    for uri, _ in entries:
        if uri.rstrip("/").endswith("/debian"):
            return uri
    raise ImageError(f"no Debian mirror found in {apt_dir}/sources.list*: "
                     "set CONFMEET_APT_MIRROR to the mirror's URL")


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    """One builder at a time per cache directory (parallel test sessions share it)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_rootfs(recipe: StandinRecipe, cache_dir: Path, log: Log = _quiet) -> Path:
    """The cached rootfs tar for ``recipe``, made by debootstrap when missing (root only)."""
    target = cache_dir / f"rootfs-{recipe.suite}-{recipe.rootfs_key()}.tar"
    with _locked(cache_dir):
        if target.exists():
            return target
        if os.geteuid() != 0:
            raise ImageError("building the stand-in rootfs runs debootstrap, which needs root")
        if shutil.which("debootstrap") is None:
            raise ImageError("debootstrap is missing: apt-get install debootstrap")
        mirror = apt_mirror(recipe.suite)
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir))
        try:
            tree = work / "tree"
            log(f"debootstrap {recipe.suite} ({recipe.variant}, {len(recipe.packages)} extra packages) "
                f"from {mirror}")
            done = subprocess.run(
                ["debootstrap", f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}",
                 recipe.suite, str(tree), mirror], capture_output=True, text=True)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
                raise ImageError(f"debootstrap failed (see {tree}/debootstrap/debootstrap.log):\n{tail}")
            for pattern in recipe.prune:
                for path in glob.glob(str(tree / pattern)):
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
            partial = target.with_suffix(".partial")
            subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(tree), "-cf", str(partial), "."],
                           check=True, capture_output=True)
            partial.rename(target)
            for stale in cache_dir.glob("rootfs-*.tar"):
                if stale != target:
                    stale.unlink()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


# ---------------------------------------------------------------------- the stand-in images
def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def _dockerfile(base: str, recipe: ImageRecipe) -> str:
    lines = [f"FROM {base}", "COPY root/ /"]
    lines += [f"ENV {key}={json.dumps(value)}" for key, value in recipe.env.items()]
    if recipe.workdir:
        lines.append(f"WORKDIR {recipe.workdir}")
    if recipe.user:
        lines.append(f"USER {recipe.user}")
    if recipe.entrypoint is not None:
        lines.append(f"ENTRYPOINT {json.dumps(recipe.entrypoint)}")
    if recipe.cmd is not None:
        lines.append(f"CMD {json.dumps(recipe.cmd)}")
    lines.append(f'LABEL confmeet.standin="{recipe.component}"')
    return "\n".join(lines) + "\n"


def _context(base: str, recipe: ImageRecipe, directory: Path, out: BinaryIO) -> None:
    """The build context: a Dockerfile and ``root/``, a tree copied onto the base image."""
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", _dockerfile(base, recipe).encode())
        _add_bytes(tar, "root/usr/local/bin/.keep", b"")
        for source, destination in recipe.files.items():
            tar.add(directory / source, arcname=f"root{destination}")
        for program in recipe.programs:
            tar.add(_program(program), arcname=f"root/usr/local/bin/{program}")
        for source, destination in recipe.host_files.items():
            tar.add(_host_file(source), arcname=f"root{destination}")
        for name, files in recipe.dist_files.items():
            dist = _distribution(name)
            for inside, destination in files.items():
                tar.add(Path(str(dist.locate_file(inside))), arcname=f"root{destination}")
        for name in recipe.python:
            for dist in _distribution_closure(name):
                for file in dist.files or []:
                    if str(file).startswith("..") or "__pycache__" in file.parts:
                        continue
                    tar.add(dist.locate_file(file), arcname=f"root{DEBIAN_SITE_PACKAGES}/{file}")
    out.seek(0)


def _has_images(client: docker.DockerClient, tags: list[str], key: str) -> bool:
    for tag in tags:
        try:
            if client.images.get(tag).labels.get("confmeet.standin.key") != key:
                return False
        except docker.errors.ImageNotFound:
            return False
    return True


def build_standins(client: docker.DockerClient, cache_dir: Path, recipe: StandinRecipe | None = None,
                   log: Log = _quiet) -> dict[str, str]:
    """Make every stand-in image exist in the engine: from the cached ``docker save`` when there
    is one, else built from the (cached) rootfs. Returns component → image tag."""
    recipe = recipe or StandinRecipe.load()
    key = recipe.images_key()
    tags = {name: image.tag for name, image in recipe.images.items()}
    if _has_images(client, list(tags.values()), key):
        return tags
    saved = cache_dir / f"standins-{key}.tar"
    if saved.exists():
        log(f"loading stand-in images from {saved}")
        with saved.open("rb") as fh:
            load_images(client, fh)
        if _has_images(client, list(tags.values()), key):
            return tags
    rootfs = build_rootfs(recipe, cache_dir, log)
    base = f"{STANDIN_REPOSITORY}/base:{recipe.rootfs_key()}"
    log(f"importing {rootfs.name} as {base}")
    try:
        client.api.import_image_from_file(str(rootfs), repository=base.split(":")[0], tag=base.split(":")[1])
        for name, image in recipe.images.items():
            log(f"building {image.tag}")
            with tempfile.TemporaryFile() as context:
                _context(base, image, recipe.directory, context)
                client.images.build(fileobj=context, custom_context=True, tag=image.tag, rm=True,
                                    forcerm=True, labels={"confmeet.standin.key": key})
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise ImageError(f"building the stand-in images failed: {exc}") from None
    with _locked(cache_dir):
        partial = saved.with_suffix(".partial")
        with partial.open("wb") as out:
            save_images(client, list(tags.values()), out)
        partial.rename(saved)
        for stale in cache_dir.glob("standins-*.tar"):
            if stale != saved:
                stale.unlink()
    return tags


# ---------------------------------------------------------------------- the Triton image for confmeet's models
TRITON_REPOSITORY = "confmeet/tritonserver"
TRITON_LABEL = "confmeet.triton"  # JSON: the base image, its id, the wheels and confmeet's version


def triton_tag(base: str, version: str) -> str:
    """``confmeet/tritonserver:<the base image's tag>-<confmeet's version>``."""
    name = base.rsplit("/", 1)[-1]
    tag = name.rsplit(":", 1)[1] if ":" in name else "latest"
    return f"{TRITON_REPOSITORY}:{tag}-{version}"


def triton_dockerfile(base: str, packages: list[str], wheelhouse: bool) -> str:
    """Triton's Python backend runs model.py with the image's own Python: install the models'
    wheels there (pinned), from the package index or from the build context's ``wheels/``.
    PIP_BREAK_SYSTEM_PACKAGES lets pip write to a Debian-managed Python (the stand-in); pip
    versions that do not know it (the official image's) ignore it."""
    source = "--no-index --find-links /tmp/confmeet-wheels " if wheelhouse else ""
    lines = [f"FROM {base}"]
    if wheelhouse:
        lines.append("COPY wheels/ /tmp/confmeet-wheels/")
    lines.append(f"RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --disable-pip-version-check "
                 f"{source}{' '.join(packages)}" + (" && rm -rf /tmp/confmeet-wheels" if wheelhouse else ""))
    return "\n".join(lines) + "\n"


def _triton_label(base: str, base_id: str, packages: list[str], version: str) -> str:
    return json.dumps({"base": base, "base_id": base_id, "packages": sorted(packages), "version": version},
                      sort_keys=True)


def triton_image_current(client: docker.DockerClient, base: str, packages: list[str], version: str) -> bool:
    """Whether ``triton_tag(base)`` exists and was derived from this base (the same image, when
    the engine holds it) with these wheels for this version of confmeet."""
    try:
        label = json.loads(client.images.get(triton_tag(base, version)).labels.get(TRITON_LABEL) or "{}")
    except (docker.errors.ImageNotFound, ValueError):
        return False
    if (label.get("base"), label.get("packages"), label.get("version")) != (base, sorted(packages), version):
        return False
    try:
        return client.images.get(base).id == label.get("base_id")
    except docker.errors.ImageNotFound:
        return True  # from a bundle: the base itself was not shipped


def build_triton_image(client: docker.DockerClient, base: str, packages: list[str], version: str,
                       wheelhouse: Path | None = None, log: Log = _quiet) -> str:
    """Derive ``confmeet/tritonserver:<tag>-<version>`` from the Triton image ``base`` (pulled
    when missing) through the Docker Engine API; returns its tag. ``wheelhouse``: install the
    wheels from this directory (no package index needed; they must suit the image's Python)."""
    tag = triton_tag(base, version)
    try:
        try:
            base_id = client.images.get(base).id
        except docker.errors.ImageNotFound:
            log(f"pulling {base}")
            base_id = client.images.pull(base).id
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise ImageError(f"the Triton image {base} is not in the engine and cannot be pulled ({exc}); without "
                         "registry access install from an offline bundle (--bundle FILE), or name a local "
                         "image with --image triton=REF") from None
    wheels = sorted(wheelhouse.glob("*.whl")) if wheelhouse is not None else []
    if wheelhouse is not None and not wheels:
        raise ImageError(f"{wheelhouse} holds no wheels for the Triton image ({', '.join(packages)})")
    log(f"building {tag} from {base} with {', '.join(packages)}" + (f" (wheels from {wheelhouse})" if wheels else ""))
    with tempfile.TemporaryFile() as context:
        with tarfile.open(fileobj=context, mode="w") as tar:
            _add_bytes(tar, "Dockerfile", triton_dockerfile(base, packages, bool(wheels)).encode())
            for wheel in wheels:
                tar.add(wheel, arcname=f"wheels/{wheel.name}")
        context.seek(0)
        try:
            stream = client.api.build(fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True,
                                      decode=True, labels={TRITON_LABEL: _triton_label(base, base_id, packages,
                                                                                       version)})
            tail: list[str] = []
            for chunk in stream:
                if "error" in chunk:
                    raise ImageError(f"building {tag} failed: {chunk['error'].strip()}\n" + "\n".join(tail[-8:])
                                     + "\nwithout a package index, pass --wheelhouse DIR with the wheels "
                                     "for the image's Python")
                line = (chunk.get("stream") or "").strip()
                if line:
                    tail.append(line)
                    if line.startswith(("Step ", "Successfully installed")):
                        log(line[:160])
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise ImageError(f"building {tag} failed: {exc}") from None
    return tag


# ---------------------------------------------------------------------- save and load
def save_images(client: docker.DockerClient, refs: list[str], out: BinaryIO) -> str:
    """``docker save`` of several images into one tar (layers they share are stored once);
    returns its sha256."""
    digest = hashlib.sha256()
    try:
        response = client.api._get(client.api._url("/images/get"), params={"names": refs}, stream=True)
        client.api._raise_for_status(response)
        for chunk in response.iter_content(CHUNK):
            digest.update(chunk)
            out.write(chunk)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise ImageError(f"saving the images {', '.join(refs)} failed: {exc}") from None
    return digest.hexdigest()


def load_images(client: docker.DockerClient, source: BinaryIO) -> list[str]:
    """``docker load``; returns the names of the images loaded."""

    def chunks() -> Iterator[bytes]:
        while chunk := source.read(CHUNK):
            yield chunk

    loaded: list[str] = []
    try:
        for line in client.api.load_image(chunks()):
            if line.get("error"):
                raise ImageError(f"loading images failed: {line['error']}")
            message = line.get("stream", "")
            if message.startswith("Loaded image"):
                loaded.append(message.split(":", 1)[1].strip())
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise ImageError(f"loading images failed: {exc}") from None
    return loaded


# ---------------------------------------------------------------------- offline bundles
@dataclass
class Manifest:
    """What a bundle holds: component → image (reference and id), and every file's sha256."""

    confmeet_version: str
    created: str
    images: dict[str, dict[str, str]]
    files: dict[str, dict[str, Any]]
    format: int = BUNDLE_FORMAT

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        values = json.loads(data)
        if values.get("format") != BUNDLE_FORMAT:
            raise ImageError(f"bundle format {values.get('format')} is not {BUNDLE_FORMAT}: "
                             "make the bundle with this version of confmeet")
        return cls(**values)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# Required by redis on Python < 3.11.3 (Debian 12 has 3.11.2): a wheelhouse made on a newer
# Python would lack it, and the offline install on Debian would fail.
PYTHON_MARKER_WHEELS = ("async-timeout>=4.0.3",)


def build_wheels(out_dir: Path, requirement: str | Path, wheelhouse: Path | None = None) -> list[Path]:
    """confmeet's wheel and its dependencies' (``pip wheel`` of a source tree, a wheel file or a
    requirement); with ``wheelhouse`` only from there."""
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(out_dir)]
    if wheelhouse is not None:
        argv += ["--no-index", "--find-links", str(wheelhouse), "--no-build-isolation"]
    done = subprocess.run([*argv, str(requirement), *PYTHON_MARKER_WHEELS], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ImageError(f"building the Python wheels failed:\n{tail}\n"
                         "with no index reachable, pass --wheelhouse DIR holding the dependencies' wheels")
    return sorted(out_dir.glob("*.whl"))


def create_bundle(client: docker.DockerClient, images: dict[str, str], output: Path,
                  model_repository: Path, wheels: list[Path], version: str, log: Log = _quiet,
                  bases: dict[str, str] | None = None) -> Manifest:
    """Write an offline bundle: the images (pulled first when the engine lacks one), the model
    repository and the wheels, with a manifest of sha256s. ``bases``: component → the image a
    derived one (Triton's) was built from, which the install names."""
    ids: dict[str, dict[str, str]] = {}
    for component, ref in images.items():
        try:
            image = client.images.get(ref)
        except docker.errors.ImageNotFound:
            log(f"pulling {ref}")
            try:
                image = client.images.pull(ref)
            except (docker.errors.DockerException, requests.RequestException) as exc:
                raise ImageError(f"the image {ref} ({component}) is not in the engine and cannot be "
                                 f"pulled ({exc}); pull or load it first, or choose another with "
                                 f"--image {component}=REF") from None
        ids[component] = {"ref": ref, "id": image.id, **({"base": bases[component]} if component in (bases or {})
                                                          else {})}
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".bundle-") as tmp:
        images_tar = Path(tmp) / "images.tar"
        log(f"saving {len(images)} image(s)")
        with images_tar.open("wb") as out:
            images_sha = save_images(client, sorted(set(images.values())), out)
        members: dict[str, Path] = {"images.tar": images_tar}
        if model_repository.is_dir():
            for path in sorted(model_repository.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    members[f"model_repository/{path.relative_to(model_repository)}"] = path
        for wheel in wheels:
            members[f"wheels/{wheel.name}"] = wheel
        files = {name: {"sha256": images_sha if name == "images.tar" else _file_sha256(path),
                        "size": path.stat().st_size} for name, path in members.items()}
        manifest = Manifest(confmeet_version=version, images=ids, files=files,
                            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        partial = output.with_name(f".{output.name}.partial")
        log(f"writing {output}")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "manifest.json", manifest.to_json())
            for name, path in members.items():
                tar.add(path, arcname=name, recursive=False)
        partial.rename(output)
    return manifest


def read_manifest(bundle: Path) -> Manifest:
    try:
        with tarfile.open(bundle, "r:") as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise KeyError("manifest.json")
            return Manifest.from_json(member.read())
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise ImageError(f"{bundle} is not a confmeet bundle ({exc}): "
                         "make one with 'confmeet bundle create'") from None


def verify_bundle(bundle: Path, log: Log = _quiet) -> Manifest:
    """The manifest, after checking every file's sha256 (ImageError names the first that differs)."""
    manifest = read_manifest(bundle)
    seen = set()
    log(f"checking {len(manifest.files)} file(s) in {bundle.name}")
    with tarfile.open(bundle, "r:") as tar:
        for member in tar:
            if member.name == "manifest.json" or not member.isfile():
                continue
            expected = manifest.files.get(member.name)
            if expected is None:
                raise ImageError(f"{bundle}: {member.name} is not in the manifest; the bundle was changed "
                                 "after it was made: make it again")
            digest = hashlib.sha256()
            source = tar.extractfile(member)
            assert source is not None
            while chunk := source.read(CHUNK):
                digest.update(chunk)
            if digest.hexdigest() != expected["sha256"]:
                raise ImageError(f"{bundle}: {member.name} is damaged (sha256 differs from the manifest): "
                                 "copy the bundle again")
            seen.add(member.name)
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise ImageError(f"{bundle} lacks {', '.join(missing[:3])}: the copy is incomplete; copy it again")
    return manifest


def load_bundle(client: docker.DockerClient, bundle: Path, model_repository: Path, wheels_dir: Path,
                log: Log = _quiet) -> Manifest:
    """Verify the bundle, load its images into the engine, and unpack the model repository and
    the wheels (replacing what those directories held)."""
    manifest = verify_bundle(bundle, log)
    with tarfile.open(bundle, "r:") as tar:
        source = tar.extractfile("images.tar")
        assert source is not None
        log(f"loading {len(manifest.images)} image(s) into the engine")
        load_images(client, source)
        for directory in (model_repository, wheels_dir):
            if directory.exists():
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
        for member in tar:
            for prefix, directory in (("model_repository/", model_repository), ("wheels/", wheels_dir)):
                if member.isfile() and member.name.startswith(prefix):
                    target = directory / member.name[len(prefix):]
                    if directory.resolve() not in target.resolve().parents:
                        raise ImageError(f"{bundle}: {member.name} points outside its directory")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with target.open("wb") as out:
                        shutil.copyfileobj(tar.extractfile(member), out)  # type: ignore[misc]
    for component, image in manifest.images.items():
        try:
            client.images.get(image["ref"])
        except docker.errors.ImageNotFound:
            raise ImageError(f"the bundle's image for {component} ({image['ref']}) did not load") from None
    return manifest
